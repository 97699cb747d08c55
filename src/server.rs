//! The accept loop: HTTP/1.1 and HTTP/2 on one port — detected per connection in cleartext
//! (h2c by prior knowledge; `Upgrade: h2c` is answered in HTTP/1.1), chosen by ALPN over TLS —
//! with an ordered, bounded drain on shutdown.
//!
//! A cleartext connection whose first byte cannot start the HTTP/2 preface is served by
//! hyper's HTTP/1.1 connection alone, in a task of its own: an idle SSE connection then holds
//! no HTTP/2 state, no builder copy and no sniffing state (docs/BENCHMARKS.md, idle connections).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::stop::Stop;

/// The peer of a connection, in every request's extensions (behind a trusted proxy, the
/// client it forwarded for).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// What the listener is, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    /// Whether the hub listens on a loopback address (then only loopback `Host` names reach it
    /// from a browser legitimately).
    pub loopback: bool,
}

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
    /// The longest a connection's socket may refuse every byte written to it (a client that
    /// stopped reading); then the connection is closed.
    pub write_timeout: Duration,
    /// Reverse proxies (`limits.trusted_proxies`): the per-address connection limit does not
    /// apply to their own addresses.
    pub trusted_proxies: Vec<crate::model::Cidr>,
}

/// What an open connection speaks: the `protocol` label of `plexus_connections_open`.
/// Every open connection has one, so the series add up to the open connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    TlsH2,
    TlsHttp1,
    /// Not known yet: a cleartext connection before its first byte (or, when that byte may
    /// start the HTTP/2 preface, before its first request), a TLS connection in its handshake
    /// (or, when ALPN chose nothing, before its first request).
    Pending,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Http1,
        Protocol::H2c,
        Protocol::TlsH2,
        Protocol::TlsHttp1,
        Protocol::Pending,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::TlsH2 => "tls-h2",
            Protocol::TlsHttp1 => "tls-http1",
            Protocol::Pending => "pending",
        }
    }

    /// The protocol of a connection whose requests come in `version`.
    fn of(tls: bool, version: hyper::Version) -> Self {
        match (tls, version == hyper::Version::HTTP_2) {
            (false, false) => Protocol::Http1,
            (false, true) => Protocol::H2c,
            (true, true) => Protocol::TlsH2,
            (true, false) => Protocol::TlsHttp1,
        }
    }

    /// The protocol a TLS handshake chose by ALPN, if it chose one.
    fn of_alpn(alpn: Option<&[u8]>) -> Option<Self> {
        match alpn? {
            b"h2" => Some(Protocol::TlsH2),
            b"http/1.1" => Some(Protocol::TlsHttp1),
            _ => None,
        }
    }
}

