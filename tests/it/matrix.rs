//! The delivery matrix: every delivery scenario over every transport × every store engine.
//!
//! A scenario is written once, against [`Sub`], which subscribes over one transport and
//! hands back what arrives as [`Event`]s: SSE over HTTP/1.1 and over HTTP/2 (h2c), NDJSON,
//! the WebSocket, long polls (`wait=`) and short polls. Each case starts its own server on the
//! engine it names (a redis case gets a private `redis-server` through the kit), so the
//! matrix runs the same on every machine, whatever `PLEXUS_TEST_ENGINE` says. Every scenario
//! runs on every engine, except the restart, which needs a store that outlives the process. Cases are
//! named `matrix::<scenario>::<transport>::<engine>`, e.g. `cargo nextest run --test it
//! matrix::resume::websocket`.
//!
//! What a reader sees must depend neither on how it reads nor on where the log lives:
//! messages in order, exactly once; a resume from the cursor of the last event seen gets
//! exactly the rest; what was removed shows as a gap, never as a silent skip. Each case
//! publishes a handful of messages: the matrix is wide, so each cell is cheap.
//! Transport-specific details (framing, keepalives, bad parameters, the WebSocket's own
//! frames) stay in `sse.rs`, `ndjson.rs`, `ws.rs`, `longpoll.rs` and `read.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::kit::clients::{Frame, Ndjson, Sse, SseH2, Ws};
use crate::kit::{DEADLINE, Engine, Server, enc, gaps, into_json, messages, next};

/// How a subscriber reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    SseHttp1,
    SseHttp2,
    Ndjson,
    WebSocket,
    /// `GET …/messages?since=…&wait=30`, again and again.
    LongPoll,
    /// `GET …/messages?since=…`, again and again.
    ShortPoll,
}

/// What a subscriber received, whatever the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message {
        topic: String,
        seq: u64,
        data: String,
    },
    Gap {
        topic: String,
        from: u64,
        to: u64,
        reason: String,
    },
}

impl Event {
    fn topic(&self) -> &str {
        match self {
            Event::Message { topic, .. } | Event::Gap { topic, .. } => topic,
        }
    }

    /// The envelope or gap object that SSE `data:`, an NDJSON line, a WebSocket frame and
    /// a poll answer all share.
    fn from_json(v: &Value, is_gap: bool) -> Event {
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("no string `{key}` in {v}"))
                .to_string()
        };
        let num = |key: &str| {
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no numeric `{key}` in {v}"))
        };
        if is_gap {
            Event::Gap {
                topic: text("topic"),
                from: num("from"),
                to: num("to"),
                reason: text("reason"),
            }
        } else {
            Event::Message {
                topic: text("topic"),
                seq: num("seq"),
                data: text("data"),
            }
        }
    }

    fn from_frame(f: &Frame) -> Event {
        Event::from_json(&f.json(), f.is_gap())
    }
}

fn msg(topic: &str, seq: u64, data: &str) -> Event {
    Event::Message {
        topic: topic.into(),
        seq,
        data: data.into(),
    }
}

fn gap(topic: &str, from: u64, to: u64, reason: &str) -> Event {
    Event::Gap {
        topic: topic.into(),
        from,
        to,
        reason: reason.into(),
    }
}

/// The events of one topic, in the order they arrived (the order across topics is not
/// promised, the order within one is).
fn of(events: &[Event], topic: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.topic() == topic)
        .cloned()
        .collect()
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug)]
enum Start<'a> {
    Now,
    All,
    /// A cursor from an earlier subscription ([`Sub::cursor`]); SSE sends it as
    /// `Last-Event-ID`, the others as `since`.
    Cursor(&'a str),
}

enum Stream {
    SseHttp1(Sse),
    SseHttp2(SseH2),
    Ndjson(Ndjson),
    WebSocket {
        ws: Box<Ws>,
        /// Frames that arrived before the last `subscribe` was answered.
        early: VecDeque<Value>,
    },
    Poll {
        client: reqwest::Client,
        /// `…/v1/topics/{topics}/messages`
        url: String,
        /// `since` of the next request: the previous answer's `next`.
        since: String,
        wait: bool,
        buffered: VecDeque<Event>,
    },
}

/// One subscriber over one transport. The subscription exists once [`Sub::open`] returns:
/// a stream's head has arrived, the WebSocket's `subscribe` is answered, a poll's cursor is
/// pinned (for `Start::Now`, by a first read), so a scenario publishes only after it.
pub struct Sub {
    transport: Transport,
    topics: Vec<String>,
    stream: Stream,
    /// Per topic, the seq after which a resume continues: the last message or gap end taken.
    positions: BTreeMap<String, u64>,
    /// The `id` of the last SSE event taken: SSE resumes with the server's own cursor.
    last_id: Option<String>,
}

