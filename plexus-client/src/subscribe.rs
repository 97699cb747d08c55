//! Streaming subscriptions: SSE, NDJSON and WebSocket, all yielding the same [`Item`]s.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{Client, Envelope, Error, Gap};

/// How a subscription receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ndjson,
    WebSocket,
}

/// One thing a subscription delivers: a message, or a gap announced before what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Message(Envelope),
    Gap(Gap),
}

enum Source {
    Http(BoxStream<'static, reqwest::Result<bytes::Bytes>>),
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

/// An open subscription. `next` yields items until the hub ends the stream.
pub struct Subscription {
    transport: Transport,
    source: Source,
    buf: BytesMut,
    ready: VecDeque<Item>,
    /// The cursor after the last SSE event (`id:`), for a resume with `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

impl Client {
    /// Opens a subscription to `topics` (comma-separated) from `since` (a cursor, `all`,
    /// `now`, a time or a duration; `None`: now).
    pub async fn subscribe(
        &self,
        topics: &str,
        since: Option<&str>,
        transport: Transport,
    ) -> Result<Subscription, Error> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(since) = since {
            query.push(("since", since));
        }
        let source = match transport {
            Transport::Sse | Transport::Ndjson => {
                let path = if transport == Transport::Sse {
                    "sse"
                } else {
                    "stream"
                };
                let response = self
                    .http
                    .get(format!("{}/v1/topics/{topics}/{path}", self.base))
                    .query(&query)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    return Err(crate::problem(response).await);
                }
                Source::Http(response.bytes_stream().boxed())
            }
            Transport::WebSocket => {
                let base = self
                    .base
                    .replacen("http://", "ws://", 1)
                    .replacen("https://", "wss://", 1);
                let mut url = format!("{base}/v1/ws?topic={topics}");
                if let Some(since) = since {
                    url.push_str("&since=");
                    url.push_str(&since.replace(':', "%3A").replace(',', "%2C"));
                }
                let connector = self
                    .ws_tls
                    .clone()
                    .map(tokio_tungstenite::Connector::Rustls);
                let (socket, _) =
                    tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
                        .await
                        .map_err(|e| Error::WebSocket(e.to_string()))?;
                Source::Ws(Box::new(socket))
            }
        };
        Ok(Subscription {
            transport,
            source,
            buf: BytesMut::new(),
            ready: VecDeque::new(),
            last_event_id: None,
        })
    }
}

impl Subscription {
    /// The next message or gap; `None` when the hub ended the stream.
    pub async fn next(&mut self) -> Option<Result<Item, Error>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            match &mut self.source {
                Source::Http(body) => match body.next().await? {
                    Ok(chunk) => {
                        self.buf.extend_from_slice(&chunk);
                        if let Err(e) = self.parse_http() {
                            return Some(Err(e));
                        }
                    }
                    Err(e) => return Some(Err(Error::Transport(e))),
                },
                Source::Ws(socket) => match socket.next().await? {
                    Ok(WsMessage::Text(text)) => match parse_ws(text.as_str()) {
                        Ok(Some(item)) => return Some(Ok(item)),
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    },
                    Ok(WsMessage::Close(_)) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(Error::WebSocket(e.to_string()))),
                },
            }
        }
    }

    fn parse_http(&mut self) -> Result<(), Error> {
        let separator: &[u8] = if self.transport == Transport::Sse {
            b"\n\n"
        } else {
            b"\n"
        };
        while let Some(end) = find(&self.buf, separator) {
            let record = self.buf.split_to(end);
            self.buf.advance(separator.len());
            let text = std::str::from_utf8(&record)
                .map_err(|_| Error::Protocol("the stream is not UTF-8".into()))?;
            if self.transport == Transport::Sse {
                self.parse_sse_event(text)?;
            } else if let Some(item) = parse_line(text)? {
                self.ready.push_back(item);
            }
        }
        Ok(())
    }

    fn parse_sse_event(&mut self, text: &str) -> Result<(), Error> {
        let (mut event, mut data, mut id) = (None, String::new(), None);
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v);
            } else if let Some(v) = line.strip_prefix("data: ") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v);
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            }
        }
        if id.is_some() {
            self.last_event_id = id;
        }
        if data.is_empty() {
            return Ok(());
        }
        let item = if event == Some("gap") {
            Item::Gap(serde_json::from_str(&data).map_err(|e| Error::Protocol(e.to_string()))?)
        } else {
            Item::Message(serde_json::from_str(&data).map_err(|e| Error::Protocol(e.to_string()))?)
        };
        self.ready.push_back(item);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An NDJSON line: an envelope (it has a `seq`), a gap, or a keepalive.
fn parse_line(text: &str) -> Result<Option<Item>, Error> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Protocol(e.to_string()))?;
    if value.get("seq").is_some() {
        return serde_json::from_value(value)
            .map(|m| Some(Item::Message(m)))
            .map_err(|e| Error::Protocol(e.to_string()));
    }
    match value.get("event").and_then(Value::as_str) {
        Some("gap") => serde_json::from_value(value)
            .map(|g| Some(Item::Gap(g)))
            .map_err(|e| Error::Protocol(e.to_string())),
        _ => Ok(None),
    }
}

fn parse_ws(text: &str) -> Result<Option<Item>, Error> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Protocol(e.to_string()))?;
    let protocol = |e: serde_json::Error| Error::Protocol(e.to_string());
    match value.get("op").and_then(Value::as_str) {
        Some("message") => serde_json::from_value(value)
            .map(|m| Some(Item::Message(m)))
            .map_err(protocol),
        Some("gap") => serde_json::from_value(value)
            .map(|g| Some(Item::Gap(g)))
            .map_err(protocol),
        Some("error") => Err(Error::Problem(crate::Problem {
            kind: String::new(),
            title: "WebSocket error".into(),
            status: value.get("status").and_then(Value::as_u64).unwrap_or(400) as u16,
            detail: value
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        })),
        _ => Ok(None),
    }
}
