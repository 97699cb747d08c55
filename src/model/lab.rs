//! What a pattern-lab run measures (docs/API.md, "The pattern lab"): the patterns, and a run's
//! settings checked against the limits that keep a run from taking the hub down.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::duration::parse_duration;

/// A way for a client to receive a topic's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabPattern {
    /// A read every `poll_interval`, answered at once.
    ShortPoll,
    /// A read held until a message comes (`wait`), from the cursor of the last answer.
    LongPoll,
    /// Server-sent events over HTTP/1.1, one connection per client.
    Sse,
    /// `/v1/ws`, one WebSocket per client.
    Ws,
    /// Server-sent events over HTTP/2 (h2c), one connection per client.
    SseH2,
    /// The hub POSTs each message to a receiver: one webhook per client.
    Webhook,
}

impl LabPattern {
    pub const ALL: [LabPattern; 6] = [
        LabPattern::ShortPoll,
        LabPattern::LongPoll,
        LabPattern::Sse,
        LabPattern::Ws,
        LabPattern::SseH2,
        LabPattern::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LabPattern::ShortPoll => "short-poll",
            LabPattern::LongPoll => "long-poll",
            LabPattern::Sse => "sse",
            LabPattern::Ws => "ws",
            LabPattern::SseH2 => "sse-h2",
            LabPattern::Webhook => "webhook",
        }
    }
}

impl fmt::Display for LabPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LabPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        LabPattern::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown pattern {s:?}; expected short-poll, long-poll, sse, ws, sse-h2 or webhook"
                )
            })
    }
}

/// A run's settings, valid by construction ([`LabSpec::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LabSpec {
    /// Measured one after another, in this order, without repeats.
    pub patterns: Vec<LabPattern>,
    /// Clients per pattern.
    pub clients: usize,
    /// Messages published per second.
    pub rate: f64,
    /// How long each pattern is measured (publishing time).
    pub duration: Duration,
    /// The short poll's interval.
    pub poll_interval: Duration,
    /// Payload bytes of each message (it starts with a 20-digit send time).
    pub size: usize,
}

impl LabSpec {
    /// Most clients per pattern.
    pub const MAX_CLIENTS: usize = 500;
    /// Longest duration per pattern.
    pub const MAX_DURATION: Duration = Duration::from_secs(60);
    /// Highest publish rate.
    pub const MAX_RATE: f64 = 1000.0;
    /// Shortest and longest poll interval.
    pub const MIN_POLL: Duration = Duration::from_millis(10);
    pub const MAX_POLL: Duration = Duration::from_secs(60);
    /// Payload bounds (the send time takes 20 bytes, then a space).
    pub const MIN_SIZE: usize = 21;
    pub const MAX_SIZE: usize = 65_536;
    /// Most short polls per second (clients / poll_interval): under the hub's default
    /// per-client rate limit, since every lab client shares one address.
    pub const MAX_POLLS_PER_S: f64 = 2000.0;

    /// Checks every setting against the limits above; the message names the field.
    pub fn new(
        patterns: &[String],
        clients: u64,
        rate: f64,
        duration: &str,
        poll_interval: &str,
        size: u64,
    ) -> Result<LabSpec, String> {
        if patterns.is_empty() {
            return Err("patterns: name at least one pattern".into());
        }
        let mut parsed = Vec::new();
        for name in patterns {
            let p: LabPattern = name.parse().map_err(|e| format!("patterns: {e}"))?;
            if parsed.contains(&p) {
                return Err(format!("patterns: {p} is named twice"));
            }
            parsed.push(p);
        }
        if clients == 0 || clients > Self::MAX_CLIENTS as u64 {
            return Err(format!(
                "clients: must be 1 to {} per pattern, not {clients}",
                Self::MAX_CLIENTS
            ));
        }
        if !(rate.is_finite() && rate > 0.0 && rate <= Self::MAX_RATE) {
            return Err(format!(
                "rate: must be above 0 and at most {} messages per second",
                Self::MAX_RATE
            ));
        }
        let duration = parse_duration(duration).map_err(|e| format!("duration: {e}"))?;
        if duration < Duration::from_secs(1) || duration > Self::MAX_DURATION {
            return Err(format!(
                "duration: must be 1s to {}s",
                Self::MAX_DURATION.as_secs()
            ));
        }
        let poll_interval =
            parse_duration(poll_interval).map_err(|e| format!("poll_interval: {e}"))?;
        if poll_interval < Self::MIN_POLL || poll_interval > Self::MAX_POLL {
            return Err(format!(
                "poll_interval: must be {}ms to {}s",
                Self::MIN_POLL.as_millis(),
                Self::MAX_POLL.as_secs()
            ));
        }
        if size < Self::MIN_SIZE as u64 || size > Self::MAX_SIZE as u64 {
            return Err(format!(
                "size: must be {} to {} bytes (a 20-digit send time leads each payload)",
                Self::MIN_SIZE,
                Self::MAX_SIZE
            ));
        }
        let polls_per_s = clients as f64 / poll_interval.as_secs_f64();
        if parsed.contains(&LabPattern::ShortPoll) && polls_per_s > Self::MAX_POLLS_PER_S {
            return Err(format!(
                "poll_interval: {clients} clients polling every {}ms make {polls_per_s:.0} requests/s; at most {} are allowed",
                poll_interval.as_millis(),
                Self::MAX_POLLS_PER_S
            ));
        }
        Ok(LabSpec {
            patterns: parsed,
            clients: clients as usize,
            rate,
            duration,
            poll_interval,
            size: size as usize,
        })
    }

    /// Messages published per pattern.
    pub fn messages(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patterns: &[&str], clients: u64, duration: &str) -> Result<LabSpec, String> {
        let names: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        LabSpec::new(&names, clients, 1.0, duration, "250ms", 100)
    }

    #[test]
    fn a_spec_is_checked_against_its_limits() {
        let ok = spec(&["short-poll", "sse-h2"], 50, "10s").unwrap();
        assert_eq!(ok.patterns, [LabPattern::ShortPoll, LabPattern::SseH2]);
        assert_eq!(ok.messages(), 10);
        assert!(
            spec(&["carrier-pigeon"], 1, "10s")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            spec(&["sse", "sse"], 1, "10s")
                .unwrap_err()
                .contains("twice")
        );
        assert!(spec(&[], 1, "10s").unwrap_err().starts_with("patterns"));
        assert!(spec(&["sse"], 0, "10s").unwrap_err().starts_with("clients"));
        assert!(
            spec(&["sse"], 501, "10s")
                .unwrap_err()
                .starts_with("clients")
        );
        assert!(
            spec(&["sse"], 1, "10 s")
                .unwrap_err()
                .starts_with("duration")
        );
        assert!(spec(&["sse"], 1, "2m").unwrap_err().starts_with("duration"));
    }
}
