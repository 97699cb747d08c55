//! The cost of `durability = "replicated"`: publish throughput and p50/p99 publish latency
//! of a hub on a Redis with replicas, with the default durability (the baseline) and with
//! `replicated`, on the same Redis in the same run.
//!
//! The Redis is the caller's (`--storage redis://…` or `redis+cluster://…`, with at least
//! one replica per shard); each target publishes to topics of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LabError;
use crate::config::ServeArgs;

/// What `plexus bench replication` measures.
#[derive(Debug, Clone)]
pub struct ReplicationBench {
    /// The Redis (with replicas) both hubs use.
    pub storage: String,
    /// Concurrent publishers, each on its own keep-alive connection.
    pub connections: usize,
    /// Seconds each target is measured (after one second of warm-up).
    pub seconds: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Topics the publishes are spread over.
    pub topics: usize,
}

/// One target's figures.
struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
    failed: u64,
}

/// Publishes to a hub on `storage` with `durability` for the bench's time; its figures.
async fn measure(
    args: &ReplicationBench,
    durability: &str,
    prefix: &str,
) -> Result<Figures, LabError> {
    let dir = super::temp_dir(&format!("replication-{durability}"))?;
    let config = super::hub_config(ServeArgs {
        data_dir: Some(dir.clone()),
        storage: Some(args.storage.clone()),
        durability: Some(durability.to_owned()),
        ..ServeArgs::default()
    })?;
    let hub = super::spawn_hub(&config).await?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let client = plexus_client::Client::builder(hub.url())
            .pool_max_idle_per_host(1)
            .build()?;
        let topic = format!("{prefix}-{}", c % args.topics.max(1));
        let (stop, counting, payload) = (stop.clone(), counting.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let options = plexus_client::PublishOptions::default();
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let done = client.publish(&topic, payload.clone(), &options).await;
                if counting.load(Ordering::Relaxed) {
                    match done {
                        Ok(_) => latencies.push(started.elapsed()),
                        Err(_) => failed += 1,
                    }
                }
            }
            (latencies, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (l, f) = task
            .await
            .map_err(|e| LabError::Run(format!("a publisher failed: {e}")))?;
        latencies.extend(l);
        failed += f;
    }
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Figures {
        rps: latencies.len() as f64 / secs,
        p50: at(0.50),
        p99: at(0.99),
        failed,
    })
}

pub async fn run(args: ReplicationBench) -> Result<(), LabError> {
    if !args.storage.starts_with("redis") {
        return Err(LabError::Usage(
            "--storage must name a Redis with replicas (redis://… or redis+cluster://…)".into(),
        ));
    }
    println!(
        "replication: {} connections, {} topics, {} s each, {}-byte payloads, storage {}",
        args.connections, args.topics, args.seconds, args.size, args.storage
    );
    let run = format!("{:x}", std::process::id());
    let base = measure(&args, "process", &format!("bench-{run}-default")).await?;
    let rep = measure(&args, "replicated", &format!("bench-{run}-replicated")).await?;
    let show = |name: &str, f: &Figures| {
        println!(
            "  {name:<22} {:>9.0} publishes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} failed)",
            f.rps,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.failed
        );
    };
    show("default (process):", &base);
    show("replicated:", &rep);
    println!(
        "  ratio replicated / default: throughput {:.2}, p50 {:.2}, p99 {:.2}",
        rep.rps / base.rps,
        rep.p50.as_secs_f64() / base.p50.as_secs_f64().max(1e-9),
        rep.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9)
    );
    Ok(())
}
