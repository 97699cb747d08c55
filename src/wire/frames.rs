//! Stream encodings: SSE frames, NDJSON lines and WebSocket text frames of messages and gaps,
//! and the control lines of SSE and NDJSON streams (retry, keepalive, disconnect).
//!
//! [`Encoded`] wraps a committed message and makes each encoding at most once, on first use:
//! the hub hands one `Arc<Encoded>` to every live subscriber of the topic, so fan-out to a
//! thousand SSE clients is a thousand reference-count increments, not a thousand encodings.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::base64;
use super::envelope::{Envelope, GapJson};
use crate::model::{Gap, Message};

/// The first bytes of every SSE response: the reconnection delay.
pub const SSE_RETRY: &[u8] = b"retry: 2000\n\n";
pub const SSE_KEEPALIVE: &[u8] = b": keepalive\n\n";

/// The last frame of an SSE stream ended by a shutdown: `retry: N`, N from 1,000 to 5,000 ms
/// and different for each stream, so the clients of a node that goes away do not all come
/// back in the same instant. The randomness is std's: each `RandomState` has fresh keys, so
/// the hash of a constant under them is a cheap, well-spread number.
pub fn sse_retry_at_shutdown() -> Bytes {
    use std::hash::BuildHasher;
    let ms = 1000 + std::collections::hash_map::RandomState::new().hash_one(0u8) % 4001;
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The last bytes of an SSE stream that a slow consumer lost (`slow=disconnect`): a comment,
/// since the `id:` of the last event already is the cursor to resume from.
pub const SSE_DISCONNECT: &[u8] = b": slow consumer disconnected; resume with Last-Event-ID\n\n";
pub const NDJSON_KEEPALIVE: &[u8] = b"{\"event\":\"keepalive\"}\n";

/// The last line of an NDJSON stream that a slow consumer lost (`slow=disconnect`):
/// `{"event":"disconnect","next"}`, `next` the cursor to resume from.
pub fn ndjson_disconnect(next: &str) -> Bytes {
    #[derive(Serialize)]
    struct Line<'a> {
        event: &'static str,
        next: &'a str,
    }
    let mut buf = json_bytes(&Line {
        event: "disconnect",
        next,
    });
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A committed message and its encodings, each made once.
pub struct Encoded {
    pub msg: Arc<Message>,
    /// Read through a durable consumer: the delivery count its envelopes carry.
    delivery: Option<u32>,
    sse: OnceLock<Bytes>,
    sse_raw: OnceLock<Bytes>,
    line: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
}

impl Encoded {
    pub fn new(msg: Arc<Message>) -> Self {
        Encoded {
            msg,
            delivery: None,
            sse: OnceLock::new(),
            sse_raw: OnceLock::new(),
            line: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// A message read through a durable consumer, for one reader: its envelopes carry
    /// `delivery`.
    pub fn delivered(msg: Arc<Message>, delivery: u32) -> Self {
        Encoded {
            delivery: Some(delivery),
            ..Encoded::new(msg)
        }
    }

    fn envelope(&self) -> Envelope<'_> {
        Envelope {
            delivery: self.delivery,
            ..Envelope::of(&self.msg)
        }
    }

    /// The SSE frame of a single-topic subscription (`id:` is the seq, the whole cursor).
    pub fn sse(&self, raw: bool) -> Bytes {
        let cell = if raw { &self.sse_raw } else { &self.sse };
        cell.get_or_init(|| sse_frame(&self.msg.seq.to_string(), &self.msg, raw, self.delivery))
            .clone()
    }

    /// The envelope as one NDJSON line.
    pub fn line(&self) -> Bytes {
        self.line
            .get_or_init(|| {
                let mut buf = json_bytes(&self.envelope());
                buf.put_u8(b'\n');
                buf.freeze()
            })
            .clone()
    }

    /// The payload of the WebSocket text frame `{"op":"message",…envelope}` (valid UTF-8
    /// JSON).
    pub fn ws(&self) -> Bytes {
        let frame = self.ws_frame();
        ws_payload(&frame)
    }

    /// The whole WebSocket text frame (head and payload, unmasked, as a server sends it),
    /// made once: every socket following the topic writes these same bytes.
    pub fn ws_frame(&self) -> Bytes {
        self.ws
            .get_or_init(|| {
                #[derive(Serialize)]
                struct WsMessage<'a> {
                    op: &'static str,
                    #[serde(flatten)]
                    envelope: Envelope<'a>,
                }
                ws_text_frame(&WsMessage {
                    op: "message",
                    envelope: self.envelope(),
                })
            })
            .clone()
    }
}

/// The longest head of a WebSocket frame a server sends: no mask, a 64-bit length.
const WS_HEAD_MAX: usize = 10;

/// `value` as JSON in one final, unmasked WebSocket text frame (RFC 6455 §5.2). The JSON is
/// written after room for the longest head, then the head is written just before it: no copy.
pub fn ws_text_frame<T: Serialize>(value: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_bytes(0, WS_HEAD_MAX);
    let mut writer = buf.writer();
    // Serialising our own structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut writer, value);
    let mut buf = writer.into_inner();
    let len = buf.len() - WS_HEAD_MAX;
    let mut head = [0u8; WS_HEAD_MAX];
    head[0] = 0x81; // FIN, text
    let head = match len {
        0..=125 => {
            head[1] = len as u8;
            &head[..2]
        }
        126..=0xffff => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            &head[..4]
        }
        _ => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            &head[..10]
        }
    };
    let start = WS_HEAD_MAX - head.len();
    buf[start..WS_HEAD_MAX].copy_from_slice(head);
    let _ = buf.split_to(start);
    buf.freeze()
}

