//! Durable consumers over HTTP: `PUT/GET/DELETE /v1/consumers/{name}`, `GET /v1/consumers`,
//! and `POST /v1/consumers/{name}/{ack|nak|term|seek}`. Reading through a consumer is a
//! `?consumer=` on the read routes (`poll.rs`); the rules live in [`crate::consumers`].

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{self, path_param};
use super::state::AppState;
use crate::consumers::{
    AckItem, ConsumerName, MAX_ACKS, ReadSpec, Settings, SettingsRequest, Settle,
};
use crate::model::{Since, Topic, parse_duration};

/// Largest body of a consumer call (1,000 acks fit easily).
const MAX_BODY: usize = 1 << 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/consumers", get(list))
        .route(
            "/v1/consumers/{name}",
            extract::body_limit(get(show).put(create).delete(remove), MAX_BODY),
        )
        .route(
            "/v1/consumers/{name}/{action}",
            extract::body_limit(post(act), MAX_BODY),
        )
}

fn name_of(path: Result<Path<String>, PathRejection>) -> Result<ConsumerName, ApiError> {
    Ok(path_param(path)?.parse::<ConsumerName>()?)
}

/// Checks the caller may read every topic of the consumer (`subscribe`), or `Unknown`.
async fn check_rights(
    state: &AppState,
    caller: &Caller,
    name: &ConsumerName,
) -> Result<(), ApiError> {
    for topic in state.consumers.topics(name).await?.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    Ok(())
}

