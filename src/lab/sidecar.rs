//! `plexus bench sidecar`: what `plexus sidecar` adds to a publish and to a delivery, next to
//! the hub alone in the same run, and what the sidecar process costs (CPU per 1,000
//! publishes/s, RSS idle). The hub (`plexus serve`) and the sidecar (`plexus sidecar`) are
//! child processes of this binary, and the load comes from this process: an app, a hub and
//! a sidecar are three processes where they are deployed, and the sidecar's CPU and memory
//! are its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::LabError;

/// What `plexus bench sidecar` measures.
#[derive(Debug, Clone)]
pub struct SidecarBench {
    /// Publishes per second of the open-loop load.
    pub rate: u64,
    /// Seconds each target is measured.
    pub seconds: u64,
    /// Payload size in bytes.
    pub size: usize,
}

/// Latencies in microseconds, sorted on read.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn quantile(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

/// User + system CPU seconds of process `pid` so far (Linux `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Publishes to `base` at `rate`/s for `seconds` (open loop: a late answer never delays the
/// next publish); the latency of each.
async fn publish_load(base: &str, args: &SidecarBench) -> Result<(Latencies, u64), LabError> {
    let http = plexus_client::Client::new(base)?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    let total = args.rate * args.seconds;
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let (http, payload) = (http.clone(), payload.clone());
        let topic = format!("bench{}", i % 4);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            // A `202` (spooled) does not decode as a publish result: it counts as failed.
            let ok = http
                .publish(&topic, payload, &Default::default())
                .await
                .is_ok();
            (t.elapsed().as_micros() as u64, ok)
        }));
    }
    let mut lat = Latencies::default();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((us, true)) => lat.0.push(us),
            _ => failed += 1,
        }
    }
    Ok((lat, failed))
}

/// Reads SSE `data:` lines of `topic` from `base` and records, for each, now minus the send
/// time (µs since `epoch`) the payload carries.
async fn deliveries(
    base: String,
    topic: &str,
    epoch: Instant,
    n: usize,
) -> Result<Latencies, LabError> {
    let client = plexus_client::Client::new(&base)?;
    let mut stream = client
        .subscribe_bytes(topic, None, plexus_client::Transport::Sse)
        .await?;
    let mut lat = Latencies::default();
    let mut buf = BytesMut::new();
    while lat.0.len() < n {
        let chunk = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(c))) => c,
            _ => {
                return Err(LabError::Run(format!(
                    "the SSE stream of {base} ended after {} deliveries",
                    lat.0.len()
                )));
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame = buf.split_to(i + 2);
            let text = String::from_utf8_lossy(&frame);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let env: serde_json::Value =
                serde_json::from_str(data).map_err(|e| LabError::Run(e.to_string()))?;
            let sent: u64 = env["data"]
                .as_str()
                .and_then(|s| s.split(':').next()?.parse().ok())
                .unwrap_or(0);
            let now = epoch.elapsed().as_micros() as u64;
            lat.0.push(now.saturating_sub(sent));
        }
    }
    Ok(lat)
}

