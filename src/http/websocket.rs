//! The WebSocket connection the hub's socket speaks over: its upgrade (an HTTP/1.1 `101`, or
//! an HTTP/2 extended CONNECT, RFC 8441) and a connection on which tungstenite reads frames,
//! answers pings and writes the control and reply frames, while message frames are written as
//! the hub encoded them, once for every socket following the topic
//! ([`crate::wire::Encoded::ws_frame`]). Through tungstenite each message was framed, copied
//! and flushed per socket, and its wakers registered at every step (docs/BENCHMARKS.md, the
//! WebSocket profile).
//!
//! The two writers share one byte stream, so [`Io`] keeps their frames whole and in order:
//! tungstenite's bytes are always taken whole (what the socket does not take yet is queued),
//! so tungstenite never holds half a frame; message frames go out after anything queued.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::error::ApiError;

/// Bytes of tungstenite's frames queued for a socket that reads nothing before its writes
/// wait: a reply or a pong, never the message stream (those wait in the hub's channel).
const QUEUE_LIMIT: usize = 64 * 1024;

/// A WebSocket of the hub: tungstenite over [`Io`].
pub type Socket = WebSocketStream<Io>;

/// A request to upgrade to a WebSocket, checked (RFC 6455 §4.2.1; RFC 8441 §4 over HTTP/2).
pub struct Upgrade {
    /// `Sec-WebSocket-Key` over HTTP/1.1; none over HTTP/2, which has no key.
    key: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade; answered `400`.
#[derive(Debug)]
pub struct NotAnUpgrade(&'static str);

impl NotAnUpgrade {
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        ApiError::bad_request(format!("not a WebSocket upgrade: {}", self.0)).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAnUpgrade> {
        let key = if parts.version <= Version::HTTP_11 {
            if parts.method != Method::GET {
                return Err(NotAnUpgrade("an upgrade is a GET"));
            }
            if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
                return Err(NotAnUpgrade("Connection must name upgrade"));
            }
            if !is(&parts.headers, header::UPGRADE, "websocket") {
                return Err(NotAnUpgrade("Upgrade must be websocket"));
            }
            let key = parts.headers.get(header::SEC_WEBSOCKET_KEY);
            Some(
                key.ok_or(NotAnUpgrade("Sec-WebSocket-Key is missing"))?
                    .clone(),
            )
        } else {
            if parts.method != Method::CONNECT {
                return Err(NotAnUpgrade("over HTTP/2 an upgrade is a CONNECT"));
            }
            let protocol = parts.extensions.get::<hyper::ext::Protocol>();
            if protocol.is_none_or(|p| p.as_str() != "websocket") {
                return Err(NotAnUpgrade("the :protocol must be websocket"));
            }
            None
        };
        if !is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAnUpgrade("Sec-WebSocket-Version must be 13"));
        }
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// The answer that completes the upgrade; once the connection is handed over, `session`
    /// runs on its own task with the socket. A connection that goes away first runs nothing.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = Io::new(TokioIo::new(upgraded));
            session(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
        });
        let mut response = Response::new(Body::empty());
        // Over HTTP/2 a `200` with no body accepts (RFC 9113 §8.5).
        if let Some(key) = key {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            // Base64, always a valid header value.
            if let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
        }
        response
    }
}

fn is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Writes `frames` (whole WebSocket frames, already encoded) to the socket after whatever it
/// has queued, and flushes. Not to be raced: the frames are whole only once this returns.
pub async fn send_frames(socket: &mut Socket, mut frames: Bytes) -> io::Result<()> {
    let io = socket.get_mut();
    std::future::poll_fn(|cx| io.poll_send(cx, &mut frames)).await
}

/// Completes a close handshake the peer started: tungstenite, having read the peer's Close,
/// answers with its own and stops. It hands that echo to [`Io`], which may only queue it (the
/// socket full, or a pong still queued), and tungstenite does not flush again once closed: so
/// the queue is written out here. Gives up after `limit` (a peer that reads nothing); whether
/// the echo went out.
pub async fn answer_close<T>(socket: &mut WebSocketStream<Io<T>>, limit: Duration) -> bool
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let answered = async {
        // The sink's close, which flushes the echo tungstenite holds (its own `close` would
        // send a second Close, refused after the peer's). It ends with an error once the echo
        // is handed over, the peer having closed: not a failure.
        let _ = futures_util::SinkExt::close(socket).await;
        socket.get_mut().flush().await.is_ok()
    };
    tokio::time::timeout(limit, answered).await.unwrap_or(false)
}

/// The upgraded connection, written by two hands (see the module's text).
pub struct Io<T = TokioIo<Upgraded>> {
    inner: T,
    /// Bytes taken from tungstenite that the socket has not taken yet, written before
    /// anything else. Empty, and unallocated, on a socket that keeps up.
    queued: BytesMut,
}

