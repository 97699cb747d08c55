//! The pattern lab's run engine (docs/API.md, "The pattern lab"): for each pattern in turn, N
//! clients receive a topic of their own while one publisher sends R messages per second to it,
//! all through `plexus-client` over the hub's own listener.
//!
//! What is measured, and how:
//! - **Bytes** are counted on the clients' sockets ([`plexus_client::Counted`]): every byte
//!   sent and received, HTTP heads, chunked coding, WebSocket and HTTP/2 framing included.
//!   The publisher's bytes are left out (the same for every pattern).
//! - **Requests and bytes** are counted over the publishing window (from the first publish to
//!   `duration` later), the steady state: the connection set-up before it is left out, so a
//!   stream's one request does not weigh on a short run. **Deliveries** are every delivery of
//!   the messages published in the window, drained afterwards; `lost` is what never came.
//! - **Latency**: each payload starts with its send time (20 digits of nanoseconds since the
//!   epoch); a delivery's latency is its arrival time minus that.
//! - **CPU**: patterns run one after another, so the delta of a process's CPU time over one
//!   pattern's window is that pattern's. In-process ([`Cpu::ThisProcess`]) it is this
//!   process's `/proc/self/stat` (the hub and the load generator together: say so where it
//!   is shown); from outside the CLI cannot read the hub's and reports none.
//! - **Connections**: the TCP connections the clients hold open at the end of the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use plexus_client::{Client, Counter, Page, PublishOptions};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::LabError;
use super::fanout::Histogram;
use crate::model::{LabPattern, LabSpec};

/// One pattern's figures, as `GET /v1/lab/runs/{id}` shows them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PatternResult {
    pub clients: usize,
    pub deliveries: u64,
    pub lost: u64,
    pub latency_ms: Latency,
    pub requests_per_message: f64,
    pub bytes_per_message: f64,
    /// The hub-to-client part of `bytes_per_message` (response heads, bodies, frames).
    pub bytes_received_per_message: f64,
    /// `None` when the hub's CPU time cannot be read (the CLI against a remote hub).
    pub cpu_s: Option<f64>,
    pub connections: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
}

/// What a run reports on the way.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// A pattern's clients are connecting.
    Started { pattern: String, clients: usize },
    /// About once a second while publishing.
    Tick {
        pattern: String,
        published: u64,
        messages: u64,
        deliveries: u64,
    },
    /// A pattern's figures are final.
    Done {
        pattern: String,
        result: PatternResult,
    },
}

/// Whose CPU time a run reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// This process's (`/proc/self/stat`): the hub runs here.
    ThisProcess,
    /// Not measured.
    None,
}

/// Seconds of CPU (user + system) this process has used, from `/proc/self/stat`.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 from the state on).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks per second: 100 on every Linux this runs on (USER_HZ).
    Some((utime + stime) / 100.0)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What every client of one pattern adds to.
struct Shared {
    counter: Arc<Counter>,
    requests: AtomicU64,
    deliveries: AtomicU64,
    /// Clients whose subscription is open (streams) or whose connection is up (polls).
    ready: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
}

/// A client's own tally, merged at the end.
struct Tally {
    latency: Histogram,
}

impl Tally {
    /// Counts a delivery whose payload starts at `payload`.
    fn delivery(&mut self, payload: &[u8], shared: &Shared) {
        let sent = payload
            .get(..20)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u128>().ok());
        // The warm-up message carries no send time: it is not one of the run's messages.
        if let Some(sent) = sent {
            let us = now_nanos().saturating_sub(sent) / 1000;
            self.latency.record(us as u64);
            shared.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts every `"data":"` of a stream's complete events.
    fn deliveries_in(&mut self, events: &[u8], shared: &Shared) {
        let mut rest = events;
        while let Some(i) = find(rest, b"\"data\":\"") {
            let start = i + 8;
            self.delivery(&rest[start..], shared);
            rest = &rest[start..];
        }
    }
}

/// Counts the deliveries of the complete SSE events in `buf` (up to its last blank line).
fn drain_events(buf: &mut BytesMut, tally: &mut Tally, shared: &Shared) {
    if let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") {
        tally.deliveries_in(&buf[..end], shared);
        buf.advance(end + 2);
    }
}

