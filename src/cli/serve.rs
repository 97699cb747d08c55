//! `plexus serve`: load the configuration, open the store, serve until a signal.

use std::io::Write;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_TOML, LogFormat, ServeArgs, StorageKind};
use crate::http::{AppState, HttpOptions};
use crate::hub::{Hub, HubOptions};
use crate::server::{self, ConnStats, ServerOptions};
use crate::store::{Log, MemoryLog, SqliteLog};

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

pub fn open_store(config: &Config) -> Result<Arc<dyn Log>, String> {
    Ok(match config.storage {
        StorageKind::Memory => Arc::new(MemoryLog::new(config.retention)),
        StorageKind::Sqlite => Arc::new(
            SqliteLog::open(&config.data_dir, config.retention, config.durability).map_err(
                |e| {
                    format!(
                        "cannot open the store in {}: {e}",
                        config.data_dir.display()
                    )
                },
            )?,
        ),
    })
}

/// Builds the application of a configuration: the router and the hub behind it.
pub fn app(
    config: &Config,
    store: Arc<dyn Log>,
    shutdown: CancellationToken,
    connections: Arc<ConnStats>,
) -> Result<axum::Router, String> {
    let auth = Arc::new(config.auth.authenticator()?);
    // Installed before anything records a metric.
    crate::observe::prometheus();
    let hub = Hub::new(store, HubOptions::default(), shutdown);
    let jobs = crate::jobs::Jobs::new(hub.clone(), config.jobs.clone());
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
        Some(source) => Some(crate::tls::setup(source, &config.data_dir)?),
        None => None,
    };
    let store = open_store(&config)?;
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

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    let stats = Arc::new(ConnStats::default());
    let app = app(&config, store.clone(), shutdown.clone(), stats.clone())?;
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

async fn watch_signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received; draining");
    shutdown.cancel();
}
