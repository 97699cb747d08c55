//! The job store: jobs kept durable, every change guarded by a compare-and-set. The rules
//! (leases, retries, backoff) live in `crate::jobs`; an engine only keeps and moves jobs.

use super::log::BoxFuture;
use crate::model::{Job, JobId, Millis, StoreResult, Topic};

pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job. With an idempotency key (scoped to the queue) already used with the
    /// same payload, returns the first job and `true`; with another payload, a conflict.
    fn create(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>>;

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Replaces a job, only if its stored lease is still `expected_lease` (compare-and-set:
    /// of two racing writers holding the same claim, one wins, the other gets `JobChanged`).
    fn save(&self, job: Job, expected_lease: Option<String>) -> BoxFuture<'_, StoreResult<Job>>;

    /// Claims the oldest queued job of `queue` due at `now`: it becomes `running` with this
    /// lease, one more attempt. `None`: nothing due.
    fn claim(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Running jobs whose lease ended before `now` (at most `limit`).
    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>>;

    /// When the earliest queued job of `queue` that is not yet due becomes due.
    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>>;
}
