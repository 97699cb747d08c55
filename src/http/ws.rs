//! The multiplexed WebSocket: `GET /v1/ws[?topic=a,b&since=…]`. Many topics on one socket,
//! subscribe / unsubscribe / publish frames, `ok` and `error` answers. A bad frame gets an
//! error frame and the socket lives on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::{BoxStream, SelectAll, Stream, StreamExt};
use futures_util::task::AtomicWaker;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::auth::{AuthPending, Caller};
use super::error::{ApiError, FrameRefusal};
use super::extract::{Params, QueryPairs};
use super::schema;
use super::state::AppState;
use super::streaming::{Keepalive, OpenStream};
use super::websocket::{NotAnUpgrade, Socket, Upgrade, answer_close, send_frames};
use crate::hub::{Event, PageTurn, SlowPolicy};
use crate::model::{Gap, NewMessage, Seq, Since, Topic, TopicList};
use crate::server::ClientAddr;
use crate::wire::Encoded;
use crate::wire::frames::ws_gap_frame;
use crate::wire::ws::{
    CLOSE_RESTARTING, CLOSE_SILENT_PEER, CLOSE_UNAUTHORIZED, Close, Command, Reply, auth_ok_frame,
    decode_client_frame, disconnect_frame, error_frame, ok_frame, subscription_error_frame,
};

const PING_EVERY: Duration = Duration::from_secs(30);
/// At most this many waiting events are queued on the socket before one flush.
const WRITE_BATCH: usize = 64;
/// How long a Close frame of ours may take to reach the socket. A peer that reads nothing
/// more (it sent its own Close, or went silent) with the socket's send buffer full would
/// otherwise keep the flush — and this task, its subscriptions and the socket — forever.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// A peer silent this long is closed with `CLOSE_SILENT_PEER` (whose reason states it).
const SILENT_LIMIT: Duration = Duration::from_secs(90);
/// A socket opened without a credential has this long to send its `auth` frame; an idle
/// unauthenticated socket is closed rather than held.
const AUTH_WITHIN: Duration = Duration::from_secs(10);

pub fn routes() -> Router<AppState> {
    // `any`: over HTTP/2 (RFC 8441) the upgrade arrives as CONNECT.
    Router::new().route("/v1/ws", any(upgrade))
}

/// Open a multiplexed WebSocket
///
/// Text frames of JSON: `subscribe`, `unsubscribe` and `publish` ops from the client; `ok`,
/// `message`, `gap` and `error` frames from the hub. Over HTTP/2 the upgrade is a CONNECT
/// (RFC 8441).
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "read",
    params(
        ("topic" = Option<String>, Query, description = "Topics to subscribe to at connect, comma-separated"),
        ("since" = inline(Option<schema::Since>), Query, description = "Where the subscription at connect starts (default `now`)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad topic or since", body = schema::Problem, content_type = "application/problem+json"),
        (status = 403, description = "This credential may not do that", body = schema::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unavailable or the hub is draining (see Retry-After)", body = schema::Problem, content_type = "application/problem+json"),
    )
)]
async fn upgrade(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    pending: Option<Extension<AuthPending>>,
    client: Option<Extension<ClientAddr>>,
    query: QueryPairs,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    // No credential at all: the socket opens, and its first frame must be `auth`.
    let caller = match (caller, pending) {
        (Ok(caller), _) => Some(caller),
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e),
    };
    let client = client.map(|Extension(ClientAddr(addr))| addr.ip());
    // Only an upgrade may come without a credential; any other request is refused as before.
    if caller.is_none() && ws.is_err() {
        return Err(ApiError::unauthorized(
            "no credential: send Authorization: Bearer, or upgrade and send an auth frame",
        ));
    }
    let ws =
        ws.map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {}", e.reason())))?;
    let params = Params::from(query)?;
    let initial = match params.get("topic")? {
        Some(_) if caller.is_none() => {
            return Err(ApiError::unauthorized(
                "subscribing at connect needs a credential in the Authorization header; \
                 or connect without topic= and send {\"op\":\"auth\"} first",
            ));
        }
        Some(topics) => {
            let Some(caller) = caller.as_ref() else {
                return Err(ApiError::unauthorized("no credentials were checked"));
            };
            let topics = TopicList::parse(topics, state.options.max_topics)?;
            for topic in topics.iter() {
                caller.subscribe(&state.jobs, topic).await?;
            }
            let since = match params.get("since")? {
                Some(s) => Since::parse_bounded(s, state.options.max_topics)?,
                None => Since::Now,
            };
            Some((topics, since))
        }
        None => None,
    };
    // Frames up to our limit get an answer; beyond 4x it the socket is closed (1009).
    let limit = state.options.max_ws_frame_bytes;
    let config = WebSocketConfig::default()
        // tungstenite's defaults (128 KiB each way) would cost an idle socket ~140 KiB.
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(limit.saturating_mul(4)))
        .max_frame_size(Some(limit.saturating_mul(4)));
    Ok(ws.on_upgrade(config, move |socket| async move {
        Session::new(state, caller, client, socket)
            .run(initial)
            .await;
    }))
}

