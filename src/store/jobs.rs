//! The job store: jobs kept durable, every change guarded by a compare-and-set. The rules
//! (leases, retries, backoff) live in `crate::jobs`; an engine only keeps and moves jobs.

use super::log::BoxFuture;
use crate::model::{Job, JobId, Millis, NewMessage, StoreResult, Topic};

/// The messages a job write commits with it, made from the job as written (its state's event
/// on `_jobs.{id}`, and on `_queues.{queue}` when it is queued): the job and its events are
/// one commit, so a follower never sees a state without its event, nor an event of a state
/// that was not kept. An engine may call it more than once (a claim that loses a race to
/// another node tries the next job) and commits what the written job's call made.
pub type JobEvents = Box<dyn Fn(&Job) -> Vec<NewMessage> + Send + Sync>;

fn no_events() -> JobEvents {
    Box::new(|_| Vec::new())
}

pub trait JobStore: Send + Sync + 'static {
    /// Stores a new job. With an idempotency key (scoped to the queue) already used with the
    /// same payload, returns the first job and `true`; with another payload, a conflict.
    fn create(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        self.create_announced(job, idempotency_key, no_events())
    }

    /// [`create`](Self::create), committing `events` of the new job with it (none on a replay).
    fn create_announced(
        &self,
        job: Job,
        idempotency_key: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>>;

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Replaces a job, only if its stored lease is still `expected_lease` (compare-and-set:
    /// of two racing writers holding the same claim, one wins, the other gets `JobChanged`).
    fn save(&self, job: Job, expected_lease: Option<String>) -> BoxFuture<'_, StoreResult<Job>> {
        self.save_announced(job, expected_lease, no_events())
    }

    /// [`save`](Self::save), committing `events` of the saved job with it.
    fn save_announced(
        &self,
        job: Job,
        expected_lease: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Job>>;

    /// Claims the oldest queued job of `queue` due at `now`: it becomes `running` with this
    /// lease, one more attempt. `None`: nothing due.
    fn claim(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        self.claim_announced(queue, now, lease, lease_ms, no_events())
    }

    /// [`claim`](Self::claim), committing `events` of the claimed job with it.
    fn claim_announced(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>>;

    /// Running jobs whose lease ended before `now` (at most `limit`).
    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>>;

    /// When the earliest queued job of `queue` that is not yet due becomes due.
    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>>;

    /// Deletes up to `limit` finished jobs (`succeeded`, `dead`) last changed before `before`,
    /// each with its `_jobs.{id}` topic; how many went. An engine without it keeps them (0).
    fn purge_finished(&self, _before: Millis, _limit: usize) -> BoxFuture<'_, StoreResult<usize>> {
        Box::pin(async { Ok(0) })
    }
}
