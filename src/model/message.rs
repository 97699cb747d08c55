use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::{Millis, Seq, Topic};

/// A message type name: `[A-Za-z0-9_.-]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventName(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNameError(pub String);

impl fmt::Display for EventNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an event name; use 1-64 characters of [A-Za-z0-9_.-]",
            self.0.chars().take(80).collect::<String>()
        )
    }
}

impl std::error::Error for EventNameError {}

impl FromStr for EventName {
    type Err = EventNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(EventName(s.to_owned()))
        } else {
            Err(EventNameError(s.to_owned()))
        }
    }
}

impl EventName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored message. Immutable; shared as `Arc<Message>` by every reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: Topic,
    pub seq: Seq,
    pub time: Millis,
    pub event: Option<EventName>,
    pub data: Bytes,
}

/// A message on its way into the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: Topic,
    pub event: Option<EventName>,
    pub data: Bytes,
    /// Scoped to the topic, kept 24 h: the same key and body store once.
    pub idempotency_key: Option<String>,
}

impl NewMessage {
    /// A stable fingerprint of what makes two publishes "the same body" for idempotency:
    /// the event and the payload (FNV-1a, 64 bits; stable across builds, unlike `DefaultHasher`).
    pub fn fingerprint(&self) -> u64 {
        let event = self.event.as_ref().map(|e| e.as_str().as_bytes());
        fingerprint(&[event.unwrap_or_default(), &[0xff], &self.data])
    }
}

/// FNV-1a over the parts, 64 bits: stable across builds, unlike `DefaultHasher`, so it can be
/// stored (idempotency keys remember the body they were first used with).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// An idempotency key must be 1-200 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert!("created".parse::<EventName>().is_ok());
        assert!("a.b-c_9".parse::<EventName>().is_ok());
        assert!("".parse::<EventName>().is_err());
        assert!("a b".parse::<EventName>().is_err());
        assert!("x".repeat(65).parse::<EventName>().is_err());
    }

    #[test]
    fn fingerprint_separates_event_and_body() {
        let m = |e: Option<&str>, d: &'static [u8]| NewMessage {
            topic: "t".parse().unwrap(),
            event: e.map(|e| e.parse().unwrap()),
            data: Bytes::from_static(d),
            idempotency_key: None,
        };
        assert_eq!(m(None, b"x").fingerprint(), m(None, b"x").fingerprint());
        assert_ne!(m(None, b"x").fingerprint(), m(None, b"y").fingerprint());
        assert_ne!(
            m(Some("a"), b"x").fingerprint(),
            m(None, b"x").fingerprint()
        );
    }

    #[test]
    fn keys() {
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("a b"));
        assert!(!valid_idempotency_key(&"k".repeat(201)));
    }
}
