//! Publish: one message (`POST /v1/topics/{topic}/messages`) or a batch (`POST /v1/publish`).

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, header_str, idempotency_key, idempotency_key_header, path_param};
use super::schema;
use super::state::{AppState, HttpOptions};
use crate::model::Appended;
use crate::model::{EventName, NewMessage, Topic, format_rfc3339_millis};
use crate::wire::batch::{
    BatchError, BatchFormat, BatchItem, CheckedItem, check_item, parse_items,
};

/// Most items in one batch.
const MAX_BATCH_ITEMS: usize = 1000;

pub fn routes(options: &HttpOptions) -> Router<AppState> {
    // The `GET` of the first path is the poll's (`poll.rs`); the router merges the two.
    Router::new()
        .route(
            "/v1/topics/{topics}/messages",
            super::extract::body_limit(post(publish_one), options.max_message_bytes),
        )
        .route(
            "/v1/publish",
            super::extract::body_limit(post(publish_batch), options.max_batch_bytes),
        )
}

#[derive(Serialize)]
struct Published<'a> {
    topic: &'a str,
    seq: u64,
    time: String,
    /// Only in a batch answer, and only when `true`: a single publish says it in the
    /// `Idempotent-Replayed` header, and an answer that replays nothing stays as it was.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

impl<'a> Published<'a> {
    fn of(topic: &'a Topic, a: &Appended) -> Self {
        Published {
            topic: topic.as_str(),
            seq: a.seq,
            time: format_rfc3339_millis(a.time),
            replayed: false,
        }
    }

    /// A batch item's result: marked when it was answered from its idempotency key.
    fn of_item(topic: &'a Topic, a: &Appended) -> Self {
        Published {
            replayed: a.replayed,
            ..Published::of(topic, a)
        }
    }
}

/// Publish one message
///
/// The body is the payload. Answers once the message is durable.
#[utoipa::path(
    post,
    path = "/v1/topics/{topics}/messages",
    tag = "publish",
    params(
        ("topics" = String, Path, max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$", description = "The topic (one; the GET on this path takes a list)"),
        ("Plexus-Event" = Option<String>, Header, pattern = "^[A-Za-z0-9_.-]{1,64}$", description = "The event name"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "1-200 visible ASCII characters; a replay with the same body answers the first result"),
    ),
    request_body(description = "The payload, any bytes, any content type", content((schema::Payload = "application/octet-stream"), (schema::Payload = "*/*"))),
    responses(
        (status = 201, description = "Stored", body = schema::Published, headers(("Idempotent-Replayed" = String, description = "`true` when this answers a replayed idempotency key"))),
        (status = 400, description = "A bad topic, cursor or parameter", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key was used with another body", body = schema::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The payload is larger than max_message_bytes", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
        (status = 507, description = "It would create a topic beyond limits.max_topics_total; nothing is stored", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn publish_one(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let topic: Topic = path_param(path)?.parse()?;
    caller.publish(&topic)?;
    let data = extract::body(body, state.options.max_message_bytes)?;
    let event = header_str(&headers, "plexus-event")?
        .map(str::parse::<EventName>)
        .transpose()?;
    let key = idempotency_key_header(&headers)?;
    let msg = NewMessage {
        topic: topic.clone(),
        event,
        data,
        idempotency_key: key,
    };
    let results = state.hub.publish(vec![msg]).await?;
    metrics::counter!("plexus_publishes_total", "transport" => "http").increment(1);
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

#[derive(Serialize)]
struct BatchResults<'a> {
    results: Vec<Published<'a>>,
}

fn to_message(i: usize, item: BatchItem, max_bytes: usize) -> Result<NewMessage, ApiError> {
    let CheckedItem {
        topic,
        event,
        data,
        idempotency_key: key,
    } = check_item(i, item, max_bytes).map_err(|e| match e {
        BatchError::Bad(detail) => ApiError::bad_request(detail),
        BatchError::TooLarge(detail) => ApiError::too_large(detail),
    })?;
    let key = idempotency_key(key.as_deref())?;
    Ok(NewMessage {
        topic,
        event,
        data,
        idempotency_key: key,
    })
}

/// Publish a batch
///
/// All or nothing, in one commit: 1 to 1,000 items, as a JSON array (`application/json`) or
/// NDJSON (`application/x-ndjson`, one item a line). With no content type either is accepted.
#[utoipa::path(
    post,
    path = "/v1/publish",
    tag = "publish",
    request_body(
        description = "The items",
        content(
            (schema::Batch = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    responses(
        (status = 201, description = "Stored, every item", body = schema::BatchResults),
        (status = 400, description = "Not 1 to 1,000 well-formed items, or an item with both or neither of data and data_base64", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An idempotency key was used with another body", body = schema::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The batch is larger than the batch limit, or an item than max_message_bytes", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable, the hub is draining, or its read budget is spent (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
        (status = 507, description = "It would create a topic beyond limits.max_topics_total; nothing is stored", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    // The body and its decoded items are held from the hub's read budget until the batch is
    // stored, charged before the body is read: its declared length (or the batch limit when
    // none is declared), twice, for the raw bytes and the items decoded from them.
    let limit = state.options.max_batch_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(limit, |n| n.min(limit));
    let _held = state.hub.hold_for_decode(declared.saturating_mul(2))?;
    let body = extract::body(Bytes::from_request(request, &state).await, limit)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let items = parse_items(&body, BatchFormat::of(content_type)).map_err(|e| match e {
        BatchError::Bad(detail) | BatchError::TooLarge(detail) => ApiError::bad_request(detail),
    })?;
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
    metrics::counter!("plexus_publishes_total", "transport" => "batch")
        .increment(results.len() as u64);
    let body = BatchResults {
        results: topics
            .iter()
            .zip(&results)
            .map(|(t, a)| Published::of_item(t, a))
            .collect(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
