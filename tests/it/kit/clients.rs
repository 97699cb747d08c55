//! Stream clients for the streaming tests: SSE and NDJSON over a hand-written HTTP/1.1
//! request on a raw TCP socket, SSE over HTTP/2 (h2c), and a WebSocket client speaking the
//! `/v1/ws` frames.
//!
//! A raw socket is what lets a test play a slow consumer: it can stop reading (with a small
//! receive buffer, so the server's writes back up quickly) and read again later. Every read
//! has a generous deadline, and a deadline that passes panics with what was seen, so a broken
//! server fails a test instead of hanging it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_client::Item;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::client::Request as WsRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::server::{Server, install_crypto_provider};

/// How long one frame, line or response head may take to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 response read by hand from a raw TCP socket, its body de-chunked on demand.
pub struct RawResponse {
    reader: BufReader<TcpStream>,
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Body bytes read but not yet consumed by a parser.
    pending: Vec<u8>,
    ended: bool,
}

/// Socket options for a raw request.
#[derive(Default, Clone, Copy)]
pub struct Dial {
    /// `SO_RCVBUF` for the client socket: small makes a non-reading client back up quickly.
    pub recv_buffer: Option<u32>,
}

impl RawResponse {
    /// Sends `GET path` with `headers` and reads the status line and headers.
    pub async fn get_with(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
        dial: Dial,
    ) -> RawResponse {
        let stream = Self::send(server, path, headers, dial).await;
        Self::read_head(stream, path).await
    }