/// Connection counters, read by `/metrics`.
#[derive(Default, Debug)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed at once because a connection limit was reached.
    pub refused: AtomicU64,
    /// Open connections by [`Protocol`] (its index), [`Protocol::Pending`] until it is known:
    /// together, every admitted connection not yet closed.
    open_by_protocol: [AtomicU64; Protocol::ALL.len()],
    // A std mutex: held for a counter update on accept and close, never across an await.
    per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl ConnStats {
    pub fn open(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    /// Open connections that speak `protocol`, upgraded ones (WebSockets) included. A
    /// connection counts as [`Protocol::Pending`] from accept until its protocol is known: at
    /// its first byte when that rules out HTTP/2, at the end of its TLS handshake when ALPN
    /// chose a protocol, otherwise at its first request.
    pub fn open_by(&self, protocol: Protocol) -> u64 {
        self.open_by_protocol[protocol as usize].load(Ordering::Relaxed)
    }
}

/// One open TCP connection: counted from accept (as `pending`) until dropped. It travels
/// inside the connection's socket ([`Counted`]), so it is dropped with the socket, also when
/// hyper hands an upgraded socket (a WebSocket) over and is done with the connection long
/// before it ends.
struct OpenConnection {
    stats: Arc<ConnStats>,
    // The address alone, not the port: this lives as long as the connection, and an idle
    // connection's every byte counts (docs/BENCHMARKS.md, idle connections).
    ip: std::net::IpAddr,
    /// A [`Protocol`] as `u8`: [`Protocol::Pending`], then set once.
    protocol: AtomicU8,
    /// Whether a request has come in (the first one labels a connection still pending).
    requested: AtomicBool,
}

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
        // An IPv6 client counts by its /64; a trusted proxy carries many clients and is not
        // counted (its own entry never exists, so the close finds nothing to take back).
        let ip = crate::model::client_key(ip);
        if !options.trusted_proxies.iter().any(|c| c.contains(ip)) {
            let mut per_client = stats.per_client.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_client.entry(ip).or_insert(0);
            if *count >= options.max_connections_per_client {
                return None;
            }
            *count += 1;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open_by_protocol[Protocol::Pending as usize].fetch_add(1, Ordering::Relaxed);
        Some(OpenConnection {
            stats: stats.clone(),
            ip,
            protocol: AtomicU8::new(Protocol::Pending as u8),
            requested: AtomicBool::new(false),
        })
    }

    /// Moves the connection from `pending` to `protocol`; the first call wins.
    fn speaks(&self, protocol: Protocol) {
        let set = self.protocol.compare_exchange(
            Protocol::Pending as u8,
            protocol as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if set.is_ok() {
            let open = &self.stats.open_by_protocol;
            open[protocol as usize].fetch_add(1, Ordering::Relaxed);
            open[Protocol::Pending as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Notes a request; the first one labels a connection still pending by its version.
    fn requests(&self, tls: bool, version: hyper::Version) {
        // A load first: after the first request this is a read of a cache line the
        // connection's other requests (HTTP/2 streams on other threads) share, not a write.
        if !self.requested.load(Ordering::Relaxed) && !self.requested.swap(true, Ordering::Relaxed)
        {
            self.speaks(Protocol::of(tls, version));
        }
    }

    fn has_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let stats = &self.stats;
        if let Some(open) = stats
            .open_by_protocol
            .get(*self.protocol.get_mut() as usize)
        {
            open.fetch_sub(1, Ordering::Relaxed);
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
        let ip = self.ip;
        let mut per_client = stats.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_client.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&ip);
            }
        }
    }
}

/// A connection's socket with its count (an [`OpenConnection`], or an `Arc` of one shared
/// with the service that learns the protocol from the first request): the count ends when the
/// socket is dropped, whoever holds it then. Its writes are watched by a [`Stall`].
struct Counted<I, G> {
    io: I,
    _open: G,
    stall: Stall,
}

impl<I, G> Counted<I, G> {
    fn new(io: I, open: G, write_timeout: Duration) -> Self {
        Counted {
            io,
            _open: open,
            stall: Stall::new(write_timeout),
        }
    }
}

/// Vectored writes up to this many bytes are copied into one buffer and sent with one `send`.
const COALESCE_BELOW: usize = 2048;

/// Writes `bufs` (at most `N` bytes in all) with one `poll_write` of a copy.
fn send_joined<const N: usize, W: AsyncWrite>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    let mut joined = [0u8; N];
    let mut at = 0;
    for b in bufs {
        joined[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    io.poll_write(cx, &joined[..at])
}

/// The write timeout of one connection: a write or flush that stays pending (the peer's
/// receive window and our send buffer are full: it stopped reading) for the timeout fails
/// with `TimedOut`, which ends the connection — an SSE or NDJSON stream, a WebSocket, or a
/// response, whoever was writing. Any progress restarts it. The timer exists only while a
/// write is blocked: an idle connection holds the timeout and an empty pointer.
struct Stall {
    timeout_ms: u32,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    fn new(timeout: Duration) -> Self {
        Stall {
            timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            timer: None,
        }
    }

    /// Watches the result of one write or flush: progress disarms the timer, a pending one
    /// arms it (waking this task when it runs out), and once it has run out the write fails.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = Duration::from_millis(u64::from(self.timeout_ms));
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer read nothing within the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.timer = None;
                done
            }
        }
    }
}

