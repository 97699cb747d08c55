use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::{Seq, Topic, TopicError};

/// Where a reader stands: the last seq it has seen, per topic.
///
/// One topic: `"42"`. Several: `"orders:42,alerts:7"`. Every cursor the hub hands out names
/// every topic of its subscription (see docs/API.md, "Concepts").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    Single(Seq),
    Multi(Vec<(Topic, Seq)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    Malformed(String),
    Topic(TopicError),
    /// More pairs than a read may name, counted before duplicates are dropped.
    TooMany {
        given: usize,
        max: usize,
    },
}

/// The most pairs [`Cursor::from_str`] accepts: the ceiling of `limits.max_topics`. The edges
/// that know the configured limit parse with [`Cursor::parse_bounded`].
pub const MAX_CURSOR_PAIRS: usize = 10_000;

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::Malformed(s) => write!(
                f,
                "{s:?} is not a cursor; expected a seq (\"42\") or topic:seq pairs (\"orders:42,alerts:7\")"
            ),
            CursorError::Topic(e) => write!(f, "cursor names a bad topic: {e}"),
            CursorError::TooMany { given, max } => {
                write!(f, "the cursor names {given} pairs, at most {max} allowed")
            }
        }
    }
}

impl std::error::Error for CursorError {}

fn parse_seq(s: &str) -> Option<Seq> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Cursor {
    /// The position this cursor gives for `topic`, if it names it (a single cursor names any).
    pub fn position(&self, topic: &Topic) -> Option<Seq> {
        match self {
            Cursor::Single(seq) => Some(*seq),
            Cursor::Multi(pairs) => pairs.iter().find(|(t, _)| t == topic).map(|(_, s)| *s),
        }
    }

    /// Builds the cursor the hub hands out: the bare seq for one topic, pairs otherwise.
    pub fn for_positions(positions: &[(Topic, Seq)]) -> Cursor {
        match positions {
            [(_, seq)] => Cursor::Single(*seq),
            _ => Cursor::Multi(positions.to_vec()),
        }
    }
}

impl Cursor {
    /// Parses a cursor of at most `max_pairs` pairs. The pairs are counted before anything
    /// else is done with them, so a hostile cursor costs one pass over its text; duplicates
    /// are then dropped through a map (the highest seq of a topic wins), keeping first order.
    pub fn parse_bounded(s: &str, max_pairs: usize) -> Result<Self, CursorError> {
        if let Some(seq) = parse_seq(s) {
            return Ok(Cursor::Single(seq));
        }
        let given = s.bytes().filter(|&b| b == b',').count() + 1;
        if given > max_pairs {
            return Err(CursorError::TooMany {
                given,
                max: max_pairs,
            });
        }
        let malformed = || CursorError::Malformed(s.chars().take(100).collect());
        let mut pairs: Vec<(Topic, Seq)> = Vec::new();
        let mut index: HashMap<Topic, usize> = HashMap::new();
        for part in s.split(',') {
            let (topic, seq) = part.rsplit_once(':').ok_or_else(malformed)?;
            let topic: Topic = topic.parse().map_err(CursorError::Topic)?;
            let seq = parse_seq(seq).ok_or_else(malformed)?;
            match index.get(&topic) {
                Some(&i) => pairs[i].1 = pairs[i].1.max(seq),
                None => {
                    index.insert(topic.clone(), pairs.len());
                    pairs.push((topic, seq));
                }
            }
        }
        Ok(Cursor::Multi(pairs))
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    /// At most `MAX_CURSOR_PAIRS` pairs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::parse_bounded(s, MAX_CURSOR_PAIRS)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Single(seq) => write!(f, "{seq}"),
            Cursor::Multi(pairs) => {
                for (i, (topic, seq)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{topic}:{seq}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        s.parse().unwrap()
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!("42".parse(), Ok(Cursor::Single(42)));
        assert_eq!(
            "orders:42,alerts:7".parse(),
            Ok(Cursor::Multi(vec![(t("orders"), 42), (t("alerts"), 7)]))
        );
        for bad in [
            "",
            "x",
            "a:",
            ":1",
            "a:1,",
            "a:-1",
            "a b:1",
            "99999999999999999999999",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_are_counted_before_duplicates_are_dropped() {
        assert_eq!(
            Cursor::parse_bounded("a:1,a:2,a:3", 2),
            Err(CursorError::TooMany { given: 3, max: 2 })
        );
        assert_eq!(
            Cursor::parse_bounded("a:1,b:9,a:3", 3),
            Ok(Cursor::Multi(vec![(t("a"), 3), (t("b"), 9)]))
        );
        assert_eq!(Cursor::parse_bounded("42", 1), Ok(Cursor::Single(42)));
        let huge = (0..MAX_CURSOR_PAIRS + 1)
            .map(|i| format!("t{i}:1"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            huge.parse::<Cursor>(),
            Err(CursorError::TooMany { .. })
        ));
    }

    #[test]
    fn position_lookup() {
        let c: Cursor = "a:3,b:9".parse().unwrap();
        assert_eq!(c.position(&t("b")), Some(9));
        assert_eq!(c.position(&t("c")), None);
        assert_eq!(Cursor::Single(5).position(&t("c")), Some(5));
    }

    proptest! {
        #[test]
        fn multi_round_trips(pairs in prop::collection::vec(("[a-z][a-z0-9_-]{0,8}(\\.[a-z0-9]{1,4})?", any::<u64>()), 1..6)) {
            let mut uniq: Vec<(Topic, Seq)> = Vec::new();
            for (name, seq) in pairs {
                let topic = t(&name);
                if !uniq.iter().any(|(x, _)| *x == topic) { uniq.push((topic, seq)); }
            }
            let cursor = if uniq.len() == 1 { Cursor::Single(uniq[0].1) } else { Cursor::Multi(uniq.clone()) };
            let text = Cursor::for_positions(&uniq).to_string();
            prop_assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        }

        #[test]
        fn single_round_trips(seq in any::<u64>()) {
            prop_assert_eq!(Cursor::Single(seq).to_string().parse::<Cursor>(), Ok(Cursor::Single(seq)));
        }

        #[test]
        fn never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Cursor>();
        }
    }
}
