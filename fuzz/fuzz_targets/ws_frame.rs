//! A WebSocket client frame, `{"op","id"?,"topic","since"?,"slow"?,"data"?|"data_base64"?,
//! "event"?}`. The library has no public frame decoder (it lives privately in `http::ws`), so
//! this target decodes the JSON the same way and runs each field through the public parser the
//! socket uses: `Topic`, `Since` (a string, or a number printed), `SlowPolicy`,
//! `wire::base64::decode`, `EventName`. None of them may panic on any frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::hub::SlowPolicy;
use plexus::model::{Cursor, EventName, Since, Topic};
use plexus::wire::base64;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = serde_json::from_str::<Value>(s) else {
        return;
    };
    let Value::Object(frame) = frame else {
        return;
    };
    let text = |key: &str| frame.get(key).and_then(Value::as_str);

    let _ = text("op");
    if let Some(topic) = text("topic") {
        if let Ok(topic) = topic.parse::<Topic>() {
            assert_eq!(topic.as_str(), text("topic").unwrap_or_default());
        }
    }
    match frame.get("since") {
        Some(Value::String(since)) => {
            let _ = since.parse::<Since>();
        }
        Some(Value::Number(n)) => {
            let printed = n.to_string();
            let since = printed.parse::<Since>();
            // A non-negative integer is a single cursor at that seq.
            if let Some(seq) = n.as_u64() {
                assert_eq!(since, Ok(Since::Cursor(Cursor::Single(seq))), "{printed}");
            }
        }
        _ => {}
    }
    if let Some(slow) = text("slow") {
        let _ = slow.parse::<SlowPolicy>();
    }
    if let Some(b64) = text("data_base64") {
        if let Some(bytes) = base64::decode(b64) {
            assert_eq!(base64::encode(&bytes), b64);
        }
    }
    if let Some(event) = text("event") {
        if let Ok(name) = event.parse::<EventName>() {
            assert_eq!(name.as_str(), event);
        }
    }
});