pub async fn run(args: SidecarBench) -> Result<(), LabError> {
    if args.rate == 0 || args.seconds == 0 {
        return Err(LabError::Usage(
            "--rate and --seconds must be at least 1".into(),
        ));
    }
    let dir = super::temp_dir("sidecar")?;
    // The hub runs in its own process, as the app's would: a hub in this process would
    // answer the direct publishes without a wake-up across processes that the sidecar's
    // forwards (and every real app) pay.
    let hub_dir = dir.join("hub").to_string_lossy().into_owned();
    let (mut hub, hub_base) = super::fanout::spawn_server(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &hub_dir,
        "--rate",
        "0",
    ])
    .await?;
    let spool_dir = dir.join("spool").to_string_lossy().into_owned();
    let (mut child, sidecar_base) = super::fanout::spawn_server(&[
        "sidecar",
        "--hub",
        &hub_base,
        "--listen",
        "127.0.0.1:0",
        "--spool-dir",
        &spool_dir,
    ])
    .await?;
    let pid = child
        .id()
        .ok_or_else(|| LabError::Io("the sidecar exited".into()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(pid).unwrap_or(0);

    println!(
        "sidecar bench: {} publishes/s of {} bytes for {} s to 4 topics; hub, sidecar and this client each a process; sidecar pid {pid}",
        args.rate, args.size, args.seconds
    );
    // Warm both paths (connections, caches) before measuring.
    let warm = SidecarBench {
        seconds: 1,
        ..args.clone()
    };
    publish_load(&hub_base, &warm).await?;
    publish_load(&sidecar_base, &warm).await?;

    let (mut direct, direct_failed) = publish_load(&hub_base, &args).await?;
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let t = Instant::now();
    let (mut via, via_failed) = publish_load(&sidecar_base, &args).await?;
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let vcpu_per_1000 = cpu / t.elapsed().as_secs_f64() / (args.rate as f64 / 1000.0);
    let (d50, d99, v50, v99) = (
        direct.quantile(0.5),
        direct.quantile(0.99),
        via.quantile(0.5),
        via.quantile(0.99),
    );
    println!(
        "  publish, hub alone:    p50 {d50:>7.3} ms  p99 {d99:>7.3} ms  ({direct_failed} failed)"
    );
    println!(
        "  publish, via sidecar:  p50 {v50:>7.3} ms  p99 {v99:>7.3} ms  ({via_failed} failed)"
    );
    println!(
        "  added by the sidecar:  p50 {:+.3} ms  p99 {:+.3} ms",
        v50 - d50,
        v99 - d99
    );
    println!(
        "  sidecar CPU: {vcpu_per_1000:.3} vCPU per 1,000 publishes/s; RSS idle {idle_rss} KiB"
    );

    // Delivery: one SSE subscriber on the hub and one through the sidecar, same publishes.
    let n = (args.rate * args.seconds).min(20_000) as usize;
    let epoch = Instant::now();
    // The topic exists before the subscriptions start at its head, so this one is not seen.
    let client = Arc::new(plexus_client::Client::new(&hub_base)?);
    client
        .publish("deliver", "0:warm", &Default::default())
        .await?;
    let direct_sub = tokio::spawn(deliveries(hub_base.clone(), "deliver", epoch, n));
    let via_sub = tokio::spawn(deliveries(sidecar_base.clone(), "deliver", epoch, n));
    // Both are open once the hub counts two subscribers (the sidecar's shared one included).
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.topic("deliver").await?.subscribers < 2 {
        if Instant::now() > deadline {
            return Err(LabError::Run("the subscribers did not start".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now();
    let pad = "x".repeat(args.size.saturating_sub(24));
    for i in 0..n {
        tokio::time::sleep_until(start + every * i as u32).await;
        let sent = epoch.elapsed().as_micros();
        client
            .publish("deliver", format!("{sent}:{pad}"), &Default::default())
            .await?;
    }
    let joined = |r: Result<Result<Latencies, LabError>, tokio::task::JoinError>| {
        r.map_err(|e| LabError::Run(e.to_string()))?
    };
    let mut d = joined(direct_sub.await)?;
    let mut v = joined(via_sub.await)?;
    let (d50, d99, v50, v99) = (
        d.quantile(0.5),
        d.quantile(0.99),
        v.quantile(0.5),
        v.quantile(0.99),
    );
    println!("  delivery (SSE), hub alone:    p50 {d50:>7.3} ms  p99 {d99:>7.3} ms");
    println!("  delivery (SSE), via sidecar:  p50 {v50:>7.3} ms  p99 {v99:>7.3} ms");
    println!(
        "  added by the sidecar:         p50 {:+.3} ms  p99 {:+.3} ms",
        v50 - d50,
        v99 - d99
    );
    let _ = child.kill().await;
    let _ = hub.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