/// The payload of a frame [`ws_text_frame`] made (a view of the same bytes).
pub fn ws_payload(frame: &Bytes) -> Bytes {
    let head = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(head.min(frame.len())..)
}

fn json_bytes<T: Serialize>(value: &T) -> BytesMut {
    let mut buf = BytesMut::with_capacity(256).writer();
    // Serialising our own structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.into_inner()
}

/// An SSE message frame: `id:` the cursor after it, `event:` its type or `message`, and the
/// JSON envelope as `data:` (or, `raw`, the payload itself, one `data:` line per line; a
/// payload that is not UTF-8 is sent as base64).
pub fn sse_message(id: &str, msg: &Message, raw: bool) -> Bytes {
    sse_frame(id, msg, raw, None)
}

/// [`sse_message`] of a message read through a durable consumer: the envelope carries its
/// `delivery` (a raw frame has no envelope to carry it).
pub fn sse_delivered(id: &str, msg: &Message, raw: bool, delivery: u32) -> Bytes {
    sse_frame(id, msg, raw, Some(delivery))
}

/// The envelope of a message read through a durable consumer as one NDJSON line.
pub fn ndjson_delivered(msg: &Message, delivery: u32) -> Bytes {
    let mut buf = json_bytes(&Envelope::delivered(msg, delivery));
    buf.put_u8(b'\n');
    buf.freeze()
}

