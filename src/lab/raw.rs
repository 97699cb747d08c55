//! The raw TCP loop: the baseline of `plexus bench fanout`. A tiny server that writes the same
//! pre-encoded frame to every subscriber socket, one after another — no HTTP framework, no
//! hub, no store — so the bench can say how close the hub gets to the cost of the writes alone.
//!
//! `GET` (any path) subscribes: an SSE response head, or a WebSocket `101` when the request
//! asks to upgrade. `POST` with a body publishes it to every subscriber and answers what the
//! hub answers (`201` and a receipt), so the same client drives both.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

use super::LabError;
use crate::model::{format_rfc3339_millis, now_millis};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Ws,
}

#[derive(Default)]
struct Subscribers {
    sockets: Vec<(Kind, OwnedWriteHalf)>,
    seq: u64,
}

/// Serves the raw loop on `listen` until the process ends; prints `listening on` first.
pub async fn serve(listen: &str) -> Result<(), LabError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::Io(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?;
    println!("listening on http://{addr}");
    serve_on(listener).await
}

/// Serves the raw loop on a bound listener until the process ends.
pub async fn serve_on(listener: TcpListener) -> Result<(), LabError> {
    let subs = Arc::new(Mutex::new(Subscribers::default()));
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| LabError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let subs = subs.clone();
        tokio::spawn(async move {
            let _ = connection(stream, subs).await;
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn connection(
    stream: tokio::net::TcpStream,
    subs: Arc<Mutex<Subscribers>>,
) -> std::io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if read.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if head.starts_with("get") {
            let kind = if head.contains("upgrade: websocket") {
                write
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: raw-loop\r\n\r\n")
                    .await?;
                Kind::Ws
            } else {
                write
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nretry: 2000\n\n")
                    .await?;
                Kind::Sse
            };
            subs.lock().await.sockets.push((kind, write));
            // Keep reading (and discarding) so the peer's close is noticed by the writes.
            let mut sink = [0u8; 256];
            while read.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if read.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(head_end + length).split_off(head_end).freeze();
        let receipt = publish(&subs, &body).await;
        write
            .write_all(
                format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{receipt}",
                    receipt.len()
                )
                .as_bytes(),
            )
            .await?;
    }
}

/// Encodes the frame once per kind, then writes it to every socket in turn. Returns the
/// publish's receipt.
async fn publish(subs: &Mutex<Subscribers>, body: &[u8]) -> String {
    let mut subs = subs.lock().await;
    subs.seq += 1;
    let time = format_rfc3339_millis(now_millis());
    let envelope = format!(
        "{{\"topic\":\"bench\",\"seq\":{},\"time\":\"{time}\",\"data\":\"{}\"}}",
        subs.seq,
        String::from_utf8_lossy(body)
    );
    let sse = Bytes::from(format!(
        "id: {}\nevent: message\ndata: {envelope}\n\n",
        subs.seq
    ));
    let ws_payload = format!("{{\"op\":\"message\",{}", &envelope[1..]);
    let mut ws = BytesMut::with_capacity(ws_payload.len() + 10);
    ws.put_u8(0x81);
    match ws_payload.len() {
        n if n < 126 => ws.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            ws.put_u8(126);
            ws.put_u16(n as u16);
        }
        n => {
            ws.put_u8(127);
            ws.put_u64(n as u64);
        }
    }
    ws.put_slice(ws_payload.as_bytes());
    let ws = ws.freeze();
    let mut alive = Vec::with_capacity(subs.sockets.len());
    for (kind, mut socket) in subs.sockets.drain(..) {
        let frame = if kind == Kind::Sse { &sse } else { &ws };
        if socket.write_all(frame).await.is_ok() {
            alive.push((kind, socket));
        }
    }
    subs.sockets = alive;
    format!(
        "{{\"topic\":\"bench\",\"seq\":{},\"time\":\"{time}\"}}",
        subs.seq
    )
}
