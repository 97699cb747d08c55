//! Durable consumers over HTTP: `PUT/GET/DELETE /v1/consumers/{name}`, `GET /v1/consumers`,
//! and `POST /v1/consumers/{name}/{ack|nak|term|seek}`. Reading through a consumer is a
//! `?consumer=` on the read routes (`poll.rs`); the rules live in [`crate::consumers`].

use std::time::Duration;

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
use crate::consumers::{AckItem, ConsumerName, MAX_ACKS, Settings, SettingsRequest, Settle};
use crate::model::{Since, Topic, parse_duration};

/// Largest body of a consumer call (1,000 acks fit easily).
const MAX_BODY: usize = 1 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/consumers", get(list))
        .route(
            "/v1/consumers/{name}",
            extract::body_limit(get(show).put(create).delete(remove), MAX_BODY),
        )
        .route(
            "/v1/consumers/{name}/{action}",
            extract::body_limit(post(act), MAX_BODY),
        )
}

fn name_of(path: Result<Path<String>, PathRejection>) -> Result<ConsumerName, ApiError> {
    Ok(path_param(path)?.parse::<ConsumerName>()?)
}

/// Checks the caller may read every topic of the consumer (`subscribe`), or `Unknown`.
async fn check_rights(
    state: &AppState,
    caller: &Caller,
    name: &ConsumerName,
) -> Result<(), ApiError> {
    for topic in state.consumers.topics(name).await?.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    Ok(())
}

fn json_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = extract::body(body, MAX_BODY)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_consumer(format!("the body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    topics: Vec<String>,
    start: Option<String>,
    ack: Option<String>,
    ack_wait: Option<String>,
    max_deliver: Option<u64>,
    max_ack_pending: Option<u64>,
}

/// Create a durable consumer
///
/// `201` when created, `200` when it exists with the same settings, `409` with other ones.
#[utoipa::path(
    put,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The consumer's name")),
    request_body(content = Object, description = "`{\"topics\":[…],\"start\",\"ack\",\"ack_wait\",\"max_deliver\",\"max_ack_pending\"}`", content_type = "application/json"),
    responses(
        (status = 200, description = "It exists with these settings", body = Object),
        (status = 201, description = "Created", body = Object),
        (status = 400, description = "A bad name or setting", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "It exists with other settings", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let body: CreateBody = json_body(body)?;
    let settings = Settings::from_request(
        SettingsRequest {
            topics: body.topics,
            start: body.start,
            ack: body.ack,
            ack_wait: body.ack_wait,
            max_deliver: body.max_deliver,
            max_ack_pending: body.max_ack_pending,
        },
        state.consumers.options(),
        state.options.max_topics,
    )?;
    for topic in settings.topic_list()?.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    let (info, created) = state.consumers.create(&name, settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

/// A durable consumer, with its lag figures per topic
#[utoipa::path(
    get,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name")),
    responses(
        (status = 200, description = "Its settings and `topics_state`", body = Object),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    check_rights(&state, &caller, &name).await?;
    Ok(Json(state.consumers.info(&name).await?).into_response())
}

/// Every durable consumer (admin)
#[utoipa::path(
    get,
    path = "/v1/consumers",
    tag = "consumers",
    responses(
        (status = 200, description = "`{\"consumers\":[…]}`", body = Object),
        (status = 403, description = "This needs an admin credential", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.admin()?;
    let all = state.consumers.list().await?;
    Ok(Json(serde_json::json!({ "consumers": all })).into_response())
}

/// Delete a durable consumer
#[utoipa::path(
    delete,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    check_rights(&state, &caller, &name).await?;
    state.consumers.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    acks: Vec<AckJson>,
    delay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckJson {
    topic: String,
    seq: u64,
    delivery: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekBody {
    since: String,
}

/// Ack, nak or term messages of an explicit consumer; or seek
///
/// `ack`, `nak` (with an optional `delay`) and `term` take `{"acks":[{"topic","seq","delivery"?}]}`
/// (up to 1000), all or none; `seek` takes `{"since":…}`.
#[utoipa::path(
    post,
    path = "/v1/consumers/{name}/{action}",
    tag = "consumers",
    params(
        ("name" = String, Path, description = "The consumer's name"),
        ("action" = String, Path, description = "`ack`, `nak`, `term` or `seek`"),
    ),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "Done (`seek` answers the consumer)", body = Object),
        (status = 400, description = "A bad body", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer or action", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An item names no current lease; nothing was changed", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn act(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((name, action)) =
        path.map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))?;
    let name: ConsumerName = name.parse()?;
    if !matches!(action.as_str(), "ack" | "nak" | "term" | "seek") {
        return Err(ApiError::not_found(format!(
            "no consumer action {action:?}: ack, nak, term or seek"
        )));
    }
    check_rights(&state, &caller, &name).await?;
    if action == "seek" {
        let body: SeekBody = json_body(body)?;
        let since = Since::parse_bounded(&body.since, state.options.max_topics)?;
        let info = state.consumers.seek(&name, &since).await?;
        return Ok(Json(info).into_response());
    }
    let body: AckBody = json_body(body)?;
    if body.acks.is_empty() || body.acks.len() > MAX_ACKS {
        return Err(ApiError::bad_consumer(format!(
            "acks: from 1 to {MAX_ACKS} items ({} given)",
            body.acks.len()
        )));
    }
    let how = match action.as_str() {
        "ack" | "term" if body.delay.is_some() => {
            return Err(ApiError::bad_consumer("delay: only a nak takes one"));
        }
        "ack" => Settle::Ack,
        "term" => Settle::Term,
        _ => Settle::Nak(match body.delay.as_deref() {
            None => Duration::ZERO,
            Some(d) => {
                parse_duration(d).map_err(|e| ApiError::bad_consumer(format!("delay: {e}")))?
            }
        }),
    };
    let mut items = Vec::with_capacity(body.acks.len());
    for a in body.acks {
        let topic: Topic = a.topic.parse()?;
        items.push(AckItem {
            topic,
            seq: a.seq,
            delivery: a.delivery,
        });
    }
    state.consumers.settle(&name, &items, how).await?;
    Ok(Json(serde_json::json!({ "settled": items.len() })).into_response())
}