fn sse_frame(id: &str, msg: &Message, raw: bool, delivery: Option<u32>) -> Bytes {
    let mut buf = BytesMut::with_capacity(128 + msg.data.len());
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(
        msg.event
            .as_ref()
            .map_or("message", |e| e.as_str())
            .as_bytes(),
    );
    buf.put_u8(b'\n');
    if raw {
        let text = match std::str::from_utf8(&msg.data) {
            Ok(text) => text.to_owned(),
            Err(_) => base64::encode(&msg.data),
        };
        for line in text.split('\n') {
            buf.put_slice(b"data: ");
            buf.put_slice(line.trim_end_matches('\r').as_bytes());
            buf.put_u8(b'\n');
        }
    } else {
        buf.put_slice(b"data: ");
        let mut w = buf.writer();
        let envelope = Envelope {
            delivery,
            ..Envelope::of(msg)
        };
        let _ = serde_json::to_writer(&mut w, &envelope);
        buf = w.into_inner();
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// An SSE gap frame; its `id:` is the cursor after the gap so a resume does not repeat it.
pub fn sse_gap(id: &str, gap: &Gap) -> Bytes {
    let mut buf = BytesMut::with_capacity(160);
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_slice(b"\nevent: gap\ndata: ");
    let mut w = buf.writer();
    let _ = serde_json::to_writer(&mut w, &GapJson::of(gap));
    let mut buf = w.into_inner();
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// A gap as an NDJSON line: `{"event":"gap","topic",…}`.
pub fn ndjson_gap(gap: &Gap) -> Bytes {
    #[derive(Serialize)]
    struct Line<'a> {
        event: &'static str,
        #[serde(flatten)]
        gap: GapJson<'a>,
    }
    let mut buf = json_bytes(&Line {
        event: "gap",
        gap: GapJson::of(gap),
    });
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A gap as a whole WebSocket text frame (see [`ws_text_frame`]): `{"op":"gap","topic",…}`.
pub fn ws_gap_frame(gap: &Gap) -> Bytes {
    #[derive(Serialize)]
    struct Frame<'a> {
        op: &'static str,
        #[serde(flatten)]
        gap: GapJson<'a>,
    }
    ws_text_frame(&Frame {
        op: "gap",
        gap: GapJson::of(gap),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GapReason;

    fn msg(data: &'static [u8]) -> Message {
        Message {
            topic: "t".parse().unwrap(),
            seq: 7,
            time: 0,
            event: None,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn sse_retry_at_shutdown_is_jittered_within_bounds() {
        let ms: Vec<u64> = (0..64)
            .map(|_| {
                let frame = sse_retry_at_shutdown();
                let text = std::str::from_utf8(&frame).unwrap();
                let n = text
                    .strip_prefix("retry: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .unwrap();
                n.parse().unwrap()
            })
            .collect();
        assert!(ms.iter().all(|n| (1000..=5000).contains(n)), "{ms:?}");
        assert!(ms.iter().any(|n| *n != ms[0]), "not jittered: {ms:?}");
    }

    #[test]
    fn sse_frames() {
        let enc = Encoded::new(Arc::new(msg(b"a\nb")));
        let frame = String::from_utf8(enc.sse(false).to_vec()).unwrap();
        assert!(
            frame.starts_with("id: 7\nevent: message\ndata: {\"topic\":\"t\",\"seq\":7,"),
            "{frame}"
        );
        assert!(frame.ends_with("}\n\n"));
        assert_eq!(
            frame.matches('\n').count(),
            4,
            "the envelope's newline is escaped: {frame}"
        );
        let raw = String::from_utf8(enc.sse(true).to_vec()).unwrap();
        assert_eq!(raw, "id: 7\nevent: message\ndata: a\ndata: b\n\n");
        let gap = Gap {
            topic: "t".parse().unwrap(),
            range: Some((1, 3)),
            reason: GapReason::Expired,
        };
        assert_eq!(
            &sse_gap("3", &gap)[..],
            b"id: 3\nevent: gap\ndata: {\"topic\":\"t\",\"from\":1,\"to\":3,\"reason\":\"expired\"}\n\n"
        );
        assert_eq!(
            &ndjson_gap(&gap)[..],
            b"{\"event\":\"gap\",\"topic\":\"t\",\"from\":1,\"to\":3,\"reason\":\"expired\"}\n"
        );
    }

    #[test]
    fn disconnect_notices() {
        assert_eq!(
            &ndjson_disconnect("a:4,b:7")[..],
            b"{\"event\":\"disconnect\",\"next\":\"a:4,b:7\"}\n"
        );
        assert!(SSE_DISCONNECT.starts_with(b":") && SSE_DISCONNECT.ends_with(b"\n\n"));
    }

    /// A frame's head is the shortest RFC 6455 allows for its length, unmasked and final,
    /// and the payload after it is exactly the JSON.
    #[test]
    fn ws_text_frames_carry_the_json_behind_the_shortest_head() {
        for (len, head) in [
            (2, vec![0x81, 2]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            (70000, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]),
        ] {
            let text = "x".repeat(len - 2);
            let frame = ws_text_frame(&text);
            assert_eq!(&frame[..head.len()], &head[..], "the head of {len} bytes");
            assert_eq!(frame.len(), head.len() + len);
            let payload = ws_payload(&frame);
            assert_eq!(payload.len(), len);
            assert_eq!(serde_json::from_slice::<String>(&payload).unwrap(), text);
        }
    }

    #[test]
    fn ws_and_lines_are_made_once() {
        let enc = Encoded::new(Arc::new(msg(b"x")));
        let a = enc.ws();
        let b = enc.ws();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes are shared");
        let frame = enc.ws_frame();
        assert_eq!(&frame[2..], &a[..], "the frame carries the same payload");
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["op"], "message");
        assert_eq!(v["seq"], 7);
        assert!(enc.line().ends_with(b"\n"));
    }
}