impl<T: AsyncWrite + Unpin> Io<T> {
    fn new(inner: T) -> Self {
        Io {
            inner,
            queued: BytesMut::new(),
        }
    }

    /// Writes what is queued; ready once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The common case, once per delivered message: nothing queued, nothing to let go.
        if self.queued.capacity() == 0 {
            return Poll::Ready(Ok(()));
        }
        while !self.queued.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.queued))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued.advance(n);
        }
        // Its capacity is let go: an idle socket keeps no buffer.
        self.queued = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// What is queued, then `frames` (advanced as the socket takes them), then a flush.
    fn poll_send(&mut self, cx: &mut Context<'_>, frames: &mut Bytes) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        while !frames.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, frames))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            frames.advance(n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    /// Tungstenite's bytes: taken whole or not at all, so that no frame of its is left half
    /// written when message frames follow.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.queued.is_empty() {
            // Pending leaves the task's waker with the socket.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if this.queued.len() >= QUEUE_LIMIT {
                return Poll::Pending;
            }
        }
        if this.queued.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => this.queued.extend_from_slice(&buf[n.min(buf.len())..]),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => this.queued.extend_from_slice(buf),
            }
        } else {
            this.queued.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::Message;

    /// Over a pipe that takes a few bytes at a time, tungstenite's writes are taken whole at
    /// once (queued), and frames written after them follow them: nothing is reordered or cut.
    #[tokio::test]
    async fn queued_bytes_go_first_and_whole() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = Io::new(near);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.map(|_| all)
        });
        let tungstenite = vec![b'a'; 300];
        // Taken whole in one call, though the pipe holds 16 bytes.
        let taken = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &tungstenite))
            .await
            .unwrap();
        assert_eq!(taken, tungstenite.len());
        let mut frames = Bytes::from(vec![b'b'; 500]);
        let sent = tokio::spawn(async move {
            std::future::poll_fn(|cx| io.poll_send(cx, &mut frames)).await?;
            // And tungstenite again after them.
            io.write_all(&[b'c'; 40]).await?;
            io.shutdown().await?;
            Ok::<_, io::Error>(io)
        });
        let all = reader.await.unwrap().unwrap();
        let io = sent.await.unwrap().unwrap();
        let mut expected = vec![b'a'; 300];
        expected.extend([b'b'; 500]);
        expected.extend([b'c'; 40]);
        assert_eq!(all, expected);
        assert_eq!(io.queued.capacity(), 0, "an emptied queue keeps no buffer");
    }

    /// Polls `fut` once, with the test task's waker.
    async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
    }

    /// The echo of a peer's Close reaches the peer whole, after what was queued before it,
    /// though the socket could take only part of it when it was answered: a browser would
    /// otherwise see the connection end without the echo (1006, not clean).
    #[tokio::test]
    async fn a_close_is_answered_after_what_was_queued() {
        let (near, far) = tokio::io::duplex(64);
        let mut server = WebSocketStream::from_raw_socket(Io::new(near), Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(far, Role::Client, None).await;
        let big = "q".repeat(10_000);
        // Handed to the connection, which takes 64 bytes and queues the rest.
        server.feed(Message::text(big.clone())).await.unwrap();
        assert!(poll_once(server.flush()).await.is_pending());
        assert!(server.get_ref().queued.len() > 9_000, "queued, not written");
        client.send(Message::Close(None)).await.unwrap();
        let peer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(Ok(message)) = client.next().await {
                got.push(message);
            }
            got
        });
        let closed = server.next().await.unwrap().unwrap();
        assert!(matches!(closed, Message::Close(_)), "{closed:?}");
        assert!(answer_close(&mut server, Duration::from_secs(30)).await);
        drop(server);
        let got = tokio::time::timeout(Duration::from_secs(30), peer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2, "the text, then the echo");
        assert_eq!(got[0], Message::text(big));
        assert!(matches!(got[1], Message::Close(_)), "{:?}", got[1]);
    }

    /// Answering a Close gives up on a peer that reads nothing, instead of holding the
    /// session's task and its socket forever.
    #[tokio::test]
    async fn answering_a_close_gives_up_on_a_peer_that_never_reads() {
        let (near, far) = tokio::io::duplex(64);
        let mut server = WebSocketStream::from_raw_socket(Io::new(near), Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(far, Role::Client, None).await;
        server
            .feed(Message::text("r".repeat(10_000)))
            .await
            .unwrap();
        assert!(poll_once(server.flush()).await.is_pending());
        client.send(Message::Close(None)).await.unwrap();
        let closed = server.next().await.unwrap().unwrap();
        assert!(matches!(closed, Message::Close(_)), "{closed:?}");
        // The client keeps its end open and reads nothing.
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            answer_close(&mut server, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(answered, Ok(false), "gives up within its limit");
        drop(client);
    }
}
