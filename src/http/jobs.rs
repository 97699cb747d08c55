//! Jobs over HTTP: submit (202, or 200 with `Prefer: wait` when it finishes in time), status
//! with `wait`, and the worker's claim / heartbeat / progress / complete / fail.

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, Params, QueryPairs, idempotency_key_header, path_param};
use super::schema;
use super::state::{AppState, HttpOptions};
use crate::model::{JobId, Topic};
use crate::wire::job::job_json;

/// The longest lease a worker may ask for.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

pub fn routes(options: &HttpOptions) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/queues/{queue}/jobs",
            super::extract::body_limit(post(submit), options.max_message_bytes),
        )
        .route("/v1/queues/{queue}/claim", post(claim))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route(
            "/v1/jobs/{id}/{action}",
            super::extract::body_limit(post(act), options.max_message_bytes),
        )
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn job_id(path: &str) -> Result<JobId, ApiError> {
    path.parse::<JobId>()
        .map_err(|_| ApiError::not_found(format!("no job {path:?}")))
}

fn seconds(params: &Params, name: &str) -> Result<Option<Duration>, ApiError> {
    params
        .get(name)?
        .map(|v| extract::parse_seconds(name, v))
        .transpose()
}

/// `?lease=`: seconds, at least [`schema::MIN_LEASE_SECS`] (the OpenAPI `minimum`). The bound
/// is checked on the number as written, as the OpenAPI `minimum` is, so that a value the
/// description allows is never refused (`5e-324` is a positive number but no duration).
fn lease_seconds(params: &Params) -> Result<Option<Duration>, ApiError> {
    let Some(value) = params.get("lease")? else {
        return Ok(None);
    };
    let lease = extract::parse_seconds("lease", value)?;
    if value
        .parse::<f64>()
        .is_ok_and(|s| s < schema::MIN_LEASE_SECS)
    {
        return Err(ApiError::bad_request(format!(
            "lease={value:?}: at least {} s",
            schema::MIN_LEASE_SECS
        )));
    }
    Ok(Some(lease))
}

