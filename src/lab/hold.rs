//! `plexus bench hold`: zero-loss long polling through hold mode (docs/API.md, hold mode).
//! Many clients long-poll a GRIP backend through `plexus sidecar --app` while one message a
//! second is published; the backend turns each client's last id into the channel's `prev-id`,
//! the way a GRIP app keeps its clients gap-free. Counted: messages lost, delivered twice,
//! HTTP requests per delivered message, publish-to-client latency. The baseline, measured in
//! the same run with the same clients, is the hub's own long poll (`since=` the last seq).
//!
//! The hub runs in this process, the backend too (an axum handler, no logic beyond the
//! instruction), the sidecar is a child `plexus sidecar` of this binary. The clients speak
//! plain HTTP/1.1 on one keep-alive connection each (a few lines over a `TcpStream`: the
//! lab names no HTTP client library), so both targets get exactly the same client.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::LabError;
use crate::config::ServeArgs;

/// What `plexus bench hold` measures.
#[derive(Debug, Clone)]
pub struct HoldBench {
    /// Concurrent long-poll clients.
    pub clients: usize,
    /// Seconds of publishing, one message a second.
    pub seconds: u64,
}

/// One client's HTTP/1.1 keep-alive connection.
struct Conn {
    io: BufReader<TcpStream>,
}

/// What one answer carried: its status, the `Plexus-Seq` header, the body.
struct Answer {
    status: u16,
    seq: Option<u64>,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(stream),
        })
    }

    /// GET `path`; the answer must have a `Content-Length` (both targets' answers do).
    async fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
        self.io.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("a status line was expected, got {line:?}")))?;
        let (mut length, mut seq) = (None, None);
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(bad("the connection closed in the head".into()));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "plexus-seq" => seq = value.parse::<u64>().ok(),
                "transfer-encoding" => return Err(bad("a chunked answer".into())),
                _ => {}
            }
        }
        let mut body = vec![0; length.ok_or_else(|| bad("no content-length".into()))?];
        self.io.read_exact(&mut body).await?;
        Ok(Answer { status, seq, body })
    }
}

/// The GRIP backend: `GET /poll?last=N` holds the request on channel `hold` from `N`.
async fn backend_poll(
    State(asked): State<Arc<AtomicU64>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (HeaderMap, &'static str) {
    asked.fetch_add(1, Ordering::Relaxed);
    let last = q.get("last").map(String::as_str).unwrap_or("0");
    let mut headers = HeaderMap::new();
    let channel = format!("hold; prev-id={last}");
    for (name, value) in [
        ("content-type", "text/plain"),
        ("grip-hold", "response"),
        ("grip-channel", channel.as_str()),
        ("grip-timeout", "55"),
    ] {
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    }
    (headers, "timeout\n")
}

/// What one target's run gave.
#[derive(Default)]
struct Tally {
    requests: u64,
    /// Each client's received seqs, in arrival order.
    received: Vec<Vec<u64>>,
    /// Publish-to-client, microseconds.
    latencies: Vec<u64>,
    errors: u64,
}

impl Tally {
    fn quantile(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i] as f64 / 1000.0
    }
}

/// Which server the clients long-poll.
#[derive(Clone, Copy)]
enum Target {
    /// The hub's own long poll of `topic`.
    Hub,
    /// The sidecar in hold mode (the backend names the channel).
    Hold,
}

/// Runs `clients` long-poll loops against `addr` from seq `first` until each has
/// `messages` messages or `deadline` passes; a publisher goes meanwhile (see [`run`]).
async fn client_loop(
    addr: String,
    target: Target,
    topic: String,
    first: u64,
    messages: usize,
    epoch: Instant,
    deadline: tokio::time::Instant,
) -> (u64, Vec<u64>, Vec<u64>, u64) {
    let (mut requests, mut seqs, mut lat, mut errors) = (0u64, Vec::new(), Vec::new(), 0u64);
    let mut conn: Option<Conn> = None;
    let mut last = first;
    while seqs.len() < messages && tokio::time::Instant::now() < deadline {
        if conn.is_none() {
            match Conn::open(&addr).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let path = match target {
            Target::Hub => format!("/v1/topics/{topic}/messages?since={last}&limit=1&wait=55"),
            Target::Hold => format!("/poll?last={last}"),
        };
        requests += 1;
        let answer = match tokio::time::timeout_at(deadline, c.get(&path)).await {
            Ok(Ok(a)) if a.status == 200 => a,
            Ok(_) => {
                errors += 1;
                conn = None;
                continue;
            }
            Err(_) => break,
        };
        let now = epoch.elapsed().as_micros() as u64;
        let got = match target {
            Target::Hold => answer.seq.map(|s| (s, answer.body)),
            Target::Hub => serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|page| {
                    let m = page["messages"].get(0)?.clone();
                    Some((m["seq"].as_u64()?, m["data"].as_str()?.as_bytes().to_vec()))
                }),
        };
        // An answer without a message (a timeout) asks again from the same place.
        let Some((seq, body)) = got else { continue };
        let sent: u64 = String::from_utf8_lossy(&body).parse().unwrap_or(now);
        lat.push(now.saturating_sub(sent));
        seqs.push(seq);
        last = seq;
    }
    (requests, seqs, lat, errors)
}

