//! The raw long poll: the baseline of `plexus bench fanout --via long-poll`. A tiny server
//! that answers the hub's long-poll request from memory — no HTTP framework, no hub, no
//! store — so the bench can tell what the load generator's own client costs (reqwest, one
//! request per answer, JSON decoding) from what the hub adds.
//!
//! `GET …/messages?since=N&wait=S` answers the messages after `N` (`now`: after the head)
//! as soon as there are any, or an empty page after `S` seconds; `GET /v1/topics/{t}`
//! answers the number of polls waiting (so the bench knows when all pollers are held);
//! `POST` with a body publishes it and answers what the hub answers (`201` and a receipt).
//! Every topic is the one topic `bench`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::LabError;
use crate::model::{format_rfc3339_millis, now_millis};

/// Most messages one answer carries, as the hub's default `limit`.
const PAGE: usize = 100;

struct State {
    /// Every published message's JSON envelope, seq `i + 1` at index `i`.
    // A std mutex: held to push or copy a few handles, never across an await.
    log: Mutex<Vec<Bytes>>,
    head: watch::Sender<u64>,
    waiting: AtomicU64,
}

/// Serves the raw long poll on `listen` until the process ends; prints `listening on` first.
pub async fn serve(listen: &str) -> Result<(), LabError> {
    serve_on(super::announce(listen).await?).await
}

/// Serves the raw long poll on a bound listener until the process ends.
pub async fn serve_on(listener: TcpListener) -> Result<(), LabError> {
    let state = Arc::new(State {
        log: Mutex::new(Vec::new()),
        head: watch::Sender::new(0),
        waiting: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| LabError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, state).await;
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name=` in a request line's query.
fn query<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = line.split_once('?')?;
    let query = query.split(' ').next()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn connection(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let line = head.lines().next().unwrap_or_default().to_owned();
        let (status, body) = if line.starts_with("get") && line.contains("/messages") {
            buf.advance(head_end);
            ("200 OK", poll(&state, &line).await)
        } else if line.starts_with("get") {
            buf.advance(head_end);
            let info = format!(
                "{{\"topic\":\"bench\",\"first_seq\":0,\"last_seq\":{},\"messages\":0,\"bytes\":0,\"subscribers\":{}}}",
                *state.head.borrow(),
                state.waiting.load(Ordering::Relaxed)
            );
            ("200 OK", Bytes::from(info))
        } else {
            let length = super::content_length(&head);
            while buf.len() < head_end + length {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            let body = buf.split_to(head_end + length).split_off(head_end);
            ("201 Created", publish(&state, &body))
        };
        let mut out = BytesMut::with_capacity(128 + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        stream.write_all(&out).await?;
    }
}

/// Holds a poll until a message after its `since` exists (or its `wait` ends), then answers
/// the page after `since`.
async fn poll(state: &State, line: &str) -> Bytes {
    let mut head = state.head.subscribe();
    let since = match query(line, "since") {
        Some("now") | None => *head.borrow(),
        Some(s) => s.parse().unwrap_or(0),
    };
    let wait = query(line, "wait")
        .and_then(|w| w.parse::<f64>().ok())
        .map_or(Duration::ZERO, |w| {
            Duration::from_secs_f64(w.clamp(0.0, 3600.0))
        });
    state.waiting.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(wait, head.wait_for(|&h| h > since)).await;
    state.waiting.fetch_sub(1, Ordering::Relaxed);
    let messages: Vec<Bytes> = {
        let log = state.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter()
            .skip(since as usize)
            .take(PAGE)
            .cloned()
            .collect()
    };
    let next = since + messages.len() as u64;
    let mut body = BytesMut::with_capacity(64 + messages.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(m);
    }
    body.extend_from_slice(format!("],\"next\":\"{next}\"}}").as_bytes());
    body.freeze()
}

/// Stores the message's envelope and wakes the polls; returns the receipt.
fn publish(state: &State, body: &[u8]) -> Bytes {
    let time = format_rfc3339_millis(now_millis());
    let seq = {
        let mut log = state.log.lock().unwrap_or_else(|p| p.into_inner());
        let seq = log.len() as u64 + 1;
        log.push(Bytes::from(format!(
            "{{\"topic\":\"bench\",\"seq\":{seq},\"time\":\"{time}\",\"data\":\"{}\"}}",
            String::from_utf8_lossy(body)
        )));
        seq
    };
    state.head.send_modify(|h| *h = (*h).max(seq));
    Bytes::from(format!(
        "{{\"topic\":\"bench\",\"seq\":{seq},\"time\":\"{time}\"}}"
    ))
}