struct Session {
    state: AppState,
    /// `None` until the first frame authenticates a socket that came without a credential.
    caller: Option<Caller>,
    /// Whether a frame has been handled yet: `auth` is accepted only as the first.
    heard: bool,
    /// The address whose request-rate bucket every frame is charged to, as the upgrade was.
    client: Option<IpAddr>,
    /// Read and written by this task alone, unsplit: a split socket took a lock for each
    /// read and each write (the WebSocket fan-out profile, docs/BENCHMARKS.md). Message
    /// frames are written as encoded once for every socket ([`send_frames`]).
    socket: Socket,
    /// Each subscription's deliveries, then [`Delivery::Ended`] once it ends on its own (not
    /// by unsubscribe).
    subs: Subscriptions,
    /// Each subscribed topic's subscription, by the number [`Self::track`] gave it: an
    /// unsubscribe or a resubscribe takes it out of `subs`.
    active: HashMap<Topic, u64>,
    /// The number of the next subscription.
    next_id: u64,
    /// Per topic subscribed through a consumer: the highest seq written to the socket, which
    /// an `auto` consumer advances to.
    written: HashMap<Topic, Arc<AtomicU64>>,
    /// The socket's one catch-up turn: its subscriptions load one page at a time between
    /// them, however many subscribe frames it sends (docs/API.md, WebSocket).
    turn: PageTurn,
    /// Looked up once: a `counter!` per message costs a registry lookup per delivery.
    deliveries: &'static crate::observe::Tally,
}

impl Session {
    fn new(
        state: AppState,
        caller: Option<Caller>,
        client: Option<IpAddr>,
        socket: Socket,
    ) -> Self {
        Session {
            state,
            caller,
            heard: false,
            client,
            socket,
            subs: Subscriptions::default(),
            active: HashMap::new(),
            next_id: 0,
            written: HashMap::new(),
            turn: PageTurn::new(),
            deliveries: crate::observe::deliveries("ws"),
        }
    }

