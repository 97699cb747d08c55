//! Publishing through the spool: `POST /v1/topics/{topic}/messages` and `POST /v1/publish`,
//! validated here with the hub's own rules (from `model`) so bad input gets the hub's status
//! and problem type and is never spooled, then made durable locally and forwarded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::Shared;
use super::problem::Problem;
use super::spool::{Appended, NewEntry, Outcome, SpoolError};
use crate::model::{EventName, Topic, valid_idempotency_key};
use crate::wire::batch::{BatchError, BatchFormat, BatchItem, check_item, parse_items};

/// Items in one batch, as on the hub.
const MAX_BATCH_ITEMS: usize = 1000;

fn topic(text: &str) -> Result<Topic, Problem> {
    let topic: Topic = text
        .parse()
        .map_err(|e| Problem::bad_topic(format!("{e}")))?;
    if topic.is_reserved() {
        return Err(Problem::reserved_topic(format!(
            "topic {topic} is reserved for the hub (names starting with _ can be read, not published to)"
        )));
    }
    Ok(topic)
}

fn body(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, Problem> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(format!("the body is over {max} bytes"))
        } else {
            Problem::bad_request(format!("cannot read the body: {e}"))
        }
    })?;
    if body.len() > max {
        return Err(Problem::too_large(format!(
            "the payload is {} bytes, at most {max} allowed",
            body.len()
        )));
    }
    Ok(body)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::bad_request(format!("the {name} header is not visible ASCII"))
            })
        })
        .transpose()
}

fn key(k: Option<&str>) -> Result<Option<String>, Problem> {
    match k {
        None => Ok(None),
        Some(k) if valid_idempotency_key(k) => Ok(Some(k.to_owned())),
        Some(_) => Err(Problem::bad_request(
            "an idempotency key is 1-200 visible ASCII characters",
        )),
    }
}

/// Spools `entries`; waits up to `forward_wait` for the hub's answer when the hub is up and
/// nothing older waits in the spool, otherwise answers `202` at once.
pub(super) async fn spool(
    sc: &Shared,
    entries: Vec<NewEntry>,
) -> Result<Vec<(Appended, Option<Outcome>)>, Problem> {
    let wait = sc.hub_up.load(Ordering::Relaxed) && !sc.backlogged();
    let appended = sc.spool.append(entries, wait).await.map_err(|e| match e {
        SpoolError::Full => {
            sc.counters.spool_full.fetch_add(1, Ordering::Relaxed);
            Problem::spool_full()
        }
        SpoolError::Io(why) => {
            Problem::hub_unavailable(format!("the sidecar cannot store the publish: {why}"))
        }
    })?;
    let deadline = tokio::time::Instant::now() + sc.config.forward_wait;
    let mut out = Vec::with_capacity(appended.len());
    for mut a in appended {
        let outcome = match a.outcome.take() {
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => Some(outcome),
                _ => {
                    sc.spool.unwait(a.seq);
                    None
                }
            },
            None => None,
        };
        out.push((a, outcome));
    }
    Ok(out)
}

pub(super) fn spooled(topic: &str, a: &Appended) -> Value {
    json!({"topic": topic, "spooled": true, "key": a.key})
}

fn refused(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

pub async fn publish_one(
    State(sc): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    data: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let Path(name) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    let topic = topic(&name)?;
    let data = body(data, sc.config.max_message_bytes)?;
    let event = header_text(&headers, "plexus-event")?
        .map(|e| {
            e.parse::<EventName>()
                .map_err(|e| Problem::bad_event(e.to_string()))
        })
        .transpose()?;
    let key = key(header_text(&headers, "idempotency-key")?)?;
    let entry = NewEntry {
        topic: topic.as_str().to_owned(),
        event: event.map(|e| e.as_str().to_owned()),
        data,
        key,
    };
    let mut done = spool(&sc, vec![entry]).await?;
    let Some((a, outcome)) = done.pop() else {
        return Err(Problem::bad_request("nothing was published"));
    };
    Ok(match outcome {
        Some(Outcome::Stored(mut v)) => {
            // The hub marks a replayed item in its batch answer; a single publish says it in
            // the `Idempotent-Replayed` header, as the hub's own single publish does.
            let replayed = v
                .as_object_mut()
                .and_then(|o| o.remove("replayed"))
                .is_some_and(|r| r == json!(true));
            let mut response = (StatusCode::CREATED, Json(v)).into_response();
            if replayed {
                response.headers_mut().insert(
                    "idempotent-replayed",
                    header::HeaderValue::from_static("true"),
                );
            }
            response
        }
        Some(Outcome::Refused { status, body }) => refused(status, body),
        Some(Outcome::Deferred) | None => {
            (StatusCode::ACCEPTED, Json(spooled(topic.as_str(), &a))).into_response()
        }
    })
}

/// A batch item checked with the hub's rules (`wire::batch`), plus the hub's reserved-topic
/// and idempotency-key checks.
fn entry(i: usize, item: BatchItem, max: usize) -> Result<NewEntry, Problem> {
    let checked = check_item(i, item, max).map_err(batch_problem)?;
    let topic = checked.topic;
    if topic.is_reserved() {
        return Err(Problem::reserved_topic(format!(
            "topic {topic} is reserved for the hub (names starting with _ can be read, not published to)"
        )));
    }
    let (event, data) = (checked.event, checked.data);
    Ok(NewEntry {
        topic: topic.as_str().to_owned(),
        event: event.map(|e| e.as_str().to_owned()),
        data,
        key: key(checked.idempotency_key.as_deref())?,
    })
}

fn batch_problem(e: BatchError) -> Problem {
    match e {
        BatchError::Bad(detail) => Problem::bad_request(detail),
        BatchError::TooLarge(detail) => Problem::too_large(detail),
    }
}

pub async fn publish_batch(
    State(sc): State<Arc<Shared>>,
    headers: HeaderMap,
    data: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let data = body(data, super::MAX_BATCH_BYTES)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let items = parse_items(&data, BatchFormat::of(content_type)).map_err(batch_problem)?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(Problem::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_ITEMS} items, this one {}",
            items.len()
        )));
    }
    let entries = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| entry(i, item, sc.config.max_message_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let topics: Vec<String> = entries.iter().map(|e| e.topic.clone()).collect();
    let done = spool(&sc, entries).await?;
    let mut stored = Vec::with_capacity(done.len());
    for (_, outcome) in &done {
        match outcome {
            Some(Outcome::Stored(v)) => stored.push(v.clone()),
            Some(Outcome::Refused { status, body }) => return Ok(refused(*status, body.clone())),
            Some(Outcome::Deferred) | None => break,
        }
    }
    if stored.len() == done.len() {
        return Ok((StatusCode::CREATED, Json(json!({ "results": stored }))).into_response());
    }
    let results: Vec<Value> = topics
        .iter()
        .zip(&done)
        .map(|(t, (a, _))| spooled(t, a))
        .collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "results": results }))).into_response())
}
