//! `POST /publish/`: Pushpin's EPCP control API on the sidecar. Each item of `{"items":[…]}`
//! becomes one hub message on its channel's topic (the escape of `channel_topic`), with the
//! event `grip` and the item's JSON as payload, spooled like any publish: `200` once every
//! item is durable in the spool. An item's `id` is its idempotency key, so app replicas that
//! publish the same item store it once. Nothing is stored when any item is malformed.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::super::Shared;
use super::super::problem::Problem;
use super::super::spool::NewEntry;
use super::GRIP_EVENT;
use super::instruct::channel_topic;
use crate::model::valid_idempotency_key;

/// Items in one publish, as in a hub batch.
const MAX_ITEMS: usize = 1000;

/// The spool entry of item `i`.
pub(crate) fn entry(i: usize, item: &Value, max: usize) -> Result<NewEntry, String> {
    let channel = item
        .get("channel")
        .and_then(|c| c.as_str())
        .ok_or_else(|| format!("item {i}: \"channel\" is missing or not a string"))?;
    let topic = channel_topic(channel).map_err(|e| format!("item {i}: {e}"))?;
    if topic.is_reserved() {
        return Err(format!("item {i}: topic {topic} is reserved for the hub"));
    }
    let formats = item.get("formats").unwrap_or(item);
    if formats.get("http-stream").is_none() && formats.get("http-response").is_none() {
        return Err(format!("item {i}: no http-stream or http-response format"));
    }
    for name in ["http-stream", "http-response"] {
        if let Some(action) = formats.get(name).and_then(|f| f.get("action")) {
            match action.as_str() {
                Some("send" | "close") => {}
                _ => return Err(format!("item {i}: {name}.action is not send or close")),
            }
        }
    }
    let key = match item.get("id") {
        None => None,
        Some(Value::String(id)) if valid_idempotency_key(id) => Some(id.clone()),
        Some(_) => {
            return Err(format!(
                "item {i}: \"id\" is an idempotency key, 1-200 visible ASCII characters"
            ));
        }
    };
    let data = Bytes::from(item.to_string());
    if data.len() > max {
        return Err(format!("item {i}: {} bytes, at most {max}", data.len()));
    }
    Ok(NewEntry {
        topic: topic.as_str().to_owned(),
        event: Some(GRIP_EVENT.to_owned()),
        data,
        key,
    })
}

pub(crate) fn items(body: &[u8]) -> Result<Vec<Value>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or("\"items\" is missing or not a list")?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(format!("a publish holds 1 to {MAX_ITEMS} items"));
    }
    Ok(items.clone())
}

pub async fn publish(
    State(sc): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let body = body.map_err(|e| Problem::bad_request(format!("cannot read the body: {e}")))?;
    let items = items(&body).map_err(Problem::bad_request)?;
    let entries = items
        .iter()
        .enumerate()
        .map(|(i, item)| entry(i, item, sc.config.max_message_bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Problem::bad_request)?;
    // Durable in the spool is enough: the forwarder delivers it to the hub.
    super::super::publish::spool(&sc, entries).await?;
    Ok((StatusCode::OK, "Published\n").into_response())
}
