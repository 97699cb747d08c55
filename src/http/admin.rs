//! Manage and observe: topics, health and readiness.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{Params, QueryPairs, path_param};
use super::schema;
use super::state::AppState;
use crate::auth::AuthMode;
use crate::model::TopicInfo;
use crate::model::{Topic, format_rfc3339_millis};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/topics", get(list))
        .route("/v1/topics/{topic}", get(show).delete(delete))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/me", get(me))
}

/// Prometheus text: every family recorded through the `metrics` facade, then the listener's
/// connection counters.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "observe",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = crate::observe::render().unwrap_or_default();
    let conns = &state.connections;
    let accepted = conns.accepted.load(Relaxed);
    let _ = write!(
        out,
        "# HELP plexus_connections_accepted_total TCP connections accepted.\n\
         # TYPE plexus_connections_accepted_total counter\n\
         plexus_connections_accepted_total {accepted}\n\
         # HELP plexus_tls_handshake_failures_total TLS handshakes that failed or timed out.\n\
         # TYPE plexus_tls_handshake_failures_total counter\n\
         plexus_tls_handshake_failures_total {}\n\
         # HELP plexus_connections_refused_total Connections closed on accept by a connection limit.\n\
         # TYPE plexus_connections_refused_total counter\n\
         plexus_connections_refused_total {}\n",
        conns.tls_handshake_failures.load(Relaxed),
        conns.refused.load(Relaxed)
    );
    out.push_str(
        "# HELP plexus_connections_open TCP connections open now, by protocol, upgraded \
         (WebSocket) ones included; pending until the protocol is known.\n\
         # TYPE plexus_connections_open gauge\n",
    );
    for protocol in crate::server::Protocol::ALL {
        let _ = writeln!(
            out,
            "plexus_connections_open{{protocol=\"{}\"}} {}",
            protocol.label(),
            conns.open_by(protocol)
        );
    }
    // Consumer lag, read from the store at each scrape (equal to the API's figures); a store
    // that cannot answer leaves them out rather than failing the scrape.
    match state.consumers.metrics_text().await {
        Ok(text) => out.push_str(&text),
        Err(e) => tracing::warn!(error = %e, "consumer figures left out of /metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[derive(Serialize)]
struct TopicJson<'a> {
    topic: &'a str,
    first_seq: u64,
    last_seq: u64,
    messages: u64,
    bytes: u64,
    subscribers: usize,
    last_publish: Option<String>,
}

fn topic_json(info: &TopicInfo, subscribers: usize) -> TopicJson<'_> {
    TopicJson {
        topic: info.topic.as_str(),
        first_seq: info.first_seq,
        last_seq: info.last_seq,
        messages: info.messages,
        bytes: info.bytes,
        subscribers,
        last_publish: info.last_publish.map(format_rfc3339_millis),
    }
}

#[derive(Serialize)]
struct TopicList<'a> {
    topics: Vec<TopicJson<'a>>,
    /// Where the next page starts (`after=`), when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Most topics one page of `GET /v1/topics` holds (also its default).
const MAX_TOPICS_PAGE: usize = 1000;

