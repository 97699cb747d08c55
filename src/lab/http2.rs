//! HTTP/1.1 keep-alive against HTTP/2 on the same hub (in this process), in one run — publish
//! throughput at the same client concurrency, and SSE fan-out to N subscriptions — with the
//! connections each opened and the bytes on the wire per delivered message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_client::{Client, PublishOptions, Transport};
use tokio_util::sync::CancellationToken;

use super::LabError;
use crate::app::App;
use crate::config::ServeArgs;
use crate::server::ConnStats;

/// What `plexus bench http2` measures.
#[derive(Debug, Clone)]
pub struct Http2Bench {
    /// Concurrent publishers (HTTP/1.1: one connection each; HTTP/2: streams on one connection).
    pub concurrency: usize,
    /// Seconds each publish measurement lasts.
    pub seconds: u64,
    /// SSE subscriptions for the fan-out comparison.
    pub subscribers: usize,
    /// Messages published for the fan-out comparison.
    pub messages: usize,
}

/// Bytes sent on the loopback interface so far (each byte crosses `lo` once).
fn loopback_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn client(base: &str, http2: bool) -> Result<Client, LabError> {
    let mut builder = Client::builder(base).pool_max_idle_per_host(usize::MAX);
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    Ok(builder.build()?)
}

struct Measured {
    per_second: f64,
    connections: u64,
    bytes_per_unit: f64,
}

async fn publish(
    base: &str,
    stats: &ConnStats,
    http2: bool,
    args: &Http2Bench,
) -> Result<Measured, LabError> {
    // HTTP/1.1: a client per publisher, so each keeps its own connection; HTTP/2: one client,
    // whose one connection carries every publisher's streams.
    let shared = client(base, true)?;
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let before = (stats.accepted.load(Ordering::Relaxed), loopback_bytes());
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let client = if http2 {
            shared.clone()
        } else {
            client(base, false)?
        };
        let topic = format!("h2bench-{}", i % 8);
        let (ok, stop) = (ok.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(vec![b'x'; 100]);
            let options = PublishOptions::default();
            while !stop.load(Ordering::Relaxed) {
                if client.publish(&topic, body.clone(), &options).await.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = ok.load(Ordering::Relaxed);
    Ok(Measured {
        per_second: done as f64 / secs,
        connections: stats.accepted.load(Ordering::Relaxed) - before.0,
        bytes_per_unit: (loopback_bytes() - before.1) as f64 / done.max(1) as f64,
    })
}

async fn fanout(
    base: &str,
    stats: &ConnStats,
    http2: bool,
    args: &Http2Bench,
    topic: &str,
) -> Result<Measured, LabError> {
    let shared = client(base, true)?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let before = (stats.accepted.load(Ordering::Relaxed), loopback_bytes());
    let mut ready = Vec::new();
    for _ in 0..args.subscribers {
        let client = if http2 {
            shared.clone()
        } else {
            client(base, false)?
        };
        ready.push(client.subscribe_bytes(topic, None, Transport::Sse).await?);
    }
    let mut tasks = Vec::new();
    for mut body in ready {
        let (received, stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    chunk = body.next() => chunk,
                    _ = stop.cancelled() => return,
                };
                let Some(Ok(chunk)) = chunk else { return };
                carry.extend_from_slice(&chunk);
                let n = carry.windows(7).filter(|w| w == b"\"data\":").count() as u64;
                received.fetch_add(n, Ordering::Relaxed);
                // Keep a tail so a pattern split across chunks is counted once, later.
                let keep = carry.len().min(6);
                carry.drain(..carry.len() - keep);
            }
        }));
    }
    let publisher = client(base, false)?;
    let started = Instant::now();
    for i in 0..args.messages {
        publisher
            .publish(
                topic,
                format!("message {i:06} {}", "x".repeat(80)),
                &PublishOptions::default(),
            )
            .await?;
    }
    let expected = (args.subscribers * args.messages) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(Measured {
        per_second: got as f64 / secs,
        connections: stats.accepted.load(Ordering::Relaxed) - before.0,
        bytes_per_unit: (loopback_bytes() - before.1) as f64 / got.max(1) as f64,
    })
}

pub async fn run(args: Http2Bench) -> Result<(), LabError> {
    let dir = super::temp_dir("http2")?;
    let config = super::hub_config(ServeArgs {
        data_dir: Some(dir.clone()),
        storage: Some("memory".into()),
        ..ServeArgs::default()
    })?;
    let app = App::build(&config).await?;
    // The accept loop's counters: connections opened per measurement.
    let stats = app.connections.clone();
    let hub = app.spawn(super::loopback().await?)?;
    let base = hub.url().to_owned();
    println!(
        "http2: publish with {} concurrent publishers for {} s; SSE fan-out to {} subscriptions x {} messages (hub in-process, memory storage)",
        args.concurrency, args.seconds, args.subscribers, args.messages
    );
    for http2 in [false, true] {
        let name = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        let m = publish(&base, &stats, http2, &args).await?;
        println!(
            "  publish  {name:<8} {:>9.0} req/s   {:>5} connections   {:>6.0} bytes on the wire per publish",
            m.per_second, m.connections, m.bytes_per_unit
        );
    }
    for http2 in [false, true] {
        let name = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        let topic = if http2 { "fan-h2" } else { "fan-h1" };
        let m = fanout(&base, &stats, http2, &args, topic).await?;
        println!(
            "  SSE      {name:<8} {:>9.0} deliveries/s   {:>5} connections   {:>6.0} bytes on the wire per delivery",
            m.per_second, m.connections, m.bytes_per_unit
        );
    }
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
