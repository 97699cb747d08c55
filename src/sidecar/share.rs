//! Shared upstream subscriptions, the leaf-node model: every local SSE or NDJSON subscriber
//! of one topic shares one upstream stream of the hub (`feed`), opened when the first
//! subscriber of the topic arrives and closed a moment after the last one leaves. Each local
//! subscriber joins the feed's broadcast first, catches up from its own cursor by polling
//! the hub, then takes live items: seq `cursor + 1` is delivered, anything at or below is
//! skipped, a hole sends it back to polling. Its frames are the hub's own encodings (`wire`),
//! with the hub's seqs as ids, so `Last-Event-ID` resumes through the sidecar exactly as it
//! does against the hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::problem::Problem;
use crate::model::{EventName, Gap, GapReason, Message, SlowPolicy, Topic, parse_rfc3339};
use crate::wire::Encoded;
use crate::wire::base64;
use crate::wire::frames::{
    NDJSON_KEEPALIVE, SSE_DISCONNECT, SSE_KEEPALIVE, SSE_RETRY, ndjson_disconnect, ndjson_gap,
    sse_gap, sse_retry_at_shutdown, ws_gap_frame, ws_payload,
};
use crate::wire::ws::disconnect_frame;

/// Live items a feed keeps for subscribers that fall behind; past it they poll.
const FEED_BUFFER: usize = 1024;
/// How long a feed outlives its last subscriber (a client reconnecting at once reuses it).
const LINGER: Duration = Duration::from_secs(2);
/// Keepalive of an idle local stream (the hub's default `streams.keepalive`).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One thing a feed delivers.
enum Item {
    Message(Arc<Encoded>),
    Gap(Gap),
}

/// One upstream subscription to one topic.
struct Feed {
    topic: Topic,
    tx: broadcast::Sender<Arc<Item>>,
    /// The seq the feed has delivered up to (at first, the topic's head when it opened).
    position: AtomicU64,
    users: AtomicUsize,
    stop: CancellationToken,
}

/// The open feeds, by topic.
#[derive(Default)]
pub struct Feeds {
    /// A tokio mutex: the first subscriber of a topic holds it while it asks the hub for the
    /// topic's head, so two first subscribers never open two feeds.
    map: tokio::sync::Mutex<HashMap<String, Arc<Feed>>>,
    open: AtomicUsize,
}

impl Feeds {
    /// Upstream subscriptions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A local subscriber's hold on a feed; the last one to drop lets it close.
struct Hold {
    sc: Arc<Shared>,
    feed: Arc<Feed>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.feed.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let (sc, feed) = (self.sc.clone(), self.feed.clone());
        // No runtime: the process is ending, and the feed with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let mut map = sc.feeds.map.lock().await;
            if feed.users.load(Ordering::Acquire) == 0
                && map
                    .get(feed.topic.as_str())
                    .is_some_and(|f| Arc::ptr_eq(f, &feed))
            {
                map.remove(feed.topic.as_str());
                feed.stop.cancel();
            }
        });
    }
}

/// Why a feed could not be joined.
pub enum HoldError {
    /// The hub cannot be reached or failed (`503`).
    Unavailable(Problem),
    /// The hub refused the topic (a right, a reserved name): its own answer.
    Refused(plexus_client::Problem),
}

async fn hold(sc: &Arc<Shared>, topic: &Topic) -> Result<Hold, HoldError> {
    let mut map = sc.feeds.map.lock().await;
    if let Some(feed) = map.get(topic.as_str()) {
        feed.users.fetch_add(1, Ordering::AcqRel);
        return Ok(Hold {
            sc: sc.clone(),
            feed: feed.clone(),
        });
    }
    // The feed starts at the topic's head: older messages are each subscriber's catch-up.
    let lease = sc.upstream.lease();
    let asked = tokio::time::timeout(sc.config.forward_wait, lease.topic(topic.as_str()));
    let unavailable = |why: String| Err(HoldError::Unavailable(Problem::hub_unavailable(why)));
    let head = match asked.await {
        Ok(Ok(info)) => info.last_seq,
        Ok(Err(plexus_client::Error::Problem(p))) if p.status == 404 => 0,
        Ok(Err(plexus_client::Error::Problem(p))) if p.status < 500 => {
            return Err(HoldError::Refused(p));
        }
        Ok(Err(plexus_client::Error::Problem(p))) => {
            return unavailable(format!("the hub answered {}: {}", p.status, p.detail));
        }
        Ok(Err(e)) => return unavailable(format!("the hub cannot be reached: {e}")),
        Err(_) => return unavailable("the hub did not answer in time".into()),
    };
    let (tx, _) = broadcast::channel(FEED_BUFFER);
    let feed = Arc::new(Feed {
        topic: topic.clone(),
        tx,
        position: AtomicU64::new(head),
        users: AtomicUsize::new(1),
        stop: sc.shutdown.child_token(),
    });
    map.insert(topic.as_str().to_owned(), feed.clone());
    tokio::spawn(run_feed(sc.clone(), feed.clone()));
    Ok(Hold {
        sc: sc.clone(),
        feed,
    })
}

