//! The baseline of `plexus bench fanout`: the fastest way this machine can write the hub's
//! bytes to the same sockets, with no HTTP framework, hub or store in the way. If the hub
//! ever beats it, the baseline is wrong (docs/BENCHMARKS.md, "Fan-out against an honest
//! baseline").
//!
//! - A publish is answered as soon as its frames are made and queued; one fan-out task, as the
//!   hub's commits have, takes every message queued for it and sends their frames back to
//!   back, so that a subscriber woken once finds them all (without it the hub, whose group
//!   commit hands its fan-out several messages at a time, beat the baseline).
//! - A publish encodes its frames once (SSE in HTTP/1.1 chunked coding, as hyper sends it;
//!   SSE without it, for HTTP/2; an unmasked WebSocket text frame carrying the hub's
//!   `{"op":"message",…}` envelope) and sends them on one broadcast channel.
//! - Each subscriber has one writer task fed by that channel. It takes every frame already
//!   pending for it and writes them in one `write` call, so a subscriber that fell behind
//!   catches up in one syscall, as hyper's body writes do; it yields once after waking, so
//!   that frames published by the other tasks meanwhile join the write.
//! - HTTP/1.1 and WebSocket are spoken by hand over plain TCP. A connection that opens with
//!   the HTTP/2 preface is served by hyper's HTTP/2 server alone (the part of the hub's stack
//!   that an HTTP/2 stream cannot do without), each `GET` a stream whose body is fed the same
//!   way: every frame pending for the stream in one data frame.
//!
//! `GET` (any path) subscribes: an SSE response, or a WebSocket `101` when the request asks to
//! upgrade. `POST` with a body publishes it and answers what the hub answers (`201` and a
//! receipt), so the same client drives both.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{broadcast, mpsc};

use super::LabError;
use crate::feed::{Feed, Receiver};
use crate::model::{format_rfc3339_millis, now_millis};

/// Frames held for subscribers that fell behind. A subscriber further behind than this lags,
/// which the bench reports as lost messages: so large that a bench run never gets there.
const BACKLOG: usize = 1 << 16;
/// One write takes at most this many bytes of pending frames.
const MAX_WRITE: usize = 64 * 1024;

/// One message, encoded once for every kind of subscriber.
struct Frames {
    /// Its number in the publish sequence.
    seq: u64,
    /// SSE in HTTP/1.1 chunked coding (hyper's `Transfer-Encoding: chunked`).
    sse_chunked: Bytes,
    /// SSE as an HTTP/2 data frame carries it.
    sse: Bytes,
    /// An unmasked WebSocket text frame.
    ws: Bytes,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Ws,
}

impl Kind {
    fn frame(self, frames: &Frames) -> &Bytes {
        match self {
            Kind::Sse => &frames.sse_chunked,
            Kind::Ws => &frames.ws,
        }
    }
}

struct Hub {
    /// The publish sequence, locked while a message is encoded and queued so that frames go
    /// out in seq order; never held across an await.
    seq: Mutex<u64>,
    frames: Arc<Feed<Arc<Frames>>>,
    /// To the fan-out task, in seq order.
    queued: mpsc::UnboundedSender<Arc<Frames>>,
}

/// Sends every message queued for it, back to back, then waits for more. It yields once after
/// waking, as the writers do, so that the publishes answered meanwhile join the group.
async fn fan_out(frames: Arc<Feed<Arc<Frames>>>, mut queued: mpsc::UnboundedReceiver<Arc<Frames>>) {
    let mut group = Vec::new();
    while queued.recv_many(&mut group, 1024).await > 0 {
        tokio::task::yield_now().await;
        while let Ok(more) = queued.try_recv() {
            group.push(more);
        }
        for message in group.drain(..) {
            let seq = message.seq;
            frames.send(message, seq);
        }
    }
}

/// Serves the baseline on `listen` until the process ends; prints `listening on` first.
pub async fn serve(listen: &str) -> Result<(), LabError> {
    serve_on(super::announce(listen).await?).await
}