fn json_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = extract::body(body, MAX_BODY)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_consumer(format!("the body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    topics: Vec<String>,
    start: Option<String>,
    ack: Option<String>,
    ack_wait: Option<String>,
    max_deliver: Option<u64>,
    max_ack_pending: Option<u64>,
}

/// Create a durable consumer
///
/// `201` when created, `200` when it exists with the same settings, `409` with other ones.
#[utoipa::path(
    put,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The consumer's name")),
    request_body(content = Object, description = "`{\"topics\":[…],\"start\",\"ack\",\"ack_wait\",\"max_deliver\",\"max_ack_pending\"}`", content_type = "application/json"),
    responses(
        (status = 200, description = "It exists with these settings", body = Object),
        (status = 201, description = "Created", body = Object),
        (status = 400, description = "A bad name or setting", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "It exists with other settings", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let body: CreateBody = json_body(body)?;
    let settings = Settings::from_request(
        SettingsRequest {
            topics: body.topics,
            start: body.start,
            ack: body.ack,
            ack_wait: body.ack_wait,
            max_deliver: body.max_deliver,
            max_ack_pending: body.max_ack_pending,
        },
        state.consumers.options(),
        state.options.max_topics,
    )?;
    for topic in settings.topic_list()?.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    let (info, created) = state.consumers.create(&name, settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

/// A durable consumer, with its lag figures per topic
#[utoipa::path(
    get,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name")),
    responses(
        (status = 200, description = "Its settings and `topics_state`", body = Object),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    check_rights(&state, &caller, &name).await?;
    Ok(Json(state.consumers.info(&name).await?).into_response())
}

/// Every durable consumer (admin)
#[utoipa::path(
    get,
    path = "/v1/consumers",
    tag = "consumers",
    responses(
        (status = 200, description = "`{\"consumers\":[…]}`", body = Object),
        (status = 403, description = "This needs an admin credential", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.admin()?;
    let all = state.consumers.list().await?;
    Ok(Json(serde_json::json!({ "consumers": all })).into_response())
}

/// Delete a durable consumer
#[utoipa::path(
    delete,
    path = "/v1/consumers/{name}",
    tag = "consumers",
    params(("name" = String, Path, description = "The consumer's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    check_rights(&state, &caller, &name).await?;
    state.consumers.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    acks: Vec<AckJson>,
    delay: Option<String>,
    /// Then read up to this many messages through the consumer and answer them too (NATS's
    /// "ack next"): one call per batch instead of two.
    read: Option<u64>,
}

/// An ack with `read`: the settlement's count and the page read after it.
#[derive(serde::Serialize)]
struct AckAndRead<'a> {
    settled: usize,
    #[serde(flatten)]
    page: super::poll::PollBody<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckJson {
    topic: String,
    seq: u64,
    delivery: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekBody {
    since: String,
}

/// Ack, nak or term messages of an explicit consumer; or seek
///
/// `ack`, `nak` (with an optional `delay`) and `term` take `{"acks":[{"topic","seq","delivery"?}]}`
/// (up to 1000), all or none, and answer `{"settled":N}`; with `"read":N` (1 to 1000) they then
/// read up to N messages through the consumer and answer them too, as a poll would
/// (`{"settled","messages","next","gaps"?}`). `seek` takes `{"since":…}`.
#[utoipa::path(
    post,
    path = "/v1/consumers/{name}/{action}",
    tag = "consumers",
    params(
        ("name" = String, Path, description = "The consumer's name"),
        ("action" = String, Path, description = "`ack`, `nak`, `term` or `seek`"),
    ),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "Done: `{\"settled\":N}`, with the page read after it when the body has `read`; `seek` answers the consumer", body = Object),
        (status = 400, description = "A bad body", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not read every topic", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such consumer or action", body = super::schema::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An item names no current lease; nothing was changed", body = super::schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn act(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((name, action)) =
        path.map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))?;
    let name: ConsumerName = name.parse()?;
    if !matches!(action.as_str(), "ack" | "nak" | "term" | "seek") {
        return Err(ApiError::not_found(format!(
            "no consumer action {action:?}: ack, nak, term or seek"
        )));
    }
    check_rights(&state, &caller, &name).await?;
    if action == "seek" {
        let body: SeekBody = json_body(body)?;
        let since = Since::parse_bounded(&body.since, state.options.max_topics)?;
        let info = state.consumers.seek(&name, &since).await?;
        return Ok(Json(info).into_response());
    }
    let body: AckBody = json_body(body)?;
    if body.acks.is_empty() || body.acks.len() > MAX_ACKS {
        return Err(ApiError::bad_consumer(format!(
            "acks: from 1 to {MAX_ACKS} items ({} given)",
            body.acks.len()
        )));
    }
    let how = match action.as_str() {
        "ack" | "term" if body.delay.is_some() => {
            return Err(ApiError::bad_consumer("delay: only a nak takes one"));
        }
        "ack" => Settle::Ack,
        "term" => Settle::Term,
        _ => Settle::Nak(match body.delay.as_deref() {
            None => Duration::ZERO,
            Some(d) => {
                parse_duration(d).map_err(|e| ApiError::bad_consumer(format!("delay: {e}")))?
            }
        }),
    };
    let mut items = Vec::with_capacity(body.acks.len());
    for a in body.acks {
        let topic: Topic = a.topic.parse()?;
        items.push(AckItem {
            topic,
            seq: a.seq,
            delivery: a.delivery,
        });
    }
    let read = match body.read {
        None => None,
        Some(n @ 1..=1000) => Some(n as usize),
        Some(n) => {
            return Err(ApiError::bad_consumer(format!(
                "read: from 1 to 1000 messages ({n} given)"
            )));
        }
    };
    let Some(limit) = read else {
        state.consumers.settle(&name, &items, how).await?;
        return Ok(Json(serde_json::json!({ "settled": items.len() })).into_response());
    };
    let spec = ReadSpec {
        topics: state.consumers.topics(&name).await?,
        limit,
        wait: Duration::ZERO,
        implicit_start: Since::All,
    };
    let got = state
        .consumers
        .settle_and_read(&name, &items, how, &spec)
        .await?;
    Ok(Json(AckAndRead {
        settled: items.len(),
        page: super::poll::consumer_page(&got),
    })
    .into_response())
}

/// Messages one stream read takes at a time: what a client that goes away mid-batch may get
/// again from an `auto` consumer.
const STREAM_BATCH: usize = 100;

/// How a consumer stream frames what it sends.
#[derive(Clone, Copy)]
pub(super) enum StreamKind {
    Sse { raw: bool },
    Ndjson,
}

/// The consumer a stream request names (`consumer=`), and the positions its `Last-Event-ID`
/// gives (moving an `auto` consumer back). `since` is refused with a consumer.
pub(super) fn stream_consumer(
    params: &super::extract::Params,
    last_event_id: Option<&str>,
    max_topics: usize,
) -> Result<Option<(ConsumerName, Option<crate::model::Cursor>)>, ApiError> {
    let Some(name) = params.get("consumer")? else {
        return Ok(None);
    };
    let name: ConsumerName = name.parse()?;
    if params.get("since")?.is_some() {
        return Err(ApiError::bad_consumer(
            "since: a read through a consumer starts where the consumer stands; seek it instead",
        ));
    }
    let last = last_event_id
        .map(|text| crate::model::Cursor::parse_bounded(text, max_topics))
        .transpose()?;
    Ok(Some((name, last)))
}

/// An SSE or NDJSON stream through a consumer: each read's batch, framed; an `auto` consumer
/// advances once a batch has been handed to the connection (so what a client that left never
/// got comes again), and a `Last-Event-ID` below its position moves it back first.
pub(super) async fn stream(
    state: &AppState,
    topics: crate::model::TopicList,
    name: ConsumerName,
    last_event_id: Option<crate::model::Cursor>,
    kind: StreamKind,
) -> Result<Response, ApiError> {
    use std::collections::VecDeque;

    use futures_util::stream;

    use super::streaming::{NDJSON_TYPE, OpenStream, SSE_TYPE, streaming_response};
    use crate::consumers::ReadSpec;
    use crate::wire::frames;

    let spec = ReadSpec {
        topics: topics.clone(),
        limit: STREAM_BATCH,
        wait: state.options.keepalive,
        implicit_start: Since::Now,
    };
    // Created (or its topics checked) before the answer starts, so a refusal is a problem.
    state.consumers.ensure(&name, &spec).await?;
    if let Some(cursor) = last_event_id {
        let back: Vec<(Topic, u64)> = topics
            .iter()
            .filter_map(|t| cursor.position(t).map(|seq| (t.clone(), seq)))
            .collect();
        state.consumers.rewind(&name, &back).await?;
    }
    let (transport, content_type, keepalive) = match kind {
        StreamKind::Sse { .. } => ("sse", SSE_TYPE, frames::SSE_KEEPALIVE),
        StreamKind::Ndjson => ("ndjson", NDJSON_TYPE, frames::NDJSON_KEEPALIVE),
    };
    struct St {
        consumers: std::sync::Arc<crate::consumers::Consumers>,
        name: ConsumerName,
        spec: ReadSpec,
        queue: VecDeque<Bytes>,
        /// Where an `auto` consumer moves once the queue is written.
        advance_to: Option<Vec<(Topic, u64)>>,
        shutdown: tokio_util::sync::CancellationToken,
        started: bool,
        done: bool,
        _open: OpenStream,
    }
    let st = St {
        consumers: state.consumers.clone(),
        name,
        spec,
        queue: VecDeque::new(),
        advance_to: None,
        shutdown: state.hub.shutdown_token().clone(),
        started: false,
        done: false,
        _open: OpenStream::new(transport),
    };
    let deliveries = crate::observe::deliveries(transport);
    let body = stream::unfold(st, move |mut st| {
        async move {
            if !st.started {
                st.started = true;
                if let StreamKind::Sse { .. } = kind {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(frames::SSE_RETRY)),
                        st,
                    ));
                }
            }
            loop {
                if let Some(frame) = st.queue.pop_front() {
                    return Some((Ok(frame), st));
                }
                if st.done {
                    return None;
                }
                // The whole batch has been handed to the connection: move the consumer on. In
                // a task of its own, so a client that leaves now (which drops this stream)
                // cannot cut the store write in half.
                if let Some(to) = st.advance_to.take() {
                    let (consumers, name) = (st.consumers.clone(), st.name.clone());
                    let advanced =
                        tokio::spawn(async move { consumers.advance(&name, &to).await }).await;
                    if !matches!(advanced, Ok(Ok(()))) {
                        tracing::warn!(consumer = %st.name, "a consumer stream could not advance");
                        return None;
                    }
                }
                let batch = tokio::select! {
                    biased;
                    _ = st.shutdown.cancelled() => {
                        st.done = true;
                        return match kind {
                            StreamKind::Sse { .. } => Some((Ok(frames::sse_retry_at_shutdown()), st)),
                            StreamKind::Ndjson => None,
                        };
                    }
                    batch = st.consumers.stream_batch(&st.name, &st.spec) => batch,
                };
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        // The consumer was deleted, or the store failed: the stream ends, and
                        // the client's reconnect gets the reason as a problem.
                        tracing::info!(consumer = %st.name, error = %e, "a consumer stream ends");
                        return None;
                    }
                };
                let d = &batch.delivered;
                if d.messages.is_empty() && d.gaps.is_empty() {
                    return Some((Ok(Bytes::from_static(keepalive)), st));
                }
                let mut at = batch.before.clone();
                let id = |at: &[(Topic, u64)]| crate::model::Cursor::for_positions(at).to_string();
                for gap in &d.gaps {
                    if let (Some(slot), Some((_, to))) =
                        (at.iter_mut().find(|(t, _)| *t == gap.topic), gap.range)
                    {
                        slot.1 = slot.1.max(to);
                    }
                    st.queue.push_back(match kind {
                        StreamKind::Sse { .. } => frames::sse_gap(&id(&at), gap),
                        StreamKind::Ndjson => frames::ndjson_gap(gap),
                    });
                }
                for (msg, delivery) in &d.messages {
                    if let Some(slot) = at.iter_mut().find(|(t, _)| *t == msg.topic) {
                        slot.1 = slot.1.max(msg.seq);
                    }
                    deliveries.increment(1);
                    st.queue.push_back(match kind {
                        StreamKind::Sse { raw } => {
                            frames::sse_delivered(&id(&at), msg, raw, *delivery)
                        }
                        StreamKind::Ndjson => frames::ndjson_delivered(msg, *delivery),
                    });
                }
                if batch.advance
                    && let Some(next) = &d.next
                {
                    let to = batch
                        .before
                        .iter()
                        .map(|(t, seq)| (t.clone(), next.position(t).unwrap_or(*seq)))
                        .collect();
                    st.advance_to = Some(to);
                }
            }
        }
    });
    Ok(streaming_response(
        content_type,
        axum::body::Body::from_stream(body),
    ))
}

