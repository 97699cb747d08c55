//! N subscribers on one topic, M messages published, measured against the hub and, in the
//! same run, against the raw TCP loop ([`super::raw`]). Both servers run as child processes
//! (`plexus serve`, `plexus bench raw-server`) so their memory can be read from /proc; the
//! subscribers and the publishers run here, through `plexus-client`. Streaming subscribers
//! use [`plexus_client::Client::subscribe_socket`], a plain socket each that scans the bytes
//! for `"data":"` without decoding them: a lean client, so the load generator steals little
//! CPU from the servers it measures.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use indicatif::{ProgressBar, ProgressStyle};
use plexus_client::{Client, PublishOptions, Transport};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::LabError;

/// How subscribers receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Sse,
    /// SSE over HTTP/2 (h2c), [`H2_STREAMS`] subscriptions per connection.
    SseH2,
    Ws,
    LongPoll,
}

/// SSE subscriptions per HTTP/2 connection with `Via::SseH2`.
pub const H2_STREAMS: usize = 100;

/// What `plexus bench fanout` measures.
#[derive(Debug, Clone)]
pub struct FanoutBench {
    pub via: Via,
    /// Concurrent subscribers on one topic.
    pub subscribers: usize,
    /// Messages published.
    pub messages: usize,
    /// Payload size in bytes (at least 21: a timestamp leads it).
    pub size: usize,
    /// Messages per second; 0 publishes as fast as the publishers can (saturated).
    pub rate: f64,
    /// Storage engine of the hub under test (`redis://…` to run several nodes on one Redis).
    pub storage: String,
    /// Hub nodes sharing the storage; subscribers and publishers are spread over them.
    pub nodes: usize,
    /// Concurrent publishers when saturated (one paced publisher with a rate).
    pub publishers: usize,
    /// Skip the raw TCP loop baseline.
    pub no_baseline: bool,
    /// Hub and baseline runs, alternating; the ratios reported are the medians.
    pub repeat: usize,
    /// Compare the median ratios with the targets and fail when one falls short.
    pub check: Option<super::check::Check>,
}

/// Bytes a payload's stamp takes: the send time, a space, the message index, a space.
const STAMP: usize = 32;

/// Latencies, every sample kept (microseconds), so quantiles are exact: log buckets of 5 %
/// made a ratio of two p99s move in steps of 5 % (1.16, then 1.22 around a 1.2 target).
#[derive(Clone)]
pub(super) struct Histogram {
    samples: Vec<u32>,
    max_us: u64,
}

impl Histogram {
    pub(super) fn new() -> Self {
        Histogram {
            samples: Vec::new(),
            max_us: 0,
        }
    }

    pub(super) fn record(&mut self, us: u64) {
        self.samples.push(us.min(u32::MAX as u64) as u32);
        self.max_us = self.max_us.max(us);
    }

    pub(super) fn merge(&mut self, other: &Histogram) {
        self.samples.extend_from_slice(&other.samples);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile in milliseconds: the smallest sample with at least `q` of all
    /// samples at or below it.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let n = self.samples.len();
        let k = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        let mut sorted = self.samples.clone();
        let (_, kth, _) = sorted.select_nth_unstable(k);
        *kth as f64 / 1000.0
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The send time a payload starts with (20 digits of nanoseconds), and the message's index
/// (10 digits after a space).
fn stamp(payload: &[u8]) -> (Option<u128>, Option<usize>) {
    let digits = |from: usize, to: usize| {
        payload
            .get(from..to)
            .and_then(|d| std::str::from_utf8(d).ok())
    };
    (
        digits(0, 20).and_then(|d| d.parse().ok()),
        digits(21, 31).and_then(|d| d.parse().ok()),
    )
}

/// Counts one delivery of the message stamped at the start of `payload`; a message index seen
/// before on this subscription counts as a duplicate.
fn count_delivery(payload: &[u8], stats: &mut SubStats, shared: &Shared) {
    let (sent, index) = stamp(payload);
    if let Some(sent) = sent {
        let us = now_nanos().saturating_sub(sent) / 1000;
        stats.latency.record(us as u64);
    }
    if let Some(i) = index {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if stats.seen.len() <= word {
            stats.seen.resize(word + 1, 0);
        }
        if stats.seen[word] & bit != 0 {
            stats.duplicates += 1;
            return;
        }
        stats.seen[word] |= bit;
    }
    stats.received += 1;
    shared.received.fetch_add(1, Ordering::Relaxed);
}

/// Counts the deliveries in `record` (each carries `"data":"<stamp>`).
fn count_deliveries(record: &[u8], stats: &mut SubStats, shared: &Shared) {
    let mut rest = record;
    while let Some(i) = find(rest, b"\"data\":\"") {
        let start = i + 8;
        count_delivery(&rest[start..], stats, shared);
        rest = &rest[start..];
    }
    shared
        .last_delivery
        .fetch_max(now_nanos() as u64, Ordering::Relaxed);
}

/// The `next` cursor of a poll answer (`{"messages":[…],"next":"…"}`), undecoded.
fn page_next(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"next\":\"";
    let start = body.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&body[start..start + len]).into_owned())
}