/// Serves the baseline on a bound listener until the process ends.
pub async fn serve_on(listener: TcpListener) -> Result<(), LabError> {
    let frames = Arc::new(Feed::new(BACKLOG));
    let (queued, waiting) = mpsc::unbounded_channel();
    tokio::spawn(fan_out(frames.clone(), waiting));
    let hub = Arc::new(Hub {
        seq: Mutex::new(0),
        frames,
        queued,
    });
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| LabError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 3];
            match stream.peek(&mut first).await {
                Ok(3) if &first == b"PRI" => http2(stream, hub).await,
                Ok(_) => {
                    let _ = connection(stream, hub).await;
                }
                Err(_) => {}
            }
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn connection(stream: tokio::net::TcpStream, hub: Arc<Hub>) -> std::io::Result<()> {
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
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await?;
                write.write_all(&chunked(b"retry: 2000\n\n")).await?;
                Kind::Sse
            };
            let writer = tokio::spawn(writer(write, kind, subscribe(&hub)));
            // Read (and discard) until the peer closes, then stop the writer.
            let mut sink = [0u8; 256];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
            writer.abort();
            return Ok(());
        }
        let length = super::content_length(&head);
        while buf.len() < head_end + length {
            if read.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf.split_to(head_end + length).split_off(head_end).freeze();
        let receipt = publish(&hub, &body);
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

/// A reader of the frames from the next one published, and the number it is at.
fn subscribe(hub: &Hub) -> (Receiver<Arc<Frames>>, u64) {
    // Read first: a frame published after the read is above it, and one before the
    // subscription is not the reader's.
    let after = hub.frames.newest();
    (hub.frames.subscribe(), after)
}

/// Takes one frame, or waits for it, then every frame already pending, up to `MAX_WRITE`
/// bytes; `None` when the channel closed. A subscriber that lagged past the backlog gets
/// what is left, and the bench counts the rest as lost.
async fn pending(
    frames: &mut Receiver<Arc<Frames>>,
    after: &mut u64,
    pick: impl Fn(&Frames) -> &Bytes,
) -> Option<Bytes> {
    let first = loop {
        match frames.recv(*after).await {
            Ok(f) => break f,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    };
    let mut last = first.seq;
    // Behind (another frame is already there): let the other tasks run once before writing,
    // so that frames published meanwhile share this write. Without it a saturated baseline
    // writes one frame per wake-up while the hub, whose group commit hands its subscribers
    // several messages per wake-up, writes fewer and larger ones: the hub beat the baseline
    // that way. Level (nothing more there, as at a moderate rate), it writes at once: the
    // hub beat a baseline that yielded then too, by the wake-up that costs (docs/BENCHMARKS.md).
    // Whether another is there is told by the feed's newest number, without the broadcast's
    // lock that its empty answer takes.
    if !frames.sent_above(last) {
        *after = last;
        return Some(pick(&first).clone());
    }
    let mut ahead = frames.try_recv().ok();
    tokio::task::yield_now().await;
    let mut out: Option<BytesMut> = None;
    loop {
        let next = match ahead.take() {
            Some(next) => Ok(next),
            None => frames.try_recv(),
        };
        match next {
            Ok(next) => {
                last = next.seq;
                let buf = out.get_or_insert_with(|| {
                    let mut b = BytesMut::with_capacity(MAX_WRITE.min(pick(&first).len() * 16));
                    b.put_slice(pick(&first));
                    b
                });
                buf.put_slice(pick(&next));
                if buf.len() >= MAX_WRITE {
                    break;
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    *after = last;
    // A lone frame goes out as the shared bytes, without a copy.
    Some(out.map_or_else(|| pick(&first).clone(), BytesMut::freeze))
}

async fn writer(
    mut socket: OwnedWriteHalf,
    kind: Kind,
    (mut frames, mut after): (Receiver<Arc<Frames>>, u64),
) {
    while let Some(bytes) = pending(&mut frames, &mut after, |f| kind.frame(f)).await {
        if socket.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// An HTTP/2 connection: every `GET` stream is an SSE response fed like [`writer`]; a `POST`
/// publishes.
async fn http2(stream: tokio::net::TcpStream, hub: Arc<Hub>) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let hub = hub.clone();
        async move {
            type Body = StreamBody<
                futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>,
            >;
            if req.method() == hyper::Method::POST {
                use http_body_util::BodyExt;
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let receipt = Bytes::from(publish(&hub, &body));
                let once = futures_util::stream::once(async move { Ok(Frame::data(receipt)) });
                hyper::Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Body::new(Box::pin(once)))
            } else {
                let prelude = Bytes::from_static(b"retry: 2000\n\n");
                let events =
                    stream::unfold(subscribe(&hub), |(mut frames, mut after)| async move {
                        let bytes = pending(&mut frames, &mut after, |f| &f.sse).await?;
                        Some((Ok(Frame::data(bytes)), (frames, after)))
                    });
                let body = futures_util::StreamExt::chain(
                    stream::once(async move { Ok(Frame::data(prelude)) }),
                    events,
                );
                hyper::Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "no-cache")
                    .body(Body::new(Box::pin(body)))
            }
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        // The hub's limit (hyper's default of 200 would stall the bench's 100-stream clients
        // only by luck).
        .max_concurrent_streams(1000)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

fn chunked(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 12);
    b.put_slice(format!("{:X}\r\n", data.len()).as_bytes());
    b.put_slice(data);
    b.put_slice(b"\r\n");
    b.freeze()
}

/// Encodes the message once per kind of subscriber and queues it for the fan-out task.
/// Returns the publish's receipt.
fn publish(hub: &Hub, body: &[u8]) -> String {
    let time = format_rfc3339_millis(now_millis());
    let Ok(mut seq) = hub.seq.lock() else {
        return String::new();
    };
    *seq += 1;
    let seq = *seq;
    let envelope = format!(
        "{{\"topic\":\"bench\",\"seq\":{seq},\"time\":\"{time}\",\"data\":\"{}\"}}",
        String::from_utf8_lossy(body)
    );
    let sse = format!("id: {seq}\nevent: message\ndata: {envelope}\n\n");
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
    // Queued under the seq's lock, so the fan-out task sends in seq order.
    let _ = hub.queued.send(Arc::new(Frames {
        seq,
        sse_chunked: chunked(sse.as_bytes()),
        sse: Bytes::from(sse),
        ws: ws.freeze(),
    }));
    format!("{{\"topic\":\"bench\",\"seq\":{seq},\"time\":\"{time}\"}}")
}
