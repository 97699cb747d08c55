//! Jobs: long requests answered asynchronously. Submit, claim with a lease, heartbeat,
//! progress, complete or fail; retries with exponential backoff, then `dead`.
//!
//! The rules live here; the store keeps jobs durable and guards every change with a
//! compare-and-set on the lease token, so of two holders of the same claim only one can finish
//! it. Every state change and progress report is published on topic `_jobs.{id}`, which is
//! also what status long polls wait on.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hub::{Hub, HubError, ReadRequest};
use crate::model::StoreError;
use crate::model::{
    Cursor, EventName, Job, JobId, JobState, Millis, NewMessage, Since, Topic, TopicList,
    now_millis,
};
use crate::store::JobStore;
use crate::wire::job::job_json;

/// Longest retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often expired leases are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often finished jobs past their retention are looked for, and how many go per commit.
const PURGE_EVERY: Duration = Duration::from_secs(5);
const PURGE_BATCH: usize = 500;

#[derive(Clone, Debug)]
pub struct JobsOptions {
    pub max_attempts: u32,
    /// The first retry's delay; it doubles with each attempt, up to 5 minutes.
    pub backoff: Duration,
    pub default_lease: Duration,
    /// How long a finished job and its `_jobs.{id}` topic are kept after it finished.
    pub retention: Duration,
}

impl Default for JobsOptions {
    fn default() -> Self {
        JobsOptions {
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            default_lease: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 86_400),
        }
    }
}

#[derive(Debug)]
pub enum JobError {
    Hub(HubError),
    UnknownJob(JobId),
    /// The lease ran out or was replaced by a newer claim.
    StaleLease(JobId),
    /// A retry of a job that is not `dead` (its state).
    NotDead(JobId, JobState),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Hub(e) => e.fmt(f),
            JobError::UnknownJob(id) => write!(f, "no job {id}"),
            JobError::StaleLease(id) => write!(
                f,
                "this lease of job {id} ran out or was replaced by a newer claim"
            ),
            JobError::NotDead(id, state) => write!(
                f,
                "job {id} is {}: only a dead job can be retried",
                state.as_str()
            ),
        }
    }
}

impl std::error::Error for JobError {}

impl From<HubError> for JobError {
    fn from(e: HubError) -> Self {
        JobError::Hub(e)
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::JobChanged(id) => JobError::StaleLease(id),
            StoreError::UnknownJob(id) => JobError::UnknownJob(id),
            other => JobError::Hub(HubError::Store(other)),
        }
    }
}

pub struct Jobs {
    hub: Arc<Hub>,
    /// Where jobs are kept; their events go through the hub.
    store: Arc<dyn JobStore>,
    options: JobsOptions,
    // A std mutex: held only to find, make or drop a queue's notifier, never across an await.
    queues: Mutex<HashMap<Topic, QueueWaiters>>,
    random: SystemRandom,
}

impl Jobs {
    /// Starts the jobs service and its lease sweeper (inside a tokio runtime).
    pub fn new(hub: Arc<Hub>, store: Arc<dyn JobStore>, options: JobsOptions) -> Arc<Self> {
        let jobs = Arc::new(Jobs {
            hub,
            store,
            options,
            queues: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
        });
        tokio::spawn(sweep(Arc::downgrade(&jobs)));
        jobs
    }

    pub fn options(&self) -> &JobsOptions {
        &self.options
    }

    fn random_hex(&self) -> Result<[u8; 16], JobError> {
        let mut bytes = [0u8; 16];
        self.random.fill(&mut bytes).map_err(|_| {
            JobError::Hub(HubError::Store(StoreError::Unavailable(
                "no randomness for an id".into(),
            )))
        })?;
        Ok(bytes)
    }

