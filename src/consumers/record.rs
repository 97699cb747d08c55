//! A consumer's record: its settings and, per topic, its position and leases. Stored as JSON
//! (the store keeps it as opaque bytes).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConsumerError, ConsumerOptions};
use crate::model::{LogBounds, Millis, Seq, Since, TopicList, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// The position advances as messages are handed out.
    Auto,
    /// Each message is leased until it is acked, nak'ed, termed or its lease runs out.
    Explicit,
}

/// A consumer's settings, as created and as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// In name order, so two requests naming them in another order are the same settings.
    pub topics: Vec<String>,
    /// As given (`all`, `now`, a time, a duration, a cursor); resolved at creation.
    pub start: String,
    pub ack: AckMode,
    #[serde(rename = "ack_wait", with = "duration_text")]
    pub ack_wait_ms: u64,
    pub max_deliver: u32,
    pub max_ack_pending: u32,
}

/// `ack_wait` shown as the duration syntax of the API (`30s`, `1500ms`).
mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        crate::model::parse_duration(&text)
            .map(|d| d.as_millis() as u64)
            .map_err(serde::de::Error::custom)
    }
}

/// Bounds of the settings a creator may give.
const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);
const MAX_DELIVER: u64 = 1000;
const MAX_ACK_PENDING: u64 = 100_000;

/// What a creator asks for; every field but `topics` may be left out.
#[derive(Clone, Debug, Default)]
pub struct SettingsRequest {
    pub topics: Vec<String>,
    pub start: Option<String>,
    pub ack: Option<String>,
    pub ack_wait: Option<String>,
    pub max_deliver: Option<u64>,
    pub max_ack_pending: Option<u64>,
}

fn bad(m: impl Into<String>) -> ConsumerError {
    ConsumerError::BadSettings(m.into())
}

impl Settings {
    /// Validates a creator's request, filling in the defaults. `max_topics` bounds the topics.
    pub fn from_request(
        req: SettingsRequest,
        defaults: &ConsumerOptions,
        max_topics: usize,
    ) -> Result<Settings, ConsumerError> {
        if req.topics.is_empty() {
            return Err(bad("topics: name at least one topic"));
        }
        let list = TopicList::parse(&req.topics.join(","), max_topics)
            .map_err(|e| bad(format!("topics: {e}")))?;
        if req.topics.iter().any(|t| t.contains(',')) {
            return Err(bad("topics: one topic per item, without commas"));
        }
        let mut topics: Vec<String> = list.iter().map(|t| t.as_str().to_string()).collect();
        topics.sort();
        let start = req.start.unwrap_or_else(|| "all".into());
        Since::parse_bounded(&start, max_topics).map_err(|e| bad(format!("start: {e}")))?;
        let ack = match req.ack.as_deref() {
            None | Some("auto") => AckMode::Auto,
            Some("explicit") => AckMode::Explicit,
            Some(other) => return Err(bad(format!("ack: {other:?}: auto or explicit"))),
        };
        let ack_wait = match req.ack_wait {
            None => defaults.ack_wait,
            Some(text) => {
                let d = parse_duration(&text).map_err(|e| bad(format!("ack_wait: {e}")))?;
                if d.is_zero() || d > MAX_ACK_WAIT {
                    return Err(bad(format!("ack_wait: {text:?}: from 1ms to 24h")));
                }
                d
            }
        };
        let max_deliver = match req.max_deliver {
            None => defaults.max_deliver,
            Some(n @ 1..=MAX_DELIVER) => n as u32,
            Some(n) => return Err(bad(format!("max_deliver: {n}: from 1 to {MAX_DELIVER}"))),
        };
        let max_ack_pending = match req.max_ack_pending {
            None => defaults.max_ack_pending,
            Some(n @ 1..=MAX_ACK_PENDING) => n as u32,
            Some(n) => {
                return Err(bad(format!(
                    "max_ack_pending: {n}: from 1 to {MAX_ACK_PENDING}"
                )));
            }
        };
        Ok(Settings {
            topics,
            start,
            ack,
            ack_wait_ms: ack_wait.as_millis() as u64,
            max_deliver,
            max_ack_pending,
        })
    }

    /// The settings of a consumer a read creates: `auto`, the defaults.
    pub fn implicit(topics: &TopicList, start: &Since, defaults: &ConsumerOptions) -> Settings {
        let mut names: Vec<String> = topics.iter().map(|t| t.as_str().to_string()).collect();
        names.sort();
        Settings {
            topics: names,
            start: match start {
                Since::Now => "now".into(),
                _ => "all".into(),
            },
            ack: AckMode::Auto,
            ack_wait_ms: defaults.ack_wait.as_millis() as u64,
            max_deliver: defaults.max_deliver,
            max_ack_pending: defaults.max_ack_pending,
        }
    }

    /// The topics as a list (validated at creation: a record that no longer parses is a
    /// damaged store).
    pub fn topic_list(&self) -> Result<TopicList, ConsumerError> {
        TopicList::parse(&self.topics.join(","), usize::MAX).map_err(|e| {
            ConsumerError::Hub(crate::hub::HubError::Store(
                crate::model::StoreError::Unavailable(format!("a stored consumer's topics: {e}")),
            ))
        })
    }

    pub fn same_topics(&self, topics: &TopicList) -> bool {
        let mut asked: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
        asked.sort();
        asked == self.topics.iter().map(String::as_str).collect::<Vec<_>>()
    }

