//! `plexus bench`: measurements against the real store and a live server. Each run prints
//! its numbers next to a baseline measured in the same run; docs/BENCHMARKS.md records them.

mod fanout;
mod http2;
mod jobs;
mod raw;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use clap::{Args, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServeArgs};
use crate::model::NewMessage;
use crate::server::{self, ServerOptions};
use crate::store::{Durability, Log, Retention, SqliteLog};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Append throughput of the sqlite store at several batch sizes
    Store(StoreArgs),
    /// Durable HTTP publish throughput next to a bare axum handler, same client, same run
    Publish(PublishArgs),
    /// HTTP/1.1 keep-alive vs HTTP/2: publish throughput and SSE fan-out, same hub, same run
    Http2(http2::Http2Args),
    /// Jobs/s for submit + claim + complete with 1 and 4 workers
    Jobs(jobs::JobsBenchArgs),
    /// Fan-out to many subscribers (SSE, WebSocket, long polling) next to a raw TCP loop
    Fanout(fanout::FanoutArgs),
    /// The raw TCP loop server used as fanout's baseline (started by `bench fanout`)
    #[command(hide = true)]
    RawServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Batch sizes to measure
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    pub batch: Vec<usize>,
    /// Messages appended per batch size
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Payload size in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// process or machine
    #[arg(long, default_value = "process")]
    pub durability: String,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Concurrent keep-alive connections of the load generator
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds each target is measured
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Topics the publishes are spread over (built-in load generator only)
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Durability of the hub under test: process or machine
    #[arg(long, default_value = "process")]
    pub durability: String,
    /// Load generator: wrk (a separate, lean process; used when installed) or builtin
    #[arg(long, default_value = "auto")]
    pub load: String,
}

pub fn run(cmd: BenchCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    match cmd {
        BenchCommand::Store(args) => runtime.block_on(store(args)),
        BenchCommand::Publish(args) => runtime.block_on(publish(args)),
        BenchCommand::Fanout(args) => runtime.block_on(fanout::run(args)),
        BenchCommand::Http2(args) => runtime.block_on(http2::run(args)),
        BenchCommand::Jobs(args) => runtime.block_on(jobs::run(args)),
        BenchCommand::RawServer { listen } => runtime.block_on(raw::serve(&listen)),
    }
}

fn temp_dir(name: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("plexus-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

async fn store(args: StoreArgs) -> Result<(), String> {
    let durability = match args.durability.as_str() {
        "machine" => Durability::Machine,
        _ => Durability::Process,
    };
    let payload = Bytes::from(vec![b'x'; args.size]);
    println!(
        "store append: sqlite, durability {:?}, {} messages of {} bytes per batch size",
        durability, args.messages, args.size
    );
    for batch_size in args.batch {
        let dir = temp_dir("store")?;
        let log =
            SqliteLog::open(&dir, Retention::default(), durability).map_err(|e| e.to_string())?;
        let topic: crate::model::Topic = "bench".parse().map_err(|e| format!("{e}"))?;
        let started = Instant::now();
        let mut done = 0;
        while done < args.messages {
            let n = batch_size.min(args.messages - done);
            let batch = (0..n)
                .map(|_| NewMessage {
                    topic: topic.clone(),
                    event: None,
                    data: payload.clone(),
                    idempotency_key: None,
                })
                .collect();
            log.append(batch).await.map_err(|e| e.to_string())?;
            done += n;
        }
        let secs = started.elapsed().as_secs_f64();
        log.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "  batch {batch_size:>5}: {:>10.0} msgs/s ({done} in {secs:.2} s)",
            done as f64 / secs
        );
    }
    Ok(())
}

/// Serves `app` on a fresh loopback port until the token is cancelled.
async fn spawn_server(app: Router, stop: CancellationToken) -> Result<String, String> {
    spawn_server_with(app, stop, Arc::new(crate::server::ConnStats::default())).await
}

/// The same, counting connections into `stats`.
async fn spawn_server_with(
    app: Router,
    stop: CancellationToken,
    stats: Arc<crate::server::ConnStats>,
) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(server::run(
        listener,
        app,
        stop,
        ServerOptions {
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            tls: None,
            stats,
            max_connections: usize::MAX,
            max_connections_per_client: usize::MAX,
        },
    ));
    Ok(format!("http://{addr}"))
}

/// Drives `base` with `connections` concurrent publishers for `seconds`; returns requests/s.
async fn load(base: &str, args: &PublishArgs) -> Result<(f64, u64), String> {
    let payload = Bytes::from(vec![b'x'; args.size]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("{base}/v1/topics/bench-{}/messages", c % args.topics.max(1));
        let (ok, failed, stop, payload) =
            (ok.clone(), failed.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.post(&url).body(payload.clone()).send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
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
/// the count of non-2xx answers and socket errors.
async fn wrk(base: &str, args: &PublishArgs) -> Result<(f64, u64), String> {
    let script = std::env::temp_dir().join(format!("plexus-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {})\n",
            args.size
        ),
    )
    .map_err(|e| format!("cannot write the wrk script: {e}"))?;
    let output = tokio::process::Command::new("wrk")
        .arg("-t1")
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.seconds))
        .arg("-s")
        .arg(&script)
        .arg(format!("{base}/v1/topics/bench-0/messages"))
        .output()
        .await
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rps = field("Requests/sec:").ok_or_else(|| format!("unexpected wrk output: {text}"))?;
    let failed = field("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    Ok((rps, failed))
}

async fn publish(args: PublishArgs) -> Result<(), String> {
    let stop = CancellationToken::new();
    // Baseline: a bare axum handler answering what a publish answers, storing nothing.
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
    let bare_url = spawn_server(bare, stop.clone()).await?;

    let dir = temp_dir("publish")?;
    let config = Config::load(&ServeArgs {
        data_dir: Some(dir.clone()),
        durability: Some(args.durability.clone()),
        rate: Some(0.0),
        ..ServeArgs::default()
    })
    .map_err(|e| e.to_string())?;
    let store = super::serve::open_store(&config).await?;
    let app = super::serve::app(
        &config,
        store.clone(),
        stop.clone(),
        stop.clone(),
        Arc::new(crate::server::ConnStats::default()),
    )?;
    let hub_url = spawn_server(app, stop.clone()).await?;

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
    let run = |url: String| {
        let args = &args;
        async move {
            if use_wrk {
                wrk(&url, args).await
            } else {
                load(&url, args).await
            }
        }
    };
    let (bare_rps, bare_failed) = run(bare_url).await?;
    println!("  bare axum handler:           {bare_rps:>10.0} req/s ({bare_failed} failed)");
    let (hub_rps, hub_failed) = run(hub_url).await?;
    println!(
        "  durable publish (sqlite, {}): {hub_rps:>10.0} req/s ({hub_failed} failed)",
        args.durability
    );
    println!(
        "  ratio durable / bare:        {:>10.2}",
        hub_rps / bare_rps
    );
    stop.cancel();
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
