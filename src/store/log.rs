//! The message log: what every engine offers for topics and their messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    Appended, LogBounds, Message, Millis, NewMessage, Seq, StoreResult, Topic, TopicInfo,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default cap on topics (`limits.max_topics_total`), until the application sets its own.
pub const MAX_TOPICS_TOTAL: u64 = 1_000_000;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Per-topic retention; whichever limit is hit first removes the oldest messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_messages: 100_000,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Messages after a position, read in one snapshot with the bounds they were read against.
#[derive(Clone, Debug, Default)]
pub struct ReadBatch {
    pub messages: Vec<Arc<Message>>,
    pub bounds: Option<LogBounds>,
}

impl ReadBatch {
    pub fn bounds(&self) -> LogBounds {
        self.bounds.unwrap_or(LogBounds::EMPTY)
    }
}

/// The durable topic log every engine implements.
pub trait Log: Send + Sync + 'static {
    /// Appends a batch atomically: all messages are durable (per the engine's durability)
    /// when this returns `Ok`, or none is stored. Results are in input order.
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, StoreResult<Vec<Appended>>>;

    /// Up to `limit` messages of `topic` with seq > `after`, in seq order, stopping early once
    /// `max_bytes` of payload are gathered (at least one message is always returned if any).
    fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, StoreResult<ReadBatch>>;

    /// The bounds of a topic's log (`None`: never published).
    fn bounds(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<LogBounds>>>;

    /// The position just before the first retained message at or after `time`
    /// (the head when there is none).
    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>>;

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>>;

    /// Up to `limit` topics named after `after` (all when `None`), in name order: a page of
    /// [`Log::topics`] that loads only that page.
    fn topics_page(
        &self,
        after: Option<Topic>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>>;

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>>;

    /// Drops every message of a topic, keeping its seq counter. `false`: unknown topic.
    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>>;

    /// Caps the number of topics (reserved ones included): a write that would create one more
    /// fails with [`StoreError::TooManyTopics`](crate::model::StoreError::TooManyTopics) and
    /// stores nothing. Each engine keeps a count, so the check costs no scan.
    fn limit_topics(&self, max: u64);

    /// Checks the engine can serve (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Finishes pending writes and releases the engine (its job store too: they are one
    /// engine behind two traits).
    fn close(&self) -> BoxFuture<'_, ()>;
}