    /// Connects and writes the request, without reading anything.
    pub async fn send(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
        dial: Dial,
    ) -> TcpStream {
        let addr = server
            .addr()
            .parse()
            .expect("the server address is ip:port");
        let socket = TcpSocket::new_v4().expect("create a TCP socket");
        if let Some(size) = dial.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .expect("set the receive buffer size");
        }
        let mut stream = timeout(READ_TIMEOUT, socket.connect(addr))
            .await
            .expect("connect within the deadline")
            .expect("connect to the server");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", server.addr());
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        stream
    }

    /// Reads the status line and headers of the response to a request sent on `stream`.
    pub async fn read_head(stream: TcpStream, path: &str) -> RawResponse {
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        let head = timeout(READ_TIMEOUT, async {
            loop {
                let mut line = String::new();
                let n = reader
                    .read_line(&mut line)
                    .await
                    .expect("read the response head");
                assert!(
                    n > 0,
                    "GET {path}: connection closed in the head: {lines:?}"
                );
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    return;
                }
                lines.push(line);
            }
        })
        .await;
        assert!(
            head.is_ok(),
            "GET {path}: no complete response head within {READ_TIMEOUT:?}: {lines:?}"
        );
        let status_line = lines.first().expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines[1..]
            .iter()
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("GET {path}: bad header line {l:?}"));
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        RawResponse {
            reader,
            status,
            headers,
            chunked,
            pending: Vec::new(),
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads the next piece of the body into `pending`; `false` once the body has ended.
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if !self.chunked {
            let mut buf = [0u8; 16 * 1024];
            let n = self.reader.read(&mut buf).await.expect("read the body");
            if n == 0 {
                self.ended = true;
                return false;
            }
            self.pending.extend_from_slice(&buf[..n]);
            return true;
        }
        let mut size_line = String::new();
        let n = self
            .reader
            .read_line(&mut size_line)
            .await
            .expect("read a chunk size");
        if n == 0 {
            // The connection closed without the last chunk: the stream was cut, not ended.
            self.ended = true;
            return false;
        }
        let size_hex = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            let mut trailer = String::new();
            let _ = self.reader.read_line(&mut trailer).await;
            self.ended = true;
            return false;
        }
        let start = self.pending.len();
        self.pending.resize(start + size, 0);
        self.reader
            .read_exact(&mut self.pending[start..])
            .await
            .expect("read a chunk");
        let mut crlf = [0u8; 2];
        self.reader
            .read_exact(&mut crlf)
            .await
            .expect("read a chunk's CRLF");
        assert_eq!(&crlf, b"\r\n", "a chunk ends with CRLF");
        true
    }

    /// Takes the body bytes up to and including the first `sep`, reading more as needed;
    /// `None` at the end of the body. Panics after `READ_TIMEOUT` without one.
    async fn take_until(&mut self, sep: &[u8], what: &str) -> Option<Vec<u8>> {
        let found = timeout(READ_TIMEOUT, async {
            loop {
                if let Some(pos) = find(&self.pending, sep) {
                    let rest = self.pending.split_off(pos + sep.len());
                    return Some(std::mem::replace(&mut self.pending, rest));
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(v) => v,
            Err(_) => panic!(
                "no {what} within {READ_TIMEOUT:?}; unparsed bytes: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One SSE frame (an event block up to a blank line).
#[derive(Debug, Default, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comments: Vec<String>,
}

impl Frame {
    /// Parses one event block (its lines up to and including the blank line).
    pub fn parse(block: Vec<u8>) -> Frame {
        let text = String::from_utf8(block).expect("SSE is UTF-8");
        let mut frame = Frame::default();
        for line in text.trim_end_matches('\n').split('\n') {
            if let Some(comment) = line.strip_prefix(':') {
                frame.comments.push(comment.trim_start().to_string());
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => frame.id = Some(value.to_string()),
                "event" => frame.event = Some(value.to_string()),
                "retry" => frame.retry = Some(value.to_string()),
                "data" => {
                    frame.data = Some(match frame.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value.to_string(),
                    })
                }
                other => panic!("unknown SSE field {other:?} in {text:?}"),
            }
        }
        frame
    }

    /// Whether this is a message or gap frame (not a comment or the `retry:` prelude).
    pub fn is_event(&self) -> bool {
        self.data.is_some() || self.id.is_some()
    }

    /// `data` parsed as JSON.
    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("frame has no data: {self:?}"));
        serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {self:?}"))
    }

    pub fn id(&self) -> &str {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("frame has no id: {self:?}"))
    }

    pub fn is_gap(&self) -> bool {
        self.event.as_deref() == Some("gap")
    }
}

/// An SSE stream over a raw socket.
pub struct Sse {
    pub resp: RawResponse,
}

impl Sse {
    /// Opens `GET path`, asserting `200 text/event-stream` and the `retry: 2000` prelude. The
    /// subscription exists once this returns (the head is sent after it is made).
    pub async fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> Sse {
        Self::open_with(server, path, headers, Dial::default()).await
    }

    pub async fn open_with(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
        dial: Dial,
    ) -> Sse {
        let resp = RawResponse::get_with(server, path, headers, dial).await;
        Self::from_response(resp, path).await
    }

    pub async fn from_response(resp: RawResponse, path: &str) -> Sse {
        assert_eq!(resp.status, 200, "GET {path}: {:?}", resp.headers);
        let ct = resp.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/event-stream"),
            "GET {path}: Content-Type {ct:?}"
        );
        let mut sse = Sse { resp };
        let first = sse
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("GET {path}: the stream ended before `retry:`"));
        assert_eq!(
            first.retry.as_deref(),
            Some("2000"),
            "GET {path}: the first frame is `retry: 2000`: {first:?}"
        );
        assert!(
            first.id.is_none() && first.data.is_none(),
            "GET {path}: the retry frame stands alone: {first:?}"
        );
        sse
    }

    /// The next frame of any kind; `None` when the stream ends.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let block = self.resp.take_until(b"\n\n", "SSE frame").await?;
        Some(Frame::parse(block))
    }

    /// The next message or gap frame, skipping comments; `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.is_event() {
                return Some(frame);
            }
        }
    }

    /// The next `n` message or gap frames; panics if the stream ends first.
    pub async fn events(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event().await {
                Some(f) => out.push(f),
                None => panic!(
                    "the stream ended after {} of {n} events: {out:?}",
                    out.len()
                ),
            }
        }
        out
    }
}

/// A reqwest client that speaks HTTP/2 without asking (h2c prior knowledge).
pub fn h2c_reqwest() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build an h2c reqwest client")
}

/// An SSE stream over HTTP/2 in cleartext (prior knowledge), one connection of its own.
pub struct SseH2 {
    resp: reqwest::Response,
    pending: Vec<u8>,
}