impl Sub {
    async fn open(server: &Server, transport: Transport, topics: &str, start: Start<'_>) -> Sub {
        let since = match start {
            Start::Now => "now",
            Start::All => "all",
            Start::Cursor(c) => c,
        };
        let sse = |path: &str| match start {
            Start::Cursor(c) => (path.to_string(), vec![("Last-Event-ID", c)]),
            _ => (format!("{path}?since={since}"), vec![]),
        };
        let stream = match transport {
            Transport::SseHttp1 => {
                let (path, headers) = sse(&format!("/v1/topics/{topics}/sse"));
                Stream::SseHttp1(Sse::open(server, &path, &headers).await)
            }
            Transport::SseHttp2 => {
                let (path, headers) = sse(&format!("/v1/topics/{topics}/sse"));
                Stream::SseHttp2(SseH2::open(server, &path, &headers).await)
            }
            Transport::Ndjson => {
                let path = format!("/v1/topics/{topics}/stream?since={}", enc(since));
                Stream::Ndjson(Ndjson::open(server, &path).await)
            }
            Transport::WebSocket => {
                let mut ws = Box::new(Ws::connect(server, "").await);
                let mut early = Vec::new();
                let cursor = since.contains(':').then(|| crate::kit::parse_cursor(since));
                for (id, topic) in topics.split(',').enumerate() {
                    let since = match &cursor {
                        Some(per_topic) => per_topic
                            .get(topic)
                            .unwrap_or_else(|| panic!("cursor {since:?} names no {topic}"))
                            .to_string(),
                        None => since.to_string(),
                    };
                    ws.ok(
                        json!({"op": "subscribe", "id": id, "topic": topic, "since": since}),
                        &mut early,
                    )
                    .await;
                }
                Stream::WebSocket {
                    ws,
                    early: early.into(),
                }
            }
            Transport::LongPoll | Transport::ShortPoll => {
                let url = server.url(&format!("/v1/topics/{topics}/messages"));
                let since = match start {
                    Start::Now => next(&server.read(topics, "since=now").await),
                    _ => since.to_string(),
                };
                Stream::Poll {
                    client: server.client().clone(),
                    url,
                    since,
                    wait: transport == Transport::LongPoll,
                    buffered: VecDeque::new(),
                }
            }
        };
        Sub {
            transport,
            topics: topics.split(',').map(String::from).collect(),
            stream,
            positions: BTreeMap::new(),
            last_id: None,
        }
    }

