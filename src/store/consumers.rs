//! The consumer store: each durable consumer kept as one opaque record with a version, every
//! write a compare-and-set on that version. The rules (positions, leases, acks, dead letters)
//! live in `crate::consumers`; an engine only keeps records, so two nodes that race on one
//! consumer cannot both win: the loser reloads and decides again.

use super::log::BoxFuture;
use crate::model::{NewMessage, StoreResult};

/// A consumer's record as stored: its name, its version (1 after the first write) and the
/// bytes the consumer layer wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredConsumer {
    pub name: String,
    pub version: u64,
    pub body: Vec<u8>,
}

pub trait ConsumerStore: Send + Sync + 'static {
    fn consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<Option<StoredConsumer>>>;

    /// Writes `body` under `name` if the stored version is `expected` (0: no record), and
    /// appends `events` (dead letters) with it — in the same commit where the engine can.
    /// `Some(version)`: written; `None`: another writer changed it first, nothing written.
    /// On a store only one node writes (sqlite, memory) the write is queued by the call itself,
    /// before the future is polled, and a written version is `expected + 1`: a caller may queue
    /// the next write over `expected + 1` before this one commits (writes apply in call order).
    fn put_consumer(
        &self,
        name: &str,
        expected: u64,
        body: Vec<u8>,
        events: Vec<NewMessage>,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>>;

    /// `false`: no such consumer.
    fn delete_consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>>;

    /// Every consumer, in name order.
    fn consumers(&self) -> BoxFuture<'_, StoreResult<Vec<StoredConsumer>>>;
}
