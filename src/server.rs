//! The accept loop: HTTP/1.1 and HTTP/2 on one port — detected per connection in cleartext
//! (h2c by prior knowledge; `Upgrade: h2c` is answered in HTTP/1.1), chosen by ALPN over TLS —
//! with an ordered, bounded drain on shutdown.
//!
//! A cleartext connection whose first byte cannot start the HTTP/2 preface is served by
//! hyper's HTTP/1.1 connection alone, in a task of its own: an idle SSE connection then holds
//! no HTTP/2 state, no builder copy and no sniffing state (docs/BENCHMARKS.md, idle connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The peer of a connection, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

#[derive(Clone)]
pub struct ServerOptions {
    /// A connection that has not sent a request head (or finished its TLS handshake) by then
    /// is closed.
    pub header_timeout: Duration,
    /// How long open connections may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// With TLS, the port speaks TLS only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub stats: Arc<ConnStats>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: usize,
}

/// Connection counters, read by `/metrics`.
#[derive(Default, Debug)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed at once because a connection limit was reached.
    pub refused: AtomicU64,
    // A std mutex: held for a counter update on accept and close, never across an await.
    per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl ConnStats {
    pub fn open(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
}

/// Counts a connection closed when dropped, however its task ends.
struct OpenConnection(Arc<ConnStats>, std::net::IpAddr);

impl OpenConnection {
    /// Admits a connection within the limits, or `None` (it is then closed at once).
    fn admit(
        stats: &Arc<ConnStats>,
        ip: std::net::IpAddr,
        options: &ServerOptions,
    ) -> Option<Self> {
        if stats.open() >= options.max_connections as u64 {
            return None;
        }
        let mut per_client = stats.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(ip).or_insert(0);
        if *count >= options.max_connections_per_client {
            return None;
        }
        *count += 1;
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(OpenConnection(stats.clone(), ip))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
        let mut per_client = self.0.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_client.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.1);
            }
        }
    }
}

/// The HTTP/1.1 settings of [`builder`], for connections known to be HTTP/1.1.
fn http1_builder(options: &ServerOptions) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(8192);
    builder
}

fn builder(options: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout also closes an idle keep-alive connection: hyper arms it whenever it
    // waits for a request head, the next one included.
    // `max_buf_size(8192)` (hyper's minimum) keeps an idle HTTP/1.1 stream's read buffer at
    // 8 KiB instead of letting it double to 16 KiB (an idle SSE connection: 20.5 -> 14.7 KiB,
    // docs/BENCHMARKS.md); it also caps a request head at 8 KiB. Keep in step with
    // `http1_builder`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(8192);
    // hyper's default of 200 streams per connection would stall the 201st subscription;
    // the CONNECT protocol carries WebSockets over HTTP/2 (RFC 8441).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        .enable_connect_protocol()
        // A peer that stops answering pings is dropped, whatever its streams are doing.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// A service whose future is boxed per request: hyper keeps a box the size of the service's
/// future for a connection's whole life (320 bytes for the router's), this makes it a pointer.
#[derive(Clone)]
struct BoxedFuture<S>(S);

impl<S, R> hyper::service::Service<R> for BoxedFuture<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// Serves one HTTP/1.1 connection until it ends. The drain starts when `shutdown` is
/// cancelled (as the accept loop's); `watcher` is held until the connection ends, so the
/// drain waits for it like for the others.
async fn serve_http1<I>(
    builder: Arc<http1::Builder>,
    io: I,
    app: Router,
    watcher: Watcher,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = tower::ServiceExt::map_request(app, move |mut req: axum::extract::Request<_>| {
        req.extensions_mut().insert(ClientAddr(peer));
        req
    });
    let service = BoxedFuture(TowerToHyperService::new(app));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drop(builder);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(watcher);
}

/// Serves one connection until it ends or the drain closes it. A connection that has made no
/// request within `first_request` is closed: hyper's header timeout covers HTTP/1.1 heads,
/// but an HTTP/2 client that sends only its preface would otherwise hold the socket.
async fn serve<I>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    app: Router,
    watcher: Watcher,
    peer: std::net::SocketAddr,
    first_request: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = requested.clone();
    let app = tower::ServiceExt::map_request(app, move |mut req: axum::extract::Request<_>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(ClientAddr(peer));
        req
    });
    let service = TowerToHyperService::new(app);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    let no_request = async {
        tokio::time::sleep(first_request).await;
        if requested.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = &mut conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = no_request => tracing::debug!(%peer, "no request within the header timeout; closing"),
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting and waits
/// up to the grace period for open connections to end.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    options: ServerOptions,
) {
    let builder = builder(&options);
    let http1 = Arc::new(http1_builder(&options));
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(open) = OpenConnection::admit(&options.stats, peer.ip(), &options) else {
            options.stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        match &acceptor {
            None => {
                let timeout = options.header_timeout;
                let (http1, shutdown) = (http1.clone(), shutdown.clone());
                tokio::spawn(async move {
                    // hyper's header timeout starts once it reads a request head; before that,
                    // the protocol sniffing waits for a first byte with no limit of its own.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                        // The HTTP/2 preface starts with 'P' (as do POST, PUT and PATCH): any
                        // other first byte is HTTP/1.1. A task of its own, so that the
                        // long-lived one is no bigger than the connection.
                        Ok(Ok(n)) if n > 0 && first[0] != b'P' => {
                            tokio::spawn(async move {
                                serve_http1(http1, stream, app, watcher, shutdown, peer).await;
                                drop(open);
                            });
                        }
                        Ok(Ok(n)) if n > 0 => {
                            Box::pin(serve(builder, stream, app, watcher, peer, timeout)).await;
                            drop(open);
                        }
                        _ => tracing::debug!(%peer, "no request within the header timeout"),
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, stats) = (acceptor.clone(), options.stats.clone());
                let timeout = options.header_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(builder, tls, app, watcher, peer, timeout).await,
                        Ok(Err(e)) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}
