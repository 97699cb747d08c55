//! Durable HTTP publish throughput next to a bare axum handler, same load generator, same run.
//!
//! The baseline is a bare handler answering what a publish answers and storing nothing,
//! served by the hub's own accept loop ([`crate::server::run`]) so that only the hub's work
//! differs. The load comes from `wrk` when installed (a separate, lean process), else from
//! `plexus-client` in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::LabError;
use crate::config::ServeArgs;
use crate::server::{self, ConnStats, ServerOptions};

/// What `plexus bench publish` measures.
#[derive(Debug, Clone)]
pub struct PublishBench {
    /// Concurrent keep-alive connections of the load generator.
    pub connections: usize,
    /// Seconds each target is measured.
    pub seconds: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Topics the publishes are spread over (built-in load generator only).
    pub topics: usize,
    /// Durability of the hub under test: `process` or `machine`.
    pub durability: String,
    /// Load generator: `wrk`, `builtin`, or anything else for wrk when installed.
    pub load: String,
    /// Bare and durable runs, alternating; the ratio reported is their median.
    pub repeat: usize,
    /// Compare the median ratio with the target and fail when it falls short.
    pub check: Option<super::check::Check>,
}

/// Serves a bare handler answering `201` and a publish-shaped receipt, storing nothing,
/// until `stop` is cancelled; returns its URL.
async fn spawn_bare(stop: CancellationToken) -> Result<String, LabError> {
    let bare = Router::new().route(
        "/v1/topics/{topic}/messages",
        post(|_body: Bytes| async {
            (
                StatusCode::CREATED,
                axum::Json(
                    serde_json::json!({"topic":"bench","seq":1,"time":"2026-11-24T19:00:00.000Z"}),
                ),
            )
        }),
    );
    let listener = super::loopback().await?;
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?;
    tokio::spawn(server::run(
        listener,
        bare,
        stop,
        ServerOptions {
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            tls: None,
            stats: Arc::new(ConnStats::default()),
            max_connections: usize::MAX,
            max_connections_per_client: usize::MAX,
            write_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        },
    ));
    Ok(format!("http://{addr}"))
}

/// Drives `base` with `connections` concurrent publishers for `seconds`; returns requests/s
/// and the count of failed publishes.
async fn builtin(base: &str, args: &PublishBench) -> Result<(f64, u64), LabError> {
    let payload = Bytes::from(vec![b'x'; args.size]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        // A client each, holding one connection: `connections` keep-alive connections.
        let client = plexus_client::Client::builder(base)
            .pool_max_idle_per_host(1)
            .build()?;
        let topic = format!("bench-{}", c % args.topics.max(1));
        let (ok, failed, stop, payload) =
            (ok.clone(), failed.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let options = plexus_client::PublishOptions::default();
            while !stop.load(Ordering::Relaxed) {
                match client.publish(&topic, payload.clone(), &options).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Warm up for a second, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_ok = ok.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let counted = ok.load(Ordering::Relaxed) - start_ok;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    Ok((counted as f64 / secs, failed.load(Ordering::Relaxed)))
}

/// Drives `base` with wrk (one thread, `connections` connections); returns requests/s and
/// the count of non-2xx answers.
async fn wrk(base: &str, args: &PublishBench) -> Result<(f64, u64), LabError> {
    let script = std::env::temp_dir().join(format!("plexus-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {})\n",
            args.size
        ),
    )
    .map_err(|e| LabError::Io(format!("cannot write the wrk script: {e}")))?;
    let output = tokio::process::Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.seconds))
        .arg("-s")
        .arg(&script)
        .arg(format!("{base}/v1/topics/bench-0/messages"))
        .output()
        .await
        .map_err(|e| LabError::Io(format!("cannot run wrk: {e}")))?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rps = field("Requests/sec:")
        .ok_or_else(|| LabError::Run(format!("unexpected wrk output: {text}")))?;
    let failed = field("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    Ok((rps, failed))
}

pub async fn run(args: PublishBench) -> Result<(), LabError> {
    let stop = CancellationToken::new();
    let bare_url = spawn_bare(stop.clone()).await?;

    let dir = super::temp_dir("publish")?;
    let config = super::hub_config(ServeArgs {
        data_dir: Some(dir.clone()),
        durability: Some(args.durability.clone()),
        ..ServeArgs::default()
    })?;
    let hub = super::spawn_hub(&config).await?;

    let use_wrk = match args.load.as_str() {
        "wrk" => true,
        "builtin" => false,
        _ => std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok(),
    };
    println!(
        "publish: {} connections, {} s each, {}-byte payloads, load generator {}",
        args.connections,
        args.seconds,
        args.size,
        if use_wrk {
            "wrk (1 thread)"
        } else {
            "built-in (reqwest, in-process)"
        }
    );
    let measure = |url: String| {
        let args = &args;
        async move {
            if use_wrk {
                wrk(&url, args).await
            } else {
                builtin(&url, args).await
            }
        }
    };
    let mut ratios = Vec::new();
    let mut failed = 0;
    for _ in 0..args.repeat.max(1) {
        let (bare_rps, bare_failed) = measure(bare_url.clone()).await?;
        println!("  bare axum handler:           {bare_rps:>10.0} req/s ({bare_failed} failed)");
        let (hub_rps, hub_failed) = measure(hub.url().to_owned()).await?;
        println!(
            "  durable publish (sqlite, {}): {hub_rps:>10.0} req/s ({hub_failed} failed)",
            args.durability
        );
        ratios.push(hub_rps / bare_rps.max(1e-9));
        failed += hub_failed;
        println!(
            "  ratio durable / bare:        {:>10.2}",
            ratios[ratios.len() - 1]
        );
    }
    let ratio = super::check::median(&ratios);
    println!("  median ratio durable / bare: {ratio:>10.2}");
    stop.cancel();
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    match &args.check {
        None => Ok(()),
        Some(check) => super::check::conclude(vec![
            check.verdict("publish", ratio),
            (
                failed == 0,
                format!(
                    "  check {} every durable publish answered: {failed} failed",
                    if failed == 0 { "ok  " } else { "FAIL" }
                ),
            ),
        ]),
    }
}
