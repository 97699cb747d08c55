//! NDJSON streams: `GET /v1/topics/{topics}/stream?since=&slow=`. One envelope a line.

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
    Bookends, NDJSON_TYPE, Positions, event_body, stream_request, streaming_response,
};
use crate::hub::Event;
use crate::model::Since;
use crate::wire::frames::{NDJSON_KEEPALIVE, ndjson_disconnect, ndjson_gap};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/topics/{topics}/stream", get(ndjson))
}

/// Follow topics as NDJSON
///
/// One envelope a line; `{"event":"keepalive"}` lines when idle; a gap as an `"event":"gap"` line.
#[utoipa::path(
    get,
    path = "/v1/topics/{topics}/stream",
    tag = "read",
    params(
        ("topics" = inline(schema::Topics), Path, description = "One topic, or up to 64 comma-separated (the pattern bounds each to 100 characters besides dots, within the 200-byte limit of a name)"),
        ("since" = inline(Option<schema::Since>), Query, description = "Where to start: a cursor (`next` or an SSE id), `all`, `now`, or a duration back such as `5m`"),
        ("slow" = Option<schema::SlowPolicy>, Query, description = "Slow-consumer policy (default catchup)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor; wins over `since`"),
        ("consumer" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "Read through this durable consumer (created `auto` from `now` if missing); not with `since`"),
    ),
    responses(
        (status = 200, description = "A stream of JSON lines that lasts until the client leaves or the hub shuts down", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn ndjson(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = stream_request(&state, &caller, path, query, headers).await?;
    if let Some((name, last)) = super::consumers::stream_consumer(
        &req.params,
        req.last_event_id.as_deref(),
        state.options.max_topics,
    )? {
        let kind = super::consumers::StreamKind::Ndjson;
        return super::consumers::stream(&state, req.topics, name, last, kind).await;
    }
    let sub = state
        .hub
        .subscribe(&req.topics, &req.since, &Since::Now, req.slow)
        .await?;
    let mut positions = Positions::of(&sub);
    let deliveries = crate::observe::deliveries("ndjson");
    let encode = move |i: usize, event: &Event| -> Option<Bytes> {
        positions.record(i, event);
        if matches!(event, Event::Message(_)) {
            deliveries.increment(1);
        }
        Some(match event {
            Event::Message(enc) => enc.line(),
            Event::Gap { gap, .. } => ndjson_gap(gap),
            Event::Disconnected => ndjson_disconnect(&positions.cursor()),
        })
    };
    let body = event_body(
        "ndjson",
        sub.into_stream(),
        Bookends::default(),
        NDJSON_KEEPALIVE,
        state.options.keepalive,
        state.hub.stop(),
        encode,
    );
    Ok(streaming_response(NDJSON_TYPE, body))
}
