//! NDJSON streams (`GET /v1/topics/{topics}/stream`), and the machinery every streaming
//! response shares: parameters, keepalives, and ending on shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::params::{Params, QueryPairs};
use super::publish::path_param;
use crate::hub::{Event, SlowPolicy, Subscription};
use crate::model::{Cursor, Seq, Since, Topic, TopicList};
use crate::wire::frames::{NDJSON_KEEPALIVE, ndjson_gap};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/topics/{topics}/stream", get(ndjson))
}

/// What a streaming request asked for.
pub(super) struct StreamRequest {
    pub topics: TopicList,
    pub since: Since,
    pub slow: SlowPolicy,
    pub params: Params,
}

/// Parses the topics, `since` (default `now`; `Last-Event-ID` wins when given) and `slow`.
pub(super) fn stream_request(
    state: &AppState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: &HeaderMap,
) -> Result<StreamRequest, ApiError> {
    let topics = TopicList::parse(&path_param(path)?, state.options.max_topics)?;
    for topic in topics.iter() {
        caller.subscribe(topic)?;
    }
    let params = Params::from(query)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not visible ASCII"))?,
        ),
        None => None,
    };
    let since = match last_event_id.or(params.get("since")?) {
        Some(s) => s.parse::<Since>()?,
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
        if let (Some(after), Some(slot)) = (event.after(), self.after.get_mut(i)) {
            *slot = after;
        }
        self.cursor()
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
/// keepalive after each idle `keepalive`, ending when the subscription ends or on shutdown.
pub(super) fn event_body<E>(
    transport: &'static str,
    events: BoxStream<'static, (usize, Event)>,
    bookends: Bookends,
    keepalive_frame: &'static [u8],
    keepalive: Duration,
    shutdown: CancellationToken,
    encode: E,
) -> Body
where
    E: FnMut(usize, &Event) -> Option<Bytes> + Send + 'static,
{
    let mut interval = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = (
        events,
        encode,
        interval,
        shutdown,
        bookends.prelude,
        false,
        OpenStream::new(transport),
    );
    let at_shutdown = bookends.at_shutdown;
    let body = stream::unfold(state, move |mut st| async move {
        if let Some(first) = st.4.take() {
            return Some((Ok::<_, Infallible>(first), st));
        }
        loop {
            if st.5 {
                return None;
            }
            tokio::select! {
                biased;
                _ = st.3.cancelled() => {
                    st.5 = true;
                    return at_shutdown.map(|frame| (Ok(frame()), st));
                }
                event = st.0.next() => {
                    let (i, event) = event?;
                    st.2.reset();
                    if matches!(event, Event::Disconnected) {
                        st.5 = true;
                    }
                    if let Some(bytes) = (st.1)(i, &event) {
                        return Some((Ok(bytes), st));
                    }
                }
                _ = st.2.tick() => return Some((Ok(Bytes::from_static(keepalive_frame)), st)),
            }
        }
    });
    Body::from_stream(body)
}

pub(super) fn streaming_response(content_type: &'static str, body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell proxies such as nginx not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Follow topics as NDJSON
///
/// One envelope a line; `{"event":"keepalive"}` lines when idle; a gap as an `"event":"gap"` line.
#[utoipa::path(
    get,
    path = "/v1/topics/{topics}/stream",
    tag = "read",
    params(
        ("topics" = String, Path, pattern = "^[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}(,[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}){0,63}$", description = "One topic, or up to 64 comma-separated (the pattern bounds each to 100 characters besides dots, within the 200-byte limit of a name)"),
        ("since" = Option<String>, Query, pattern = "^(all|now|[0-9]{1,19}|[0-9]{1,9}(ms|s|m|h|d)|(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19}(,(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19})*|[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$", description = "Where to start: a cursor (`next` or an SSE id), `all`, `now`, or a duration back such as `5m`"),
        ("slow" = Option<super::openapi::SlowPolicy>, Query, description = "Slow-consumer policy (default catchup)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor; wins over `since`"),
    ),
    responses(
        (status = 200, description = "A stream of JSON lines that lasts until the client leaves or the hub shuts down", body = String, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad topic, cursor or parameter", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = super::openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn ndjson(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = stream_request(&state, &caller, path, query, &headers)?;
    let sub = state
        .hub
        .subscribe(&req.topics, &req.since, &Since::Now, req.slow)
        .await?;
    let mut positions = Positions::of(&sub);
    let deliveries = metrics::counter!("plexus_deliveries_total", "transport" => "ndjson");
    let encode = move |i: usize, event: &Event| -> Option<Bytes> {
        positions.advance(i, event);
        if matches!(event, Event::Message(_)) {
            deliveries.increment(1);
        }
        Some(match event {
            Event::Message(enc) => enc.line(),
            Event::Gap { gap, .. } => ndjson_gap(gap),
            Event::Disconnected => Bytes::from(format!(
                "{{\"event\":\"disconnect\",\"next\":\"{}\"}}\n",
                positions.cursor()
            )),
        })
    };
    let body = event_body(
        "ndjson",
        sub.into_stream(),
        Bookends::default(),
        NDJSON_KEEPALIVE,
        state.options.keepalive,
        state.hub.shutdown_token().clone(),
        encode,
    );
    Ok(streaming_response("application/x-ndjson", body))
}
