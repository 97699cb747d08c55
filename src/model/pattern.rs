use std::fmt;
use std::str::FromStr;

use super::Topic;

/// A pattern over topic names: dot-separated tokens where `*` matches exactly one token and
/// `>` (last only) matches one or more remaining tokens. `orders.>` matches `orders.eu` and
/// `orders.eu.1`, not `orders`; `>` alone matches every topic but the reserved ones.
///
/// A topic whose first token starts with `_` is reserved for the hub (`_jobs.{id}`,
/// `_queues.{queue}`): a wildcard never stands for that token, so only a pattern that names it
/// (`_jobs.>`) matches. A rule such as `subscribe = [">"]` thus never reaches the hub's own
/// topics by accident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    tokens: Vec<PatternToken>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternToken {
    Literal(String),
    One,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a topic pattern: dot-separated tokens of [A-Za-z0-9_-], `*` for one token, `>` last for the rest",
            self.0.chars().take(100).collect::<String>()
        )
    }
}

impl std::error::Error for PatternError {}

impl FromStr for TopicPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PatternError(s.to_owned());
        if s.is_empty() || s.len() > super::topic::MAX_TOPIC_BYTES {
            return Err(err());
        }
        let parts: Vec<&str> = s.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => PatternToken::One,
                ">" if i + 1 == parts.len() => PatternToken::Rest,
                lit if !lit.is_empty()
                    && lit
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    PatternToken::Literal(lit.to_owned())
                }
                _ => return Err(err()),
            };
            tokens.push(token);
        }
        Ok(TopicPattern {
            tokens,
            text: s.to_owned(),
        })
    }
}

impl TopicPattern {
    pub fn matches(&self, topic: &Topic) -> bool {
        if topic.is_reserved() && !matches!(self.tokens.first(), Some(PatternToken::Literal(_))) {
            return false;
        }
        let mut names = topic.as_str().split('.');
        for token in &self.tokens {
            match token {
                PatternToken::Rest => return names.next().is_some(),
                PatternToken::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(lit) => {
                    if names.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        p.parse::<TopicPattern>()
            .unwrap()
            .matches(&t.parse().unwrap())
    }

    #[test]
    fn wildcards() {
        assert!(m("orders", "orders"));
        assert!(!m("orders", "orders.eu"));
        assert!(m("orders.*", "orders.eu"));
        assert!(!m("orders.*", "orders.eu.1"));
        assert!(!m("orders.*", "orders"));
        assert!(m("orders.>", "orders.eu.1"));
        assert!(!m("orders.>", "orders"));
        assert!(m(">", "anything.at.all"));
        assert!(m("*.alerts", "user.alerts"));
        assert!(m("_jobs.>", "_jobs.abc"));
    }

    #[test]
    fn wildcards_never_stand_for_a_reserved_first_token() {
        for p in [">", "*", "*.>", "*.*", "*.abc"] {
            for t in ["_jobs.abc", "_queues.q", "_x", "_"] {
                assert!(!m(p, t), "{p} must not match {t}");
            }
        }
        assert!(m("_jobs.*", "_jobs.abc"));
        assert!(m("_queues.>", "_queues.a.b"));
        assert!(m("_x", "_x"));
        assert!(!m("_jobs.>", "_queues.q"));
        // Only the first token is reserved: `_` further in is an ordinary name.
        assert!(m(">", "jobs._1"));
        assert!(m("jobs.*", "jobs._1"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a..b", "a.>.b", ">.a", "a b", "a.**", "a.*x"] {
            assert!(bad.parse::<TopicPattern>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_topic_is_a_pattern_matching_itself(s in "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,4}") {
            let topic: Topic = s.parse().unwrap();
            let pattern: TopicPattern = s.parse().unwrap();
            prop_assert!(pattern.matches(&topic));
            prop_assert_eq!(
                ">".parse::<TopicPattern>().unwrap().matches(&topic),
                !topic.is_reserved()
            );
        }

        #[test]
        fn never_panics(p in "\\PC{0,30}", t in "[a-z.*>]{1,20}") {
            if let (Ok(p), Ok(t)) = (p.parse::<TopicPattern>(), t.parse::<Topic>()) {
                let _ = p.matches(&t);
            }
        }
    }
}