struct SubStats {
    /// Distinct messages received.
    received: u64,
    /// Messages received again.
    duplicates: u64,
    /// A bit per message index received.
    seen: Vec<u64>,
    requests: u64,
    latency: Histogram,
}

struct Shared {
    received: AtomicU64,
    ready: AtomicUsize,
    last_delivery: AtomicU64,
}

async fn subscriber(
    client: Client,
    via: Via,
    raw: bool,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<SubStats, plexus_client::Error> {
    let mut stats = SubStats {
        received: 0,
        duplicates: 0,
        seen: Vec::new(),
        requests: 0,
        latency: Histogram::new(),
    };
    let permit = gate.acquire_owned().await;
    let mut buf = BytesMut::with_capacity(8192);
    match via {
        Via::Sse => {
            // The raw loop answers any path: both servers get the hub's request.
            let mut stream = client
                .subscribe_socket("bench", None, Transport::Sse)
                .await?;
            while find(&buf, b"retry: 2000").is_none() {
                if stream.read(&mut buf).await? == 0 {
                    return Ok(stats);
                }
            }
            buf.clear();
            shared.ready.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            loop {
                tokio::select! {
                    n = stream.read(&mut buf) => if n? == 0 { break },
                    _ = stop.cancelled() => break,
                }
                while let Some(i) = find(&buf, b"\n\n") {
                    count_deliveries(&buf[..i], &mut stats, &shared);
                    buf.advance(i + 2);
                }
            }
        }
        Via::SseH2 => {
            let mut stream = client
                .subscribe_bytes("bench", None, Transport::Sse)
                .await?;
            let mut ready = Some(permit);
            loop {
                let chunk = tokio::select! {
                    c = stream.next() => match c {
                        Some(c) => c?,
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                };
                buf.extend_from_slice(&chunk);
                if ready.is_some() {
                    if let Some(i) = find(&buf, b"retry: 2000\n\n") {
                        buf.advance(i + 13);
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                        ready = None;
                    }
                    continue;
                }
                while let Some(i) = find(&buf, b"\n\n") {
                    count_deliveries(&buf[..i], &mut stats, &shared);
                    buf.advance(i + 2);
                }
            }
        }
        Via::Ws => {
            let mut stream = client
                .subscribe_socket("bench", Some("now"), Transport::WebSocket)
                .await?;
            let mut ready = raw;
            let mut permit = Some(permit);
            if ready {
                shared.ready.fetch_add(1, Ordering::Relaxed);
                permit.take();
            }
            loop {
                // Unmasked server frames: opcode, 7/16/64-bit length, payload.
                while buf.len() >= 2 {
                    let (len, header) = match buf[1] & 0x7f {
                        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                        127 if buf.len() >= 10 => {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(&buf[2..10]);
                            (u64::from_be_bytes(b) as usize, 10)
                        }
                        126 | 127 => break,
                        n => (n as usize, 2),
                    };
                    if buf.len() < header + len {
                        break;
                    }
                    let payload = &buf[header..header + len];
                    if !ready && find(payload, b"\"op\":\"ok\"").is_some() {
                        ready = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                        permit.take();
                    } else if buf[0] & 0x0f == 1 {
                        count_deliveries(payload, &mut stats, &shared);
                    }
                    buf.advance(header + len);
                }
                tokio::select! {
                    n = stream.read(&mut buf) => if n? == 0 { break },
                    _ = stop.cancelled() => break,
                }
            }
        }
        Via::LongPoll => {
            // A connection of its own, polled again with each answer's `next` at once.
            let mut poller = client.poll_socket("bench").await?;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let mut cursor = "now".to_owned();
            loop {
                let body = tokio::select! {
                    body = poller.poll(&cursor, Duration::from_secs(30)) => body?,
                    _ = stop.cancelled() => break,
                };
                // Counted when answered: the poll still waiting at the end is not a request served.
                stats.requests += 1;
                count_deliveries(&body, &mut stats, &shared);
                match page_next(&body) {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
        }
    }
    Ok(stats)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Starts `plexus <args…>` and waits for its `listening on` line; returns its URL.
pub(super) async fn spawn_server(args: &[&str]) -> Result<(Child, String), LabError> {
    let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LabError::Io(format!("cannot start the server: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LabError::Io("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| LabError::Io(e.to_string()))?
    {
        if let Some(addr) = line.strip_prefix("listening on http://") {
            return Ok((child, format!("http://{addr}")));
        }
    }
    Err(LabError::Run("the server exited before listening".into()))
}

struct Report {
    deliveries_per_s: f64,
    publishes_per_s: f64,
    latency: Histogram,
    lost: u64,
    duplicates: u64,
    requests: u64,
    rss_idle_kib: u64,
    rss_base_kib: u64,
    rss_end_kib: u64,
}

async fn publish_all(clients: &[Client], args: &FanoutBench) -> Result<(), LabError> {
    let started = Instant::now();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let pad = "x".repeat(args.size.saturating_sub(STAMP));
    let publishers = if interval.is_some() {
        1
    } else {
        args.publishers.max(1)
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (client, pad, next) = (
            clients[p % clients.len()].clone(),
            pad.clone(),
            next.clone(),
        );
        let total = args.messages;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), plexus_client::Error>(());
                }
                if let Some(every) = interval {
                    let due = started + every * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = format!("{:020} {i:010} {pad}", now_nanos());
                client
                    .publish("bench", body, &PublishOptions::default())
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| LabError::Run(e.to_string()))??;
    }
    Ok(())
}

async fn measure(args: &FanoutBench, raw: bool) -> Result<Report, LabError> {
    let mut nodes = Vec::new();
    for node in 0..if raw { 1 } else { args.nodes.max(1) } {
        nodes.push(spawn_node(args, raw, node).await?);
    }
    let pids: Vec<u32> = nodes.iter().map(|(c, _)| c.id().unwrap_or(0)).collect();
    // One client per node: its pool serves the publishers and the long polls; streaming
    // subscribers each open a socket of their own.
    let clients = nodes
        .iter()
        .map(|(_, url)| Client::new(url))
        .collect::<Result<Vec<_>, _>>()?;
    // SSE over HTTP/2: one prior-knowledge client per `H2_STREAMS` subscriptions, each
    // client one connection, on the nodes in turn.
    let h2_clients = if args.via == Via::SseH2 {
        (0..args.subscribers.div_ceil(H2_STREAMS))
            .map(|k| {
                Client::builder(&nodes[k % nodes.len()].1)
                    .http2_prior_knowledge()
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let rss = || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    if !raw {
        // The topic exists before anyone subscribes, so the hub's counters can be read.
        clients[0]
            .publish("bench", "warm-up", &PublishOptions::default())
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_base_kib = rss();
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        last_delivery: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(256));
    let via = args.via;
    let subs: Vec<_> = (0..args.subscribers)
        .map(|i| {
            let client = match h2_clients.get(i / H2_STREAMS) {
                Some(c) if via == Via::SseH2 => c.clone(),
                _ => clients[i % clients.len()].clone(),
            };
            tokio::spawn(subscriber(
                client,
                via,
                raw,
                shared.clone(),
                gate.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let bar = ProgressBar::new(args.subscribers as u64);
    bar.set_style(
        ProgressStyle::with_template("  {msg:<24} [{bar:40}] {pos}/{len}")
            .map_err(|e| LabError::Run(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_message(if raw {
        "raw loop: connecting"
    } else {
        "hub: connecting"
    });
    let connecting = Instant::now();
    while shared.ready.load(Ordering::Relaxed) < args.subscribers {
        bar.set_position(shared.ready.load(Ordering::Relaxed) as u64);
        if connecting.elapsed() > Duration::from_secs(120) {
            return Err(LabError::Run(format!(
                "only {} of {} subscribers connected within 120 s",
                shared.ready.load(Ordering::Relaxed),
                args.subscribers
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if args.via == Via::LongPoll {
        // Pollers are ready once the servers (the hubs, or the raw long poll) hold them all.
        loop {
            let mut held = 0;
            for client in &clients {
                held += client.topic("bench").await?.subscribers;
            }
            if held >= args.subscribers as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Idle memory is read 5 s after the last connection, as docs/BENCHMARKS.md defines it:
    // what the connection storm left behind has had time to settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle_kib = rss();
    let expected = (args.subscribers * args.messages) as u64;
    bar.set_length(expected);
    bar.set_position(0);
    bar.set_message(if raw {
        "raw loop: delivering"
    } else {
        "hub: delivering"
    });
    let first_publish = now_nanos() as u64;
    let publishing = Instant::now();
    publish_all(&clients, args).await?;
    let publishes_per_s = args.messages as f64 / publishing.elapsed().as_secs_f64().max(1e-9);
    // Drain: until everything arrived or nothing moved for 5 s.
    let mut last = (shared.received.load(Ordering::Relaxed), Instant::now());
    loop {
        let got = shared.received.load(Ordering::Relaxed);
        bar.set_position(got);
        if got >= expected {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let rss_end_kib = rss();
    stop.cancel();
    let mut latency = Histogram::new();
    let mut received = 0;
    let mut duplicates = 0;
    let mut requests = 0;
    for task in subs {
        if let Ok(Ok(stats)) = task.await {
            latency.merge(&stats.latency);
            received += stats.received;
            duplicates += stats.duplicates;
            requests += stats.requests;
        }
    }
    let span = shared
        .last_delivery
        .load(Ordering::Relaxed)
        .saturating_sub(first_publish) as f64
        / 1e9;
    drop(nodes);
    Ok(Report {
        deliveries_per_s: received as f64 / span.max(1e-9),
        publishes_per_s,
        latency,
        lost: expected.saturating_sub(received),
        duplicates,
        requests,
        rss_idle_kib,
        rss_base_kib,
        rss_end_kib,
    })
}

/// Starts the raw loop, or hub node `index` of the run.
async fn spawn_node(
    args: &FanoutBench,
    raw: bool,
    index: usize,
) -> Result<(Child, String), LabError> {
    if raw && args.via == Via::LongPoll {
        return spawn_server(&["bench", "raw-poll-server", "--listen", "127.0.0.1:0"]).await;
    }
    if raw {
        return spawn_server(&["bench", "raw-server", "--listen", "127.0.0.1:0"]).await;
    }
    spawn_server(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--storage",
        &args.storage,
        "--data-dir",
        &std::env::temp_dir()
            .join(format!("plexus-fanout-{}-{index}", std::process::id()))
            .to_string_lossy(),
        "--retention-messages",
        "1000000",
        "--rate",
        "0",
        "--max-connections-per-client",
        "100000",
    ])
    .await
}

fn print(name: &str, r: &Report, args: &FanoutBench) {
    let per_conn =
        (r.rss_idle_kib.saturating_sub(r.rss_base_kib)) as f64 / args.subscribers.max(1) as f64;
    println!(
        "  {name:<10} {:>8.0} publishes/s {:>11.0} deliveries/s  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  lost {:>6}  dupes {:>4}  RSS {} KiB idle (+{:.1} KiB/conn), {} KiB at end{}",
        r.publishes_per_s,
        r.deliveries_per_s,
        r.latency.quantile(0.5),
        r.latency.quantile(0.99),
        r.latency.max_us as f64 / 1000.0,
        r.lost,
        r.duplicates,
        r.rss_idle_kib,
        per_conn,
        r.rss_end_kib,
        if r.requests > 0 {
            format!(", {} requests answered", r.requests)
        } else {
            String::new()
        }
    );
    // The shape of the latency: a fixed delay shifts every quantile alike, a slower delivery
    // rate stretches the later ones.
    let q = |p: f64| r.latency.quantile(p);
    println!(
        "  {:<10} latency ms: p0.1 {:.2}  p1 {:.2}  p10 {:.2}  p25 {:.2}  p75 {:.2}  p90 {:.2}",
        "",
        q(0.001),
        q(0.01),
        q(0.1),
        q(0.25),
        q(0.75),
        q(0.9)
    );
}

pub async fn run(args: FanoutBench) -> Result<(), LabError> {
    if args.size < STAMP {
        return Err(LabError::Usage(format!(
            "--size must be at least {STAMP} (the payload starts with a timestamp and an index)"
        )));
    }
    if args.nodes > 1 && !args.storage.starts_with("redis") {
        return Err(LabError::Usage(
            "--nodes above 1 needs a shared store: --storage redis://HOST:PORT".into(),
        ));
    }
    if args.check.is_some() && args.no_baseline {
        return Err(LabError::Usage(
            "--check compares with the baseline: leave out --no-baseline".into(),
        ));
    }
    println!(
        "fanout: {} node(s) on {}, via {:?}, {} subscribers, {} messages of {} bytes, {}, {} run(s)",
        args.nodes,
        args.storage,
        args.via,
        args.subscribers,
        args.messages,
        args.size,
        if args.rate > 0.0 {
            format!(
                "{} msgs/s ({} deliveries/s)",
                args.rate,
                args.rate * args.subscribers as f64
            )
        } else {
            "saturated".to_owned()
        },
        args.repeat.max(1)
    );
    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    let mut faults = 0;
    // The hub's own figures, judged against absolute targets: idle KiB per connection, and a
    // long poll's p99 in ms and HTTP requests per delivered message.
    let (mut idle, mut poll_p99, mut poll_requests) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        let hub = measure(&args, false).await?;
        print("hub", &hub, &args);
        faults += hub.lost + hub.duplicates;
        idle.push(
            hub.rss_idle_kib.saturating_sub(hub.rss_base_kib) as f64
                / args.subscribers.max(1) as f64,
        );
        poll_p99.push(hub.latency.quantile(0.99));
        let delivered = (args.messages * args.subscribers) as u64 - hub.lost;
        poll_requests.push(hub.requests as f64 / delivered.max(1) as f64);
        if !args.no_baseline {
            let raw = measure(&args, true).await?;
            print("baseline", &raw, &args);
            faults += raw.lost + raw.duplicates;
            throughput.push(hub.deliveries_per_s / raw.deliveries_per_s.max(1e-9));
            p99.push(hub.latency.quantile(0.99) / raw.latency.quantile(0.99).max(1e-9));
            println!(
                "  ratio hub/baseline: deliveries/s {:.2}, p99 {:.2}",
                throughput[throughput.len() - 1],
                p99[p99.len() - 1]
            );
        }
    }
    if args.no_baseline {
        return Ok(());
    }
    let (throughput, p99) = (
        super::check::median(&throughput),
        super::check::median(&p99),
    );
    println!("  median ratio hub/baseline: deliveries/s {throughput:.2}, p99 {p99:.2}");
    let Some(check) = &args.check else {
        return Ok(());
    };
    // Saturated runs are judged on throughput, paced runs on latency; both lose nothing. Paced
    // long polls are judged on their own p99 and requests per delivery instead (their ratio to
    // the raw long-poll server is reported); SSE runs of 10,000 subscribers or more also on the
    // idle memory per connection (WebSocket's is reported, with no target).
    let mut verdicts = Vec::new();
    if args.via == Via::LongPoll && args.rate > 0.0 {
        verdicts.push(check.verdict("long-poll-p99-ms", super::check::median(&poll_p99)));
        verdicts.push(check.verdict("long-poll-requests", super::check::median(&poll_requests)));
    } else if args.rate > 0.0 {
        verdicts.push(check.verdict("fanout-p99", p99));
    } else {
        verdicts.push(check.verdict("fanout-saturated", throughput));
    }
    if matches!(args.via, Via::Sse | Via::SseH2) && args.subscribers >= 10_000 {
        verdicts.push(check.verdict("idle-kib", super::check::median(&idle)));
    }
    let intact = (
        faults == 0,
        format!(
            "  check {} nothing lost or duplicated: {faults} lost or duplicated deliveries",
            if faults == 0 { "ok  " } else { "FAIL" }
        ),
    );
    verdicts.push(intact);
    super::check::conclude(verdicts)
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    /// Quantiles are exact samples: the smallest with at least that share at or below it.
    #[test]
    fn quantiles_are_exact() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for us in (1..=100u64).rev() {
            if us % 2 == 0 {
                a.record(us * 1000)
            } else {
                b.record(us * 1000)
            }
        }
        a.merge(&b);
        assert_eq!(a.quantile(0.5), 50.0);
        assert_eq!(a.quantile(0.99), 99.0);
        assert_eq!(a.quantile(1.0), 100.0);
        assert_eq!(a.quantile(0.0), 1.0);
        assert_eq!(Histogram::new().quantile(0.99), 0.0);
    }
}
