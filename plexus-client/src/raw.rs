//! Subscriptions as bytes, for load generators that count and time deliveries without
//! decoding every message into an [`Item`](crate::Item): the hub's encoding, undecoded.
//!
//! - [`Client::subscribe_bytes`] keeps the client's connection handling (HTTP/2, TLS, the
//!   pool): it yields the body of an SSE or NDJSON stream chunk by chunk.
//! - [`Client::subscribe_socket`] opens one plain TCP connection for one subscription and
//!   speaks just enough HTTP/1.1 to start it, then hands out the bytes as they arrive. It is
//!   the leanest way to hold thousands of subscriptions from one process, so that the load
//!   generator takes as little CPU as possible from the hub it measures (`http://` only).

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
}