    /// The next message or gap; panics if the stream ends or nothing comes in time.
    async fn next(&mut self) -> Event {
        let what = self.transport;
        let event = match &mut self.stream {
            Stream::SseHttp1(sse) => {
                let f = sse
                    .next_event()
                    .await
                    .unwrap_or_else(|| panic!("{what:?}: the stream ended"));
                self.last_id = Some(f.id().to_string());
                Event::from_frame(&f)
            }
            Stream::SseHttp2(sse) => {
                let f = sse
                    .next_event()
                    .await
                    .unwrap_or_else(|| panic!("{what:?}: the stream ended"));
                self.last_id = Some(f.id().to_string());
                Event::from_frame(&f)
            }
            Stream::Ndjson(nd) => {
                let line = nd
                    .next_event()
                    .await
                    .unwrap_or_else(|| panic!("{what:?}: the stream ended"));
                assert_ne!(line["event"], json!("disconnect"), "{what:?}: {line}");
                Event::from_json(&line, line["event"] == json!("gap"))
            }
            Stream::WebSocket { ws, early } => {
                let frame = match early.pop_front() {
                    Some(f) => f,
                    None => ws.events(1).await.remove(0),
                };
                match frame["op"].as_str() {
                    Some("message") => Event::from_json(&frame, false),
                    Some("gap") => Event::from_json(&frame, true),
                    _ => panic!("{what:?}: expected a message or a gap, got {frame}"),
                }
            }
            Stream::Poll {
                client,
                url,
                since,
                wait,
                buffered,
            } => {
                let deadline = Instant::now() + DEADLINE;
                loop {
                    if let Some(e) = buffered.pop_front() {
                        break e;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{what:?}: nothing new after {since} within {DEADLINE:?}"
                    );
                    let query = if *wait {
                        format!("since={}&wait=30", enc(since))
                    } else {
                        format!("since={}", enc(since))
                    };
                    let resp = client
                        .get(format!("{url}?{query}"))
                        .send()
                        .await
                        .expect("send a poll");
                    let (status, _, page) = into_json(resp).await;
                    assert_eq!(status, StatusCode::OK, "{what:?} {url}?{query}: {page}");
                    // A topic's gap comes before its messages.
                    buffered.extend(gaps(&page).iter().map(|g| Event::from_json(g, true)));
                    buffered.extend(messages(&page).iter().map(|m| Event::from_json(m, false)));
                    *since = next(&page);
                    if buffered.is_empty() && !*wait {
                        // A short poll is polling: asking again is what the transport does.
                        sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        };
        let position = match &event {
            Event::Message { seq, .. } => *seq,
            Event::Gap { to, .. } => *to,
        };
        self.positions.insert(event.topic().to_string(), position);
        event
    }

    /// The next `n` events.
    async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }

    /// Where a new subscription resumes after the events taken so far: SSE's last event
    /// id; for the others, the client's own cursor (`seq`, or `a:1,b:2` for several
    /// topics), as an application keeps it.
    fn cursor(&self) -> String {
        if matches!(self.transport, Transport::SseHttp1 | Transport::SseHttp2) {
            return self
                .last_id
                .clone()
                .expect("an SSE event was taken before asking for its cursor");
        }
        let at = |topic: &str| {
            *self
                .positions
                .get(topic)
                .unwrap_or_else(|| panic!("no event of {topic} taken before asking for a cursor"))
        };
        match self.topics.as_slice() {
            [one] => at(one).to_string(),
            many => many
                .iter()
                .map(|t| format!("{t}:{}", at(t)))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Live delivery: a subscriber from now gets what is published after it, in order, and
/// nothing from before.
async fn live(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 2, "old").await;
    let mut sub = Sub::open(&server, transport, "t", Start::Now).await;
    server.publish_n("t", 3, "m").await;
    assert_eq!(
        sub.take(3).await,
        vec![msg("t", 3, "m1"), msg("t", 4, "m2"), msg("t", 5, "m3")]
    );
}

/// Resume after a disconnect: from the cursor of the last event seen, exactly the rest —
/// what was sent but not taken and what was published meanwhile — with no loss and no
/// duplicate; the next live message comes right after.
async fn resume(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    let mut sub = Sub::open(&server, transport, "t", Start::Now).await;
    server.publish_n("t", 3, "m").await;
    assert_eq!(
        sub.take(2).await,
        vec![msg("t", 1, "m1"), msg("t", 2, "m2")]
    );
    let cursor = sub.cursor();
    drop(sub);

    server.publish_n("t", 2, "n").await;
    let mut sub = Sub::open(&server, transport, "t", Start::Cursor(&cursor)).await;
    assert_eq!(
        sub.take(3).await,
        vec![msg("t", 3, "m3"), msg("t", 4, "n1"), msg("t", 5, "n2")],
        "resumed from {cursor}"
    );
    server.publish("t", "live").await;
    assert_eq!(
        sub.take(1).await,
        vec![msg("t", 6, "live")],
        "nothing extra"
    );
}

/// Several topics on one subscription: each topic's messages in order, and a resume from the
/// multi-topic cursor continues each topic exactly where it was.
async fn multi_topic(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    let mut sub = Sub::open(&server, transport, "a,b", Start::Now).await;
    for i in 1..=2 {
        server.publish("a", format!("a{i}")).await;
        server.publish("b", format!("b{i}")).await;
    }
    let got = sub.take(4).await;
    assert_eq!(of(&got, "a"), vec![msg("a", 1, "a1"), msg("a", 2, "a2")]);
    assert_eq!(of(&got, "b"), vec![msg("b", 1, "b1"), msg("b", 2, "b2")]);
    let cursor = sub.cursor();
    drop(sub);

    server.publish("a", "a3").await;
    server.publish("b", "b3").await;
    let mut sub = Sub::open(&server, transport, "a,b", Start::Cursor(&cursor)).await;
    let got = sub.take(2).await;
    assert_eq!(
        of(&got, "a"),
        vec![msg("a", 3, "a3")],
        "resumed from {cursor}"
    );
    assert_eq!(
        of(&got, "b"),
        vec![msg("b", 3, "b3")],
        "resumed from {cursor}"
    );
    server.publish("b", "live").await;
    assert_eq!(
        sub.take(1).await,
        vec![msg("b", 4, "live")],
        "nothing extra"
    );
}

/// Catch-up: retained history first (from the start or from a cursor), then live messages,
/// with no seam between them.
async fn catch_up(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 3, "m").await;
    let mut sub = Sub::open(&server, transport, "t", Start::All).await;
    assert_eq!(
        sub.take(3).await,
        vec![msg("t", 1, "m1"), msg("t", 2, "m2"), msg("t", 3, "m3")]
    );
    server.publish("t", "live").await;
    assert_eq!(sub.take(1).await, vec![msg("t", 4, "live")]);

    let mut sub = Sub::open(&server, transport, "t", Start::Cursor("2")).await;
    assert_eq!(
        sub.take(2).await,
        vec![msg("t", 3, "m3"), msg("t", 4, "live")]
    );
}

/// A gap, not a silent skip: a reader from before a `DELETE` learns the deleted range, then
/// gets the messages published after it.
async fn gap_after_delete(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 3, "m").await;
    let resp = server
        .client()
        .delete(server.url("/v1/topics/t"))
        .send()
        .await
        .expect("send DELETE");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "DELETE /v1/topics/t");
    server.publish_n("t", 2, "n").await;

    let mut sub = Sub::open(&server, transport, "t", Start::Cursor("1")).await;
    assert_eq!(
        sub.take(3).await,
        vec![
            gap("t", 2, 3, "deleted"),
            msg("t", 4, "n1"),
            msg("t", 5, "n2")
        ]
    );
    server.publish("t", "live").await;
    assert_eq!(sub.take(1).await, vec![msg("t", 6, "live")]);
}

/// Publishing while the subscription opens: whether a message lands in the catch-up or in
/// the live part, it arrives once, in order.
async fn publish_while_subscribing(engine: Engine, transport: Transport) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 2, "m").await;
    let (_, mut sub) = tokio::join!(
        server.publish_n("t", 4, "n"),
        Sub::open(&server, transport, "t", Start::All)
    );
    let want: Vec<Event> = (1..=2)
        .map(|i| msg("t", i, &format!("m{i}")))
        .chain((1..=4).map(|i| msg("t", i + 2, &format!("n{i}"))))
        .collect();
    assert_eq!(sub.take(6).await, want);
    server.publish("t", "live").await;
    assert_eq!(
        sub.take(1).await,
        vec![msg("t", 7, "live")],
        "nothing extra"
    );
}

