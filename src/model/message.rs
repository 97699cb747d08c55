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
    /// What makes two publishes "the same body" for idempotency: the event and the payload.
    pub fn fingerprint(&self) -> Fingerprint {
        let event = self.event.as_ref().map(|e| e.as_str().as_bytes());
        Fingerprint::of(&[event.unwrap_or_default(), &[0xff], &self.data])
    }
}

/// The fingerprint of a body that an idempotency key remembers: SHA-256, so no one can make
/// a second body that replays as the first (FNV-1a 64, used before, was easy to collide).
/// It also carries the FNV-1a 64 of the same parts, only to recognise a key that a store kept
/// from before ([`StoredFingerprint::Legacy`]); new keys are stored with the SHA-256 alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    sha256: [u8; 32],
    legacy: u64,
}

/// A fingerprint as a store kept it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredFingerprint {
    /// The SHA-256 of the body (32 bytes), as stored since.
    Sha256(Vec<u8>),
    /// The FNV-1a 64 of a key stored by a release before SHA-256.
    Legacy(u64),
}

impl Fingerprint {
    /// The fingerprint of the concatenated parts (stable across builds and releases).
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            sha.update(part);
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(sha.finish().as_ref());
        Fingerprint {
            sha256,
            legacy: legacy_fnv(parts),
        }
    }

    /// The 32 bytes of the SHA-256, as stored.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The SHA-256 as 64 lower-case hex digits (for stores that keep text).
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The FNV-1a 64 of the same parts, as releases before SHA-256 stored it.
    pub fn legacy(&self) -> u64 {
        self.legacy
    }

    /// Whether a stored fingerprint is this body's: the SHA-256 for a key stored since, the
    /// old FNV-1a 64 only for a key stored before (which expires like any other).
    pub fn matches(&self, stored: &StoredFingerprint) -> bool {
        match stored {
            StoredFingerprint::Sha256(bytes) => bytes.as_slice() == self.sha256.as_slice(),
            StoredFingerprint::Legacy(fnv) => *fnv == self.legacy,
        }
    }
}

/// FNV-1a over the parts, 64 bits: the fingerprint of releases before SHA-256.
fn legacy_fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The fingerprint of a job's payload (a job's idempotency key remembers it).
pub fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    Fingerprint::of(parts)
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
    fn fingerprint_is_sha256_and_recognises_legacy_fnv() {
        let fp = Fingerprint::of(&[b"ab", b"c"]);
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(
            fp.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(fp.matches(&StoredFingerprint::Sha256(fp.sha256().to_vec())));
        assert!(
            fp.matches(&StoredFingerprint::Legacy(0xe71f_a219_0541_574b)),
            "FNV-1a 64 of abc"
        );
        assert!(!fp.matches(&StoredFingerprint::Legacy(1)));
        assert!(!fp.matches(&StoredFingerprint::Sha256(vec![0; 32])));
    }

    #[test]
    fn keys() {
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("a b"));
        assert!(!valid_idempotency_key(&"k".repeat(201)));
    }
}