impl SseH2 {
    /// Opens `GET path` over h2c, asserting HTTP/2, `200 text/event-stream` and the
    /// `retry: 2000` prelude. The subscription exists once this returns.
    pub async fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> SseH2 {
        let mut req = h2c_reqwest().get(server.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = timeout(READ_TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| {
                panic!("GET {path} over h2c: no response head within {READ_TIMEOUT:?}")
            })
            .unwrap_or_else(|e| panic!("GET {path} over h2c: {e}"));
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "GET {path}");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "GET {path}: {:?}",
            resp.headers()
        );
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            ct.starts_with("text/event-stream"),
            "GET {path}: Content-Type {ct:?}"
        );
        let mut sse = SseH2 {
            resp,
            pending: Vec::new(),
        };
        let first = sse
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("GET {path}: the stream ended before `retry:`"));
        assert_eq!(
            first.retry.as_deref(),
            Some("2000"),
            "GET {path}: {first:?}"
        );
        sse
    }

    /// The next frame of any kind; `None` when the stream ends.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let found = timeout(READ_TIMEOUT, async {
            loop {
                if let Some(pos) = find(&self.pending, b"\n\n") {
                    let rest = self.pending.split_off(pos + 2);
                    return Some(std::mem::replace(&mut self.pending, rest));
                }
                match self.resp.chunk().await.expect("read an HTTP/2 DATA frame") {
                    Some(bytes) => self.pending.extend_from_slice(&bytes),
                    None => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no SSE frame over h2c within {READ_TIMEOUT:?}; unparsed bytes: {:?}",
                String::from_utf8_lossy(&self.pending)
            )
        });
        found.map(Frame::parse)
    }

    /// The next message or gap frame, skipping comments; `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.is_event() {
                return Some(frame);
            }
        }
    }
}

/// An NDJSON stream over a raw socket.
pub struct Ndjson {
    pub resp: RawResponse,
}

impl Ndjson {
    /// Opens `GET path`, asserting `200 application/x-ndjson`. The subscription exists once
    /// this returns.
    pub async fn open(server: &Server, path: &str) -> Ndjson {
        Self::open_with(server, path, Dial::default()).await
    }

    pub async fn open_with(server: &Server, path: &str, dial: Dial) -> Ndjson {
        let resp = RawResponse::get_with(server, path, &[], dial).await;
        assert_eq!(resp.status, 200, "GET {path}: {:?}", resp.headers);
        let ct = resp.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/x-ndjson"),
            "GET {path}: Content-Type {ct:?}"
        );
        Ndjson { resp }
    }

    /// The next line as JSON, keepalives included; `None` when the stream ends.
    pub async fn next_line(&mut self) -> Option<Value> {
        let line = self.resp.take_until(b"\n", "NDJSON line").await?;
        let text = String::from_utf8(line).expect("NDJSON is UTF-8");
        Some(
            serde_json::from_str(text.trim_end())
                .unwrap_or_else(|e| panic!("NDJSON line is not JSON ({e}): {text:?}")),
        )
    }

    /// The next line that is not a keepalive.
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let line = self.next_line().await?;
            if line["event"] != "keepalive" {
                return Some(line);
            }
        }
    }

    /// The next `n` non-keepalive lines; panics if the stream ends first.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event().await {
                Some(v) => out.push(v),
                None => panic!("the stream ended after {} of {n} lines: {out:?}", out.len()),
            }
        }
        out
    }
}

