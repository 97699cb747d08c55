//! The machinery every stream shares (SSE, NDJSON, and WebSocket): its parameters, the
//! cursor after each event, the open-stream gauge, keepalives, and ending on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use tokio::time::{Instant, Sleep};

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{Params, QueryPairs, header_owned, path_param};
use super::state::AppState;
use crate::hub::{Event, Events, SlowPolicy, Subscription};
use crate::model::{Cursor, Seq, Since, Topic, TopicList};
use crate::stop::Stop;

/// What a streaming request asked for.
pub(super) struct StreamRequest {
    pub topics: TopicList,
    pub since: Since,
    pub slow: SlowPolicy,
    pub params: Params,
    /// The `Last-Event-ID` header, visible ASCII.
    pub last_event_id: Option<String>,
}

/// Parses the topics, `since` (default `now`; `Last-Event-ID` wins when given) and `slow`.
///
/// The headers are taken by value and dropped before the first wait: their values share the
/// buffer hyper read the request into, and while they live hyper reserves a second buffer for
/// the connection's next read (8 KiB, and on a busy hub often a used one, resident), which a
/// stream would then hold for its whole life (docs/BENCHMARKS.md, idle memory).
pub(super) async fn stream_request(
    state: &AppState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<StreamRequest, ApiError> {
    let last_event_id = header_owned(&headers, "last-event-id");
    drop(headers);
    let topics = TopicList::parse(&path_param(path)?, state.options.max_topics)?;
    for topic in topics.iter() {
        caller.subscribe(&state.jobs, topic).await?;
    }
    let params = Params::from(query)?;
    let last_event_id =
        last_event_id.map_err(|_| ApiError::bad_request("Last-Event-ID is not visible ASCII"))?;
    let since = match last_event_id.as_deref().or(params.get("since")?) {
        Some(s) => Since::parse_bounded(s, state.options.max_topics)?,
        None => Since::Now,
    };
    let slow = match params.get("slow")? {
        Some(s) => s.parse::<SlowPolicy>().map_err(ApiError::bad_request)?,
        None => SlowPolicy::Catchup,
    };
    Ok(StreamRequest {
        topics,
        since,
        slow,
        params,
        last_event_id,
    })
}

/// Where each topic of a subscription stands, to build the cursor after any event.
pub(super) struct Positions {
    topics: Vec<Topic>,
    after: Vec<Seq>,
}

impl Positions {
    pub fn of(sub: &Subscription) -> Self {
        let (topics, after) = match sub.start_cursor() {
            Cursor::Single(seq) => (vec![sub.topics[0].topic().clone()], vec![seq]),
            Cursor::Multi(pairs) => pairs.into_iter().unzip(),
        };
        Positions { topics, after }
    }

    /// Records an event of topic `i` and returns the cursor after it.
    pub fn advance(&mut self, i: usize, event: &Event) -> String {
        self.record(i, event);
        self.cursor()
    }

    /// Records an event of topic `i`, for a frame that does not carry the cursor (rendering
    /// it is an allocation per delivery).
    pub fn record(&mut self, i: usize, event: &Event) {
        if let (Some(after), Some(slot)) = (event.after(), self.after.get_mut(i)) {
            *slot = after;
        }
    }

    pub fn cursor(&self) -> String {
        if self.after.len() == 1 {
            return self.after[0].to_string();
        }
        let pairs: Vec<(Topic, Seq)> = self
            .topics
            .iter()
            .cloned()
            .zip(self.after.iter().copied())
            .collect();
        Cursor::for_positions(&pairs).to_string()
    }
}

/// Counts an open stream of a transport for as long as it lives (`plexus_streams_open`).
pub(super) struct OpenStream(metrics::Gauge);

impl OpenStream {
    pub fn new(transport: &'static str) -> Self {
        let gauge = metrics::gauge!("plexus_streams_open", "transport" => transport);
        gauge.increment(1.0);
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What a stream sends around its events.
#[derive(Default)]
pub(super) struct Bookends {
    /// The first frame.
    pub prelude: Option<Bytes>,
    /// Makes the last frame of a stream ended by a shutdown (made then: it may differ per
    /// stream).
    pub at_shutdown: Option<fn() -> Bytes>,
}

/// A response body that carries a subscription's events as `encode` renders them, with a
/// keepalive after each idle `keepalive`, ending when the subscription ends: at the hub's
/// shutdown (`stop`), which ends every subscription, with the `at_shutdown` frame.
///
/// A body written by hand rather than a stream of futures: a frame is one `poll_frame` on
/// state that stays where it is (an `unfold` moved the whole state into a new future and
/// back for every frame, and `Body::from_stream` put two adapters between it and hyper).
pub(super) fn event_body<E>(
    transport: &'static str,
    events: Events,
    bookends: Bookends,
    keepalive_frame: &'static [u8],
    keepalive: Duration,
    stop: &Stop,
    encode: E,
) -> Body
where
    E: FnMut(usize, &Event) -> Option<Bytes> + Send + Unpin + 'static,
{
    Body::new(EventBody {
        events,
        encode,
        timer: Keepalive::new(keepalive),
        keepalive,
        keepalive_frame,
        prelude: bookends.prelude,
        at_shutdown: bookends.at_shutdown,
        done: false,
        _open: OpenStream::new(transport),
        last_event: Instant::now(),
        sent: false,
        stop: stop.clone(),
    })
}

/// [`event_body`]'s body.
struct EventBody<E> {
    /// In place, not boxed: one allocation fewer to touch per delivered message.
    events: Events,
    encode: E,
    /// The keepalive timer: one future for the body's life, polled after the events, so only
    /// when the stream is about to wait. With one delivery per wake-up that is once per
    /// delivered message, so it answers from the clock until due ([`Keepalive`];
    /// docs/BENCHMARKS.md, the profile). The shutdown needs no wait of its own here: it ends
    /// the subscription, whose end is seen first.
    timer: Keepalive,
    keepalive: Duration,
    keepalive_frame: &'static [u8],
    /// The first frame, until it is sent.
    prelude: Option<Bytes>,
    at_shutdown: Option<fn() -> Bytes>,
    done: bool,
    _open: OpenStream,
    /// When the last event went out. An event records it rather than moving the keepalive
    /// timer: reading the clock costs less than moving a timer, once per delivered message;
    /// the timer is moved only when it fires too early.
    last_event: Instant,
    /// An event went out since `last_event` was read. The time is taken when the body is
    /// about to wait, from the clock the keepalive reads then: one read of the clock per
    /// delivered message instead of two.
    sent: bool,
    /// Whether the subscription ended with the hub's shutdown.
    stop: Stop,
}

impl<E> http_body::Body for EventBody<E>
where
    E: FnMut(usize, &Event) -> Option<Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = |bytes: Bytes| Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
        if let Some(first) = this.prelude.take() {
            return frame(first);
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // The events first: a keepalive is due only when none is ready.
            if let Poll::Ready(next) = this.events.poll_next_unpin(cx) {
                let Some((i, event)) = next else {
                    // The subscription ended. At a shutdown (which ends subscriptions) the
                    // last frame still says when to come back.
                    this.done = true;
                    return match this.at_shutdown {
                        Some(last) if this.stop.is_stopped() => frame(last()),
                        _ => Poll::Ready(None),
                    };
                };
                this.sent = true;
                if matches!(event, Event::Disconnected) {
                    this.done = true;
                }
                match (this.encode)(i, &event) {
                    Some(bytes) => return frame(bytes),
                    None => continue,
                }
            }
            let now = Instant::now();
            if std::mem::take(&mut this.sent) {
                this.last_event = now;
            }
            let Poll::Ready(now) = this.timer.poll_at(now, cx) else {
                return Poll::Pending;
            };
            let due = this.last_event + this.keepalive;
            if now < due {
                this.timer.reset(due);
                continue;
            }
            this.timer.reset(now + this.keepalive);
            return frame(Bytes::from_static(this.keepalive_frame));
        }
    }
}

/// A timer for keepalives and pings, looked at once per wake-up of its stream: until it is
/// due, a poll by the task it last registered answers from the clock instead of registering
/// again with the timer. Ready with the time it fired; [`Keepalive::reset`] arms it again.
pub(super) struct Keepalive {
    sleep: Pin<Box<Sleep>>,
    due: Instant,
    registered: Option<Waker>,
}

impl Keepalive {
    pub fn new(after: Duration) -> Self {
        let due = Instant::now() + after;
        Keepalive {
            sleep: Box::pin(tokio::time::sleep_until(due)),
            due,
            registered: None,
        }
    }

    pub fn reset(&mut self, due: Instant) {
        self.due = due;
        self.sleep.as_mut().reset(due);
        self.registered = None;
    }

    /// Polls the timer, `now` read by the caller.
    pub fn poll_at(&mut self, now: Instant, cx: &mut Context<'_>) -> Poll<Instant> {
        if now < self.due
            && let Some(waker) = &self.registered
            && waker.will_wake(cx.waker())
        {
            // The timer wakes this task when it is due.
            return Poll::Pending;
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(now.max(self.due));
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Future for Keepalive {
    type Output = Instant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        self.poll_at(Instant::now(), cx)
    }
}

/// The content type of a Server-Sent Events stream.
pub(super) const SSE_TYPE: &str = "text/event-stream";
/// The content type of an NDJSON stream.
pub(super) const NDJSON_TYPE: &str = "application/x-ndjson";
/// The content types of the event streams [`streaming_response`] makes.
const STREAM_TYPES: [&str; 2] = [SSE_TYPE, NDJSON_TYPE];

/// Whether `response` is an event stream (SSE or NDJSON) made here.
pub(super) fn is_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| STREAM_TYPES.iter().any(|t| v.as_bytes() == t.as_bytes()))
}

pub(super) fn streaming_response(content_type: &'static str, body: Body) -> Response {
    let mut response = body.into_response();
    // hyper keeps a response's header map, emptied but with its room, for the connection's
    // life (to parse the next request into), and a stream's connection lives long: a map
    // made for these three costs an idle stream 320 bytes, one grown to hold a fourth 640
    // (the trace layer adds no request id a client did not send to a stream: see there).
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell proxies such as nginx not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *response.headers_mut() = headers;
    response
}