    /// The queue's notifier, made if missing, held by the returned guard: while any guard of
    /// a queue lives its notifier stays, and the last one dropped removes it (with its relay),
    /// so queue names claimed once cost nothing afterwards.
    fn waiting_on(&self, queue: &Topic) -> Waiting<'_> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let entry = queues.entry(queue.clone()).or_insert_with(|| {
            let notify = Arc::new(Notify::new());
            // On a store other nodes share, a job queued through another node reaches
            // this one as a commit of the queue's topic: each wakes one claimer here, as a
            // local submit does. (A local submit then wakes two: one looks, finds nothing,
            // waits again; so a store of this node alone does without.)
            let topic = queue_topic(queue).filter(|_| self.hub.shared_store());
            let relay = topic.map(|topic| {
                let mut head = self.hub.head_watch(&topic);
                let relay = Arc::downgrade(&notify);
                tokio::spawn(async move {
                    while head.changed().await.is_ok() {
                        match relay.upgrade() {
                            Some(notify) => notify.notify_one(),
                            None => return,
                        }
                    }
                })
                .abort_handle()
            });
            QueueWaiters {
                notify,
                relay,
                waiters: 0,
            }
        });
        entry.waiters += 1;
        Waiting {
            jobs: self,
            queue: queue.clone(),
            notify: entry.notify.clone(),
        }
    }

    /// Wakes one claimer of the queue, if any waits here. Nobody waiting: nothing to wake, as
    /// a claimer looks in the store after it starts waiting, so it finds the job itself.
    fn wake_one(&self, queue: &Topic) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = queues.get(queue) {
            entry.notify.notify_one();
        }
    }

    /// How many queues have a notifier now (claimers waiting on them).
    #[cfg(test)]
    fn notifiers(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Publishes a state change (event = the state) or progress on `_jobs.{id}`.
    async fn announce(&self, job: &Job, event: &str, data: Bytes) -> Result<(), JobError> {
        let event = event.parse::<EventName>().ok();
        self.hub
            .publish_internal(vec![NewMessage {
                topic: job.id.topic(),
                event,
                data,
                idempotency_key: None,
            }])
            .await?;
        Ok(())
    }

    /// A job's state change, counted once it is committed.
    fn count_transition(job: &Job) {
        metrics::counter!("plexus_job_transitions_total", "state" => job.state.as_str())
            .increment(1);
    }

    /// Submits a job. With an idempotency key already used with this payload, the first job
    /// and `true`.
    pub async fn submit(
        &self,
        queue: Topic,
        payload: Bytes,
        max_attempts: Option<u32>,
        idempotency_key: Option<String>,
    ) -> Result<(Job, bool), JobError> {
        let now = now_millis();
        let job = Job {
            id: JobId::from_random(self.random_hex()?),
            queue: queue.clone(),
            state: JobState::Queued,
            attempts: 0,
            max_attempts: max_attempts.unwrap_or(self.options.max_attempts),
            created: now,
            updated: now,
            payload,
            result: None,
            error: None,
            run_at: None,
            lease: None,
            lease_until: None,
            lease_ms: None,
        };
        let (job, replayed) = self
            .store
            .create_announced(job, idempotency_key, Box::new(state_events))
            .await?;
        if !replayed {
            Self::count_transition(&job);
            self.wake_one(&queue);
        }
        Ok((job, replayed))
    }

    pub async fn get(&self, id: &JobId) -> Result<Job, JobError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| JobError::UnknownJob(id.clone()))
    }

    /// The job once something happens to it (a state change or progress), or at the timeout.
    pub async fn wait_change(&self, id: &JobId, wait: Duration) -> Result<Job, JobError> {
        let topic = id.topic();
        let head = self.hub.last_seq(&topic).await?;
        let job = self.get(id).await?;
        if wait.is_zero() || job.state.is_final() {
            return Ok(job);
        }
        self.hub
            .read(ReadRequest {
                topics: TopicList::one(topic),
                since: Since::Cursor(Cursor::Single(head)),
                default_since: Since::All,
                limit: 1,
                wait,
            })
            .await?;
        self.get(id).await
    }

    /// The job once it is `succeeded` or `dead`, or as it is at the timeout.
    pub async fn wait_final(&self, id: &JobId, wait: Duration) -> Result<Job, JobError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let job = self.wait_change(id, left).await?;
            if job.state.is_final() || left.is_zero() {
                return Ok(job);
            }
        }
    }

    /// Claims the oldest due job of `queue`, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        queue: &Topic,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Job>, JobError> {
        let deadline = Instant::now() + wait;
        let waiting = self.waiting_on(queue);
        // Whether a delayed job was seen: one we then leave without may be due before the
        // other waiters' deadlines, and only we knew when.
        let mut delayed_seen = false;
        loop {
            let notified = waiting.notify.notified();
            tokio::pin!(notified);
            // Waiting from here on: a job queued after this point wakes us, one queued before
            // it is found by the claim below. Nothing else wakes a claimer, so an idle one
            // costs no store work at all.
            notified.as_mut().enable();
            let token = JobId::from_random(self.random_hex()?).to_string();
            let now = now_millis();
            let lease_ms = lease.as_millis() as u64;
            let claimed =
                self.store
                    .claim_announced(queue, now, token, lease_ms, Box::new(state_events));
            if let Some(job) = claimed.await? {
                Self::count_transition(&job);
                return Ok(Some(job));
            }
            if Instant::now() >= deadline || self.hub.shutdown_token().is_cancelled() {
                if delayed_seen {
                    // Passed on: the next waiter looks up the due time itself.
                    waiting.notify.notify_one();
                }
                return Ok(None);
            }
            // One claimer is woken per new job (no herd); a woken claimer that goes away
            // passes its wake-up on to the next (tokio's `Notified` does on drop). A delayed
            // job (a retry's backoff) is announced when it is queued, so the claimer it wakes
            // learns its `run_at` here and sleeps until then. An expired lease is put back by
            // the sweeper, which wakes a claimer like a submit.
            let mut wake = deadline;
            if let Some(due) = self.store.next_due(queue).await? {
                delayed_seen = true;
                let in_ms = (due - now_millis()).max(0) as u64;
                wake = wake.min(Instant::now() + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.hub.shutdown_token().cancelled() => {}
            }
        }
    }

    /// The job, if `token` is its current, unexpired lease.
    async fn held(&self, id: &JobId, token: &str) -> Result<Job, JobError> {
        let job = self.get(id).await?;
        let current = job.state == JobState::Running
            && job.lease.as_deref() == Some(token)
            && job.lease_until.is_some_and(|t| t >= now_millis());
        if current {
            Ok(job)
        } else {
            Err(JobError::StaleLease(id.clone()))
        }
    }

    pub async fn heartbeat(&self, id: &JobId, token: &str) -> Result<Job, JobError> {
        let mut job = self.held(id, token).await?;
        let now = now_millis();
        let length = job
            .lease_ms
            .unwrap_or(self.options.default_lease.as_millis() as u64);
        job.lease_until = Some(now + length as Millis);
        job.updated = now;
        Ok(self.store.save(job, Some(token.to_owned())).await?)
    }

    pub async fn progress(&self, id: &JobId, token: &str, body: Bytes) -> Result<Job, JobError> {
        let job = self.held(id, token).await?;
        self.announce(&job, "progress", body).await?;
        Ok(job)
    }

    pub async fn complete(&self, id: &JobId, token: &str, result: Bytes) -> Result<Job, JobError> {
        let mut job = self.held(id, token).await?;
        job.state = JobState::Succeeded;
        job.result = Some(result);
        job.error = None;
        job.updated = now_millis();
        job.lease = None;
        job.lease_until = None;
        let job = self
            .store
            .save_announced(job, Some(token.to_owned()), Box::new(state_events))
            .await?;
        Self::count_transition(&job);
        Ok(job)
    }

    /// A dead job back to its queue (an operator's retry): `queued` at once, its attempts
    /// counted afresh, its last error kept until it runs again. The save expects no lease, as a
    /// dead job has none, so two retries at once queue it once.
    pub async fn retry(&self, id: &JobId) -> Result<Job, JobError> {
        let mut job = self.get(id).await?;
        if job.state != JobState::Dead {
            return Err(JobError::NotDead(job.id, job.state));
        }
        job.state = JobState::Queued;
        job.attempts = 0;
        job.run_at = None;
        job.updated = now_millis();
        let job = self
            .store
            .save_announced(job, None, Box::new(state_events))
            .await?;
        Self::count_transition(&job);
        self.wake_one(&job.queue);
        Ok(job)
    }

    pub async fn fail(&self, id: &JobId, token: &str, error: String) -> Result<Job, JobError> {
        let job = self.held(id, token).await?;
        self.give_back(job, error).await
    }

    /// A failed or abandoned attempt: back to the queue after a backoff, or `dead` once the
    /// attempts are used up.
    async fn give_back(&self, mut job: Job, error: String) -> Result<Job, JobError> {
        let expected = job.lease.clone();
        let now = now_millis();
        job.error = Some(error);
        job.updated = now;
        job.lease = None;
        job.lease_until = None;
        if job.attempts >= job.max_attempts {
            job.state = JobState::Dead;
            job.run_at = None;
        } else {
            job.state = JobState::Queued;
            let doublings = job.attempts.saturating_sub(1).min(20);
            let delay = self
                .options
                .backoff
                .saturating_mul(1 << doublings)
                .min(MAX_BACKOFF);
            job.run_at = Some(now + delay.as_millis() as Millis);
        }
        let job = self
            .store
            .save_announced(job, expected, Box::new(state_events))
            .await?;
        Self::count_transition(&job);
        if job.state == JobState::Queued {
            self.wake_one(&job.queue);
        }
        Ok(job)
    }

    /// Puts back the jobs whose lease ran out: at-least-once delivery.
    async fn expire_leases(&self) -> Result<(), JobError> {
        let expired = self.store.expired(now_millis(), 100).await?;
        for mut job in expired {
            let expected = job.lease.clone();
            job.updated = now_millis();
            job.lease = None;
            job.lease_until = None;
            job.error = Some("the lease ran out".into());
            if job.attempts >= job.max_attempts {
                job.state = JobState::Dead;
            } else {
                // Back at once: the worker vanished, the job did not fail.
                job.state = JobState::Queued;
                job.run_at = None;
            }
            match self
                .store
                .save_announced(job, expected, Box::new(state_events))
                .await
            {
                Ok(job) => {
                    Self::count_transition(&job);
                    self.wake_one(&job.queue);
                }
                // Completed or heartbeated meanwhile: the worker was alive after all.
                Err(StoreError::JobChanged(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A queue's notifier and who holds it.
struct QueueWaiters {
    notify: Arc<Notify>,
    /// On a shared store: the task relaying the queue topic's commits to `notify`.
    relay: Option<tokio::task::AbortHandle>,
    /// Claims holding a [`Waiting`] of this queue.
    waiters: usize,
}

/// A claim's hold on its queue's notifier; the last one dropped removes the notifier.
struct Waiting<'a> {
    jobs: &'a Jobs,
    queue: Topic,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut queues = self.jobs.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = queues.get_mut(&self.queue) else {
            return;
        };
        entry.waiters = entry.waiters.saturating_sub(1);
        if entry.waiters == 0
            && let Some(entry) = queues.remove(&self.queue)
            && let Some(relay) = entry.relay
        {
            relay.abort();
        }
    }
}

async fn sweep(jobs: Weak<Jobs>) {
    let mut next_purge = Instant::now();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(jobs) = jobs.upgrade() else {
            return;
        };
        if jobs.hub.shutdown_token().is_cancelled() {
            return;
        }
        if let Err(e) = jobs.expire_leases().await {
            tracing::warn!(error = %e, "lease sweep failed; will retry");
        }
        if Instant::now() >= next_purge {
            // Finished jobs past `jobs.retention` go with their topics, a bounded batch per
            // commit; a full batch means more are due, so the next sweep goes on at once.
            let before = now_millis() - jobs.options.retention.as_millis() as Millis;
            match jobs.store.purge_finished(before, PURGE_BATCH).await {
                Ok(n) if n >= PURGE_BATCH => {}
                Ok(_) => next_purge = Instant::now() + PURGE_EVERY,
                Err(e) => tracing::warn!(error = %e, "job retention failed; will retry"),
            }
        }
    }
}

/// The events a job's state commits with it: the state (event = the state) on `_jobs.{id}`;
/// a job (re)queued also on `_queues.{queue}`, which claimers on every node watch.
fn state_events(job: &Job) -> Vec<NewMessage> {
    let data = Bytes::from(job_json(job, false));
    let event = job.state.as_str().parse::<EventName>().ok();
    let mut events = vec![NewMessage {
        topic: job.id.topic(),
        event: event.clone(),
        data: data.clone(),
        idempotency_key: None,
    }];
    if job.state == JobState::Queued
        && let Some(topic) = queue_topic(&job.queue)
    {
        events.push(NewMessage {
            topic,
            event,
            data,
            idempotency_key: None,
        });
    }
    events
}

/// The topic on which a queue's (re)queued jobs are announced: `_queues.{queue}` (`None` for
/// a queue name so long that the prefix would make the topic name too long).
pub fn queue_topic(queue: &Topic) -> Option<Topic> {
    format!("_queues.{queue}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubOptions;
    use crate::store::{Engine, Retention};
    use tokio_util::sync::CancellationToken;

    fn service() -> Arc<Jobs> {
        let store = Engine::memory(Retention::default());
        let hub = Hub::new(
            store.log,
            store.follow,
            HubOptions::default(),
            CancellationToken::new(),
        );
        Jobs::new(hub, store.jobs, JobsOptions::default())
    }

    /// Hardening: a notifier per queue name ever claimed was kept for good (300,000
    /// names: ~90 MiB). Each goes with its last waiting claim.
    #[tokio::test]
    async fn queue_notifiers_go_with_their_last_claimer() {
        let jobs = service();
        let lease = Duration::from_secs(30);
        for i in 0..2_000 {
            let queue: Topic = format!("q{i}").parse().unwrap();
            let claimed = jobs.claim(&queue, lease, Duration::ZERO).await.unwrap();
            assert!(claimed.is_none());
        }
        assert_eq!(jobs.notifiers(), 0, "no claim waits: no notifier is kept");

        // A waiting claim keeps its queue's notifier, and a submit meanwhile reaches it; a
        // claim given up (its client went away) releases it too.
        let queue: Topic = "busy".parse().unwrap();
        let waiter = {
            let jobs = jobs.clone();
            let queue = queue.clone();
            tokio::spawn(async move { jobs.claim(&queue, lease, Duration::from_secs(30)).await })
        };
        let idle = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let queue: Topic = "idle".parse().unwrap();
                jobs.claim(&queue, lease, Duration::from_secs(30)).await
            })
        };
        while jobs.notifiers() < 2 {
            tokio::task::yield_now().await;
        }
        let (job, _) = jobs
            .submit(queue.clone(), Bytes::from_static(b"x"), None, None)
            .await
            .unwrap();
        let claimed = waiter
            .await
            .unwrap()
            .unwrap()
            .expect("the waiting claim got the job");
        assert_eq!(claimed.id, job.id);
        assert_eq!(
            jobs.notifiers(),
            1,
            "only the idle queue's claimer still waits"
        );
        idle.abort();
        let _ = idle.await;
        assert_eq!(
            jobs.notifiers(),
            0,
            "an abandoned claim leaves nothing behind"
        );
        // A submit to a queue nobody waits on makes no notifier either.
        jobs.submit(
            "nobody".parse().unwrap(),
            Bytes::from_static(b"y"),
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(jobs.notifiers(), 0);
    }
}
