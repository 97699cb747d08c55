//! Short and long polling: `GET /v1/topics/{topics}/messages?since=&limit=&wait=`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::params::{self, Params, QueryPairs};
use super::publish::path_param;
use crate::hub::ReadRequest;
use crate::model::{Since, TopicList};
use crate::wire::{Envelope, GapJson};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The poll route lives with publish (same path); nothing else to add here.
pub fn routes() -> Router<AppState> {
    Router::new()
}

#[derive(Serialize)]
struct PollBody<'a> {
    messages: Vec<Envelope<'a>>,
    next: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gaps: Vec<GapJson<'a>>,
}

/// Read messages: short or long poll
///
/// Without `wait` answers at once; with it, as soon as there is a message, or empty at the
/// timeout.
#[utoipa::path(
    get,
    path = "/v1/topics/{topics}/messages",
    tag = "read",
    params(
        ("topics" = String, Path, pattern = "^[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}(,[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}){0,63}$", description = "One topic, or up to 64 comma-separated (the pattern bounds each to 100 characters besides dots, within the 200-byte limit of a name)"),
        ("since" = Option<String>, Query, pattern = "^(all|now|[0-9]{1,19}|[0-9]{1,9}(ms|s|m|h|d)|(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19}(,(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19})*|[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$", description = "Where to start: a cursor (`next` or an SSE id), `all`, `now`, or a duration back such as `5m`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 2147483647, description = "Most messages, up to 2147483647 (default 100; above 1000 clamped)"),
        ("wait" = Option<f64>, Query, minimum = 0, exclusive_maximum = 1000000000, description = "Seconds to wait for a message (long poll), clamped to max_wait"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (RFC 7240): the same as the `wait` query parameter"),
    ),
    responses(
        (status = 200, description = "Messages, and the cursor to read on from", body = super::openapi::PollBody),
        (status = 400, description = "A bad topic, cursor or parameter", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topics = TopicList::parse(&path_param(path)?, state.options.max_topics)?;
    for topic in topics.iter() {
        caller.subscribe(topic)?;
    }
    let params = Params::from(query)?;
    let since = match params.get("since")? {
        Some(s) => s.parse::<Since>()?,
        None => Since::All,
    };
    let limit = match params.get("limit")? {
        None => DEFAULT_LIMIT,
        // Bounded as the OpenAPI description says (a 32-bit integer), so what it allows is
        // accepted and what it forbids refused.
        Some(v) => match v.parse::<i32>() {
            Ok(n) if n >= 1 => (n as usize).min(MAX_LIMIT),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit={v:?}: give a whole number from 1 to {} (values above {MAX_LIMIT} are clamped)",
                    i32::MAX
                )));
            }
        },
    };
    // The query wins over `Prefer: wait` when both are given.
    let wait = match params.get("wait")? {
        Some(v) => params::parse_seconds("wait", v)?,
        None => params::prefer_wait(&headers)?.unwrap_or_default(),
    }
    .min(state.options.max_wait);
    let result = state
        .hub
        .read(ReadRequest {
            topics,
            since,
            default_since: Since::All,
            limit,
            wait,
        })
        .await?;
    metrics::counter!("plexus_deliveries_total", "transport" => "poll")
        .increment(result.messages.len() as u64);
    let body = PollBody {
        messages: result.messages.iter().map(|m| Envelope::of(m)).collect(),
        next: result.next.to_string(),
        gaps: result.gaps.iter().map(GapJson::of).collect(),
    };
    // Serialised here, while the borrowed messages are alive.
    Ok(Json(body).into_response())
}
