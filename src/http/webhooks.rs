//! Webhooks over HTTP: `POST/GET /v1/webhooks`, `GET/DELETE /v1/webhooks/{id}` and
//! `POST /v1/webhooks/{id}/{pause|resume|replay|rotate-secret}`. The sender and the rules
//! live in [`crate::webhooks`].

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, path_param};
use super::state::AppState;
use crate::model::{Since, Topic};
use crate::webhooks::CreateRequest;

/// Largest body of a webhook call.
const MAX_BODY: usize = 64 << 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhooks",
            extract::body_limit(get(list).post(create), MAX_BODY),
        )
        .route(
            "/v1/webhooks/{id}",
            extract::body_limit(get(show).delete(remove), MAX_BODY),
        )
        .route(
            "/v1/webhooks/{id}/{action}",
            extract::body_limit(post(act), MAX_BODY),
        )
}

fn json_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, ApiError> {
    let bytes = extract::body(body, MAX_BODY)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_webhook(format!("the body: {e}")))
}

/// Checks the caller may read every topic of the webhook (`subscribe`), or `Unknown`.
async fn check_rights(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    for topic in state.webhooks.topics(id).await? {
        caller.subscribe(&state.jobs, &topic).await?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    topics: Vec<String>,
    since: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    rate: f64,
}

/// Create a webhook
///
/// `201` with the webhook and its `secret`, shown only here and on rotation.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body(content = Object, description = "`{\"url\",\"topics\":[…],\"since\",\"secret\",\"raw\",\"rate\"}`", content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Object),
        (status = 400, description = "A bad URL, scheme, topic, secret, since or rate; or a refused address", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(body) = json_body::<CreateBody>(body)? else {
        return Err(ApiError::bad_webhook(
            "the body: a JSON object with url and topics",
        ));
    };
    if body.topics.is_empty() {
        return Err(ApiError::bad_webhook("topics: name at least one topic"));
    }
    let mut topics = Vec::new();
    for t in &body.topics {
        let topic: Topic = t.parse().map_err(ApiError::bad_topic)?;
        caller.subscribe(&state.jobs, &topic).await?;
        topics.push(topic);
    }
    let view = state
        .webhooks
        .create(CreateRequest {
            url: body.url,
            topics,
            since: body.since,
            secret: body.secret,
            raw: body.raw,
            rate: body.rate,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Webhooks: every one for an admin, those whose topics the caller may read otherwise
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, description = "`{\"webhooks\":[…]}`", body = Object))
)]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let all = state.webhooks.list().await?;
    let mut shown = Vec::new();
    for view in all {
        let mut may = caller.admin().is_ok();
        if !may {
            may = true;
            for t in &view.topics {
                let readable = match t.parse::<Topic>() {
                    Ok(topic) => caller.subscribe(&state.jobs, &topic).await.is_ok(),
                    Err(_) => false,
                };
                may &= readable;
            }
        }
        if may {
            shown.push(view);
        }
    }
    Ok(Json(serde_json::json!({ "webhooks": shown })).into_response())
}

/// A webhook, with its state, lag and last attempt
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id")),
    responses(
        (status = 200, description = "The webhook", body = Object),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(path)?;
    check_rights(&state, &caller, &id).await?;
    Ok(Json(state.webhooks.get(&id).await?).into_response())
}

/// Delete a webhook (and its consumer)
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(path)?;
    check_rights(&state, &caller, &id).await?;
    state.webhooks.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    since: String,
}

/// Pause, resume, replay or rotate the secret of a webhook
///
/// `replay` takes `{"since":…}` and delivers again from there with the same `webhook-id`s;
/// `rotate-secret` answers the new `secret` (the old one signs too for 24 h).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/{action}",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The webhook's id"),
        ("action" = String, Path, description = "`pause`, `resume`, `replay` or `rotate-secret`"),
    ),
    request_body(content = Object, description = "replay: `{\"since\":…}`; the others: none", content_type = "application/json"),
    responses(
        (status = 200, description = "The webhook as it is now", body = Object),
        (status = 400, description = "A bad since", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook or action", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn act(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((id, action)) =
        path.map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))?;
    check_rights(&state, &caller, &id).await?;
    let hooks = &state.webhooks;
    let view = match action.as_str() {
        "pause" => hooks.pause(&id).await?,
        "resume" => hooks.resume(&id).await?,
        "rotate-secret" => hooks.rotate(&id).await?,
        "replay" => {
            let Some(body) = json_body::<ReplayBody>(body)? else {
                return Err(ApiError::bad_webhook("replay: the body is {\"since\": …}"));
            };
            let since: Since = body.since.parse()?;
            hooks.replay(&id, &since).await?
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no webhook action {other:?}: pause, resume, replay or rotate-secret"
            )));
        }
    };
    Ok(Json(view).into_response())
}