/// Submit a job
///
/// The body is the payload. `202` at once; with `Prefer: wait=N`, `200` when the job finishes
/// (succeeded or dead) within N seconds.
#[utoipa::path(
    post,
    path = "/v1/queues/{queue}/jobs",
    tag = "jobs",
    params(
        ("queue" = String, Path, max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", description = "The queue (topic naming rules)"),
        ("max_attempts" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Claims before a failing job is dead (default jobs.max_attempts)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "1-200 visible ASCII characters; a replay with the same body answers the first result"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds for the job to finish"),
    ),
    request_body(description = "The payload, any bytes, any content type", content((schema::Payload = "application/octet-stream"), (schema::Payload = "*/*"))),
    responses(
        (status = 200, description = "Finished within the wait", body = schema::Job),
        (status = 202, description = "Queued", body = schema::Job, headers(
            ("Location" = String, description = "`/v1/jobs/{id}`"),
            ("Idempotent-Replayed" = String, description = "`true` when this answers a replayed idempotency key"),
        )),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key was used with another body", body = schema::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The payload is larger than max_message_bytes", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
        (status = 507, description = "It would create a topic beyond limits.max_topics_total; nothing is stored", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let queue: Topic = path_param(path)?.parse()?;
    caller.queue(&queue)?;
    let params = Params::from(query)?;
    let payload = extract::body(body, state.options.max_message_bytes)?;
    let max_attempts = match params.get("max_attempts")? {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "max_attempts={v:?}: give a whole number from 1 to 1000"
                )));
            }
        },
    };
    let key = idempotency_key_header(&headers)?;
    let wait = extract::prefer_wait(&headers)?
        .unwrap_or_default()
        .min(state.options.max_wait);
    let (job, replayed) = state.jobs.submit(queue, payload, max_attempts, key).await?;
    let job = if wait.is_zero() {
        job
    } else {
        state.jobs.wait_final(&job.id, wait).await?
    };
    let status = if job.state.is_final() && !wait.is_zero() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = json(status, job_json(&job, false));
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A job's state
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "The job id"),
        ("wait" = inline(Option<schema::Wait>), Query, description = "Seconds to wait for the state to change, clamped to max_wait"),
    ),
    responses(
        (status = 200, description = "The job", body = schema::Job),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn status(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let id = job_id(&path_param(path)?)?;
    let params = Params::from(query)?;
    let wait = seconds(&params, "wait")?
        .unwrap_or_default()
        .min(state.options.max_wait);
    caller.queue(&state.jobs.get(&id).await?.queue)?;
    let job = state.jobs.wait_change(&id, wait).await?;
    Ok(json(StatusCode::OK, job_json(&job, false)))
}

/// Claim the next job of a queue (workers)
#[utoipa::path(
    post,
    path = "/v1/queues/{queue}/claim",
    tag = "jobs",
    params(
        ("queue" = String, Path, max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$"),
        ("wait" = inline(Option<schema::Wait>), Query, description = "Seconds to wait for a job, clamped to max_wait"),
        ("lease" = inline(Option<schema::Lease>), Query, description = "Seconds the claim lasts, from 0.001 (default jobs.default_lease; above a day clamped to a day)"),
    ),
    responses(
        (status = 200, description = "A job, with its `lease` token and `lease_until`", body = schema::Job),
        (status = 204, description = "No job within the wait"),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let queue: Topic = path_param(path)?.parse()?;
    caller.queue(&queue)?;
    let params = Params::from(query)?;
    let wait = seconds(&params, "wait")?
        .unwrap_or_default()
        .min(state.options.max_wait);
    let lease = match lease_seconds(&params)? {
        Some(l) => l.min(MAX_LEASE),
        None => state.jobs.options().default_lease,
    };
    match state.jobs.claim(&queue, lease, wait).await? {
        Some(job) => Ok(json(StatusCode::OK, job_json(&job, true))),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Retry a dead job
///
/// Puts a `dead` job back on its queue at once, its attempts counted afresh. Needs `jobs` on
/// the job's queue; a job in any other state is `409` `job-not-dead`.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job, queued again", body = schema::Job),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not dead", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&path_param(path)?)?;
    caller.queue(&state.jobs.get(&id).await?.queue)?;
    let job = state.jobs.retry(&id).await?;
    Ok(json(StatusCode::OK, job_json(&job, false)))
}

/// Heartbeat, report progress, complete or fail a claimed job (workers)
///
/// Only the current holder of the claim may: an expired lease, or an older claim's token, is
/// `409`.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/{action}",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "The job id"),
        ("action" = schema::JobAction, Path),
        ("lease" = String, Query, description = "The claim's lease token"),
    ),
    request_body(description = "progress: the progress message; complete: the result; fail: the error text", content((schema::Payload = "application/octet-stream"), (schema::Payload = "*/*"))),
    responses(
        (status = 200, description = "The job", body = schema::Job),
        (status = 400, description = "No lease token, or a bad parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such action", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The lease ran out, or names an older claim", body = schema::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The payload is larger than max_message_bytes", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn act(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    query: QueryPairs,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((id, action)) =
        path.map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))?;
    let id = job_id(&id)?;
    caller.queue(&state.jobs.get(&id).await?.queue)?;
    let params = Params::from(query)?;
    let token = params
        .get("lease")?
        .ok_or_else(|| ApiError::bad_request("give the claim's lease token as ?lease="))?
        .to_owned();
    let body = extract::body(body, state.options.max_message_bytes)?;
    let job = match action.as_str() {
        "heartbeat" => state.jobs.heartbeat(&id, &token).await?,
        "progress" => state.jobs.progress(&id, &token, body).await?,
        "complete" => state.jobs.complete(&id, &token, body).await?,
        "fail" => {
            let error = String::from_utf8_lossy(&body).into_owned();
            state.jobs.fail(&id, &token, error).await?
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no job action {other:?}; use heartbeat, progress, complete or fail"
            )));
        }
    };
    let with_lease = action == "heartbeat" || action == "progress";
    Ok(json(StatusCode::OK, job_json(&job, with_lease)))
}
