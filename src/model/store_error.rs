//! How a store refuses: the errors every engine speaks, whatever it is built on.

use std::fmt;

use super::{JobId, Topic};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The engine cannot serve now (I/O error, closed, unreachable): a 503 upstream.
    Unavailable(String),
    /// An idempotency key of this topic was used with another body within its lifetime.
    IdempotencyConflict { topic: Topic, key: String },
    /// A job changed since it was read (another claim took it): the caller's lease is stale.
    JobChanged(JobId),
    /// No such job.
    UnknownJob(JobId),
    /// `durability = "replicated"`: the write is stored on its shard's master, but too few
    /// replicas confirmed it in time, so it is neither acknowledged nor shown (a 503 upstream).
    NotReplicated(String),
    /// The write would create a topic beyond the hub's cap on topics
    /// (`limits.max_topics_total`); nothing of it was stored.
    TooManyTopics { limit: u64 },
}

impl StoreError {
    /// [`StoreError::Unavailable`] for whatever went wrong underneath.
    pub fn unavailable(why: impl fmt::Display) -> Self {
        StoreError::Unavailable(why.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            StoreError::IdempotencyConflict { topic, key } => write!(
                f,
                "idempotency key {key:?} of topic {topic} was already used with another body"
            ),
            StoreError::JobChanged(id) => write!(
                f,
                "job {id} was claimed again or finished: this lease is no longer its own"
            ),
            StoreError::UnknownJob(id) => write!(f, "no job {id}"),
            StoreError::NotReplicated(why) => write!(f, "not replicated in time: {why}"),
            StoreError::TooManyTopics { limit } => write!(
                f,
                "the hub holds its limit of {limit} topics (limits.max_topics_total): this \
                 would create a new one; existing topics still accept messages"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;
