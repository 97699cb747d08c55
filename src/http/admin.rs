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
use super::extract::path_param;
use super::schema;
use super::state::AppState;
use crate::model::TopicInfo;
use crate::model::{Topic, format_rfc3339_millis};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/topics", get(list))
        .route("/v1/topics/{topic}", get(show).delete(delete))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    let mut out = crate::observe::prometheus()
        .map(|handle| handle.render())
        .unwrap_or_default();
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
}

/// List topics
///
/// An admin sees every topic; anyone else the topics they may read.
#[utoipa::path(
    get,
    path = "/v1/topics",
    tag = "manage",
    responses(
        (status = 200, description = "The topics", body = schema::TopicList),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let topics = state.hub.topics().await?;
    // An admin sees every topic; anyone else the topics they may read, so that the hub's
    // reserved topics (`_jobs.{id}` names every job) show only to a credential that may read
    // them. A job's topic costs a lookup of its queue, and only when the credential's
    // `subscribe` rules name `_jobs`.
    let admin = caller.0.is_admin();
    let mut shown = Vec::new();
    for (info, subs) in &topics {
        if admin || caller.may_read(&state.jobs, &info.topic).await? {
            shown.push(topic_json(info, *subs));
        }
    }
    Ok(Json(TopicList { topics: shown }).into_response())
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
