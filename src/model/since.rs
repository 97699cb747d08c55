use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::cursor::MAX_CURSOR_PAIRS;
use super::{Cursor, CursorError, Millis, parse_duration, parse_rfc3339};

/// Where a read or subscription starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// The oldest retained message; never reports a gap.
    All,
    /// Only what is published next.
    Now,
    /// The first message at or after this instant.
    Time(Millis),
    /// The first message at or after this long ago.
    Ago(Duration),
    /// After the positions of a cursor.
    Cursor(Cursor),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinceError(pub CursorError);

impl fmt::Display for SinceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad since: {}; also accepted: all, now, an RFC 3339 time, a duration such as 10m",
            self.0
        )
    }
}

impl std::error::Error for SinceError {}

impl Since {
    /// Parses a since whose cursor, if it is one, names at most `max_pairs` pairs (see
    /// [`Cursor::parse_bounded`]); the edges pass `limits.max_topics`.
    pub fn parse_bounded(s: &str, max_pairs: usize) -> Result<Self, SinceError> {
        match s {
            "all" => return Ok(Since::All),
            "now" => return Ok(Since::Now),
            _ => {}
        }
        if let Ok(d) = parse_duration(s) {
            return Ok(Since::Ago(d));
        }
        if let Some(t) = parse_rfc3339(s) {
            return Ok(Since::Time(t));
        }
        Cursor::parse_bounded(s, max_pairs)
            .map(Since::Cursor)
            .map_err(SinceError)
    }
}

impl FromStr for Since {
    type Err = SinceError;

    /// A cursor of at most `MAX_CURSOR_PAIRS` (10,000) pairs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Since::parse_bounded(s, MAX_CURSOR_PAIRS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_form() {
        assert_eq!("all".parse(), Ok(Since::All));
        assert_eq!("now".parse(), Ok(Since::Now));
        assert_eq!("10m".parse(), Ok(Since::Ago(Duration::from_secs(600))));
        assert_eq!("42".parse(), Ok(Since::Cursor(Cursor::Single(42))));
        assert!(matches!("2026-11-24T19:00:00Z".parse(), Ok(Since::Time(_))));
        assert!(matches!(
            "a:1,b:2".parse(),
            Ok(Since::Cursor(Cursor::Multi(_)))
        ));
        for bad in ["", "ALL", "yesterday", "2026-11-24", "-5", "10 m"] {
            assert!(bad.parse::<Since>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Since>();
        }

        #[test]
        fn numbers_are_cursors(n in any::<u64>()) {
            prop_assert_eq!(n.to_string().parse::<Since>(), Ok(Since::Cursor(Cursor::Single(n))));
        }
    }
}
