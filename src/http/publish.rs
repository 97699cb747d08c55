//! Publish: one message (`POST /v1/topics/{topic}/messages`) or a batch (`POST /v1/publish`).

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ApiError;
use super::params;
use super::{AppState, HttpOptions};
use crate::model::{EventName, NewMessage, Topic, format_rfc3339_millis, valid_idempotency_key};
use crate::store::Appended;
use crate::wire::base64;

/// Most items in one batch.
const MAX_BATCH_ITEMS: usize = 1000;

pub fn routes(options: &HttpOptions) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/topics/{topics}/messages",
            post(publish_one)
                .get(super::poll::poll)
                .layer(DefaultBodyLimit::max(options.max_message_bytes)),
        )
        .route(
            "/v1/publish",
            post(publish_batch).layer(DefaultBodyLimit::max(options.max_batch_bytes)),
        )
}

#[derive(Serialize)]
struct Published<'a> {
    topic: &'a str,
    seq: u64,
    time: String,
}

impl<'a> Published<'a> {
    fn of(topic: &'a Topic, a: &Appended) -> Self {
        Published {
            topic: topic.as_str(),
            seq: a.seq,
            time: format_rfc3339_millis(a.time),
        }
    }
}

pub fn topic_from_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|p| p.0)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))
        })
        .transpose()
}

fn idempotency_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(k) if valid_idempotency_key(k) => Ok(Some(k.to_owned())),
        Some(_) => Err(ApiError::bad_request(
            "an idempotency key is 1-200 visible ASCII characters",
        )),
    }
}

async fn publish_one(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let topic: Topic = topic_from_path(path)?.parse()?;
    caller.publish(&topic)?;
    let data = params::body(body, state.options.max_message_bytes)?;
    let event = header_str(&headers, "plexus-event")?
        .map(str::parse::<EventName>)
        .transpose()?;
    let key = idempotency_key(header_str(&headers, "idempotency-key")?)?;
    let msg = NewMessage {
        topic: topic.clone(),
        event,
        data,
        idempotency_key: key,
    };
    let results = state.hub.publish(vec![msg]).await?;
    let appended = results
        .first()
        .ok_or_else(|| ApiError::bad_request("nothing was published"))?;
    let mut response = (StatusCode::CREATED, Json(Published::of(&topic, appended))).into_response();
    if appended.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    topic: String,
    data: Option<String>,
    data_base64: Option<String>,
    event: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Serialize)]
struct BatchResults<'a> {
    results: Vec<Published<'a>>,
}

fn parse_items(body: &[u8]) -> Result<Vec<BatchItem>, ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("bad batch: {e}"));
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return serde_json::from_slice(body).map_err(bad);
    }
    // NDJSON: one item a line, blank lines ignored.
    body.split(|&b| b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|line| serde_json::from_slice(line).map_err(bad))
        .collect()
}

fn to_message(i: usize, item: BatchItem, max_bytes: usize) -> Result<NewMessage, ApiError> {
    let topic: Topic = item
        .topic
        .parse()
        .map_err(|e| ApiError::bad_request(format!("item {i}: {e}")))?;
    let data = match (item.data, item.data_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(base64::decode(&b64).ok_or_else(|| {
            ApiError::bad_request(format!("item {i}: data_base64 is not valid base64"))
        })?),
        _ => {
            return Err(ApiError::bad_request(format!(
                "item {i}: give exactly one of data and data_base64"
            )));
        }
    };
    if data.len() > max_bytes {
        return Err(ApiError::too_large(format!(
            "item {i}: the payload is {} bytes, at most {max_bytes} allowed",
            data.len()
        )));
    }
    let event = item
        .event
        .map(|e| e.parse::<EventName>())
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("item {i}: {e}")))?;
    let key = idempotency_key(item.idempotency_key.as_deref())?;
    Ok(NewMessage {
        topic,
        event,
        data,
        idempotency_key: key,
    })
}

async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = params::body(body, state.options.max_batch_bytes)?;
    let items = parse_items(&body)?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_ITEMS} items, this one {}",
            items.len()
        )));
    }
    let batch = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| to_message(i, item, state.options.max_message_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let topics: Vec<Topic> = batch.iter().map(|m| m.topic.clone()).collect();
    for topic in &topics {
        caller.publish(topic)?;
    }
    let results = state.hub.publish(batch).await?;
    let body = BatchResults {
        results: topics
            .iter()
            .zip(&results)
            .map(|(t, a)| Published::of(t, a))
            .collect(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
