//! Subscriptions as bytes, for load generators that count and time deliveries without
//! decoding every message into an [`Item`](crate::Item): the hub's encoding, undecoded.
//!
//! - [`Client::subscribe_bytes`] keeps the client's connection handling (HTTP/2, TLS, the
//!   pool): it yields the body of an SSE or NDJSON stream chunk by chunk.
//! - [`Client::subscribe_socket`] opens one plain TCP connection for one subscription and
//!   speaks just enough HTTP/1.1 to start it, then hands out the bytes as they arrive. It is
//!   the leanest way to hold thousands of subscriptions from one process, so that the load
//!   generator takes as little CPU as possible from the hub it measures (`http://` only).
//! - [`Client::poll_socket`] is the same for long polls: one plain TCP connection that sends
//!   poll after poll and hands out each answer's body undecoded.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Client, Error, Transport};

/// The body of an SSE or NDJSON subscription, chunk by chunk (see [`Client::subscribe_bytes`]).
pub struct ByteStream {
    pub(crate) body: BoxStream<'static, reqwest::Result<Bytes>>,
}

impl ByteStream {
    /// The next chunk of the body as received; `None` when the hub ended the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        self.body.next().await.map(|c| c.map_err(Error::Transport))
    }
}

/// One subscription on its own TCP connection (see [`Client::subscribe_socket`]).
pub struct RawSocket {
    stream: TcpStream,
    /// Bytes read together with the response head, handed out first.
    pending: BytesMut,
}

impl RawSocket {
    /// Appends what arrives next to `buf`: for SSE and NDJSON the response body as sent
    /// (chunked transfer coding included), for a WebSocket the server's frames, undecoded.
    /// `Ok(0)`: the hub closed the connection.
    pub async fn read(&mut self, buf: &mut BytesMut) -> Result<usize, Error> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.extend_from_slice(&self.pending);
            // Freed, not kept: a load generator holds thousands of these.
            self.pending = BytesMut::new();
            return Ok(n);
        }
        self.stream
            .read_buf(buf)
            .await
            .map_err(|e| Error::Protocol(format!("reading the subscription: {e}")))
    }
}

/// Long polls of one topic set on a TCP connection of their own (see [`Client::poll_socket`]).
pub struct RawPoller {
    stream: TcpStream,
    host: String,
    topics: String,
    /// Bytes read past the last answer (none with a well-behaved hub).
    pending: BytesMut,
}