/// A message of the hub's JSON envelope, back into the model's type.
pub(super) fn message(e: &plexus_client::Envelope) -> Option<Message> {
    let data = match (&e.data, &e.data_base64) {
        (Some(text), None) => Bytes::from(text.clone()),
        (None, Some(b64)) => Bytes::from(base64::decode(b64)?),
        _ => Bytes::new(),
    };
    Some(Message {
        topic: e.topic.parse().ok()?,
        seq: e.seq,
        time: parse_rfc3339(&e.time)?,
        event: match &e.event {
            Some(name) => Some(name.parse::<EventName>().ok()?),
            None => None,
        },
        data,
    })
}

fn gap(g: &plexus_client::Gap) -> Option<Gap> {
    let reason = match g.reason.as_str() {
        "expired" => GapReason::Expired,
        "deleted" => GapReason::Deleted,
        "skipped" => GapReason::Skipped,
        "reset" => GapReason::Reset,
        _ => return None,
    };
    Some(Gap {
        topic: g.topic.parse().ok()?,
        range: g.from.zip(g.to),
        reason,
    })
}

/// One line of the upstream NDJSON stream: a message, a gap, or nothing to pass on.
fn line_item(line: &[u8]) -> Option<Item> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    if value.get("seq").is_some() {
        let env: plexus_client::Envelope = serde_json::from_value(value).ok()?;
        return Some(Item::Message(Arc::new(Encoded::new(Arc::new(message(
            &env,
        )?)))));
    }
    if value.get("event").and_then(|e| e.as_str()) == Some("gap") {
        let g: plexus_client::Gap = serde_json::from_value(value).ok()?;
        return Some(Item::Gap(gap(&g)?));
    }
    None
}

/// Keeps one upstream NDJSON stream of the feed's topic open, from the feed's position,
/// reopening it by cursor after a drop or a hub restart, until the feed is stopped.
async fn run_feed(sc: Arc<Shared>, feed: Arc<Feed>) {
    sc.feeds.open.fetch_add(1, Ordering::Relaxed);
    let mut pause = Duration::from_millis(100);
    while !feed.stop.is_cancelled() {
        let after = feed.position.load(Ordering::Acquire);
        let path = format!("/v1/topics/{}/stream?since={after}", feed.topic);
        // Held while the feed's stream lives (to the end of this turn of the loop).
        let lease = sc.upstream.lease();
        let opened = tokio::select! {
            r = tokio::time::timeout(sc.config.forward_wait, lease.forward("GET", &path, &[], Bytes::new(), None)) => r,
            _ = feed.stop.cancelled() => break,
        };
        let mut body = match opened {
            Ok(Ok(f)) if f.status == 200 => f.body,
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = feed.stop.cancelled() => break,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        let mut buf = BytesMut::new();
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = feed.stop.cancelled() => None,
            };
            let Some(Ok(chunk)) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(i + 1);
                let Some(item) = line_item(&line[..i]) else {
                    continue;
                };
                let after = match &item {
                    Item::Message(enc) => enc.msg.seq,
                    Item::Gap(g) => g.range.map(|r| r.1).unwrap_or(0),
                };
                if after > feed.position.load(Ordering::Acquire) {
                    feed.position.store(after, Ordering::Release);
                }
                let _ = feed.tx.send(Arc::new(item));
            }
        }
    }
    sc.feeds.open.fetch_sub(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse {
        raw: bool,
    },
    Ndjson,
    /// Text frames of the WebSocket protocol (docs/API.md §2.4).
    Ws,
}

