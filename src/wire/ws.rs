//! The WebSocket protocol, both ways: the client frame decoder (text → a [`Command`], or a
//! [`FrameError`] saying what kind of frame was refused), and the control frames the hub
//! answers with (`ok`, `error`, `disconnect`, and its Close frames). Message and gap frames
//! are in `frames.rs`. Pure (no socket, no hub), so it can be fuzzed and tested on its own.
//! Which status an error frame carries is not decided here: `http/error.rs` maps every error,
//! a [`FrameError`] included, to the status the same refusal has over HTTP.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::base64;
use crate::model::{EventName, Millis, Seq, Since, SlowPolicy, Topic, format_rfc3339_millis};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        topic: Topic,
        since: Since,
        slow: SlowPolicy,
    },
    /// A subscribe through a durable consumer (`"consumer"`): the name as given, checked by
    /// the consumer layer.
    Consume {
        topic: Topic,
        consumer: String,
    },
    Unsubscribe {
        topic: Topic,
    },
    Publish {
        topic: Topic,
        event: Option<EventName>,
        data: Bytes,
    },
    /// The credential, as the socket's first frame (browsers cannot send headers).
    Auth {
        token: String,
    },
}

/// Why the decoder refused a client's frame: its kind, and a detail for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not a frame the hub understands: not JSON, an unknown op, a missing or bad field.
    BadFrame(String),
    /// The frame, or the payload it publishes, is over its limit.
    TooLarge(String),
}

impl FrameError {
    fn bad(detail: impl Into<String>) -> Self {
        FrameError::BadFrame(detail.into())
    }

    /// What the error frame tells the client.
    pub fn detail(&self) -> &str {
        match self {
            FrameError::BadFrame(detail) | FrameError::TooLarge(detail) => detail,
        }
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    op: String,
    topic: Option<String>,
    since: Option<Value>,
    slow: Option<String>,
    consumer: Option<String>,
    data: Option<String>,
    data_base64: Option<String>,
    event: Option<String>,
    token: Option<String>,
}

/// Decodes one text frame. The `id` (any JSON value) is returned whenever the frame is a JSON
/// object that has one, so even a refused frame's error names it. Every part of the decode is
/// linear in the frame: the frame is bounded by `max_frame_bytes`, a `since` cursor by
/// `max_topics` pairs (counted before anything else is done with them).
pub fn decode_client_frame(
    text: &str,
    max_frame_bytes: usize,
    max_message_bytes: usize,
    max_topics: usize,
) -> (Option<Value>, Result<Command, FrameError>) {
    if text.len() > max_frame_bytes {
        let detail = format!(
            "the frame is {} bytes, at most {max_frame_bytes} allowed",
            text.len()
        );
        return (None, Err(FrameError::TooLarge(detail)));
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return (None, Err(FrameError::bad(format!("not a frame: {e}")))),
    };
    let id = value.get("id").cloned();
    let frame: ClientFrame = match serde_json::from_value(value) {
        Ok(frame) => frame,
        Err(e) => return (id, Err(FrameError::bad(format!("not a frame: {e}")))),
    };
    (id, command(frame, max_message_bytes, max_topics))
}

fn command(
    frame: ClientFrame,
    max_message_bytes: usize,
    max_topics: usize,
) -> Result<Command, FrameError> {
    if frame.op == "auth" {
        return match frame.token {
            Some(token) if !token.is_empty() => Ok(Command::Auth { token }),
            _ => Err(FrameError::bad("an auth frame needs a token")),
        };
    }
    let topic: Topic = frame
        .topic
        .as_deref()
        .ok_or_else(|| FrameError::bad("the frame needs a topic"))?
        .parse()
        .map_err(|e| FrameError::bad(format!("{e}")))?;
    match frame.op.as_str() {
        "subscribe" if frame.consumer.is_some() => match (frame.consumer, &frame.since) {
            (Some(consumer), None | Some(Value::Null)) => Ok(Command::Consume { topic, consumer }),
            _ => Err(FrameError::bad(
                "since: a subscribe through a consumer starts where the consumer stands",
            )),
        },
        "subscribe" => {
            let since = match &frame.since {
                None | Some(Value::Null) => Since::Now,
                Some(Value::String(s)) => Since::parse_bounded(s, max_topics)
                    .map_err(|e| FrameError::bad(format!("{e}")))?,
                Some(Value::Number(n)) => Since::parse_bounded(&n.to_string(), max_topics)
                    .map_err(|e| FrameError::bad(format!("{e}")))?,
                Some(_) => return Err(FrameError::bad("since is a string (or a number)")),
            };
            let slow = match &frame.slow {
                Some(s) => s.parse::<SlowPolicy>().map_err(FrameError::bad)?,
                None => SlowPolicy::Catchup,
            };
            Ok(Command::Subscribe { topic, since, slow })
        }
        "unsubscribe" => Ok(Command::Unsubscribe { topic }),
        "publish" => {
            let data = match (frame.data, frame.data_base64) {
                (Some(text), None) => Bytes::from(text),
                (None, Some(b64)) => Bytes::from(
                    base64::decode(&b64)
                        .ok_or_else(|| FrameError::bad("data_base64 is not valid base64"))?,
                ),
                _ => return Err(FrameError::bad("give exactly one of data and data_base64")),
            };
            if data.len() > max_message_bytes {
                return Err(FrameError::TooLarge(format!(
                    "the payload is {} bytes, at most {max_message_bytes} allowed",
                    data.len()
                )));
            }
            let event = frame
                .event
                .map(|e| e.parse::<EventName>())
                .transpose()
                .map_err(|e| FrameError::bad(e.to_string()))?;
            Ok(Command::Publish { topic, event, data })
        }
        other => Err(FrameError::bad(format!(
            "unknown op {other:?}; use auth, subscribe, unsubscribe or publish"
        ))),
    }
}

/// What an `ok` frame confirms.
#[derive(Clone, Copy, Debug)]
pub enum Reply<'a> {
    /// The subscription starts after `next`.
    Subscribed {
        topic: &'a Topic,
        next: &'a str,
    },
    Unsubscribed {
        topic: &'a Topic,
    },
    /// The message is stored as `seq` of its topic.
    Published {
        topic: &'a Topic,
        seq: Seq,
        time: Millis,
    },
}

