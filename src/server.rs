//! The accept loop: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port, detected per
//! connection, with an ordered, bounded drain on shutdown.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// A connection that has not sent a request head by then is closed.
    pub header_timeout: Duration,
    /// How long open connections may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// up to the grace period for open connections to end.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    options: ServerOptions,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // `max_buf_size(8192)` (hyper's minimum) keeps an idle HTTP/1.1 stream's read buffer at
    // 8 KiB instead of letting it double to 16 KiB (an idle SSE connection: 20.5 -> 14.5 KiB,
    // docs/BENCHMARKS.md); it also caps a request head at 8 KiB.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(8192);
    // hyper's default of 200 streams per connection would stall the 201st subscription.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}
