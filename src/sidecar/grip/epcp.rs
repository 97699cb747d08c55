//! `POST /publish/`: Pushpin's EPCP control API on the sidecar. Each item of `{"items":[…]}`
//! becomes one hub message on its channel's topic (`model::epcp_messages`, the mapping the
//! hub's own `POST /publish/` uses), with the
//! event `grip` and the item's JSON as payload, spooled like any publish: `200` once every
//! item is durable in the spool. An item's `id` is its idempotency key, so app replicas that
//! publish the same item store it once. Nothing is stored when any item is malformed.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::super::Shared;
use super::super::problem::Problem;
use super::super::spool::NewEntry;
use crate::model::epcp_messages;

pub async fn publish(
    State(sc): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = body.map_err(|e| Problem::bad_request(format!("cannot read the body: {e}")))?;
    let entries = epcp_messages(&body, sc.config.max_message_bytes)
        .map_err(Problem::bad_request)?
        .into_iter()
        .map(|m| NewEntry {
            topic: m.topic.as_str().to_owned(),
            event: m.event.map(|e| e.as_str().to_owned()),
            data: m.data,
            key: m.idempotency_key,
        })
        .collect();
    // Durable in the spool is enough: the forwarder delivers it to the hub.
    super::super::publish::spool(&sc, entries).await?;
    Ok((StatusCode::OK, "Published\n").into_response())
}
