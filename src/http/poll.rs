//! Short and long polling: `GET /v1/topics/{topics}/messages?since=&limit=&wait=`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, Params, QueryPairs, path_param};
use super::schema;
use super::state::AppState;
use crate::consumers::{ConsumerName, Delivered, ReadSpec};
use crate::hub::ReadRequest;
use crate::model::{Since, TopicList};
use crate::wire::{Envelope, GapJson};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The `POST` of the same path is publish's (`publish.rs`); the router merges the two.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/topics/{topics}/messages", get(poll))
}

#[derive(Serialize)]
pub(super) struct PollBody<'a> {
    messages: Vec<Envelope<'a>>,
    next: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gaps: Vec<GapJson<'a>>,
}

/// A read through a consumer as a poll answers it (each envelope with its `delivery`),
/// counted as delivered; also the page an ack with `read` answers.
pub(super) fn consumer_page(got: &Delivered) -> PollBody<'_> {
    crate::observe::deliveries("poll").increment(got.messages.len() as u64);
    PollBody {
        messages: got
            .messages
            .iter()
            .map(|(m, d)| Envelope::delivered(m, *d))
            .collect(),
        next: got.next.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        gaps: got.gaps.iter().map(GapJson::of).collect(),
    }
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
        ("topics" = inline(schema::Topics), Path, description = "One topic, or up to 64 comma-separated (the pattern bounds each to 100 characters besides dots, within the 200-byte limit of a name)"),
        ("since" = inline(Option<schema::Since>), Query, description = "Where to start: a cursor (`next` or an SSE id), `all`, `now`, or a duration back such as `5m`"),
        ("limit" = inline(Option<schema::Limit>), Query, description = "Most messages, from 1 (default 100; above 1000 clamped to 1000)"),
        ("wait" = inline(Option<schema::Wait>), Query, description = "Seconds to wait for a message (long poll), clamped to max_wait"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (RFC 7240): the same as the `wait` query parameter"),
        ("consumer" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "Read through this durable consumer (created `auto` from `all` if missing); not with `since`"),
    ),
    responses(
        (status = 200, description = "Messages, and the cursor to read on from", body = schema::PollBody),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The consumer reads other topics", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Read, then dropped before any wait (see `streaming::stream_request`): a held poll would
    // keep hyper's request buffer beside the one it reserves for the next read.
    let prefer_wait = extract::prefer_wait(&headers);
    drop(headers);
    let topics = TopicList::parse(&path_param(path)?, state.options.max_topics)?;
    for topic in topics.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    let params = Params::from(query)?;
    let consumer = params
        .get("consumer")?
        .map(str::parse::<ConsumerName>)
        .transpose()?;
    let since = match (params.get("since")?, &consumer) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_consumer(
                "since: a read through a consumer starts where the consumer stands; seek it instead",
            ));
        }
        (Some(s), None) => Since::parse_bounded(s, state.options.max_topics)?,
        (None, _) => Since::All,
    };
    let limit = match params.get("limit")? {
        None => DEFAULT_LIMIT,
        // Any whole number from 1 to u64::MAX, as the OpenAPI description says
        // (`schema::Limit`); above MAX_LIMIT it is clamped, not refused, so a client asking
        // for as many as there are gets a full page.
        Some(v) => match v.parse::<u64>() {
            Ok(0) | Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "limit={v:?}: give a whole number from 1 (values above {MAX_LIMIT} are clamped)"
                )));
            }
            Ok(n) => n.min(MAX_LIMIT as u64) as usize,
        },
    };
    // The query wins over `Prefer: wait` when both are given.
    let wait = match params.get("wait")? {
        Some(v) => extract::parse_seconds("wait", v)?,
        None => prefer_wait?.unwrap_or_default(),
    }
    .min(state.options.max_wait);
    if let Some(name) = consumer {
        let spec = ReadSpec {
            topics,
            limit,
            wait,
            implicit_start: Since::All,
        };
        let got = state.consumers.read(&name, &spec).await?;
        return Ok(Json(consumer_page(&got)).into_response());
    }
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
    crate::observe::deliveries("poll").increment(result.messages.len() as u64);
    let body = PollBody {
        messages: result.messages.iter().map(|m| Envelope::of(m)).collect(),
        next: result.next.to_string(),
        gaps: result.gaps.iter().map(GapJson::of).collect(),
    };
    // Serialised here, while the borrowed messages are alive.
    Ok(Json(body).into_response())
}
