//! `plexus bench http2`: HTTP/1.1 keep-alive against HTTP/2 on the same hub, in one run —
//! publish throughput at the same client concurrency, and SSE fan-out to N subscriptions —
//! with the connections each opened and the bytes on the wire per delivered message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServeArgs};
use crate::server::ConnStats;

#[derive(Args, Debug)]
pub struct Http2Args {
    /// Concurrent publishers (HTTP/1.1: one connection each; HTTP/2: streams on one connection)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds each publish measurement lasts
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// SSE subscriptions for the fan-out comparison
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages published for the fan-out comparison
    #[arg(long, default_value_t = 100)]
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

fn client(http2: bool) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX);
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    builder.build().map_err(|e| e.to_string())
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
    args: &Http2Args,
) -> Result<Measured, String> {
    // HTTP/1.1: a client per publisher, so each keeps its own connection; HTTP/2: one client,
    // whose one connection carries every publisher's streams.
    let shared = client(true)?;
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let before = (stats.accepted.load(Ordering::Relaxed), loopback_bytes());
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let client = if http2 {
            shared.clone()
        } else {
            client(false)?
        };
        let url = format!("{base}/v1/topics/h2bench-{}/messages", i % 8);
        let (ok, stop) = (ok.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(vec![b'x'; 100]);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.post(&url).body(body.clone()).send().await
                    && r.status().is_success()
                {
                    let _ = r.bytes().await;
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
    args: &Http2Args,
    topic: &str,
) -> Result<Measured, String> {
    let shared = client(true)?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let before = (stats.accepted.load(Ordering::Relaxed), loopback_bytes());
    let mut ready = Vec::new();
    for _ in 0..args.subscribers {
        let client = if http2 {
            shared.clone()
        } else {
            client(false)?
        };
        let response = client
            .get(format!("{base}/v1/topics/{topic}/sse"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        ready.push(response);
    }
    let mut tasks = Vec::new();
    for response in ready {
        let (received, stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
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
    let publisher = client(false)?;
    let started = Instant::now();
    for i in 0..args.messages {
        publisher
            .post(format!("{base}/v1/topics/{topic}/messages"))
            .body(format!("message {i:06} {}", "x".repeat(80)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
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

pub async fn run(args: Http2Args) -> Result<(), String> {
    let dir = super::temp_dir("http2")?;
    let config = Config::load(&ServeArgs {
        data_dir: Some(dir.clone()),
        storage: Some("memory".into()),
        rate: Some(0.0),
        ..ServeArgs::default()
    })
    .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let stats = Arc::new(ConnStats::default());
    let store = super::super::serve::open_store(&config).await?;
    let app = super::super::serve::app(&config, store, stop.clone(), stop.clone(), stats.clone())?;
    let base = super::spawn_server_with(app, stop.clone(), stats.clone()).await?;
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
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