impl<I: AsyncRead + Unpin, G: Unpin> AsyncRead for Counted<I, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Counted<I, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper hands an event of a stream over as three slices (chunk size, data, CRLF). A
        // small write goes out from one copy with `send`: on Linux, `writev` of a few short
        // slices takes longer than the copy, through the VFS's generic vectored path (the
        // fan-out profile: once per delivered message; docs/BENCHMARKS.md).
        // The copy's buffer comes in two sizes, so that a typical event does not zero 2 KiB
        // on the stack to copy ~150 bytes.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let polled = if bufs.len() < 2 || total > COALESCE_BELOW {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        } else if total <= 512 {
            send_joined::<512, _>(Pin::new(&mut self.io), cx, bufs)
        } else {
            send_joined::<COALESCE_BELOW, _>(Pin::new(&mut self.io), cx, bufs)
        };
        self.stall.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.stall.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stall.watch(cx, polled)
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

/// Serves one HTTP/1.1 connection until it ends. The drain starts when `shutdown` stops
/// (it follows the accept loop's token); `watcher` is held until the connection ends, so the
/// drain waits for it like for the others.
async fn serve_http1<I>(
    builder: Arc<http1::Builder>,
    io: I,
    app: Router,
    watcher: Watcher,
    shutdown: Stop,
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
    // This select! runs at every wake-up of the connection (each delivery of a stream): the
    // drain is looked at through a [`Stop`], which answers from a flag when polled again.
    let mut shutdown = shutdown.wait();
    loop {
        tokio::select! {
            // In this order, without drawing a random one at every wake-up: the shutdown is
            // looked at whenever the connection waits.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = &mut shutdown, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(watcher);
}

/// A connection the accept loop admitted, as [`serve`] takes it besides its socket.
struct Admitted {
    open: OpenConnection,
    peer: std::net::SocketAddr,
    tls: bool,
    write_timeout: Duration,
}

/// Serves one connection until it ends or the drain closes it. A connection that has made no
/// request within `first_request` is closed: hyper's header timeout covers HTTP/1.1 heads,
/// but an HTTP/2 client that sends only its preface would otherwise hold the socket. A
/// connection still `pending` is labelled at its first request (over TLS or not: `tls`).
async fn serve<I>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    app: Router,
    watcher: Watcher,
    admitted: Admitted,
    first_request: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Admitted {
        open,
        peer,
        tls,
        write_timeout,
    } = admitted;
    let open = Arc::new(open);
    let seen = open.clone();
    let app = tower::ServiceExt::map_request(app, move |mut req: axum::extract::Request<_>| {
        seen.requests(tls, req.version());
        req.extensions_mut().insert(ClientAddr(peer));
        req
    });
    let service = TowerToHyperService::new(app);
    let io = Counted::new(io, open.clone(), write_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    let no_request = async {
        tokio::time::sleep(first_request).await;
        if open.has_requested() {
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
    let loopback = listener
        .local_addr()
        .is_ok_and(|a| a.ip().to_canonical().is_loopback());
    let app = app.layer(axum::Extension(Listening { loopback }));
    let builder = builder(&options);
    let http1 = Arc::new(http1_builder(&options));
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let stop = Stop::follow(&shutdown);
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
        let write_timeout = options.write_timeout;
        match &acceptor {
            None => {
                let timeout = options.header_timeout;
                let (http1, stop) = (http1.clone(), stop.clone());
                tokio::spawn(async move {
                    // hyper's header timeout starts once it reads a request head; before that,
                    // the protocol sniffing waits for a first byte with no limit of its own.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
                        // The HTTP/2 preface starts with 'P' (as do POST, PUT and PATCH): any
                        // other first byte is HTTP/1.1. A task of its own, so that the
                        // long-lived one is no bigger than the connection.
                        Ok(Ok(n)) if n > 0 && first[0] != b'P' => {
                            open.speaks(Protocol::Http1);
                            let stream = Counted::new(stream, open, write_timeout);
                            tokio::spawn(serve_http1(http1, stream, app, watcher, stop, peer));
                        }
                        Ok(Ok(n)) if n > 0 => {
                            let admitted = Admitted {
                                open,
                                peer,
                                tls: false,
                                write_timeout,
                            };
                            Box::pin(serve(builder, stream, app, watcher, admitted, timeout)).await;
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
                        Ok(Ok(tls)) => {
                            if let Some(protocol) =
                                Protocol::of_alpn(tls.get_ref().1.alpn_protocol())
                            {
                                open.speaks(protocol);
                            }
                            let admitted = Admitted {
                                open,
                                peer,
                                tls: true,
                                write_timeout,
                            };
                            serve(builder, tls, app, watcher, admitted, timeout).await
                        }
                        Ok(Err(e)) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The count travels inside every connection's socket for the connection's whole life:
    /// it must stay as small as the guard it replaced (docs/BENCHMARKS.md, idle connections),
    /// and the write timeout beside it adds a timeout and a pointer, its timer existing only
    /// while a write is blocked.
    #[test]
    fn the_per_connection_count_stays_small() {
        assert!(std::mem::size_of::<OpenConnection>() <= 32);
        assert!(std::mem::size_of::<Stall>() <= 16);
        assert_eq!(
            std::mem::size_of::<Counted<tokio::net::TcpStream, OpenConnection>>(),
            std::mem::size_of::<tokio::net::TcpStream>()
                + std::mem::size_of::<OpenConnection>()
                + std::mem::size_of::<Stall>()
        );
    }

    fn sum(stats: &ConnStats) -> u64 {
        Protocol::ALL.iter().map(|p| stats.open_by(*p)).sum()
    }

    /// Every admitted connection is in exactly one series, from accept to close: `pending`
    /// until its protocol is known, then that protocol's.
    #[test]
    fn the_series_add_up_to_the_open_connections() {
        let stats = Arc::new(ConnStats::default());
        let options = ServerOptions {
            header_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            tls: None,
            stats: stats.clone(),
            max_connections: 10,
            max_connections_per_client: 10,
            write_timeout: Duration::from_secs(1),
            trusted_proxies: Vec::new(),
        };
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let silent = OpenConnection::admit(&stats, ip, &options).expect("admitted");
        assert_eq!(stats.open_by(Protocol::Pending), 1, "counted at accept");
        assert_eq!((sum(&stats), stats.open()), (1, 1));

        let h2 = OpenConnection::admit(&stats, ip, &options).expect("admitted");
        h2.requests(false, hyper::Version::HTTP_2);
        h2.requests(false, hyper::Version::HTTP_11);
        let tls = OpenConnection::admit(&stats, ip, &options).expect("admitted");
        tls.speaks(Protocol::TlsH2);
        tls.requests(true, hyper::Version::HTTP_11);
        assert!(tls.has_requested());
        assert_eq!(stats.open_by(Protocol::H2c), 1, "the first request decides");
        assert_eq!(stats.open_by(Protocol::TlsH2), 1, "ALPN decides before it");
        assert_eq!(stats.open_by(Protocol::TlsHttp1), 0);
        assert_eq!(stats.open_by(Protocol::Pending), 1);
        assert_eq!((sum(&stats), stats.open()), (3, 3));

        drop((silent, h2, tls));
        assert_eq!((sum(&stats), stats.open()), (0, 0));
    }

    #[test]
    fn protocols_are_labelled_by_transport_and_version() {
        use hyper::Version;
        assert_eq!(Protocol::of(false, Version::HTTP_11), Protocol::Http1);
        assert_eq!(Protocol::of(false, Version::HTTP_2), Protocol::H2c);
        assert_eq!(Protocol::of(true, Version::HTTP_2), Protocol::TlsH2);
        assert_eq!(Protocol::of(true, Version::HTTP_10), Protocol::TlsHttp1);
        assert_eq!(Protocol::of_alpn(Some(b"h2")), Some(Protocol::TlsH2));
        assert_eq!(
            Protocol::of_alpn(Some(b"http/1.1")),
            Some(Protocol::TlsHttp1)
        );
        assert_eq!(Protocol::of_alpn(None), None);
        let labels: Vec<&str> = Protocol::ALL.iter().map(|p| p.label()).collect();
        assert_eq!(labels, ["http1", "h2c", "tls-h2", "tls-http1", "pending"]);
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "ALL is in index order");
        }
    }
}