/// A local subscription that can share its topic's feed: one topic, a start at `now` or a
/// seq, the default slow policy. `None`: forward it as it is (the hub then answers any
/// mistake in it with its own problem).
pub fn shareable(
    path: &str,
    query: &str,
    last_event_id: Option<&str>,
) -> Option<(Topic, Option<u64>, Format)> {
    let rest = path.strip_prefix("/v1/topics/")?;
    let (topic, kind) = rest.rsplit_once('/')?;
    let topic: Topic = topic.parse().ok()?;
    let mut since = None;
    let mut raw = false;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match (k, v) {
            ("since", "now") => {}
            ("since", s) => since = Some(s.parse::<u64>().ok()?),
            ("raw", "1" | "true" | "") => raw = true,
            ("raw", "0" | "false") => raw = false,
            ("slow", "catchup") => {}
            _ => return None,
        }
    }
    if let Some(id) = last_event_id {
        since = Some(id.parse::<u64>().ok()?);
    }
    let format = match kind {
        "sse" => Format::Sse { raw },
        "stream" if !raw => Format::Ndjson,
        _ => return None,
    };
    Some((topic, since, format))
}

/// Serves a local subscription from its topic's shared feed; `None` when the hub refused the
/// topic and the request is to be forwarded as it is.
pub async fn subscribe(
    sc: Arc<Shared>,
    topic: Topic,
    since: Option<u64>,
    format: Format,
) -> Option<Response> {
    let held = match hold(&sc, &topic).await {
        Ok(h) => h,
        Err(HoldError::Unavailable(p)) => return Some(p.into_response()),
        // The request goes to the hub as it is, and the client gets the hub's own problem.
        Err(HoldError::Refused(_)) => return None,
    };
    let rx = held.feed.tx.subscribe();
    let start = since.unwrap_or_else(|| held.feed.position.load(Ordering::Acquire));
    let (tx, out) = mpsc::channel::<Bytes>(64);
    tokio::spawn(deliver(
        sc.clone(),
        held,
        rx,
        start,
        format,
        SlowPolicy::Catchup,
        tx,
    ));
    let body = futures_util::stream::unfold(out, |mut out| async move {
        out.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), out))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    let content_type = match format {
        Format::Sse { .. } => "text/event-stream",
        Format::Ndjson | Format::Ws => "application/x-ndjson",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Some(response)
}

fn frame_message(enc: &Encoded, format: Format) -> Bytes {
    match format {
        Format::Sse { raw } => enc.sse(raw),
        Format::Ndjson => enc.line(),
        Format::Ws => enc.ws(),
    }
}

fn frame_gap(g: &Gap, after: u64, format: Format) -> Bytes {
    match format {
        Format::Sse { .. } => sse_gap(&after.to_string(), g),
        Format::Ndjson => ndjson_gap(g),
        Format::Ws => ws_payload(&ws_gap_frame(g)),
    }
}

