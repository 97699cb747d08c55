//! The WebSocket client frame decoder, `plexus::wire::ws::decode_client_frame`: it must never
//! panic, must refuse frames over the size limit with 413, and a decoded command must carry
//! values that satisfy their own parsers' round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::model::{Since, Topic};
use plexus::wire::ws::{Command, decode_client_frame};

const MAX_FRAME: usize = 4096;
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (_id, command) = decode_client_frame(text, MAX_FRAME, MAX_MESSAGE);
    if text.len() > MAX_FRAME {
        assert_eq!(command.as_ref().err().map(|e| e.status), Some(413));
        return;
    }
    match command {
        Ok(Command::Subscribe { topic, since, .. }) => {
            assert_eq!(topic.as_str().parse::<Topic>().ok(), Some(topic.clone()));
            if let Since::Cursor(cursor) = since {
                assert!(cursor.to_string().parse::<plexus::model::Cursor>().is_ok());
            }
        }
        Ok(Command::Publish { topic, data, .. }) => {
            assert!(data.len() <= MAX_MESSAGE);
            assert_eq!(topic.as_str().parse::<Topic>().ok(), Some(topic));
        }
        Ok(Command::Unsubscribe { topic }) => {
            assert_eq!(topic.as_str().parse::<Topic>().ok(), Some(topic));
        }
        Err(e) => assert!(matches!(e.status, 400 | 413), "status {}", e.status),
    }
});
