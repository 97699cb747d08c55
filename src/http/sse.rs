//! Server-Sent Events: `GET /v1/topics/{topics}/sse?since=&slow=&raw=1`.
//!
//! `id:` is the cursor after each event, so `Last-Event-ID` resumes exactly. With one topic
//! that is the seq, the same for every subscriber: the frame comes ready-made from the hub and
//! is shared. With several topics the cursor names them all and the frame is made here.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::QueryPairs;
use super::schema;
use super::state::AppState;
use super::streaming::{
    Bookends, Positions, SSE_TYPE, event_body, stream_request, streaming_response,
};
use crate::hub::Event;
use crate::model::Since;
use crate::wire::frames::{
    SSE_DISCONNECT, SSE_KEEPALIVE, SSE_RETRY, sse_gap, sse_message, sse_retry_at_shutdown,
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/topics/{topics}/sse", get(sse))
}

/// Follow topics as Server-Sent Events
///
/// Starts with `retry: 2000`; each event has `id:` (the cursor after it), `event:` and `data:`
/// (the JSON envelope, or the payload itself with `raw=1`). Keepalive comments when idle. A
/// stream ended by a shutdown ends with `retry: N`, N from 1000 to 5000 ms at random.
#[utoipa::path(
    get,
    path = "/v1/topics/{topics}/sse",
    tag = "read",
    params(
        ("topics" = inline(schema::Topics), Path, description = "One topic, or up to 64 comma-separated (the pattern bounds each to 100 characters besides dots, within the 200-byte limit of a name)"),
        ("since" = inline(Option<schema::Since>), Query, description = "Where to start: a cursor (`next` or an SSE id), `all`, `now`, or a duration back such as `5m`"),
        ("slow" = Option<schema::SlowPolicy>, Query, description = "Slow-consumer policy (default catchup)"),
        ("raw" = Option<String>, Query, description = "`1` or `true`: the payload itself as `data:` lines"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event; wins over `since`"),
        ("consumer" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "Read through this durable consumer (created `auto` from `now` if missing); not with `since`"),
    ),
    responses(
        (status = 200, description = "An event stream that lasts until the client leaves or the hub shuts down", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = stream_request(&state, &caller, path, query, headers).await?;
    let raw = match req.params.get("raw")? {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "raw={other:?}: use raw=1 or leave it out"
            )));
        }
    };
    if let Some((name, last)) = super::consumers::stream_consumer(
        &req.params,
        req.last_event_id.as_deref(),
        state.options.max_topics,
    )? {
        let kind = super::consumers::StreamKind::Sse { raw };
        return super::consumers::stream(&state, req.topics, name, last, kind).await;
    }
    let sub = state
        .hub
        .subscribe(&req.topics, &req.since, &Since::Now, req.slow)
        .await?;
    let single = sub.topics.len() == 1;
    let deliveries = crate::observe::deliveries("sse");
    let mut positions = Positions::of(&sub);
    let encode = move |i: usize, event: &Event| -> Option<Bytes> {
        if let Event::Message(enc) = event
            && single
        {
            // The shared frame carries the seq as its id: no cursor to render, and none to
            // keep (a gap's id is its own position; a disconnect's frame carries none).
            deliveries.increment(1);
            return Some(enc.sse(raw));
        }
        let id = positions.advance(i, event);
        if matches!(event, Event::Message(_)) {
            deliveries.increment(1);
        }
        Some(match event {
            Event::Message(enc) => sse_message(&id, &enc.msg, raw),
            Event::Gap { gap, .. } => sse_gap(&id, gap),
            Event::Disconnected => Bytes::from_static(SSE_DISCONNECT),
        })
    };
    let body = event_body(
        "sse",
        sub.into_stream(),
        Bookends {
            prelude: Some(Bytes::from_static(SSE_RETRY)),
            at_shutdown: Some(sse_retry_at_shutdown),
        },
        SSE_KEEPALIVE,
        state.options.keepalive,
        state.hub.stop(),
        encode,
    );
    Ok(streaming_response(SSE_TYPE, body))
}
