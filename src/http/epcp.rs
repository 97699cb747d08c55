//! `POST /publish/`: Pushpin's EPCP control API on the hub, so a GRIP backend publishes to the
//! hub unchanged. A thin mapping: the items become messages by `model::epcp_messages` (the
//! sidecar's own `/publish/` uses it too) and are published as one batch, all or nothing
//! (docs/API.md §9.1).

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;

use super::auth::Caller;
use super::error::ApiError;
use super::extract;
use super::state::{AppState, HttpOptions};
use crate::model::epcp_messages;

pub fn routes(options: &HttpOptions) -> Router<AppState> {
    Router::new().route(
        "/publish/",
        extract::body_limit(post(publish), options.max_batch_bytes),
    )
}

async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = extract::body(body, state.options.max_batch_bytes)?;
    let batch =
        epcp_messages(&body, state.options.max_message_bytes).map_err(ApiError::bad_request)?;
    for m in &batch {
        caller.publish(&m.topic)?;
    }
    let results = state.hub.publish(batch).await?;
    metrics::counter!("plexus_publishes_total", "transport" => "batch")
        .increment(results.len() as u64);
    Ok((StatusCode::OK, "Published\n").into_response())
}