impl RawPoller {
    /// One poll, `GET …/messages?since=SINCE&wait=WAIT`, on this connection: the body of its
    /// `200` answer, undecoded (`{"messages":[…],"next":…}`). Any other status is an error
    /// carrying the answer's status line.
    pub async fn poll(&mut self, since: &str, wait: std::time::Duration) -> Result<Bytes, Error> {
        let host = &self.host;
        let io = |e: std::io::Error| Error::Protocol(format!("{host}: {e}"));
        let since = since.replace(':', "%3A").replace(',', "%2C");
        let request = format!(
            "GET /v1/topics/{}/messages?since={since}&wait={:.3} HTTP/1.1\r\nHost: {host}\r\n\r\n",
            self.topics,
            wait.as_secs_f64()
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(io)?;
        let head = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..i]).to_ascii_lowercase();
                self.pending.advance(i + 4);
                break head;
            }
            if self.stream.read_buf(&mut self.pending).await.map_err(io)? == 0 {
                return Err(Error::Protocol(format!(
                    "{host} closed the connection before answering"
                )));
            }
        };
        let status_line = head.lines().next().unwrap_or_default().to_owned();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "the poll answer {status_line:?} has no Content-Length"
                ))
            })?;
        while self.pending.len() < length {
            if self.stream.read_buf(&mut self.pending).await.map_err(io)? == 0 {
                return Err(Error::Protocol(format!(
                    "{host} closed the connection in the middle of an answer"
                )));
            }
        }
        let body = self.pending.split_to(length).freeze();
        if !status_line.contains(" 200 ") {
            return Err(Error::Protocol(format!(
                "the poll was answered {status_line:?}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(body)
    }
}

/// The request path (with query) of a subscription to `topics` from `since`.
fn path(topics: &str, since: Option<&str>, transport: Transport) -> String {
    let since = since.map(|s| s.replace(':', "%3A").replace(',', "%2C"));
    match (transport, since) {
        (Transport::WebSocket, Some(s)) => format!("/v1/ws?topic={topics}&since={s}"),
        (Transport::WebSocket, None) => format!("/v1/ws?topic={topics}"),
        (Transport::Sse, Some(s)) => format!("/v1/topics/{topics}/sse?since={s}"),
        (Transport::Sse, None) => format!("/v1/topics/{topics}/sse"),
        (Transport::Ndjson, Some(s)) => format!("/v1/topics/{topics}/stream?since={s}"),
        (Transport::Ndjson, None) => format!("/v1/topics/{topics}/stream"),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    /// Opens an SSE or NDJSON subscription and returns its body undecoded. A WebSocket is
    /// refused: its messages are frames, see [`Client::subscribe_socket`].
    pub async fn subscribe_bytes(
        &self,
        topics: &str,
        since: Option<&str>,
        transport: Transport,
    ) -> Result<ByteStream, Error> {
        if transport == Transport::WebSocket {
            return Err(Error::Protocol(
                "subscribe_bytes reads HTTP bodies; a WebSocket has frames".into(),
            ));
        }
        let response = self
            .http
            .get(format!("{}{}", self.base, path(topics, since, transport)))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(crate::problem(response).await);
        }
        Ok(ByteStream {
            body: response.bytes_stream().boxed(),
        })
    }

    /// Opens a subscription on a TCP connection of its own (HTTP/1.1, cleartext), waits for
    /// the hub's answer (`200`, or `101` for a WebSocket) and returns the connection.
    pub async fn subscribe_socket(
        &self,
        topics: &str,
        since: Option<&str>,
        transport: Transport,
    ) -> Result<RawSocket, Error> {
        let host = self.base.strip_prefix("http://").ok_or_else(|| {
            Error::Protocol("subscribe_socket speaks cleartext HTTP/1.1 (http:// only)".into())
        })?;
        let io = |e: std::io::Error| Error::Protocol(format!("{host}: {e}"));
        let mut stream = TcpStream::connect(host).await.map_err(io)?;
        let _ = stream.set_nodelay(true);
        let path = path(topics, since, transport);
        let request = if transport == Transport::WebSocket {
            // The key is fixed: this client does not check the accept header either.
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        } else {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut pending = BytesMut::with_capacity(8192);
        let head = loop {
            if let Some(i) = find(&pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..i]).into_owned();
                pending.advance(i + 4);
                break head;
            }
            if stream.read_buf(&mut pending).await.map_err(io)? == 0 {
                return Err(Error::Protocol(format!(
                    "{host} closed the connection before answering"
                )));
            }
        };
        let expected = if transport == Transport::WebSocket {
            " 101 "
        } else {
            " 200 "
        };
        let status_line = head.lines().next().unwrap_or_default();
        if !status_line.contains(expected) {
            return Err(Error::Protocol(format!(
                "the subscription was answered {status_line:?}"
            )));
        }
        Ok(RawSocket { stream, pending })
    }

    /// Opens a TCP connection of its own (HTTP/1.1, cleartext) for long polls of `topics`;
    /// each [`RawPoller::poll`] is one request on it.
    pub async fn poll_socket(&self, topics: &str) -> Result<RawPoller, Error> {
        let host = self.base.strip_prefix("http://").ok_or_else(|| {
            Error::Protocol("poll_socket speaks cleartext HTTP/1.1 (http:// only)".into())
        })?;
        let stream = TcpStream::connect(host)
            .await
            .map_err(|e| Error::Protocol(format!("{host}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(RawPoller {
            stream,
            host: host.to_owned(),
            topics: topics.to_owned(),
            pending: BytesMut::with_capacity(1024),
        })
    }
}
