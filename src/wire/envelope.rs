use serde::Serialize;

use super::base64;
use crate::model::{Gap, Message, format_rfc3339_millis};

/// The JSON envelope of a message, used everywhere a message is shown:
/// `{"topic","seq","time","event"?,"data"|"data_base64"}`.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub topic: &'a str,
    pub seq: u64,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Only through a durable consumer: 1 on the first delivery, +1 on each redelivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<u32>,
}

impl<'a> Envelope<'a> {
    pub fn of(msg: &'a Message) -> Self {
        let text = std::str::from_utf8(&msg.data).ok();
        Envelope {
            topic: msg.topic.as_str(),
            seq: msg.seq,
            time: format_rfc3339_millis(msg.time),
            event: msg.event.as_ref().map(|e| e.as_str()),
            data: text,
            data_base64: text.is_none().then(|| base64::encode(&msg.data)),
            delivery: None,
        }
    }

    /// The envelope of a message read through a durable consumer: with its delivery count.
    pub fn delivered(msg: &'a Message, delivery: u32) -> Self {
        Envelope {
            delivery: Some(delivery),
            ..Envelope::of(msg)
        }
    }
}

/// A gap as JSON: `{"topic","from","to","reason"}` (a reset has no range).
#[derive(Serialize)]
pub struct GapJson<'a> {
    pub topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    pub reason: &'static str,
}

impl<'a> GapJson<'a> {
    pub fn of(gap: &'a Gap) -> Self {
        GapJson {
            topic: gap.topic.as_str(),
            from: gap.range.map(|r| r.0),
            to: gap.range.map(|r| r.1),
            reason: gap.reason.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn text_and_binary_payloads() {
        let mut msg = Message {
            topic: "orders".parse().unwrap(),
            seq: 42,
            time: 1_795_546_800_123,
            event: Some("created".parse().unwrap()),
            data: Bytes::from_static(b"hi"),
        };
        let json = serde_json::to_value(Envelope::of(&msg)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"topic":"orders","seq":42,"time":"2026-11-24T19:00:00.123Z","event":"created","data":"hi"})
        );
        msg.data = Bytes::from_static(&[0xff, 0x00]);
        msg.event = None;
        let json = serde_json::to_value(Envelope::of(&msg)).unwrap();
        assert_eq!(json["data_base64"], "/wA=");
        assert!(json.get("data").is_none() && json.get("event").is_none());
    }
}