    async fn run(mut self, initial: Option<(TopicList, Since)>) {
        let _open = OpenStream::new("ws");
        let mut incoming = WokenOnly::new();
        if let Some((topics, since)) = initial {
            for topic in topics.iter() {
                let answer = match self
                    .subscribe(topic.clone(), &since, SlowPolicy::Catchup)
                    .await
                {
                    Ok(next) => ok_frame(None, Reply::Subscribed { topic, next: &next }),
                    Err(e) => refuse(None, &e),
                };
                if self.send_text(answer).await.is_err() {
                    return;
                }
            }
        }
        // One wait for the shutdown and one ping timer for the socket's life, both answering
        // from what they hold when polled again by this task: with one delivery per wake-up,
        // `select!` polls them once per delivered message (docs/BENCHMARKS.md, the profile).
        let mut shutdown = self.state.hub.stop().wait();
        let mut ping = Keepalive::new(PING_EVERY);
        let mut last_heard = Instant::now();
        let auth_deadline = tokio::time::sleep(AUTH_WITHIN);
        tokio::pin!(auth_deadline);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    self.close(CLOSE_RESTARTING).await;
                    return;
                }
                () = &mut auth_deadline, if self.caller.is_none() => {
                    let detail = "no auth frame within 10 s";
                    let _ = self.send_text(error_frame(None, 401, detail)).await;
                    self.close(CLOSE_UNAUTHORIZED).await;
                    return;
                }
                frame = std::future::poll_fn(|cx| incoming.poll_next(&mut self.socket, cx)) => {
                    let Some(Ok(frame)) = frame else { return };
                    last_heard = Instant::now();
                    let answer = match frame {
                        WsMessage::Text(text) => {
                            let (answer, authorized) = self.handle(text.as_str()).await;
                            if !authorized {
                                let _ = self.send_text(answer).await;
                                self.close(CLOSE_UNAUTHORIZED).await;
                                return;
                            }
                            Some(answer)
                        }
                        WsMessage::Binary(_) => {
                            let e = FrameRefusal::bad_request("send JSON in text frames");
                            Some(refuse(None, &e))
                        }
                        WsMessage::Close(_) => {
                            self.answer_close().await;
                            return;
                        }
                        // Pongs to pings are sent by the protocol layer; a raw frame is
                        // never read.
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => None,
                    };
                    if let Some(answer) = answer
                        && self.send_text(answer).await.is_err()
                    {
                        return;
                    }
                }
                Some(delivery) = self.subs.next(), if !self.subs.is_empty() => {
                    if self.deliver_ready(delivery).await.is_err() {
                        return;
                    }
                }
                now = &mut ping => {
                    ping.reset(now + PING_EVERY);
                    if last_heard.elapsed() > SILENT_LIMIT {
                        self.close(CLOSE_SILENT_PEER).await;
                        return;
                    }
                    if self.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Delivers `event` and every event already waiting behind it (up to [`WRITE_BATCH`]),
    /// in one write: a socket that fell behind gets its pending frames in one write, not one
    /// write each (docs/BENCHMARKS.md, the fan-out profile). A consumer's position moves only
    /// once the frames are written.
    async fn deliver_ready(&mut self, first: Delivery) -> Result<(), ()> {
        let mut batch = Batch::default();
        let mut written = Vec::new();
        self.deliver(first, &mut batch, &mut written).await?;
        for _ in 1..WRITE_BATCH {
            // Polled with this task's waker, not a no-op one: a subscription polled directly
            // (`Subscriptions`) keeps the waker it was last polled with.
            let next = std::future::poll_fn(|cx| Poll::Ready(self.subs.poll_next_unpin(cx))).await;
            match next {
                Poll::Ready(Some(delivery)) => {
                    self.deliver(delivery, &mut batch, &mut written).await?;
                }
                _ => break,
            }
        }
        self.write(&mut batch).await?;
        for (sent, after) in written {
            sent.fetch_max(after, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds one event's frame to `batch` (see [`Self::deliver_ready`]); `written` collects the
    /// consumer positions it moves once written. A frame sent through tungstenite (a notice)
    /// goes after the batch so far, which is written first.
    async fn deliver(
        &mut self,
        delivery: Delivery,
        batch: &mut Batch,
        written: &mut Vec<(Arc<AtomicU64>, u64)>,
    ) -> Result<(), ()> {
        let (frame, position) = match delivery {
            Delivery::Message(enc) => {
                self.deliveries.increment(1);
                let sent = self.written.get(&enc.msg.topic);
                let position = sent.map(|sent| (sent.clone(), enc.msg.seq));
                (enc.ws_frame(), position)
            }
            Delivery::Gap(gap, after) => {
                let position = self
                    .written
                    .get(&gap.topic)
                    .map(|sent| (sent.clone(), after));
                (ws_gap_frame(&gap), position)
            }
            Delivery::Disconnected(topic) => {
                // This topic's subscription ended (slow consumer, `disconnect` policy); taken
                // out, its end is not reported again as a failure.
                self.untrack(&topic);
                self.write(batch).await?;
                return self.send_text(disconnect_frame(&topic)).await;
            }
            Delivery::Ended(topic) => {
                self.write(batch).await?;
                return self.ended(topic).await;
            }
        };
        batch.push(frame);
        written.extend(position);
        Ok(())
    }

    /// Writes the frames batched so far.
    async fn write(&mut self, batch: &mut Batch) -> Result<(), ()> {
        match batch.take() {
            Some(frames) => send_frames(&mut self.socket, frames).await.map_err(|_| ()),
            None => Ok(()),
        }
    }

    /// A subscription's events ended without an unsubscribe (which cancels before the end is
    /// seen) or a `disconnect` (which removed it): its store read failed, and the hub logged
    /// why. The client is told, naming the topic, and the subscription is dropped, so that a
    /// new subscribe with the client's cursor resumes it. At shutdown the socket closes instead.
    async fn ended(&mut self, topic: Topic) -> Result<(), ()> {
        if self.active.remove(&topic).is_none() || self.state.hub.shutdown_token().is_cancelled() {
            return Ok(());
        }
        let e = FrameRefusal::store_unavailable();
        let detail = format!(
            "the subscription to {topic} ended: {}; subscribe again with your cursor",
            e.detail()
        );
        self.send_text(subscription_error_frame(&topic, e.status(), &detail))
            .await
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), ()> {
        self.socket.send(message).await.map_err(|_| ())
    }

    async fn send_text(&mut self, text: String) -> Result<(), ()> {
        self.send(WsMessage::Text(Utf8Bytes::from(text))).await
    }

    /// Starts the close handshake with `close`, within [`CLOSE_WITHIN`].
    async fn close(&mut self, close: Close) {
        let frame = WsMessage::Close(Some(CloseFrame {
            code: CloseCode::from(close.code),
            reason: Utf8Bytes::from_static(close.reason),
        }));
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.socket.send(frame)).await;
    }

    /// Completes the close handshake a client started (RFC 6455 §5.5.1); without it the socket
    /// would just drop, and a browser would report 1006 (`wasClean = false`). The answer is
    /// tungstenite's: when it read the client's Close it queued a Close frame echoing its code
    /// and reason (1002 for a code that may not be sent), and refuses any frame of ours after
    /// it. It is written out within [`CLOSE_WITHIN`] ([`answer_close`]); the connection ends
    /// when the session drops the socket.
    async fn answer_close(&mut self) {
        answer_close(&mut self.socket, CLOSE_WITHIN).await;
    }

    /// Answers one text frame; `false` when the socket must close for want of a credential.
    async fn handle(&mut self, text: &str) -> (String, bool) {
        let first = !std::mem::replace(&mut self.heard, true);
        let options = &self.state.options;
        let (id, command) = decode_client_frame(
            text,
            options.max_ws_frame_bytes,
            options.max_message_bytes,
            options.max_topics,
        );
        // Every frame costs a token of the address's bucket, like an HTTP request: a socket is
        // no way around `limits.rate`. Charged after the decode (linear, bounded by the frame
        // limit) so that the refusal names the frame's id.
        if let Some(client) = self.client
            && let Err(retry_after) = self.state.limiter.check(client, std::time::Instant::now())
        {
            let refusal = refuse(
                id.as_ref(),
                &ApiError::too_many_requests(retry_after).into(),
            );
            return (refusal, self.caller.is_some());
        }
        let answer = match command {
            Ok(Command::Auth { token }) => return self.authenticate(first, &token, id.as_ref()),
            Ok(_) if self.caller.is_none() => {
                let e = ApiError::unauthorized(
                    "this socket has no credential: send {\"op\":\"auth\",\"token\":…} first",
                );
                return (refuse(id.as_ref(), &e.into()), false);
            }
            Ok(command) => self.apply(command, id.as_ref()).await,
            Err(e) => Err(e.into()),
        };
        // A socket without a credential gets one chance: a bad first frame closes it.
        let authorized = self.caller.is_some();
        (
            answer.unwrap_or_else(|e| refuse(id.as_ref(), &e)),
            authorized,
        )
    }

    /// The `auth` frame: accepted only as the socket's first frame, by every client (a
    /// credential from the upgrade's header is replaced by this one). A refused credential is
    /// an `error` 401 and the socket closes.
    fn authenticate(&mut self, first: bool, token: &str, id: Option<&Value>) -> (String, bool) {
        if !first {
            let e = FrameRefusal::bad_request("auth is accepted only as the socket's first frame");
            return (refuse(id, &e), self.caller.is_some());
        }
        match self.state.auth.authenticate(Some(token)) {
            Ok(principal) => {
                self.caller = Some(Caller(principal));
                (auth_ok_frame(id), true)
            }
            Err(e) => {
                self.caller = None;
                let e = ApiError::unauthorized(e.to_string());
                (refuse(id, &e.into()), false)
            }
        }
    }

    /// The socket's caller; every command but `auth` runs after one was set.
    fn caller(&self) -> Result<&Caller, FrameRefusal> {
        self.caller
            .as_ref()
            .ok_or_else(|| ApiError::unauthorized("no credential").into())
    }

    /// Carries out one command; its `ok` frame, answering `id`.
    async fn apply(
        &mut self,
        command: Command,
        id: Option<&Value>,
    ) -> Result<String, FrameRefusal> {
        match command {
            Command::Auth { .. } => Err(FrameRefusal::bad_request(
                "auth is accepted only as the socket's first frame",
            )),
            Command::Subscribe { topic, since, slow } => {
                self.caller()?.subscribe(&self.state.jobs, &topic).await?;
                let next = self.subscribe(topic.clone(), &since, slow).await?;
                Ok(ok_frame(
                    id,
                    Reply::Subscribed {
                        topic: &topic,
                        next: &next,
                    },
                ))
            }
            Command::Consume { topic, consumer } => {
                self.caller()?.subscribe(&self.state.jobs, &topic).await?;
                let name = consumer
                    .parse::<crate::consumers::ConsumerName>()
                    .map_err(ApiError::from)?;
                let next = self.consume(topic.clone(), name).await?;
                Ok(ok_frame(
                    id,
                    Reply::Subscribed {
                        topic: &topic,
                        next: &next,
                    },
                ))
            }
            Command::Unsubscribe { topic } => {
                self.untrack(&topic);
                Ok(ok_frame(id, Reply::Unsubscribed { topic: &topic }))
            }
            Command::Publish { topic, event, data } => {
                self.caller()?.publish(&topic)?;
                let results = self
                    .state
                    .hub
                    .publish(vec![NewMessage {
                        topic: topic.clone(),
                        event,
                        data,
                        idempotency_key: None,
                    }])
                    .await?;
                metrics::counter!("plexus_publishes_total", "transport" => "ws").increment(1);
                let a = results
                    .first()
                    .ok_or_else(|| FrameRefusal::bad_request("nothing was published"))?;
                Ok(ok_frame(
                    id,
                    Reply::Published {
                        topic: &topic,
                        seq: a.seq,
                        time: a.time,
                    },
                ))
            }
        }
    }

    /// Subscribes one topic through a consumer (replacing an earlier subscription to the
    /// topic); returns the consumer's position.
    async fn consume(
        &mut self,
        topic: Topic,
        name: crate::consumers::ConsumerName,
    ) -> Result<String, FrameRefusal> {
        if !self.active.contains_key(&topic) && self.active.len() >= self.state.options.max_topics {
            return Err(FrameRefusal::bad_request(format!(
                "at most {} topics per socket",
                self.state.options.max_topics
            )));
        }
        let sent = Arc::new(AtomicU64::new(0));
        let (next, events) =
            super::consumers::events(&self.state, topic.clone(), name, sent.clone()).await?;
        self.track(topic.clone(), Source::Consumer(events));
        self.written.insert(topic, sent);
        Ok(next)
    }

    /// Adds a subscription's events, replacing an earlier subscription to the topic.
    fn track(&mut self, topic: Topic, events: Source) {
        self.written.remove(&topic);
        self.untrack(&topic);
        let id = self.next_id;
        self.next_id += 1;
        self.active.insert(topic.clone(), id);
        self.subs.push(Tracked {
            events: Some(events),
            topic,
            id,
        });
    }

    /// Ends the topic's subscription, if any: nothing more of it is delivered.
    fn untrack(&mut self, topic: &Topic) {
        if let Some(id) = self.active.remove(topic) {
            self.subs.remove(topic, id);
        }
    }

    /// Subscribes one topic (replacing an earlier subscription to it); returns its start cursor.
    async fn subscribe(
        &mut self,
        topic: Topic,
        since: &Since,
        slow: SlowPolicy,
    ) -> Result<String, FrameRefusal> {
        if !self.active.contains_key(&topic) && self.active.len() >= self.state.options.max_topics {
            return Err(FrameRefusal::bad_request(format!(
                "at most {} topics per socket",
                self.state.options.max_topics
            )));
        }
        let sub = self
            .state
            .hub
            .subscribe_sharing(
                &TopicList::one(topic.clone()),
                since,
                &Since::Now,
                slow,
                self.turn.clone(),
            )
            .await?;
        let next = sub.start_cursor().to_string();
        self.track(topic, Source::Hub(sub.into_stream()));
        Ok(next)
    }
}

/// Whole frames to be written together: a lone frame as the bytes every socket shares, more
/// copied after it into one buffer.
#[derive(Default)]
enum Batch {
    #[default]
    Empty,
    One(Bytes),
    Many(bytes::BytesMut),
}

impl Batch {
    fn push(&mut self, frame: Bytes) {
        *self = match std::mem::take(self) {
            Batch::Empty => Batch::One(frame),
            Batch::One(first) => {
                let mut many = bytes::BytesMut::with_capacity((first.len() + frame.len()) * 4);
                many.extend_from_slice(&first);
                many.extend_from_slice(&frame);
                Batch::Many(many)
            }
            Batch::Many(mut many) => {
                many.extend_from_slice(&frame);
                Batch::Many(many)
            }
        };
    }

    fn take(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Batch::Empty => None,
            Batch::One(frame) => Some(frame),
            Batch::Many(many) => Some(many.freeze()),
        }
    }
}

/// The socket's subscriptions as one stream. The first is polled directly, with the task's
/// waker; the others through a `SelectAll`, whose wakers and ready queue were ~15 % of the
/// session's CPU per delivery for a socket following one topic, as most do (docs/BENCHMARKS.md,
/// the profile). The two take turns first after a delivery, so a busy first topic cannot starve
/// the others. Held in place, not boxed: a delivery touches one allocation fewer per level.
struct Subscriptions<S = Tracked> {
    first: Option<S>,
    rest: SelectAll<S>,
    rest_first: bool,
}

impl<S: Stream + Unpin> Default for Subscriptions<S> {
    fn default() -> Self {
        Subscriptions {
            first: None,
            rest: SelectAll::new(),
            rest_first: false,
        }
    }
}

impl<S: Stream<Item = Delivery> + Unpin> Subscriptions<S> {
    fn push(&mut self, events: S) {
        match self.first {
            None => self.first = Some(events),
            Some(_) => self.rest.push(events),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }
}

impl Subscriptions<Tracked> {
    /// Ends subscription `id` of `topic` at once: the first is dropped; one of the others is
    /// emptied in place (a `SelectAll` cannot give an entry back; never woken again, it stays
    /// until swept), and the emptied ones are swept out once they outnumber the live ones.
    /// Counted here, not kept: an unsubscribe is rare, and `SelectAll` drops on its own an
    /// emptied entry that was already woken.
    fn remove(&mut self, topic: &Topic, id: u64) {
        if self
            .first
            .as_ref()
            .is_some_and(|t| t.id == id && t.topic == *topic)
        {
            self.first = None;
            return;
        }
        if let Some(tracked) = self
            .rest
            .iter_mut()
            .find(|t| t.id == id && t.topic == *topic && t.events.is_some())
        {
            tracked.events = None;
        }
        let dead = self.rest.iter().filter(|t| t.events.is_none()).count();
        if dead * 2 > self.rest.len() {
            let live = std::mem::take(&mut self.rest)
                .into_iter()
                .filter(|t| t.events.is_some());
            self.rest = futures_util::stream::select_all(live);
        }
    }
}

impl<S: Stream<Item = Delivery> + Unpin> Stream for Subscriptions<S> {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.get_mut();
        for rest in [this.rest_first, !this.rest_first] {
            if rest {
                if !this.rest.is_empty()
                    && let Poll::Ready(Some(delivery)) = this.rest.poll_next_unpin(cx)
                {
                    this.rest_first = false;
                    return Poll::Ready(Some(delivery));
                }
            } else if let Some(first) = this.first.as_mut() {
                match first.poll_next_unpin(cx) {
                    Poll::Ready(Some(delivery)) => {
                        this.rest_first = true;
                        return Poll::Ready(Some(delivery));
                    }
                    Poll::Ready(None) => this.first = None,
                    Poll::Pending => {}
                }
            }
        }
        if this.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// One subscription of the socket: its events as deliveries, then [`Delivery::Ended`] if
/// they end on their own. An unsubscribe or a replacing subscribe takes it out of the
/// session's [`Subscriptions`] (which empties it in place when it cannot drop it), so a
/// delivery polls no cancel switch of its own: that was a cache miss per delivered message at
/// 10,000 sockets (docs/BENCHMARKS.md, the WebSocket profile).
struct Tracked {
    /// `None` once ended: by the hub (after [`Delivery::Ended`]) or by the session.
    events: Option<Source>,
    topic: Topic,
    /// Which subscription of the topic this is: the session's number for it.
    id: u64,
}

/// Where a subscription of the socket reads: the hub (held in place), or a durable consumer.
#[allow(clippy::large_enum_variant)] // the hub's in place: one allocation fewer a delivery
enum Source {
    Hub(crate::hub::Events),
    Consumer(BoxStream<'static, Event>),
}

impl Stream for Source {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.get_mut() {
            Source::Hub(events) => events
                .poll_next_unpin(cx)
                .map(|e| e.map(|(_, event)| event)),
            Source::Consumer(events) => events.poll_next_unpin(cx),
        }
    }
}

impl Stream for Tracked {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.get_mut();
        let Some(events) = this.events.as_mut() else {
            return Poll::Ready(None);
        };
        match events.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Delivery::of(&this.topic, event))),
            Poll::Ready(None) => {
                this.events = None;
                Poll::Ready(Some(Delivery::Ended(this.topic.clone())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What a subscription of the socket yields. A message and a gap name their topic: taking a
/// copy of the topic's name (an `Arc` every subscriber of it shares) per delivered message
/// was a contended count on two cores (docs/BENCHMARKS.md, the profile).
enum Delivery {
    Message(Arc<Encoded>),
    /// A gap (which names its topic), and the position after it.
    Gap(Gap, Seq),
    /// The topic's subscription fell behind with the `disconnect` policy.
    Disconnected(Topic),
    /// The topic's subscription ended on its own (its store read failed, or the shutdown).
    Ended(Topic),
}

impl Delivery {
    fn of(topic: &Topic, event: Event) -> Self {
        match event {
            Event::Message(enc) => Delivery::Message(enc),
            Event::Gap { gap, after } => Delivery::Gap(gap, after),
            Event::Disconnected => Delivery::Disconnected(topic.clone()),
        }
    }
}

/// A gate that lets a stream be polled only after it woke. The session's `select!` looks at
/// the socket's read side at every wake-up, once per delivered message, and each look readied
/// tungstenite's read buffer (zeroing it) for a read that found nothing (docs/BENCHMARKS.md,
/// the profile). The inner stream gets a waker of its own that notes the
/// wake before waking the task; polled without one since its last `Pending`, this answers
/// `Pending` at once, which is all the inner stream could answer.
struct WokenOnly {
    flag: Arc<WakeFlag>,
    waker: Waker,
    /// The task's waker last put in `flag.task`, while it is known to be still there.
    registered: Option<Waker>,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl WokenOnly {
    fn new() -> Self {
        let flag = Arc::new(WakeFlag {
            // Never polled: the first poll reaches the inner stream.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        WokenOnly {
            waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }
}

impl WokenOnly {
    /// Polls `inner` if it woke since it was last polled (here, and only here).
    fn poll_next<S: Stream + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        let this = self;
        // No wake since this task's waker was put in the `AtomicWaker`: it is still there (a
        // wake sets the flag before it takes the waker out), so there is nothing to do.
        if !this.flag.woken.load(Ordering::Acquire)
            && this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        // The task's waker first, so that a wake from now on reaches this task.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            this.registered = Some(cx.waker().clone());
            return Poll::Pending;
        }
        // A wake was taken: it may have taken the waker registered above with it.
        this.registered = None;
        let polled = Pin::new(inner).poll_next(&mut Context::from_waker(&this.waker));
        if polled.is_ready() {
            // More may be ready without another wake.
            this.flag.woken.store(true, Ordering::Release);
        }
        polled
    }
}

/// The `error` frame answering a client's frame `id`: the socket lives on.
fn refuse(id: Option<&Value>, e: &FrameRefusal) -> String {
    error_frame(id, e.status(), e.detail())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(name: &str) -> Delivery {
        Delivery::Ended(name.parse().unwrap())
    }

    fn name(delivery: &Delivery) -> String {
        match delivery {
            Delivery::Ended(topic) => topic.to_string(),
            _ => panic!("expected an end marker"),
        }
    }

    /// Every subscription's deliveries come out, the first's and the others', a busy first
    /// does not starve the others, and the whole ends once every one has.
    #[tokio::test]
    async fn subscriptions_yield_every_stream_in_turns() {
        let mut subs = Subscriptions::default();
        assert!(subs.is_empty());
        subs.push(futures_util::stream::repeat_with(|| ended("busy")).boxed());
        subs.push(futures_util::stream::iter([ended("b1"), ended("b2")]).boxed());
        subs.push(futures_util::stream::iter([ended("c1")]).boxed());
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(name(&subs.next().await.unwrap()));
        }
        let others: Vec<_> = seen.iter().filter(|n| *n != "busy").collect();
        assert_eq!(others.len(), 3, "the others got their turns: {seen:?}");
        assert!(others.contains(&&"b1".to_string()) && others.contains(&&"c1".to_string()));
        let mut subs = Subscriptions::default();
        subs.push(futures_util::stream::iter([ended("a")]).boxed());
        subs.push(futures_util::stream::iter([ended("b")]).boxed());
        let mut names = vec![
            name(&subs.next().await.unwrap()),
            name(&subs.next().await.unwrap()),
        ];
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(subs.next().await.is_none(), "ends once every one has");
        assert!(subs.is_empty());
        // A subscription added after the first ended takes its place.
        subs.push(futures_util::stream::iter([ended("later")]).boxed());
        assert_eq!(name(&subs.next().await.unwrap()), "later");
    }

    /// The first subscription is polled with the task's own waker: an item sent while the
    /// reader waits wakes it (polling it with a no-op waker would lose that wake).
    #[tokio::test]
    async fn a_directly_polled_subscription_wakes_its_reader() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        let mut subs = Subscriptions::default();
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|delivery| (delivery, rx))
        });
        subs.push(events.boxed());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(name(&subs.next().await.unwrap()));
            }
            got
        });
        for n in ["x", "y", "z"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(ended(n)).unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("every item woke the reader")
            .unwrap();
        assert_eq!(got, ["x", "y", "z"]);
    }

