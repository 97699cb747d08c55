//! `plexus sidecar`: load the configuration, open the spool, print the `listening on` line
//! and serve until SIGTERM or SIGINT (see [`crate::sidecar`]).

use std::io::Write;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::CliError;
use crate::config::{LogFormat, SidecarArgs, SidecarConfig};
use crate::sidecar::{Sidecar, SidecarError};

pub fn run(args: SidecarArgs) -> Result<(), CliError> {
    let config = SidecarConfig::load(&args)?;
    if args.check_config {
        println!("configuration is valid: {config:#?}");
        return Ok(());
    }
    super::serve::init_logging(LogFormat::Text);
    let token_on_command_line = std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == "--token" || a.starts_with("--token=")
    });
    if token_on_command_line {
        tracing::warn!(
            "--token on the command line shows in the process list (ps, /proc); \
             set PLEXUS_SIDECAR_TOKEN, --token-file or sidecar.token in the config file instead"
        );
    }
    // One thread: a sidecar's work per request is a few microseconds of parsing and a spool
    // row, and on a multi-thread runtime most of its CPU went to workers waking and parking
    // each other for every request (docs/BENCHMARKS.md, the sidecar's profile). The spool's
    // writer thread at `durability = machine` is its own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?
        .block_on(serve(config))
}

async fn serve(config: SidecarConfig) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    let listen = config.listen;
    let hub = config.hub.clone();
    let sidecar = Sidecar::open(config, shutdown.clone()).map_err(CliError::Sidecar)?;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        CliError::Sidecar(SidecarError::Listen(format!(
            "cannot listen on {listen}: {e}"
        )))
    })?;
    let addr = listener.local_addr().map_err(|e| {
        CliError::Sidecar(SidecarError::Listen(format!(
            "cannot read the listening address: {e}"
        )))
    })?;
    // The first line of stdout, which scripts and tests wait for.
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, %hub, id = sidecar.id(), "plexus sidecar is serving");
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the sidecar listens beyond loopback: anyone who reaches it publishes with its hub credential");
    }
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signals.cancel();
    });
    sidecar.run(listener).await.map_err(CliError::Sidecar)
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
