//! Connections that count every byte they carry, both ways, headers and framing included: the
//! pattern lab's measure of "bytes on the wire per delivered message".
//!
//! reqwest hides its sockets, so these speak HTTP themselves on a [`Counted`] TCP stream:
//! [`Http1`] is a keep-alive HTTP/1.1 connection (short and long polls, one request after
//! another) that can also be turned into a streaming subscription (SSE, or a WebSocket after
//! its `101`); [`H2`] is one HTTP/2 connection (h2c, prior knowledge) through hyper's client.
//! Cleartext only (`http://`): the bytes counted are the bytes a network would carry.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::{Client, Error};

/// Bytes sent and received by every connection that shares it.
#[derive(Debug, Default)]
pub struct Counter {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counter {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A stream that adds what it reads and writes to a [`Counter`].
pub struct Counted<S> {
    inner: S,
    counter: Arc<Counter>,
}

impl<S> Counted<S> {
    /// Counts what `inner` carries into `counter` (e.g. a connection a test server accepted).
    pub fn new(inner: S, counter: Arc<Counter>) -> Self {
        Counted { inner, counter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counter.received.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.counter.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection whose bytes are counted (see [`Client::connect_counted`]).
pub struct Http1 {
    stream: Counted<TcpStream>,
    host: String,
    bearer: Option<String>,
    /// Read past the current response (the start of the next, or of a stream's body).
    buf: BytesMut,
}

/// An answer of [`Http1::get`].
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Http1 {
    fn request(&self, path: &str, extra: &str) -> String {
        let auth = self
            .bearer
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}{extra}\r\n",
            self.host
        )
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| Error::Protocol(format!("{}: {e}", self.host)))?;
        if n == 0 {
            return Err(Error::Protocol(format!(
                "{} closed the connection",
                self.host
            )));
        }
        Ok(())
    }

    /// Reads a response head; returns its status and lowercased header lines.
    async fn head(&mut self) -> Result<(u16, String), Error> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).to_ascii_lowercase();
                self.buf.advance(i + 4);
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Protocol(format!("bad status line in {head:?}")))?;
                return Ok((status, head));
            }
            self.fill().await?;
        }
    }

    /// `GET path` on this connection; the whole answer (a `Content-Length` or chunked body).
    pub async fn get(&mut self, path: &str) -> Result<Answer, Error> {
        let request = self.request(path, "");
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Error::Protocol(format!("{}: {e}", self.host)))?;
        let (status, head) = self.head().await?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body = if let Some(length) = length {
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.split_to(length).freeze()
        } else if head.contains("transfer-encoding: chunked") {
            let mut body = BytesMut::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| Error::Protocol(format!("bad chunk size {size_text:?}")))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill().await?;
                }
                self.buf.advance(line_end + 2);
                body.extend_from_slice(&self.buf[..size]);
                self.buf.advance(size + 2);
                if size == 0 {
                    break body.freeze();
                }
            }
        } else {
            Bytes::new()
        };
        Ok(Answer { status, body })
    }

    /// Starts a streaming subscription at `path` on this connection: an SSE `GET` (answered
    /// `200`) or, with `websocket`, an upgrade (answered `101`). What follows is read with
    /// [`Http1::read`]: the body as sent (chunked coding included), or the server's frames.
    pub async fn open_stream(&mut self, path: &str, websocket: bool) -> Result<(), Error> {
        let extra = if websocket {
            // The key is fixed: this client does not check the accept header either.
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let request = self.request(path, extra);
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Error::Protocol(format!("{}: {e}", self.host)))?;
        let (status, head) = self.head().await?;
        let expected = if websocket { 101 } else { 200 };
        if status != expected {
            let line = head.lines().next().unwrap_or_default().to_owned();
            return Err(Error::Protocol(format!(
                "the subscription was answered {line:?}"
            )));
        }
        Ok(())
    }

    /// Appends what arrives next to `buf`; `Ok(0)`: the hub closed the connection.
    pub async fn read(&mut self, buf: &mut BytesMut) -> Result<usize, Error> {
        if !self.buf.is_empty() {
            let n = self.buf.len();
            buf.extend_from_slice(&self.buf);
            self.buf.clear();
            return Ok(n);
        }
        self.stream
            .read_buf(buf)
            .await
            .map_err(|e| Error::Protocol(format!("{}: {e}", self.host)))
    }

    /// Writes raw bytes (a WebSocket client frame).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| Error::Protocol(format!("{}: {e}", self.host)))
    }
}

/// One HTTP/2 connection (h2c) whose bytes are counted (see [`Client::connect_counted_h2`]).
pub struct H2 {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    base: String,
    bearer: Option<String>,
}

/// The body of a stream opened with [`H2::stream`], chunk by chunk.
pub struct H2Body {
    body: hyper::body::Incoming,
}

impl H2Body {
    /// The next DATA chunk; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        use http_body_util::BodyExt;
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(Error::Protocol(e.to_string()))),
            }
        }
    }
}

impl H2 {
    /// `GET path` as a new stream on this connection; its body once answered `200`.
    pub async fn stream(&mut self, path: &str) -> Result<H2Body, Error> {
        let mut request = hyper::Request::get(format!("{}{path}", self.base));
        if let Some(token) = &self.bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Empty::new())
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.send
            .ready()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if response.status() != 200 {
            return Err(Error::Protocol(format!(
                "the subscription was answered {}",
                response.status()
            )));
        }
        Ok(H2Body {
            body: response.into_body(),
        })
    }
}

impl Client {
    fn cleartext_host(&self) -> Result<&str, Error> {
        self.base.strip_prefix("http://").ok_or_else(|| {
            Error::Protocol("counted connections are cleartext (http:// only)".into())
        })
    }

    async fn counted_tcp(&self, counter: Arc<Counter>) -> Result<Counted<TcpStream>, Error> {
        let host = self.cleartext_host()?;
        let stream = TcpStream::connect(host)
            .await
            .map_err(|e| Error::Protocol(format!("{host}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Counted {
            inner: stream,
            counter,
        })
    }

    /// Opens a keep-alive HTTP/1.1 connection to the hub whose bytes go to `counter`; it
    /// sends the client's bearer token, if any.
    pub async fn connect_counted(&self, counter: Arc<Counter>) -> Result<Http1, Error> {
        let stream = self.counted_tcp(counter).await?;
        Ok(Http1 {
            stream,
            host: self.cleartext_host()?.to_owned(),
            bearer: self.bearer.clone(),
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// Opens an HTTP/2 connection (h2c, prior knowledge) whose bytes go to `counter`. Its
    /// driver runs in a task of its own until the connection closes.
    pub async fn connect_counted_h2(&self, counter: Arc<Counter>) -> Result<H2, Error> {
        let stream = self.counted_tcp(counter).await?;
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Error::Protocol(format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 {
            send,
            base: self.base.clone(),
            bearer: self.bearer.clone(),
        })
    }
}