/// List topics
///
/// An admin sees every topic; anyone else the topics they may read. A page holds up to
/// `limit` topics (default and most 1000) named after `after`; `next` names where the next
/// page starts.
#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "manage",
    params(
        ("limit" = Option<u64>, Query, description = "Most topics, from 1 (default 1000; above 1000 clamped to 1000)"),
        ("after" = Option<String>, Query, description = "List the topics named after this one (the `next` of the previous page)"),
    ),
    responses(
        (status = 200, description = "The topics", body = schema::TopicList),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let limit = match params.get("limit")? {
        None => MAX_TOPICS_PAGE,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => {
                usize::try_from(n).map_or(MAX_TOPICS_PAGE, |n| n.min(MAX_TOPICS_PAGE))
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit={v:?}: give a whole number from 1 (values above {MAX_TOPICS_PAGE} are clamped)"
                )));
            }
        },
    };
    let after = params.get("after")?.map(str::parse::<Topic>).transpose()?;
    // An admin sees every topic; anyone else the topics they may read, filtered page by page.
    let admin = caller.0.is_admin();
    let (topics, more) = state
        .hub
        .topics_page(after, limit, |topic| admin || caller.0.can_subscribe(topic))
        .await?;
    // `next` follows the page as read, so a page whose last topics the check below hides
    // still moves the listing on.
    let next = more
        .then(|| topics.last().map(|(info, _)| info.topic.to_string()))
        .flatten();
    // The rules' patterns let a hub's reserved topic through only when they name it; reading
    // `_jobs.{id}` or `_queues.{queue}` also needs the jobs right on the queue, which costs a
    // lookup of a job's queue only for such a topic.
    let mut shown = Vec::with_capacity(topics.len());
    for (info, subs) in &topics {
        if admin || caller.may_read(&state.jobs, &info.topic).await? {
            shown.push(topic_json(info, *subs));
        }
    }
    let body = TopicList {
        topics: shown,
        next,
    };
    Ok(Json(body).into_response())
}

/// Show a topic
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    tag = "manage",
    params(("topic" = String, Path, max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$")),
    responses(
        (status = 200, description = "The topic", body = schema::TopicInfo),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The topic has never been published to", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let topic: Topic = path_param(path)?.parse()?;
    caller.subscribe(&state.jobs, &topic).await?;
    match state.hub.topic(&topic).await? {
        Some((info, subs)) => Ok(Json(topic_json(&info, subs)).into_response()),
        None => Err(ApiError::not_found(format!(
            "topic {topic} has never been published to"
        ))),
    }
}

/// Delete a topic's messages
///
/// Keeps its counter; readers get a `deleted` gap. Needs an admin credential; the hub's
/// reserved topics (`_…`) cannot be deleted.
#[utoipa::path(
    delete,
    path = "/v1/topics/{topic}",
    tag = "manage",
    params(("topic" = String, Path, max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin credential, or a reserved topic", body = schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The topic has never been published to", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let topic: Topic = path_param(path)?.parse()?;
    caller.admin()?;
    if topic.is_reserved() {
        // A job's events and a queue's announcements are the hub's record of its jobs:
        // followers and claimers on other nodes rely on them.
        return Err(ApiError::reserved_topic(format!(
            "topic {topic} is reserved for the hub (names starting with _ can be read, not deleted)"
        )));
    }
    if state.hub.delete_topic(&topic).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "topic {topic} has never been published to"
        )))
    }
}

/// Liveness: the process answers
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "observe",
    responses((status = 200, description = "Alive", body = schema::Health))
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store is reachable and the hub not draining
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "observe",
    responses(
        (status = 200, description = "Ready", body = schema::Health),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.hub.ready().await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// What this credential may do
///
/// The auth mode, whether the caller is an admin, and with `topic` what it may do there
/// (`publish`, `subscribe`, `delete`). A hint for pages: every route checks its right itself.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "manage",
    params(("topic" = Option<String>, Query, description = "A topic to report the caller's rights on")),
    responses(
        (status = 200, description = "`{\"auth\":\"open|required\",\"admin\",\"topic\"?:{\"topic\",\"publish\",\"subscribe\",\"delete\"}}`", content_type = "application/json"),
        (status = 400, description = "A bad topic or parameter", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn me(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryPairs,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = Params::from(query)?;
    let mode = match state.auth.mode() {
        AuthMode::Open => "open",
        AuthMode::Required => "required",
    };
    let mut body = serde_json::json!({"auth": mode, "admin": caller.0.is_admin()});
    if let Some(topic) = params.get("topic")? {
        let topic: Topic = topic.parse()?;
        body["topic"] = serde_json::json!({
            "topic": topic.as_str(),
            "publish": caller.0.can_publish(&topic) && !topic.is_reserved(),
            "subscribe": caller.may_read(&state.jobs, &topic).await?,
            "delete": caller.0.is_admin() && !topic.is_reserved(),
        });
    }
    Ok(Json(body))
}