/// Decodes the complete server frames of a WebSocket in `buf`: text frames are counted,
/// pings answered (with a masked pong, as a client must) through `pongs`.
fn drain_frames(buf: &mut BytesMut, tally: &mut Tally, shared: &Shared, pongs: &mut Vec<u8>) {
    while buf.len() >= 2 {
        let (len, header) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return,
            n => (n as usize, 2),
        };
        if buf.len() < header + len {
            return;
        }
        let opcode = buf[0] & 0x0f;
        let payload = &buf[header..header + len];
        match opcode {
            1 => tally.deliveries_in(payload, shared),
            9 if len <= 125 => {
                // A zero mask key leaves the payload as it is.
                pongs.extend_from_slice(&[0x8a, 0x80 | len as u8, 0, 0, 0, 0]);
                pongs.extend_from_slice(payload);
            }
            _ => {}
        }
        buf.advance(header + len);
    }
}

/// Phase of client `i`'s polls: spread evenly over one interval, as independent clients are.
fn phase(i: usize, n: usize, every: Duration) -> Duration {
    every.mul_f64(i as f64 / n.max(1) as f64)
}

async fn client_task(
    client: Client,
    pattern: LabPattern,
    topic: String,
    index: usize,
    spec: LabSpec,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Histogram, LabError> {
    let mut tally = Tally {
        latency: Histogram::new(),
    };
    // Every client starts after the warm-up message (seq 1), so nothing published is missed
    // however long its connection took.
    let since = "1";
    match pattern {
        LabPattern::ShortPoll | LabPattern::LongPoll => {
            let mut conn = client.connect_counted(shared.counter.clone()).await?;
            shared.open.fetch_add(1, Ordering::Relaxed);
            shared.ready.fetch_add(1, Ordering::Relaxed);
            let mut cursor = since.to_owned();
            let long = pattern == LabPattern::LongPoll;
            let mut ticks = if long {
                None
            } else {
                let start =
                    tokio::time::Instant::now() + phase(index, spec.clients, spec.poll_interval);
                let mut t = tokio::time::interval_at(start, spec.poll_interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(t)
            };
            loop {
                if let Some(t) = ticks.as_mut() {
                    tokio::select! {
                        _ = t.tick() => {},
                        _ = stop.cancelled() => break,
                    }
                }
                let path = if long {
                    format!("/v1/topics/{topic}/messages?since={cursor}&wait=30")
                } else {
                    format!("/v1/topics/{topic}/messages?since={cursor}")
                };
                shared.requests.fetch_add(1, Ordering::Relaxed);
                let answer = tokio::select! {
                    a = conn.get(&path) => a?,
                    _ = stop.cancelled() => break,
                };
                if answer.status != 200 {
                    return Err(LabError::Run(format!(
                        "{pattern}: a poll was answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    )));
                }
                let page: Page = serde_json::from_slice(&answer.body)
                    .map_err(|e| LabError::Run(format!("{pattern}: a poll's answer: {e}")))?;
                for message in &page.messages {
                    tally.delivery(message.data.as_deref().unwrap_or("").as_bytes(), &shared);
                }
                cursor = page.next;
            }
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        LabPattern::Sse | LabPattern::Ws => {
            let ws = pattern == LabPattern::Ws;
            let mut conn = client.connect_counted(shared.counter.clone()).await?;
            shared.open.fetch_add(1, Ordering::Relaxed);
            let path = if ws {
                format!("/v1/ws?topic={topic}&since={since}")
            } else {
                format!("/v1/topics/{topic}/sse?since={since}")
            };
            shared.requests.fetch_add(1, Ordering::Relaxed);
            conn.open_stream(&path, ws).await?;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            let mut buf = BytesMut::with_capacity(8192);
            let mut pongs = Vec::new();
            loop {
                let n = tokio::select! {
                    n = conn.read(&mut buf) => n?,
                    _ = stop.cancelled() => break,
                };
                if n == 0 {
                    break;
                }
                if ws {
                    drain_frames(&mut buf, &mut tally, &shared, &mut pongs);
                    if !pongs.is_empty() {
                        conn.write(&pongs).await?;
                        pongs.clear();
                    }
                } else {
                    drain_events(&mut buf, &mut tally, &shared);
                }
            }
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        // The hub is the client of this pattern: see `receiver`.
        LabPattern::Webhook => {}
        LabPattern::SseH2 => {
            let mut conn = client.connect_counted_h2(shared.counter.clone()).await?;
            shared.open.fetch_add(1, Ordering::Relaxed);
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let mut body = conn
                .stream(&format!("/v1/topics/{topic}/sse?since={since}"))
                .await?;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            let mut buf = BytesMut::with_capacity(8192);
            loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = stop.cancelled() => break,
                };
                match chunk {
                    Some(chunk) => buf.extend_from_slice(&chunk?),
                    None => break,
                }
                drain_events(&mut buf, &mut tally, &shared);
            }
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Ok(tally.latency)
}

/// The webhook pattern's receiver: answers every POST the hub sends `204` on connections
/// counted like the clients' (the hub's requests are what it receives), and counts the
/// deliveries in the bodies (the JSON envelope).
async fn receiver(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Histogram, LabError> {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                conns.spawn(receive(stream, shared.clone(), stop.clone()));
            }
            _ = stop.cancelled() => break,
        }
    }
    let mut latency = Histogram::new();
    while let Some(joined) = conns.join_next().await {
        if let Ok(h) = joined {
            latency.merge(&h);
        }
    }
    Ok(latency)
}

/// One connection of the hub's webhook sender: HTTP/1.1 requests with a `Content-Length` body.
async fn receive(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Histogram {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tally = Tally {
        latency: Histogram::new(),
    };
    let mut stream = plexus_client::Counted::new(stream, shared.counter.clone());
    shared.open.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::with_capacity(4096);
    'requests: loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::select! {
                n = stream.read_buf(&mut buf) => n,
                _ = stop.cancelled() => break 'requests,
            };
            if !matches!(n, Ok(n) if n > 0) {
                break 'requests;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length = super::content_length(&head);
        while buf.len() < head_end + length {
            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                break 'requests;
            }
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        tally.deliveries_in(&buf[head_end..head_end + length], &shared);
        buf.advance(head_end + length);
        if stream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
    tally.latency
}

/// Starts the receiver and one webhook per client on `topic`; the webhooks' ids go to `hooks`
/// as they are made, so the caller deletes them whatever happens.
async fn start_webhooks(
    client: &Client,
    topic: &str,
    spec: &LabSpec,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<Result<Histogram, LabError>>,
    hooks: &mut Vec<String>,
) -> Result<(), LabError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LabError::Io(format!("cannot bind the webhook receiver: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?;
    tasks.spawn(receiver(listener, shared.clone(), stop.clone()));
    for i in 0..spec.clients {
        let settings = serde_json::json!({
            "url": format!("http://{addr}/{i}"),
            "topics": [topic],
            "since": "1",
        });
        match client.create_webhook(&settings).await {
            Ok(created) => {
                if let Some(id) = created["id"].as_str() {
                    hooks.push(id.to_owned());
                }
            }
            Err(plexus_client::Error::Problem(p)) if p.kind.ends_with("address-not-allowed") => {
                return Err(LabError::Run(
                    "webhook: the hub refuses webhooks to loopback, where the lab's receiver listens; add \"127.0.0.1/32\" to webhooks.allow_networks to measure this pattern".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        shared.ready.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Where a run's figures and progress go, and how it ends early.
pub struct Sink<'a> {
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    pub cpu: Cpu,
    /// Cancelled: the run stops at once (the hub is shutting down).
    pub cancel: CancellationToken,
}

/// Measures every pattern of `spec` in turn against the hub `client` reaches, on topics
/// `{topic_prefix}-{pattern}` (fresh ones: a run id makes them private).
pub async fn run(
    client: &Client,
    spec: &LabSpec,
    topic_prefix: &str,
    sink: &Sink<'_>,
) -> Result<BTreeMap<String, PatternResult>, LabError> {
    let mut results = BTreeMap::new();
    for &pattern in &spec.patterns {
        let topic = format!("{topic_prefix}-{pattern}");
        let result = measure(client, pattern, &topic, spec, sink).await?;
        (sink.progress)(Progress::Done {
            pattern: pattern.name().to_owned(),
            result: result.clone(),
        });
        results.insert(pattern.name().to_owned(), result);
    }
    Ok(results)
}

/// [`measure_inner`] until it ends or the run is cancelled, then the webhooks it made are
/// deleted, whatever happened (the hub would otherwise retry a gone receiver for days).
async fn measure(
    client: &Client,
    pattern: LabPattern,
    topic: &str,
    spec: &LabSpec,
    sink: &Sink<'_>,
) -> Result<PatternResult, LabError> {
    let mut hooks = Vec::new();
    let result = tokio::select! {
        r = measure_inner(client, pattern, topic, spec, sink, &mut hooks) => r,
        _ = sink.cancel.cancelled() => Err(LabError::Run("the run was cancelled".into())),
    };
    for id in hooks {
        if let Err(e) = client.delete_webhook(&id).await {
            tracing::warn!(webhook = %id, error = %e, "the lab cannot delete its webhook");
        }
    }
    result
}

async fn measure_inner(
    client: &Client,
    pattern: LabPattern,
    topic: &str,
    spec: &LabSpec,
    sink: &Sink<'_>,
    hooks: &mut Vec<String>,
) -> Result<PatternResult, LabError> {
    (sink.progress)(Progress::Started {
        pattern: pattern.name().to_owned(),
        clients: spec.clients,
    });
    // The warm-up makes the topic exist, so a poll of it is an empty page, not a 404.
    client
        .publish(topic, "warm-up", &PublishOptions::default())
        .await?;
    let shared = Arc::new(Shared {
        counter: Arc::new(Counter::default()),
        requests: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        open: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    // Dropped on any early return: every client task is aborted with it.
    let mut tasks = JoinSet::new();
    if pattern == LabPattern::Webhook {
        start_webhooks(client, topic, spec, &shared, &stop, &mut tasks, hooks).await?;
    }
    for i in 0..spec.clients {
        if pattern == LabPattern::Webhook {
            break;
        }
        tasks.spawn(client_task(
            client.clone(),
            pattern,
            topic.to_owned(),
            i,
            spec.clone(),
            shared.clone(),
            stop.clone(),
        ));
    }
    let connecting = Instant::now();
    while shared.ready.load(Ordering::Relaxed) < spec.clients as u64 {
        if let Some(Ok(Err(e))) = tasks.try_join_next() {
            return Err(e);
        }
        if connecting.elapsed() > Duration::from_secs(30) {
            return Err(LabError::Run(format!(
                "{pattern}: only {} of {} clients connected within 30 s",
                shared.ready.load(Ordering::Relaxed),
                spec.clients
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !matches!(pattern, LabPattern::ShortPoll | LabPattern::Webhook) {
        // A stream or a held poll is listening once the hub counts it as a subscriber.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.topic(topic).await?.subscribers < spec.clients as u64 {
            if Instant::now() > deadline {
                return Err(LabError::Run(format!(
                    "{pattern}: the hub does not count {} subscribers",
                    spec.clients
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let messages = spec.messages();
    let pad = "x".repeat(spec.size.saturating_sub(21));
    let every = Duration::from_secs_f64(1.0 / spec.rate);
    let (sent0, received0) = (shared.counter.sent(), shared.counter.received());
    let requests0 = shared.requests.load(Ordering::Relaxed);
    let cpu0 = process_cpu_s();
    let started = tokio::time::Instant::now();
    let mut last_tick = Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until(started + every.mul_f64(i as f64)).await;
        if let Some(Ok(Err(e))) = tasks.try_join_next() {
            return Err(e);
        }
        let body = format!("{:020} {pad}", now_nanos());
        client
            .publish(topic, body, &PublishOptions::default())
            .await?;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            (sink.progress)(Progress::Tick {
                pattern: pattern.name().to_owned(),
                published: i + 1,
                messages,
                deliveries: shared.deliveries.load(Ordering::Relaxed),
            });
        }
    }
    tokio::time::sleep_until(started + spec.duration).await;
    let sent = shared.counter.sent() - sent0;
    let received = shared.counter.received() - received0;
    let requests = shared.requests.load(Ordering::Relaxed) - requests0;
    let cpu1 = process_cpu_s();
    let connections = shared.open.load(Ordering::Relaxed);
    // Drain: until everything came, or nothing moved for two poll intervals (at least 2 s).
    let expected = messages * spec.clients as u64;
    let quiet = (spec.poll_interval * 2).max(Duration::from_secs(2));
    let mut last = (shared.deliveries.load(Ordering::Relaxed), Instant::now());
    loop {
        let got = shared.deliveries.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut latency = Histogram::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(h)) => latency.merge(&h),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LabError::Run(format!("{pattern}: a client failed: {e}"))),
        }
    }
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let per = |n: u64| {
        if deliveries == 0 {
            0.0
        } else {
            n as f64 / deliveries as f64
        }
    };
    Ok(PatternResult {
        clients: spec.clients,
        deliveries,
        lost: expected.saturating_sub(deliveries),
        latency_ms: Latency {
            p50: latency.quantile(0.5),
            p99: latency.quantile(0.99),
        },
        requests_per_message: per(requests),
        bytes_per_message: per(sent + received),
        bytes_received_per_message: per(received),
        cpu_s: match (sink.cpu, cpu0, cpu1) {
            // Clock ticks are hundredths of a second: no more digits than that.
            (Cpu::ThisProcess, Some(a), Some(b)) => Some(((b - a) * 100.0).round() / 100.0),
            _ => None,
        },
        connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_cpu_time_is_read_and_grows() {
        let before = process_cpu_s().expect("/proc/self/stat");
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = process_cpu_s().expect("/proc/self/stat");
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn complete_events_and_frames_are_counted_and_pings_answered() {
        let shared = Shared {
            counter: Arc::new(Counter::default()),
            requests: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            open: AtomicU64::new(0),
        };
        let mut tally = Tally {
            latency: Histogram::new(),
        };
        let stamp = format!("{:020}", now_nanos());
        let mut sse = BytesMut::from(
            format!("data: {{\"data\":\"{stamp} x\"}}\n\ndata: {{\"data\":\"{stamp}").as_bytes(),
        );
        drain_events(&mut sse, &mut tally, &shared);
        assert_eq!(shared.deliveries.load(Ordering::Relaxed), 1);
        assert!(sse.starts_with(b"data: {"), "the partial event is kept");
        let text = format!("{{\"op\":\"message\",\"data\":\"{stamp}\"}}");
        let mut ws = BytesMut::new();
        ws.extend_from_slice(&[0x89, 2, b'h', b'i', 0x81, text.len() as u8]);
        ws.extend_from_slice(text.as_bytes());
        let mut pongs = Vec::new();
        drain_frames(&mut ws, &mut tally, &shared, &mut pongs);
        assert_eq!(shared.deliveries.load(Ordering::Relaxed), 2);
        assert_eq!(pongs, [0x8a, 0x82, 0, 0, 0, 0, b'h', b'i']);
        assert!(ws.is_empty());
    }
}