/// One target: the clients start, then `seconds` messages go out one a second.
async fn measure(
    args: &HoldBench,
    target: Target,
    addr: &str,
    hub: &plexus_client::Client,
    topic: &str,
    asked: Option<&AtomicU64>,
) -> Result<Tally, LabError> {
    let messages = args.seconds as usize;
    // The first message exists before any client: clients start from its seq, a cursor.
    let first = hub.publish(topic, "0", &Default::default()).await?.seq;
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds + 60);
    let before = asked.map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(client_loop(
                addr.to_owned(),
                target,
                topic.to_owned(),
                first,
                messages,
                epoch,
                deadline,
            ))
        })
        .collect();
    // Publishing starts once every client is held (hold mode: the backend answered each);
    // with a cursor nothing would be lost either way, but the latency would count the wait.
    let settle = Instant::now() + Duration::from_secs(30);
    match asked {
        Some(asked) => {
            while asked.load(Ordering::Relaxed) < before + args.clients as u64
                && Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        None => {
            while hub.topic(topic).await.map(|t| t.subscribers).unwrap_or(0) < args.clients as u64
                && Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let start = tokio::time::Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until(start + Duration::from_secs(i as u64)).await;
        let sent = epoch.elapsed().as_micros();
        hub.publish(topic, sent.to_string(), &Default::default())
            .await?;
    }
    let mut tally = Tally::default();
    for t in tasks {
        let (requests, seqs, lat, errors) = t.await.map_err(|e| LabError::Run(e.to_string()))?;
        tally.requests += requests;
        tally.received.push(seqs);
        tally.latencies.extend(lat);
        tally.errors += errors;
    }
    Ok(tally)
}

/// Lost (expected but never received), duplicates, and the messages delivered.
fn count(tally: &Tally, first: u64, messages: u64) -> (u64, u64, u64) {
    let (mut lost, mut dup, mut delivered) = (0, 0, 0);
    for seqs in &tally.received {
        let distinct: HashSet<u64> = seqs.iter().copied().collect();
        dup += (seqs.len() - distinct.len()) as u64;
        let expected = (first + 1)..=(first + messages);
        delivered += expected.clone().filter(|s| distinct.contains(s)).count() as u64;
        lost += expected.filter(|s| !distinct.contains(s)).count() as u64;
    }
    (lost, dup, delivered)
}

pub async fn run(args: HoldBench) -> Result<(), LabError> {
    if args.clients == 0 || args.seconds == 0 {
        return Err(LabError::Usage(
            "--clients and --seconds must be at least 1".into(),
        ));
    }
    let dir = super::temp_dir("hold")?;
    let hub = super::spawn_hub(&super::hub_config(ServeArgs {
        data_dir: Some(dir.join("hub")),
        ..ServeArgs::default()
    })?)
    .await?;
    let hub_addr = hub.addr().to_string();
    let hub_base = format!("http://{hub_addr}");
    let asked = Arc::new(AtomicU64::new(0));
    let backend = super::loopback().await?;
    let backend_addr = backend
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?;
    let app = Router::new()
        .route("/poll", get(backend_poll))
        .with_state(asked.clone());
    tokio::spawn(async move { axum::serve(backend, app).await });
    let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
    let mut child = Command::new(exe)
        .args(["sidecar", "--hub", &hub_base, "--listen", "127.0.0.1:0"])
        .args(["--app", &format!("http://{backend_addr}"), "--spool-dir"])
        .arg(dir.join("spool"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LabError::Io(format!("cannot start plexus sidecar: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LabError::Io("no sidecar stdout".into()))?;
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .map_err(|e| LabError::Io(e.to_string()))?
        .unwrap_or_default();
    let sidecar_addr = line
        .strip_prefix("listening on http://")
        .ok_or_else(|| LabError::Run(format!("the sidecar printed {line:?}")))?
        .to_owned();
    let client = plexus_client::Client::new(&hub_base)?;
    println!(
        "hold bench: {} long-poll clients, 1 message/s for {} s; hub in-process, sidecar a child process",
        args.clients, args.seconds
    );
    let rows = [
        (
            "hub long poll (baseline)",
            Target::Hub,
            hub_addr.as_str(),
            "direct",
            None,
        ),
        (
            "hold mode via sidecar",
            Target::Hold,
            sidecar_addr.as_str(),
            "hold",
            Some(asked.as_ref()),
        ),
    ];
    let mut per_message = Vec::new();
    for (name, target, addr, topic, asked) in rows {
        let mut tally = measure(&args, target, addr, &client, topic, asked).await?;
        let first = client
            .topic(topic)
            .await?
            .last_seq
            .saturating_sub(args.seconds);
        let (lost, dup, delivered) = count(&tally, first, args.seconds);
        let ratio = tally.requests as f64 / delivered.max(1) as f64;
        per_message.push(ratio);
        let (p50, p99) = (tally.quantile(0.5), tally.quantile(0.99));
        println!(
            "  {name:<26} delivered {delivered:>6}  lost {lost}  twice {dup}  requests {:>6} ({ratio:.3} per message)  latency p50 {:.2} ms  p99 {:.2} ms  errors {}",
            tally.requests, p50, p99, tally.errors
        );
    }
    if let [base, hold] = per_message[..] {
        println!(
            "  requests per message, hold mode / hub: {:.2}x",
            hold / base
        );
    }
    drop(child);
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