/// The events of a WebSocket subscription to one topic through a consumer, as the hub's
/// subscriptions give them (messages carrying their `delivery`), and the consumer's position
/// to show as its start. An `auto` consumer advances to what the socket reports written in
/// `sent` (the highest seq sent): before each new read, and when the subscription ends.
pub(super) async fn events(
    state: &AppState,
    topic: Topic,
    name: ConsumerName,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<
    (
        String,
        futures_util::stream::BoxStream<'static, crate::hub::Event>,
    ),
    ApiError,
> {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures_util::StreamExt;

    use crate::consumers::{Consumers, ReadSpec};
    use crate::hub::Event;
    use crate::wire::Encoded;

    let spec = ReadSpec {
        topics: crate::model::TopicList::one(topic.clone()),
        limit: STREAM_BATCH,
        wait: state.options.keepalive,
        implicit_start: Since::Now,
    };
    state.consumers.ensure(&name, &spec).await?;
    let start = state.consumers.info(&name).await?;
    let next = start
        .topics_state
        .get(topic.as_str())
        .map_or(0, |f| f.delivered);
    let auto = start.settings.ack == crate::consumers::AckMode::Auto;
    struct St {
        consumers: Arc<Consumers>,
        name: ConsumerName,
        topic: Topic,
        spec: ReadSpec,
        queue: VecDeque<Event>,
        auto: bool,
        sent: Arc<AtomicU64>,
        committed: u64,
    }
    impl St {
        /// What the socket wrote beyond the last advance, if anything.
        fn unwritten(&self) -> Option<Vec<(Topic, u64)>> {
            let sent = self.sent.load(Ordering::Relaxed);
            (self.auto && sent > self.committed).then(|| vec![(self.topic.clone(), sent)])
        }
    }
    impl Drop for St {
        // The socket is gone or the topic unsubscribed: what it wrote last still counts.
        fn drop(&mut self) {
            if let Some(to) = self.unwritten() {
                let (consumers, name) = (self.consumers.clone(), self.name.clone());
                tokio::spawn(async move { consumers.advance(&name, &to).await });
            }
        }
    }
    let st = St {
        consumers: state.consumers.clone(),
        name,
        topic,
        spec,
        queue: VecDeque::new(),
        auto,
        committed: next,
        sent,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((event, st));
            }
            if let Some(to) = st.unwritten() {
                let (consumers, name) = (st.consumers.clone(), st.name.clone());
                let seq = to[0].1;
                // In a task of its own: a socket closing now cannot cut the write in half.
                let advanced =
                    tokio::spawn(async move { consumers.advance(&name, &to).await }).await;
                if !matches!(advanced, Ok(Ok(()))) {
                    return None;
                }
                st.committed = seq;
            }
            // An error ends the subscription: the socket tells the client (`ended`).
            let batch = st.consumers.stream_batch(&st.name, &st.spec).await.ok()?;
            let d = batch.delivered;
            for gap in d.gaps {
                let after = gap.range.map_or(0, |r| r.1);
                st.queue.push_back(Event::Gap { gap, after });
            }
            for (msg, delivery) in d.messages {
                st.queue
                    .push_back(Event::Message(Arc::new(Encoded::delivered(msg, delivery))));
            }
        }
    });
    Ok((next.to_string(), stream.boxed()))
}
