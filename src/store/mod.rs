//! The durable topic log. One trait, several engines; nothing above this module knows which.
//!
//! The trait speaks only domain types (no SQL, no Redis types): `memory`, `sqlite` and
//! `redis` (Streams for the log, a Lua script per write, Pub/Sub to feed every node) all fit
//! behind it.

mod memory;
mod redis;
mod sqlite;

#[cfg(test)]
mod conformance;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryLog;
pub use redis::{RedisLog, RedisTarget};
pub use sqlite::{Durability, SqliteLog};

use crate::model::{Job, JobId, Message, Millis, NewMessage, Seq, Topic};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// The result of one appended message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    pub time: Millis,
    /// The idempotency key was seen before with the same body: nothing was stored.
    pub replayed: bool,
}

/// Where a topic's retained log stands. A topic with nothing retained has
/// `first_seq == last_seq + 1`; an unknown topic is `first_seq 1, last_seq 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// The highest seq dropped by a topic delete (0: none), to tell `deleted` from `expired`.
    pub deleted_through: Seq,
}

impl LogBounds {
    pub const EMPTY: LogBounds = LogBounds {
        first_seq: 1,
        last_seq: 0,
        deleted_through: 0,
    };
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: Topic,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub messages: u64,
    pub bytes: u64,
    pub last_publish: Option<Millis>,
}

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
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// The log every engine implements.
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

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>>;

    /// Drops every message of a topic, keeping its seq counter. `false`: unknown topic.
    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>>;

    /// Checks the engine can serve (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Finishes pending writes and releases the engine.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Stores a new job. With an idempotency key (scoped to the queue) already used with the
    /// same payload, returns the first job and `true`; with another payload, a conflict.
    fn job_create(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>>;

    fn job_get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Replaces a job, only if its stored lease is still `expected_lease` (compare-and-set:
    /// of two racing writers holding the same claim, one wins, the other gets `JobChanged`).
    fn job_save(&self, job: Job, expected_lease: Option<String>)
    -> BoxFuture<'_, StoreResult<Job>>;

    /// Claims the oldest queued job of `queue` due at `now`: it becomes `running` with this
    /// lease, one more attempt. `None`: nothing due.
    fn job_claim(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Running jobs whose lease ended before `now` (at most `limit`).
    fn job_expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>>;

    /// When the earliest queued job of `queue` that is not yet due becomes due.
    fn job_next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>>;

    /// The feed of committed messages, in commit order (so in seq order per topic), for the
    /// hub's fan-out. Taken once; later calls get `None`. An engine shared by several nodes
    /// (Redis) also feeds what the other nodes commit.
    fn take_commits(&self) -> Option<CommitFeed>;

    /// Whether other nodes share this store (their commits come through the feed too).
    fn shared(&self) -> bool {
        false
    }

    /// The hub has readers of this topic now. An engine shared by several nodes that feeds
    /// only the topics asked for (sharded Pub/Sub on a Redis Cluster) starts following it and,
    /// once it does, feeds the topic's newest message again, so a commit made meanwhile
    /// reaches the readers. Engines that feed every commit ignore it.
    fn follow(&self, _topic: &Topic) {}

    /// The hub has no readers of this topic any more.
    fn unfollow(&self, _topic: &Topic) {}
}

/// Every committed message, in commit order, one batch per commit. An empty batch means
/// commits may have been missed (a shared engine's subscription to other nodes' commits
/// reconnected): the hub then checks the heads of the topics it has readers for.
pub type CommitFeed = tokio::sync::mpsc::UnboundedReceiver<Vec<Arc<Message>>>;

/// The sending side of a [`CommitFeed`], kept by an engine until the hub takes the receiver.
pub(crate) struct FeedSlot {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
    rx: std::sync::Mutex<Option<CommitFeed>>,
}

impl FeedSlot {
    pub(crate) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        FeedSlot {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn sender(&self) -> tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>> {
        self.tx.clone()
    }

    /// Publishes a commit; nobody listening (no hub yet, or a bench) is fine.
    pub(crate) fn send(&self, batch: Vec<Arc<Message>>) {
        if !batch.is_empty() {
            let _ = self.tx.send(batch);
        }
    }

    pub(crate) fn take(&self) -> Option<CommitFeed> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
