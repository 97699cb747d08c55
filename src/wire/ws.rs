//! The WebSocket client frame decoder: text → a [`Command`], or the error frame's status and
//! detail. Pure (no socket, no hub), so it can be fuzzed and tested on its own.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::base64;
use crate::model::{EventName, Since, SlowPolicy, Topic};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Subscribe {
        topic: Topic,
        since: Since,
        slow: SlowPolicy,
    },
    Unsubscribe {
        topic: Topic,
    },
    Publish {
        topic: Topic,
        event: Option<EventName>,
        data: Bytes,
    },
}

/// An error frame's `status` (HTTP numbers: 400, 403, 404, 409, 413, 503) and `detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub status: u16,
    pub detail: String,
}

impl FrameError {
    pub fn bad(detail: impl Into<String>) -> Self {
        FrameError {
            status: 400,
            detail: detail.into(),
        }
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    op: String,
    topic: Option<String>,
    since: Option<Value>,
    slow: Option<String>,
    data: Option<String>,
    data_base64: Option<String>,
    event: Option<String>,
}

/// Decodes one text frame. The `id` (any JSON value) is returned whenever the frame is a JSON
/// object that has one, so even a refused frame's error names it.
pub fn decode_client_frame(
    text: &str,
    max_frame_bytes: usize,
    max_message_bytes: usize,
) -> (Option<Value>, Result<Command, FrameError>) {
    if text.len() > max_frame_bytes {
        let detail = format!(
            "the frame is {} bytes, at most {max_frame_bytes} allowed",
            text.len()
        );
        return (
            None,
            Err(FrameError {
                status: 413,
                detail,
            }),
        );
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
    (id, command(frame, max_message_bytes))
}

fn command(frame: ClientFrame, max_message_bytes: usize) -> Result<Command, FrameError> {
    let topic: Topic = frame
        .topic
        .as_deref()
        .ok_or_else(|| FrameError::bad("the frame needs a topic"))?
        .parse()
        .map_err(|e| FrameError::bad(format!("{e}")))?;
    match frame.op.as_str() {
        "subscribe" => {
            let since = match &frame.since {
                None | Some(Value::Null) => Since::Now,
                Some(Value::String(s)) => s.parse().map_err(|e| FrameError::bad(format!("{e}")))?,
                Some(Value::Number(n)) => n
                    .to_string()
                    .parse()
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
                return Err(FrameError {
                    status: 413,
                    detail: format!(
                        "the payload is {} bytes, at most {max_message_bytes} allowed",
                        data.len()
                    ),
                });
            }
            let event = frame
                .event
                .map(|e| e.parse::<EventName>())
                .transpose()
                .map_err(|e| FrameError::bad(e.to_string()))?;
            Ok(Command::Publish { topic, event, data })
        }
        other => Err(FrameError::bad(format!(
            "unknown op {other:?}; use subscribe, unsubscribe or publish"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(text: &str) -> (Option<Value>, Result<Command, FrameError>) {
        decode_client_frame(text, 1000, 10)
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
    fn errors_keep_the_id_and_their_status() {
        let status = |text: &str| decode(text).1.err().map(|e| e.status);
        assert_eq!(status("not json"), Some(400));
        assert_eq!(status(r#"{"op":"dance","topic":"a"}"#), Some(400));
        assert_eq!(status(r#"{"op":"subscribe","topic":"a b"}"#), Some(400));
        assert_eq!(
            status(r#"{"op":"publish","topic":"a","data":"12345678901"}"#),
            Some(413)
        );
        assert_eq!(status(&"x".repeat(1001)), Some(413));
        assert_eq!(
            decode(r#"{"op":"dance","id":"q"}"#).0,
            Some(Value::from("q"))
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = decode(&s);
        }
    }
}
