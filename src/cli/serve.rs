//! `plexus serve`: load the configuration, open the store, serve until a signal.

use std::io::Write;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_TOML, LogFormat, ServeArgs, StorageKind};
use crate::http::{AppState, HttpOptions};
use crate::hub::{Hub, HubOptions};
use crate::server::{self, ConnStats, ServerOptions};
use crate::store::Engine;

pub fn run(args: ServeArgs) -> Result<(), String> {
    if args.print_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let config = Config::load(&args).map_err(|e| e.to_string())?;
    if args.check_config {
        println!("configuration is valid: {config:#?}");
        return Ok(());
    }
    init_logging(config.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(serve(config))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn open_store(config: &Config) -> Result<Engine, String> {
    Ok(match &config.storage {
        StorageKind::Memory => Engine::memory(config.retention),
        StorageKind::Sqlite => {
            Engine::sqlite(&config.data_dir, config.retention, config.durability).map_err(|e| {
                format!(
                    "cannot open the store in {}: {e}",
                    config.data_dir.display()
                )
            })?
        }
        StorageKind::Redis(target) => Engine::redis(target, config.retention)
            .await
            .map_err(|e| format!("cannot open the redis store: {e}"))?,
    })
}

/// Builds the application of a configuration: the router and the hub behind it.
/// `draining` turns `/readyz` to 503; `shutdown` ends streams and polls.
pub fn app(
    config: &Config,
    store: Engine,
    draining: CancellationToken,
    shutdown: CancellationToken,
    connections: Arc<ConnStats>,
) -> Result<axum::Router, String> {
    let auth = Arc::new(config.auth.authenticator().map_err(|e| e.to_string())?);
    // Installed before anything records a metric.
    crate::observe::prometheus();
    let options = HubOptions {
        draining,
        ..HubOptions::default()
    };
    let hub = Hub::new(store.log, store.follow, options, shutdown);
    let jobs = crate::jobs::Jobs::new(hub.clone(), store.jobs, config.jobs.clone());
    Ok(crate::http::router(AppState {
        limiter: Arc::new(crate::http::limits::RateLimiter::new(
            config.rate,
            config.burst,
        )),
        hub,
        jobs,
        auth,
        connections,
        options: Arc::new(HttpOptions {
            max_message_bytes: config.max_message_bytes,
            max_batch_bytes: config.max_batch_bytes,
            max_wait: config.max_wait,
            max_topics: config.max_topics,
            keepalive: config.keepalive,
            // A publish frame carries the payload plus a little JSON around it.
            max_ws_frame_bytes: config.max_message_bytes * 4 / 3 + 4096,
            cors_origins: config.cors_origins.clone(),
        }),
    }))
}

async fn serve(config: Config) -> Result<(), String> {
    let tls = match &config.tls {
        Some(source) => {
            Some(crate::tls::setup(source, &config.data_dir).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let store = open_store(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // The first line of stdout, which scripts and tests wait for.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    if let Some(tls) = &tls {
        match &tls.written_to {
            Some(path) => println!(
                "tls: self-signed certificate, SHA-256 fingerprint {} (PEM in {})",
                tls.fingerprint,
                path.display()
            ),
            None => println!("tls: certificate SHA-256 fingerprint {}", tls.fingerprint),
        }
    }
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, storage = ?config.storage, auth = ?config.auth.mode, "plexus is serving");
    if config.auth.mode == crate::auth::AuthMode::Open && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "auth.mode is open and the listener is not on loopback: ANYONE who can reach this \
             address may publish, read and delete. Use --auth required (see the config file)."
        );
    }

    let (draining, shutdown) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(watch_signals(
        draining.clone(),
        shutdown.clone(),
        config.drain_delay,
    ));
    let stats = Arc::new(ConnStats::default());
    let app = app(
        &config,
        store.clone(),
        draining,
        shutdown.clone(),
        stats.clone(),
    )?;
    server::run(
        listener,
        app,
        shutdown,
        ServerOptions {
            header_timeout: config.header_timeout,
            shutdown_grace: config.shutdown_grace,
            tls: tls.map(|t| t.config),
            stats,
            max_connections: config.max_connections,
            max_connections_per_client: config.max_connections_per_client,
        },
    )
    .await;
    store.close().await;
    tracing::info!("plexus stopped");
    Ok(())
}

/// The first SIGTERM/SIGINT marks the node draining (`/readyz` 503) and, after `drain_delay`
/// or at a second signal, starts the shutdown: no new connections, streams end.
async fn watch_signals(
    draining: CancellationToken,
    shutdown: CancellationToken,
    drain_delay: std::time::Duration,
) {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch signals; stop the hub with SIGKILL");
            return;
        }
    };
    signals.next().await;
    draining.cancel();
    if !drain_delay.is_zero() {
        tracing::info!(
            delay = ?drain_delay,
            "shutdown signal received; not ready, still serving (a second signal skips the wait)"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain_delay) => {}
            _ = signals.next() => {}
        }
    }
    tracing::info!("shutdown signal received; draining");
    shutdown.cancel();
}

/// SIGTERM and SIGINT, as one stream of "stop" requests.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
