//! The WebSocket client frame decoder, `plexus::wire::ws::decode_client_frame`: it must never
//! panic, must refuse frames over the size limit as `TooLarge`, and a decoded command must carry
//! values that satisfy their own parsers' round trips and agree with the frame's JSON fields
//! (read independently with `serde_json::Value`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{Cursor, EventName, Since, SlowPolicy, Topic};
use plexus::wire::base64;
use plexus::wire::ws::{Command, FrameError, decode_client_frame};
use serde_json::Value;

const MAX_FRAME: usize = 4096;
const MAX_MESSAGE: usize = 1024;
const MAX_TOPICS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, command) = decode_client_frame(text, MAX_FRAME, MAX_MESSAGE, MAX_TOPICS);
    if text.len() > MAX_FRAME {
        assert!(matches!(command, Err(FrameError::TooLarge(_))), "{command:?}");
        return;
    }

    // The same frame read as plain JSON.
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        assert_eq!(id, None);
        assert!(matches!(command, Err(FrameError::BadFrame(_))), "{text:?}");
        return;
    };
    assert_eq!(id.as_ref(), json.get("id"), "{text:?}");
    let field = |key: &str| json.get(key).and_then(Value::as_str);
    let Ok(command) = command else {
        return;
    };

    let topic = match &command {
        Command::Subscribe { topic, .. }
        | Command::Consume { topic, .. }
        | Command::Unsubscribe { topic }
        | Command::Publish { topic, .. } => topic,
        // The credential frame names no topic: its token is the field as sent, never empty.
        Command::Auth { token } => {
            assert_eq!(field("op"), Some("auth"));
            assert_eq!(field("token"), Some(token.as_str()), "{text:?}");
            assert!(!token.is_empty());
            return;
        }
    };
    assert_eq!(topic.as_str().parse::<Topic>().as_ref(), Ok(topic));
    assert_eq!(Some(topic.as_str()), field("topic"), "{text:?}");

    match &command {
        Command::Subscribe { since, slow, .. } => {
            assert_eq!(field("op"), Some("subscribe"));
            let expected = match json.get("since") {
                None | Some(Value::Null) => Ok(Since::Now),
                Some(Value::String(s)) => Since::parse_bounded(s, MAX_TOPICS),
                Some(Value::Number(n)) => Since::parse_bounded(&n.to_string(), MAX_TOPICS),
                Some(other) => panic!("since {other} accepted in {text:?}"),
            };
            assert_eq!(expected.as_ref(), Ok(since), "{text:?}");
            if let Since::Cursor(cursor) = since {
                assert_eq!(cursor.to_string().parse::<Cursor>().as_ref(), Ok(cursor));
            }
            let expected_slow = field("slow").map_or(Ok(SlowPolicy::Catchup), str::parse);
            assert_eq!(expected_slow.as_ref(), Ok(slow), "{text:?}");
        }
        Command::Consume { consumer, .. } => {
            assert_eq!(field("op"), Some("subscribe"));
            assert_eq!(field("consumer"), Some(consumer.as_str()), "{text:?}");
            assert!(json.get("since").is_none_or(Value::is_null), "{text:?}");
        }
        Command::Unsubscribe { .. } => assert_eq!(field("op"), Some("unsubscribe")),
        Command::Auth { .. } => unreachable!("returned above"),
        Command::Publish { event, data, .. } => {
            assert_eq!(field("op"), Some("publish"));
            assert!(data.len() <= MAX_MESSAGE);
            let expected = match (field("data"), field("data_base64")) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(b64)) => {
                    let bytes = base64::decode(b64).expect("accepted base64");
                    assert_eq!(base64::encode(&bytes), b64);
                    bytes
                }
                other => panic!("publish accepted with data fields {other:?} in {text:?}"),
            };
            assert_eq!(&data[..], &expected[..], "{text:?}");
            let expected_event = field("event").map(|e| e.parse::<EventName>().expect("accepted"));
            assert_eq!(event, &expected_event, "{text:?}");
        }
    }
});
