//! `plexus serve`: load the configuration, set up logging and signals, and run the
//! application that [`crate::app`] builds until a signal.

use std::io::Write;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::app::{App, AppError};
use crate::config::{Config, DEFAULT_TOML, LogFormat, ServeArgs};

pub fn run(args: ServeArgs) -> Result<(), CliError> {
    if args.print_config {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let config = Config::load(&args)?;
    if args.check_config {
        println!("configuration is valid: {config:#?}");
        return Ok(());
    }
    init_logging(config.log_format);
    if crate::config::jwt_secret_on_command_line(std::env::args_os()) {
        tracing::warn!(
            "--jwt-secret on the command line shows in the process list (ps, /proc); \
             set PLEXUS_JWT_SECRET or auth.jwt_secret in the config file instead"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads serve the sqlite reads (at most 8 at once) and little else; tokio's
        // default of 512 let a storm of subscribers leave dozens of idle threads behind,
        // each with its stack and allocator cache resident (docs/BENCHMARKS.md, idle memory).
        .max_blocking_threads(16)
        .build()
        .map_err(CliError::Runtime)?
        .block_on(serve(config))
}

pub(super) fn init_logging(format: LogFormat) {
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

async fn serve(config: Config) -> Result<(), CliError> {
    let app = App::build(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| AppError::Listen(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::Listen(format!("cannot read the listening address: {e}")))?;
    // The first line of stdout, which scripts and tests wait for.
    let scheme = if app.tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    if let Some(tls) = &app.tls {
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
    if config.lab.enabled {
        // The lab measures the hub through this listener, as a client would: the loopback
        // address of an unspecified bind.
        let mut reach = addr;
        if reach.ip().is_unspecified() {
            reach.set_ip(match reach {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let runner = crate::lab::runs::LabRuns::new(
            format!("{scheme}://{reach}"),
            app.hub_notes(),
            app.shutdown.clone(),
        );
        let _ = app.lab.set(runner);
    }
    tokio::spawn(watch_signals(
        app.draining.clone(),
        app.shutdown.clone(),
        config.drain_delay,
    ));
    app.run(listener).await;
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