/// Feeds one local client: catch-up by polls from its cursor, then the shared feed's live
/// items, until the client leaves, the hub cannot serve a catch-up, or shutdown.
async fn deliver(
    sc: Arc<Shared>,
    held: Hold,
    mut rx: broadcast::Receiver<Arc<Item>>,
    mut cursor: u64,
    format: Format,
    slow: SlowPolicy,
    tx: mpsc::Sender<Bytes>,
) {
    let _open = LocalStream::new(sc.clone());
    if matches!(format, Format::Sse { .. }) && tx.send(Bytes::from_static(SSE_RETRY)).await.is_err()
    {
        return;
    }
    let topic = held.feed.topic.clone();
    let mut behind = cursor < held.feed.position.load(Ordering::Acquire);
    loop {
        if behind {
            match catch_up(&sc, &topic, &mut cursor, format, &tx).await {
                Ok(()) => behind = false,
                Err(()) => return,
            }
        }
        let keepalive = tokio::time::sleep(KEEPALIVE);
        tokio::select! {
            item = rx.recv() => match item {
                Ok(item) => match &*item {
                    Item::Message(enc) => {
                        let seq = enc.msg.seq;
                        if seq <= cursor {
                            continue;
                        }
                        if seq != cursor + 1 {
                            behind = true;
                            continue;
                        }
                        if tx.send(frame_message(enc, format)).await.is_err() {
                            return;
                        }
                        cursor = seq;
                    }
                    Item::Gap(g) => match g.range {
                        Some((_, to)) if to <= cursor => {}
                        Some((from, to)) if from <= cursor + 1 => {
                            if tx.send(frame_gap(g, to, format)).await.is_err() {
                                return;
                            }
                            cursor = to;
                        }
                        _ => behind = true,
                    },
                },
                // Fallen out of the feed's live buffer: the subscriber's policy, as on the
                // hub (docs/API.md §2.3), with the feed's buffer in place of the hub's.
                Err(broadcast::error::RecvError::Lagged(_)) => match slow {
                    SlowPolicy::Catchup => behind = true,
                    SlowPolicy::Latest => {
                        let head = held.feed.position.load(Ordering::Acquire);
                        if head > cursor + 1 {
                            let gap = Gap {
                                topic: topic.clone(),
                                range: Some((cursor + 1, head - 1)),
                                reason: GapReason::Skipped,
                            };
                            if tx.send(frame_gap(&gap, head - 1, format)).await.is_err() {
                                return;
                            }
                            cursor = head - 1;
                        }
                        behind = true;
                    }
                    SlowPolicy::Disconnect => {
                        let last = match format {
                            Format::Sse { .. } => Bytes::from_static(SSE_DISCONNECT),
                            Format::Ndjson => ndjson_disconnect(&cursor.to_string()),
                            Format::Ws => Bytes::from(disconnect_frame(&topic)),
                        };
                        let _ = tx.send(last).await;
                        return;
                    }
                },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keepalive => {
                let frame = match format {
                    Format::Sse { .. } => SSE_KEEPALIVE,
                    Format::Ndjson => NDJSON_KEEPALIVE,
                    // The socket's own pings keep it alive.
                    Format::Ws => continue,
                };
                if tx.send(Bytes::from_static(frame)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = sc.shutdown.cancelled() => {
                if matches!(format, Format::Sse { .. }) {
                    let _ = tx.send(sse_retry_at_shutdown()).await;
                }
                return;
            }
        }
    }
}

/// Polls the hub from `cursor` until a poll comes back empty, sending every message and gap.
async fn catch_up(
    sc: &Shared,
    topic: &Topic,
    cursor: &mut u64,
    format: Format,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), ()> {
    loop {
        let options = plexus_client::ReadOptions {
            since: Some(cursor.to_string()),
            limit: Some(1000),
            wait: None,
        };
        // A page of 1,000 messages may take longer than a publish is kept waiting.
        let within = sc.config.forward_wait.max(Duration::from_secs(10));
        let lease = sc.upstream.lease();
        let asked = tokio::time::timeout(within, lease.read(topic.as_str(), &options));
        let page = match asked.await {
            Ok(Ok(page)) => page,
            Err(_) => {
                tracing::info!(%topic, "a local subscriber's catch-up got no answer in time; ending its stream");
                return Err(());
            }
            Ok(Err(e)) => {
                // The client resumes by the last id it got, elsewhere or here later.
                tracing::info!(%topic, error = %e, "a local subscriber's catch-up failed; ending its stream");
                return Err(());
            }
        };
        if page.messages.is_empty() && page.gaps.is_empty() {
            return Ok(());
        }
        let next: u64 = page.next.parse().map_err(|_| ())?;
        for g in page.gaps.iter().filter_map(gap) {
            let after = g.range.map(|r| r.1).unwrap_or(next);
            tx.send(frame_gap(&g, after, format))
                .await
                .map_err(|_| ())?;
        }
        for env in &page.messages {
            let Some(msg) = message(env) else { continue };
            let enc = Encoded::new(Arc::new(msg));
            tx.send(frame_message(&enc, format)).await.map_err(|_| ())?;
        }
        *cursor = next;
    }
}

/// Counts a local subscriber served from a feed while it lives.
struct LocalStream(Arc<Shared>);

impl LocalStream {
    fn new(sc: Arc<Shared>) -> Self {
        sc.counters.local_streams.fetch_add(1, Ordering::Relaxed);
        LocalStream(sc)
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.0
            .counters
            .local_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts a WebSocket subscription of `topic` from `since`, sending its frames into `tx`: the
/// task serving it (aborted by an unsubscribe) and the start cursor for the `ok` frame, or the
/// status and detail of an `error` frame.
pub async fn subscribe_frames(
    sc: &Arc<Shared>,
    topic: &Topic,
    since: &crate::model::Since,
    slow: SlowPolicy,
    tx: mpsc::Sender<Bytes>,
) -> Result<(tokio::task::JoinHandle<()>, u64), (u16, String)> {
    use crate::model::{Cursor, Since, format_rfc3339_millis};
    let held = match hold(sc, topic).await {
        Ok(h) => h,
        Err(HoldError::Unavailable(_)) => return Err((503, "the hub cannot be reached".into())),
        Err(HoldError::Refused(p)) => return Err((p.status, p.detail)),
    };
    let rx = held.feed.tx.subscribe();
    let asked = match since {
        Since::Now => None,
        Since::Cursor(Cursor::Single(seq)) => Some(Ok(*seq)),
        Since::Cursor(Cursor::Multi(pairs)) => match pairs.iter().find(|(t, _)| t == topic) {
            Some((_, seq)) => Some(Ok(*seq)),
            None => Some(Err("all".to_owned())),
        },
        Since::All => Some(Err("all".to_owned())),
        Since::Time(ms) => Some(Err(format_rfc3339_millis(*ms))),
        Since::Ago(d) => Some(Err(format!("{}ms", d.as_millis()))),
    };
    let start = match asked {
        None => held.feed.position.load(Ordering::Acquire),
        Some(Ok(seq)) => seq,
        // A start by time or `all`: the hub resolves it, the first message it names is where
        // this subscription starts.
        Some(Err(since)) => {
            let options = plexus_client::ReadOptions {
                since: Some(since),
                limit: Some(1),
                wait: None,
            };
            match sc.upstream.lease().read(topic.as_str(), &options).await {
                Ok(page) => match page.messages.first() {
                    Some(m) => m.seq.saturating_sub(1),
                    None => page.next.parse().unwrap_or(0),
                },
                Err(plexus_client::Error::Problem(p)) => return Err((p.status, p.detail)),
                Err(e) => return Err((503, format!("the hub cannot be reached: {e}"))),
            }
        }
    };
    let task = tokio::spawn(deliver(sc.clone(), held, rx, start, Format::Ws, slow, tx));
    Ok((task, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_topic_streams_from_now_or_a_seq_share_a_feed() {
        let sse = Format::Sse { raw: false };
        let got = |path: &str, query: &str, id: Option<&str>| {
            shareable(path, query, id).map(|(t, since, f)| (t.as_str().to_owned(), since, f))
        };
        assert!(got("/v1/topics/a/sse", "", None) == Some(("a".into(), None, sse)));
        assert!(got("/v1/topics/a/sse", "since=now", None) == Some(("a".into(), None, sse)));
        assert!(
            got("/v1/topics/a/sse", "since=7&raw=1", None)
                == Some(("a".into(), Some(7), Format::Sse { raw: true }))
        );
        assert!(
            got("/v1/topics/a/stream", "since=1", Some("9"))
                == Some(("a".into(), Some(9), Format::Ndjson))
        );
        // The hub answers these itself (several topics, other starts, policies, or mistakes).
        assert!(got("/v1/topics/a,b/sse", "", None).is_none());
        assert!(got("/v1/topics/a/sse", "since=all", None).is_none());
        assert!(got("/v1/topics/a/sse", "slow=latest", None).is_none());
        assert!(got("/v1/topics/a/sse", "raw=2", None).is_none());
        assert!(got("/v1/topics/a/stream", "raw=1", None).is_none());
        assert!(got("/v1/topics/a/sse", "", Some("a:3,b:4")).is_none());
        assert!(got("/v1/topics/bad..name/sse", "", None).is_none());
    }

    #[test]
    fn upstream_lines_become_messages_and_gaps() {
        let m = line_item(
            br#"{"topic":"a","seq":3,"time":"2026-12-04T00:00:00.000Z","event":"x","data":"hi"}"#,
        );
        assert!(
            matches!(m, Some(Item::Message(ref e)) if e.msg.seq == 3 && &e.msg.data[..] == b"hi")
        );
        let g = line_item(br#"{"event":"gap","topic":"a","from":1,"to":2,"reason":"expired"}"#);
        assert!(
            matches!(g, Some(Item::Gap(ref g)) if g.range == Some((1, 2)) && g.reason == GapReason::Expired)
        );
        assert!(line_item(br#"{"event":"keepalive"}"#).is_none());
        assert!(line_item(b"not json").is_none());
    }
}
