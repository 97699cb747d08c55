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

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::params::QueryPairs;
use super::stream::{Positions, event_body, stream_request, streaming_response};
use crate::hub::Event;
use crate::model::Since;
use crate::wire::frames::{SSE_KEEPALIVE, SSE_RETRY, sse_gap, sse_message};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/topics/{topics}/sse", get(sse))
}

async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = stream_request(&state, &caller, path, query, &headers)?;
    let raw = match req.params.get("raw")? {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "raw={other:?}: use raw=1 or leave it out"
            )));
        }
    };
    let sub = state
        .hub
        .subscribe(&req.topics, &req.since, &Since::Now, req.slow)
        .await?;
    let single = sub.topics.len() == 1;
    let mut positions = Positions::of(&sub);
    let encode = move |i: usize, event: &Event| -> Option<Bytes> {
        let id = positions.advance(i, event);
        Some(match event {
            Event::Message(enc) if single => enc.sse(raw),
            Event::Message(enc) => sse_message(&id, &enc.msg, raw),
            Event::Gap { gap, .. } => sse_gap(&id, gap),
            Event::Disconnected => {
                Bytes::from_static(b": slow consumer disconnected; resume with Last-Event-ID\n\n")
            }
        })
    };
    let body = event_body(
        sub.into_stream(),
        Some(Bytes::from_static(SSE_RETRY)),
        SSE_KEEPALIVE,
        state.options.keepalive,
        state.hub.shutdown_token().clone(),
        encode,
    );
    Ok(streaming_response("text/event-stream", body))
}