    /// Every item reaches a reader that waits between them: each wake of the inner stream
    /// reaches the task, the second and later ones too (a wake takes the task's waker out of
    /// the flag, so it is registered again at every poll).
    #[tokio::test]
    async fn a_stream_polled_only_when_woken_misses_no_wake() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut inner = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|v| (v, rx))
        }));
        let mut gate = WokenOnly::new();
        tokio::spawn(async move {
            for i in 0..50 {
                tx.send(i).expect("open");
                // The next item goes out only once this one was read.
                if ack_rx.recv().await.is_none() {
                    return;
                }
            }
        });
        let read = async {
            for i in 0..50 {
                let next = std::future::poll_fn(|cx| gate.poll_next(&mut inner, cx)).await;
                assert_eq!(next, Some(i));
                ack_tx.send(i).expect("open");
            }
        };
        // A lost wake would hang the reader: fail instead.
        tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("every item read");
    }

    /// A removed subscription delivers nothing more and leaves nothing behind: the first is
    /// dropped, one of the others is emptied in place, and the emptied ones are swept out once
    /// they outnumber the live ones (a client subscribing and unsubscribing a quiet topic in a
    /// loop grows nothing).
    #[tokio::test]
    async fn removed_subscriptions_end_at_once_and_are_swept() {
        let topic: Topic = "t".parse().unwrap();
        let other: Topic = "u".parse().unwrap();
        let tracked = |topic: &Topic, id| Tracked {
            events: Some(Source::Consumer(futures_util::stream::pending().boxed())),
            topic: topic.clone(),
            id,
        };
        let mut subs = Subscriptions::<Tracked>::default();
        subs.push(tracked(&topic, 0));
        subs.push(tracked(&other, 1));
        for id in 2..1000 {
            subs.push(tracked(&topic, id));
            subs.remove(&topic, id);
        }
        assert!(subs.rest.len() <= 3, "swept: {} left", subs.rest.len());
        // Another topic's number, or a number already removed, removes nothing.
        subs.remove(&other, 0);
        subs.remove(&topic, 5);
        assert!(subs.first.is_some());
        subs.remove(&topic, 0);
        assert!(subs.first.is_none(), "the first is dropped");
        assert!(!subs.is_empty(), "the other topic's lives on");
        subs.remove(&other, 1);
        assert!(subs.is_empty(), "nothing is left");
        assert!(subs.next().await.is_none());
        // One that ended on its own is reported once, then is gone.
        let mut ended = Subscriptions::<Tracked>::default();
        ended.push(Tracked {
            events: Some(Source::Consumer(futures_util::stream::empty().boxed())),
            topic: topic.clone(),
            id: 7,
        });
        assert!(matches!(ended.next().await, Some(Delivery::Ended(t)) if t == topic));
        assert!(ended.next().await.is_none());
    }
}