    pub fn start_since(&self) -> Result<Since, ConsumerError> {
        Since::parse_bounded(&self.start, self.topics.len().max(1))
            .map_err(|e| bad(format!("start: {e}")))
    }
}

/// A delivered message not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub delivery: u32,
    /// When it runs out (ms since the epoch): after it, the message goes out again.
    pub until: Millis,
    /// Given back by a nak: no reader holds it; it goes out again at `until`.
    pub released: bool,
}

impl Lease {
    pub fn new(delivery: u32, now: Millis, ack_wait_ms: u64) -> Lease {
        Lease {
            delivery,
            until: now + ack_wait_ms as Millis,
            released: false,
        }
    }
}

/// One topic of a consumer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lane {
    /// The highest seq handed out (or passed over as a gap).
    pub delivered: Seq,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "lease_runs"
    )]
    pub leases: BTreeMap<Seq, Lease>,
}

/// Leases stored as runs: `[first, last, delivery, until, released]` for consecutive seqs
/// leased alike. A page read at once is leased alike, so a consumer holding a thousand
/// leases stores a handful of runs: the record (written on every read and ack) stays small.
mod lease_runs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Lease;
    use crate::model::{Millis, Seq};

    type Run = (Seq, Seq, u32, Millis, bool);

    pub fn serialize<S: Serializer>(
        leases: &BTreeMap<Seq, Lease>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Run> = Vec::new();
        for (&seq, l) in leases {
            match runs.last_mut() {
                Some(run)
                    if run.1 + 1 == seq
                        && (run.2, run.3, run.4) == (l.delivery, l.until, l.released) =>
                {
                    run.1 = seq;
                }
                _ => runs.push((seq, seq, l.delivery, l.until, l.released)),
            }
        }
        runs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Seq, Lease>, D::Error> {
        let runs = Vec::<Run>::deserialize(d)?;
        let mut leases = BTreeMap::new();
        for (first, last, delivery, until, released) in runs {
            if last < first || last - first > 1_000_000 {
                return Err(serde::de::Error::custom("a lease run out of bounds"));
            }
            for seq in first..=last {
                leases.insert(
                    seq,
                    Lease {
                        delivery,
                        until,
                        released,
                    },
                );
            }
        }
        Ok(leases)
    }
}

impl Lane {
    pub fn at(seq: Seq) -> Lane {
        Lane {
            delivered: seq,
            leases: BTreeMap::new(),
        }
    }

    pub fn figures(&self, bounds: &LogBounds) -> super::Figures {
        let ack_floor = self
            .leases
            .keys()
            .next()
            .map_or(self.delivered, |first| first - 1);
        let from = self.delivered.max(bounds.first_seq.saturating_sub(1));
        super::Figures {
            delivered: self.delivered,
            ack_floor,
            pending: bounds.last_seq.saturating_sub(from),
            ack_pending: self.leases.len() as u64,
            redelivered: self.leases.values().filter(|l| l.delivery > 1).count() as u64,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub settings: Settings,
    pub created: Millis,
    pub topics: BTreeMap<String, Lane>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        // A record of plain fields always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(topics: &[&str]) -> SettingsRequest {
        SettingsRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_order() {
        let d = ConsumerOptions::default();
        let a = Settings::from_request(req(&["b", "a"]), &d, 64).unwrap();
        let b = Settings::from_request(req(&["a", "b"]), &d, 64).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.start, "all");
        assert_eq!(a.ack, AckMode::Auto);
        assert_eq!(a.ack_wait_ms, 30_000);
    }

    #[test]
    fn bad_settings_are_refused() {
        let d = ConsumerOptions::default();
        for r in [
            req(&[]),
            req(&["a b"]),
            SettingsRequest {
                ack: Some("sometimes".into()),
                ..req(&["a"])
            },
            SettingsRequest {
                ack_wait: Some("0s".into()),
                ..req(&["a"])
            },
            SettingsRequest {
                max_deliver: Some(0),
                ..req(&["a"])
            },
            SettingsRequest {
                start: Some("yesterday-ish".into()),
                ..req(&["a"])
            },
        ] {
            assert!(Settings::from_request(r.clone(), &d, 64).is_err(), "{r:?}");
        }
    }

    #[test]
    fn figures_of_a_lane() {
        let mut lane = Lane::at(10);
        lane.leases.insert(7, Lease::new(2, 0, 1));
        lane.leases.insert(9, Lease::new(1, 0, 1));
        let b = LogBounds {
            first_seq: 1,
            last_seq: 15,
            deleted_through: 0,
        };
        let f = lane.figures(&b);
        assert_eq!(
            (f.ack_floor, f.pending, f.ack_pending, f.redelivered),
            (6, 5, 2, 1)
        );
    }

    #[test]
    fn records_round_trip() {
        let d = ConsumerOptions::default();
        let mut r = Record {
            settings: Settings::from_request(req(&["a"]), &d, 64).unwrap(),
            created: 5,
            topics: BTreeMap::new(),
        };
        r.topics.insert("a".into(), Lane::at(3));
        r.topics
            .get_mut("a")
            .unwrap()
            .leases
            .insert(3, Lease::new(1, 1, 1));
        let back = Record::decode(&r.encode()).unwrap();
        assert_eq!(back.topics["a"].leases[&3].delivery, 1);
        assert_eq!(back.settings, r.settings);
    }
}
