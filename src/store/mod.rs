//! The durable store, by concept: the message log ([`Log`]), the job store ([`JobStore`]) and
//! how the hub follows commits ([`Follow`]). Each engine implements what it offers; an opened
//! engine is an [`Engine`] holding one handle per trait. Nothing above this module knows which
//! engine it talks to.
//!
//! The traits speak only domain types (no SQL, no Redis types): `memory`, `sqlite` (a folder:
//! schema and migrations, the writer, reads, jobs, retention) and `redis` (a folder: Streams
//! for the log, a Lua script per write, Pub/Sub to feed every node) all fit behind them.
//!
//! Within this folder the files point one way: `log`, `jobs` and `follow` at the bottom, the
//! engines over them, `engine` on top; this file only declares and re-exports.

mod consumers;
mod engine;
mod follow;
mod jobs;
mod log;
mod memory;
mod redis;
mod sqlite;

#[cfg(test)]
mod conformance;

pub use consumers::{ConsumerStore, StoredConsumer};
pub use engine::Engine;
pub use follow::{CommitFeed, Follow};
pub use jobs::{JobEvents, JobStore};
pub use log::{BoxFuture, IDEMPOTENCY_TTL, Log, ReadBatch, Retention};
pub use memory::MemoryLog;
pub use redis::{RedisLog, RedisTarget, Replication};
pub use sqlite::{Durability, SqliteLog};

// The store's receipts and errors are domain types; named here too for the layers that
// reach them through the store.
pub use crate::model::{Appended, LogBounds, StoreError, StoreResult, TopicInfo};