// The control frames' keys are in alphabetical order: the bytes they have always had.

#[derive(Serialize)]
struct OkFrame<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<&'a str>,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    topic: &'a str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    op: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
}

#[derive(Serialize)]
struct DisconnectFrame<'a> {
    op: &'static str,
    reason: &'static str,
    topic: &'a str,
}

fn json_text<T: Serialize>(value: &T) -> String {
    // Serialising our own structs into memory cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// The `ok` frame answering a client's frame (with its `id`, when it had one).
pub fn ok_frame(id: Option<&Value>, reply: Reply<'_>) -> String {
    let (topic, next, seq, time) = match reply {
        Reply::Subscribed { topic, next } => (topic, Some(next), None, None),
        Reply::Unsubscribed { topic } => (topic, None, None, None),
        Reply::Published { topic, seq, time } => {
            (topic, None, Some(seq), Some(format_rfc3339_millis(time)))
        }
    };
    json_text(&OkFrame {
        id,
        next,
        op: "ok",
        seq,
        time,
        topic: topic.as_str(),
    })
}

/// The `error` frame refusing a client's frame (with its `id`, when it had one) with the
/// `status` the caller maps the refusal to (an HTTP number); the socket lives on.
pub fn error_frame(id: Option<&Value>, status: u16, detail: &str) -> String {
    json_text(&ErrorFrame {
        detail,
        id,
        op: "error",
        status,
        topic: None,
    })
}

/// The `ok` answering an accepted `auth` frame: only its `id`.
pub fn auth_ok_frame(id: Option<&Value>) -> String {
    #[derive(Serialize)]
    struct AuthOk<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        op: &'static str,
    }
    json_text(&AuthOk { id, op: "ok" })
}

/// The frame ending one topic's subscription that failed (its store read did): no `id`, since
/// no client frame asked, but the `topic`. The socket and its other subscriptions live on; the
/// client subscribes again with its cursor.
pub fn subscription_error_frame(topic: &Topic, status: u16, detail: &str) -> String {
    json_text(&ErrorFrame {
        detail,
        id: None,
        op: "error",
        status,
        topic: Some(topic.as_str()),
    })
}

/// The frame ending one topic's subscription whose consumer was too slow
/// (`slow=disconnect`); the socket and its other subscriptions live on.
pub fn disconnect_frame(topic: &Topic) -> String {
    json_text(&DisconnectFrame {
        op: "disconnect",
        reason: "slow consumer",
        topic: topic.as_str(),
    })
}

/// A Close frame the hub sends: its code (RFC 6455 §7.4) and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

/// The hub is shutting down: 1012, the server is restarting; reconnect.
pub const CLOSE_RESTARTING: Close = Close {
    code: 1012,
    reason: "server restarting",
};

/// The socket's first frame was no valid credential (1008, policy violation).
pub const CLOSE_UNAUTHORIZED: Close = Close {
    code: 1008,
    reason: "unauthorized",
};