/// Resume across a restart of the hub (SIGKILL, then a new process on the same store): the
/// cursor of the last event seen still gets exactly the rest. Durable engines only.
async fn resume_across_restart(engine: Engine, transport: Transport) {
    let mut server = Server::start_on(engine, &[]).await;
    let mut sub = Sub::open(&server, transport, "t", Start::Now).await;
    server.publish_n("t", 3, "m").await;
    assert_eq!(
        sub.take(2).await,
        vec![msg("t", 1, "m1"), msg("t", 2, "m2")]
    );
    let cursor = sub.cursor();
    drop(sub);

    server.publish("t", "before").await;
    server.restart().await;
    server.publish("t", "after").await;
    let mut sub = Sub::open(&server, transport, "t", Start::Cursor(&cursor)).await;
    assert_eq!(
        sub.take(3).await,
        vec![
            msg("t", 3, "m3"),
            msg("t", 4, "before"),
            msg("t", 5, "after")
        ],
        "resumed from {cursor} after a restart"
    );
    server.publish("t", "live").await;
    assert_eq!(
        sub.take(1).await,
        vec![msg("t", 6, "live")],
        "nothing extra"
    );
}

/// The tests of one scenario over one transport, one per engine:
/// `<scenario>::<transport>::<engine>`.
macro_rules! engines {
    ($scenario:ident $transport:ident [$($engine:ident = $variant:ident),*]) => {
        $(
            #[tokio::test]
            async fn $engine() {
                crate::matrix::$scenario(
                    crate::kit::Engine::$variant,
                    crate::matrix::Transport::$transport,
                )
                .await;
            }
        )*
    };
}

/// The tests of one scenario over every transport.
macro_rules! transports {
    ($scenario:ident $engines:tt) => {
        mod sse_http1 {
            engines!($scenario SseHttp1 $engines);
        }
        mod sse_http2 {
            engines!($scenario SseHttp2 $engines);
        }
        mod ndjson {
            engines!($scenario Ndjson $engines);
        }
        mod websocket {
            engines!($scenario WebSocket $engines);
        }
        mod long_poll {
            engines!($scenario LongPoll $engines);
        }
        mod short_poll {
            engines!($scenario ShortPoll $engines);
        }
    };
}

/// Every scenario over every transport, on the engines it names.
macro_rules! matrix {
    ($($scenario:ident on $engines:tt),* $(,)?) => {
        $(
            mod $scenario {
                transports!($scenario $engines);
            }
        )*
    };
}

matrix!(
    live on [sqlite = Sqlite, memory = Memory, redis = Redis],
    resume on [sqlite = Sqlite, memory = Memory, redis = Redis],
    multi_topic on [sqlite = Sqlite, memory = Memory, redis = Redis],
    catch_up on [sqlite = Sqlite, memory = Memory, redis = Redis],
    gap_after_delete on [sqlite = Sqlite, memory = Memory, redis = Redis],
    publish_while_subscribing on [sqlite = Sqlite, memory = Memory, redis = Redis],
    // The memory engine forgets everything with its process, by design.
    resume_across_restart on [sqlite = Sqlite, redis = Redis],
);