/// A WebSocket client on `/v1/ws`.
pub struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects to `/v1/ws{query}` (`query` empty or starting with `?`).
    pub async fn connect(server: &Server, query: &str) -> Ws {
        let url = format!("ws://{}/v1/ws{query}", server.addr());
        let (inner, resp) = timeout(READ_TIMEOUT, tokio_tungstenite::connect_async(url.clone()))
            .await
            .expect("WebSocket handshake within the deadline")
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "{url}");
        Ws { inner }
    }

    /// Connects over a socket with the options of `dial` (e.g. a small receive buffer).
    pub async fn connect_with(server: &Server, query: &str, dial: Dial) -> Ws {
        let url = format!("ws://{}/v1/ws{query}", server.addr());
        let socket = TcpSocket::new_v4().expect("create a TCP socket");
        if let Some(size) = dial.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .expect("set the receive buffer size");
        }
        let addr = server
            .addr()
            .parse()
            .expect("the server address is ip:port");
        let stream = timeout(READ_TIMEOUT, socket.connect(addr))
            .await
            .expect("connect within the deadline")
            .expect("connect to the server");
        let (inner, resp) = timeout(
            READ_TIMEOUT,
            tokio_tungstenite::client_async(url.clone(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("WebSocket handshake within the deadline")
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "{url}");
        Ws { inner }
    }

    /// Opens the handshake of `request` (its headers included): the socket on `101`, or the
    /// status and body the hub answered instead (a refused upgrade, e.g. `401` or `403`).
    pub async fn handshake(request: WsRequest) -> Result<Ws, (u16, String)> {
        let uri = request.uri().to_string();
        let result = timeout(READ_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("WebSocket handshake within the deadline");
        match result {
            Ok((inner, resp)) => {
                assert_eq!(resp.status().as_u16(), 101, "{uri}");
                Ok(Ws { inner })
            }
            Err(WsError::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("WebSocket handshake with {uri}: {e}"),
        }
    }

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.inner
            .send(message)
            .await
            .expect("send a WebSocket frame");
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_raw(WsMessage::text(frame.to_string())).await;
    }

    /// The next text frame as JSON, skipping pings and pongs. Panics on a close, a binary
    /// frame, or nothing within `READ_TIMEOUT`.
    pub async fn recv(&mut self) -> Value {
        self.try_recv()
            .await
            .unwrap_or_else(|| panic!("the WebSocket closed while a frame was expected"))
    }

    /// Like `recv`, but `None` if the socket closes.
    pub async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let next = timeout(READ_TIMEOUT, self.inner.next())
                .await
                .unwrap_or_else(|_| panic!("no WebSocket frame within {READ_TIMEOUT:?}"));
            match next {
                None | Some(Ok(WsMessage::Close(_))) => return None,
                Some(Err(e)) => panic!("WebSocket error: {e}"),
                Some(Ok(WsMessage::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("WebSocket frame is not JSON ({e}): {:?}", text.as_str())
                    }));
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(other)) => panic!("unexpected WebSocket frame {other:?}"),
            }
        }
    }

    /// Sends `frame` and returns the answer with the same `id` (`ok` or `error`); message
    /// frames that arrive before it are appended to `others`.
    pub async fn call(&mut self, frame: Value, others: &mut Vec<Value>) -> Value {
        let id = frame["id"].clone();
        self.send(frame.clone()).await;
        loop {
            let got = self.recv().await;
            if matches!(got["op"].as_str(), Some("ok" | "error")) && got["id"] == id {
                return got;
            }
            assert!(
                matches!(got["op"].as_str(), Some("message" | "gap" | "disconnect")),
                "while waiting for the answer to {frame}: unexpected {got}"
            );
            others.push(got);
        }
    }

    /// Sends `frame` and asserts an `ok` answer with its id; returns it.
    pub async fn ok(&mut self, frame: Value, others: &mut Vec<Value>) -> Value {
        let answer = self.call(frame.clone(), others).await;
        assert_eq!(answer["op"], "ok", "{frame} → {answer}");
        answer
    }

    /// The next `n` frames that are not answers (messages, gaps, disconnects).
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let got = self.recv().await;
            assert!(
                matches!(got["op"].as_str(), Some("message" | "gap" | "disconnect")),
                "expected a message, gap or disconnect, got {got} after {out:?}"
            );
            out.push(got);
        }
        out
    }
}

/// The next item of a subscription, which must come within `READ_TIMEOUT` and be no error.
pub async fn next_item(sub: &mut plexus_client::Subscription, what: &str) -> Item {
    match timeout(READ_TIMEOUT, sub.next()).await {
        Err(_) => panic!("{what}: no item within {READ_TIMEOUT:?}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Ok(Some(Err(e))) => panic!("{what}: subscription error {e}"),
        Ok(Some(Ok(item))) => item,
    }
}

/// The (seq, data) of a message item; panics on a gap.
pub fn message(item: Item, what: &str) -> (u64, String) {
    match item {
        Item::Message(m) => (m.seq, m.data.unwrap_or_default()),
        Item::Gap(g) => panic!("{what}: unexpected gap {g:?}"),
    }
}