/// The peer sent nothing, not even a pong, for 90 s.
pub const CLOSE_SILENT_PEER: Close = Close {
    code: 1000,
    reason: "no frame from the peer for 90 s",
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(text: &str) -> (Option<Value>, Result<Command, FrameError>) {
        decode_client_frame(text, 1000, 10, 4)
    }

    #[test]
    fn auth_frames() {
        let (id, cmd) = decode(r#"{"op":"auth","id":7,"token":"t0k"}"#);
        assert_eq!(id, Some(serde_json::json!(7)));
        assert_eq!(
            cmd,
            Ok(Command::Auth {
                token: "t0k".into()
            })
        );
        for bad in [
            r#"{"op":"auth"}"#,
            r#"{"op":"auth","token":""}"#,
            r#"{"op":"auth","token":5}"#,
        ] {
            assert!(
                matches!(decode(bad).1, Err(FrameError::BadFrame(_))),
                "{bad}"
            );
        }
        assert_eq!(
            auth_ok_frame(Some(&serde_json::json!("a"))),
            r#"{"id":"a","op":"ok"}"#
        );
        assert_eq!(auth_ok_frame(None), r#"{"op":"ok"}"#);
    }

    /// A `since` cursor is bounded by the topic limit, counted before duplicates are
    /// dropped: 138,000 pairs once took 20 s of a runtime worker.
    #[test]
    fn a_cursor_over_the_topic_limit_is_refused() {
        let (_, cmd) = decode(r#"{"op":"subscribe","topic":"a","since":"a:1,a:2,a:3,a:4,a:5"}"#);
        assert!(
            matches!(&cmd, Err(FrameError::BadFrame(d)) if d.contains("at most 4")),
            "{cmd:?}"
        );
        let (_, cmd) = decode(r#"{"op":"subscribe","topic":"a","since":"a:1,b:2,a:3,b:4"}"#);
        assert!(cmd.is_ok(), "{cmd:?}");
    }

    #[test]
    fn commands() {
        let (id, cmd) = decode(r#"{"op":"subscribe","id":1,"topic":"a","since":12}"#);
        assert_eq!(id, Some(Value::from(1)));
        assert!(matches!(
            cmd,
            Ok(Command::Subscribe {
                slow: SlowPolicy::Catchup,
                ..
            })
        ));
        let (_, cmd) = decode(r#"{"op":"publish","topic":"a","data_base64":"/wA="}"#);
        assert!(matches!(cmd, Ok(Command::Publish { data, .. }) if data.as_ref() == [0xff, 0]));
        assert!(matches!(
            decode(r#"{"op":"unsubscribe","topic":"a"}"#).1,
            Ok(Command::Unsubscribe { .. })
        ));
    }

    #[test]
    fn errors_keep_the_id_and_their_kind() {
        let too_large = |text: &str| match decode(text).1 {
            Err(FrameError::TooLarge(_)) => Some(true),
            Err(FrameError::BadFrame(_)) => Some(false),
            Ok(_) => None,
        };
        assert_eq!(too_large("not json"), Some(false));
        assert_eq!(too_large(r#"{"op":"dance","topic":"a"}"#), Some(false));
        assert_eq!(
            too_large(r#"{"op":"subscribe","topic":"a b"}"#),
            Some(false)
        );
        assert_eq!(
            too_large(r#"{"op":"publish","topic":"a","data":"12345678901"}"#),
            Some(true)
        );
        assert_eq!(too_large(&"x".repeat(1001)), Some(true));
        assert_eq!(
            decode(&"x".repeat(1001))
                .1
                .err()
                .as_ref()
                .map(FrameError::detail),
            Some("the frame is 1001 bytes, at most 1000 allowed")
        );
        assert_eq!(
            decode(r#"{"op":"dance","id":"q"}"#).0,
            Some(Value::from("q"))
        );
    }

    #[test]
    fn control_frames() {
        let topic: Topic = "a".parse().unwrap();
        let id = Value::from(7);
        assert_eq!(
            ok_frame(
                Some(&id),
                Reply::Subscribed {
                    topic: &topic,
                    next: "12"
                }
            ),
            r#"{"id":7,"next":"12","op":"ok","topic":"a"}"#
        );
        assert_eq!(
            ok_frame(None, Reply::Unsubscribed { topic: &topic }),
            r#"{"op":"ok","topic":"a"}"#
        );
        assert_eq!(
            ok_frame(
                Some(&Value::Null),
                Reply::Published {
                    topic: &topic,
                    seq: 3,
                    time: 1_795_546_800_123
                }
            ),
            r#"{"id":null,"op":"ok","seq":3,"time":"2026-11-24T19:00:00.123Z","topic":"a"}"#
        );
        assert_eq!(
            error_frame(Some(&Value::from("q")), 400, "no"),
            r#"{"detail":"no","id":"q","op":"error","status":400}"#
        );
        assert_eq!(
            disconnect_frame(&topic),
            r#"{"op":"disconnect","reason":"slow consumer","topic":"a"}"#
        );
        assert_eq!(
            subscription_error_frame(&topic, 503, "gone"),
            r#"{"detail":"gone","op":"error","status":503,"topic":"a"}"#
        );
    }

    /// The frames are what a JSON object with the same members serialises to.
    #[test]
    fn control_frames_match_json_objects() {
        let topic: Topic = "a.b".parse().unwrap();
        let id = serde_json::json!({"z": 1, "a": [true]});
        let mut expected = serde_json::json!({"topic": "a.b", "next": "a.b:4"});
        expected["op"] = "ok".into();
        expected["id"] = id.clone();
        let frame = ok_frame(
            Some(&id),
            Reply::Subscribed {
                topic: &topic,
                next: "a.b:4",
            },
        );
        assert_eq!(frame, expected.to_string());
        let expected = serde_json::json!({"op":"error","status":503,"detail":"x \"y\"","id":id});
        assert_eq!(error_frame(Some(&id), 503, "x \"y\""), expected.to_string());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = decode(&s);
        }
    }
}
