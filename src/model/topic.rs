use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 200;

/// A validated topic name: dot-separated tokens of `[A-Za-z0-9_-]+`, 1–200 bytes.
///
/// Cheap to clone (an `Arc<str>`), because every message and subscription carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong(usize),
    EmptyToken,
    BadChar(char),
    TooMany { given: usize, max: usize },
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "topic name is empty"),
            TopicError::TooLong(n) => {
                write!(
                    f,
                    "topic name is {n} bytes, at most {MAX_TOPIC_BYTES} allowed"
                )
            }
            TopicError::EmptyToken => write!(
                f,
                "topic name has an empty token (leading, trailing or double dot)"
            ),
            TopicError::BadChar(c) => write!(
                f,
                "topic name contains {c:?}; tokens are [A-Za-z0-9_-] separated by dots"
            ),
            TopicError::TooMany { given, max } => {
                write!(f, "{given} topics given, at most {max} per request")
            }
        }
    }
}

impl std::error::Error for TopicError {}

impl Topic {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Names starting with `_` belong to the hub: clients may read them, never publish.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('_')
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.len() > MAX_TOPIC_BYTES {
            return Err(TopicError::TooLong(s.len()));
        }
        for token in s.split('.') {
            if token.is_empty() {
                return Err(TopicError::EmptyToken);
            }
            if let Some(c) = token
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            {
                return Err(TopicError::BadChar(c));
            }
        }
        Ok(Topic(Arc::from(s)))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.0)
    }
}

/// The topics of one subscription or read: 1..=max distinct names, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicList(Vec<Topic>);

impl TopicList {
    /// Parses a comma-separated list; duplicates are dropped, order is kept.
    ///
    /// One pass over the text: duplicates are found through a set, and the parse stops at the
    /// first distinct topic over `max`, so a long list costs no more than its length.
    pub fn parse(s: &str, max: usize) -> Result<Self, TopicError> {
        let mut topics: Vec<Topic> = Vec::new();
        let mut seen: HashSet<Topic> = HashSet::new();
        for part in s.split(',') {
            let topic: Topic = part.parse()?;
            if seen.insert(topic.clone()) {
                if topics.len() == max {
                    let given = s.split(',').collect::<HashSet<_>>().len();
                    return Err(TopicError::TooMany { given, max });
                }
                topics.push(topic);
            }
        }
        Ok(TopicList(topics))
    }

    pub fn one(topic: Topic) -> Self {
        TopicList(vec![topic])
    }

    pub fn as_slice(&self) -> &[Topic] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Topic> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_design_examples() {
        for ok in [
            "orders",
            "chat.room-1",
            "user.42.alerts",
            "_jobs.abc",
            "A_b-9",
        ] {
            assert_eq!(ok.parse::<Topic>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!("".parse::<Topic>(), Err(TopicError::Empty));
        assert_eq!(".a".parse::<Topic>(), Err(TopicError::EmptyToken));
        assert_eq!("a..b".parse::<Topic>(), Err(TopicError::EmptyToken));
        assert_eq!("a.".parse::<Topic>(), Err(TopicError::EmptyToken));
        assert_eq!("a b".parse::<Topic>(), Err(TopicError::BadChar(' ')));
        assert_eq!("a*".parse::<Topic>(), Err(TopicError::BadChar('*')));
        assert_eq!("é".parse::<Topic>(), Err(TopicError::BadChar('é')));
        let long = "a".repeat(201);
        assert_eq!(long.parse::<Topic>(), Err(TopicError::TooLong(201)));
        assert!("a".repeat(200).parse::<Topic>().is_ok());
    }

    #[test]
    fn reserved_names() {
        assert!("_jobs.1".parse::<Topic>().unwrap().is_reserved());
        assert!(!"jobs._1".parse::<Topic>().unwrap().is_reserved());
    }

    #[test]
    fn topic_lists() {
        let list = TopicList::parse("a,b,a", 64).unwrap();
        assert_eq!(list.len(), 2);
        assert!(TopicList::parse("a,,b", 64).is_err());
        assert_eq!(
            TopicList::parse("a,b,c", 2),
            Err(TopicError::TooMany { given: 3, max: 2 })
        );
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(s in "[A-Za-z0-9_-]{1,20}(\\.[A-Za-z0-9_-]{1,20}){0,5}") {
            let t: Topic = s.parse().unwrap();
            prop_assert_eq!(t.to_string(), s);
        }

        #[test]
        fn parser_never_panics_and_accepts_only_valid(s in "\\PC{0,40}") {
            if let Ok(t) = s.parse::<Topic>() {
                prop_assert!(t.as_str().split('.').all(|tok| !tok.is_empty()
                    && tok.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
            }
        }
    }
}
