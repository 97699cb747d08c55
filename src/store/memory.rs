//! The `memory` engine: the whole log in a map, for tests and ephemeral hubs.
//! Retention is applied on every touch of a topic, so it is never later than the next access.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::consumers::{ConsumerStore, StoredConsumer};
use super::follow::{CommitFeed, FeedSlot, Follow};
use super::jobs::{JobEvents, JobStore};
use super::log::{BoxFuture, IDEMPOTENCY_TTL, Log, MAX_TOPICS_TOTAL, ReadBatch, Retention};
use crate::model::{
    Appended, Fingerprint, Job, JobId, JobState, LogBounds, Message, Millis, NewMessage, Seq,
    StoreError, StoreResult, Topic, TopicInfo, fingerprint, now_millis,
};

#[derive(Default)]
struct TopicLog {
    messages: VecDeque<Arc<Message>>,
    head: Seq,
    deleted_through: Seq,
    bytes: u64,
    last_time: Millis,
}

impl TopicLog {
    fn bounds(&self) -> LogBounds {
        LogBounds {
            first_seq: self.messages.front().map_or(self.head + 1, |m| m.seq),
            last_seq: self.head,
            deleted_through: self.deleted_through,
        }
    }

    fn trim(&mut self, retention: Retention, now: Millis) {
        let oldest_kept = now - retention.max_age.as_millis() as Millis;
        while let Some(front) = self.messages.front() {
            if (self.messages.len() as u64) > retention.max_messages || front.time < oldest_kept {
                self.bytes -= front.data.len() as u64;
                self.messages.pop_front();
            } else {
                break;
            }
        }
    }
}

struct IdemEntry {
    fingerprint: Fingerprint,
    appended: Appended,
}

#[derive(Default)]
struct State {
    topics: HashMap<Topic, TopicLog>,
    idempotency: HashMap<(Topic, String), IdemEntry>,
    /// Keys in insertion order, to expire them from the front.
    idem_order: VecDeque<(Millis, Topic, String)>,
    jobs: HashMap<JobId, Job>,
    /// Job idempotency keys per queue: the payload's fingerprint and the job.
    job_keys: HashMap<(Topic, String), (Fingerprint, JobId)>,
    /// Consumer records by name: version and body.
    consumers: std::collections::BTreeMap<String, (u64, Vec<u8>)>,
}

/// The `memory` engine. A std mutex guards the state: every operation is short and never
/// awaits while holding it.
pub struct MemoryLog {
    state: Mutex<State>,
    retention: Retention,
    feed: FeedSlot,
    /// `limits.max_topics_total`: the topic map's length is the count.
    max_topics: AtomicU64,
}

impl MemoryLog {
    pub fn new(retention: Retention) -> Self {
        MemoryLog {
            state: Mutex::new(State::default()),
            retention,
            feed: FeedSlot::new(),
            max_topics: AtomicU64::new(MAX_TOPICS_TOTAL),
        }
    }

    /// Refuses a batch that would create topics beyond the cap (checked before any write).
    fn admit(&self, state: &State, batch: &[NewMessage]) -> StoreResult<()> {
        let limit = self.max_topics.load(Ordering::Relaxed);
        let mut new: Vec<&Topic> = Vec::new();
        for m in batch {
            if !state.topics.contains_key(&m.topic) && !new.contains(&&m.topic) {
                new.push(&m.topic);
            }
        }
        if !new.is_empty() && state.topics.len() as u64 + new.len() as u64 > limit {
            return Err(StoreError::TooManyTopics { limit });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the log half-written (appends check
        // before they write), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch<'a>(&self, state: &'a mut State, topic: &Topic) -> Option<&'a mut TopicLog> {
        let log = state.topics.get_mut(topic)?;
        log.trim(self.retention, now_millis());
        Some(log)
    }

    fn append_now(&self, batch: Vec<NewMessage>) -> StoreResult<Vec<Appended>> {
        let started = std::time::Instant::now();
        let result = self.append_locked(batch);
        metrics::histogram!("plexus_store_commit_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    fn append_locked(&self, batch: Vec<NewMessage>) -> StoreResult<Vec<Appended>> {
        let mut state = self.lock();
        self.append_in(&mut state, batch)
    }

    /// Appends under the caller's lock, so a job write and its events are one commit.
    fn append_in(&self, state: &mut State, batch: Vec<NewMessage>) -> StoreResult<Vec<Appended>> {
        let now = now_millis();
        while let Some((expires, _, _)) = state.idem_order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, topic, key)) = state.idem_order.pop_front() {
                state.idempotency.remove(&(topic, key));
            }
        }
        // Check every key first, so a conflict stores nothing.
        let mut in_batch: HashMap<(Topic, String), Fingerprint> = HashMap::new();
        for msg in &batch {
            if let Some(key) = &msg.idempotency_key {
                let id = (msg.topic.clone(), key.clone());
                let known = state
                    .idempotency
                    .get(&id)
                    .map(|e| e.fingerprint)
                    .or_else(|| in_batch.get(&id).copied());
                match known {
                    Some(fp) if fp != msg.fingerprint() => {
                        return Err(StoreError::IdempotencyConflict {
                            topic: msg.topic.clone(),
                            key: key.clone(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        in_batch.insert(id, msg.fingerprint());
                    }
                }
            }
        }
        self.admit(state, &batch)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut committed = Vec::with_capacity(batch.len());
        for msg in batch {
            if let Some(key) = &msg.idempotency_key
                && let Some(entry) = state.idempotency.get(&(msg.topic.clone(), key.clone()))
            {
                results.push(Appended {
                    replayed: true,
                    ..entry.appended
                });
                continue;
            }
            let fingerprint = msg.fingerprint();
            let log = state.topics.entry(msg.topic.clone()).or_default();
            log.head += 1;
            log.last_time = log.last_time.max(now);
            let appended = Appended {
                seq: log.head,
                time: log.last_time,
                replayed: false,
            };
            log.bytes += msg.data.len() as u64;
            let stored = Arc::new(Message {
                topic: msg.topic.clone(),
                seq: appended.seq,
                time: appended.time,
                event: msg.event,
                data: msg.data,
            });
            committed.push(stored.clone());
            log.messages.push_back(stored);
            log.trim(self.retention, now);
            if let Some(key) = msg.idempotency_key {
                let expires = now + IDEMPOTENCY_TTL.as_millis() as Millis;
                state
                    .idem_order
                    .push_back((expires, msg.topic.clone(), key.clone()));
                state.idempotency.insert(
                    (msg.topic, key),
                    IdemEntry {
                        fingerprint,
                        appended,
                    },
                );
            }
            results.push(appended);
        }
        metrics::histogram!("plexus_store_commit_ops").record(committed.len() as f64);
        // Sent under the lock, so the feed sees commits in seq order.
        self.feed.send(committed);
        Ok(results)
    }
}

impl Log for MemoryLog {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, StoreResult<Vec<Appended>>> {
        let result = self.append_now(batch);
        Box::pin(async move { result })
    }

    fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, StoreResult<ReadBatch>> {
        let mut state = self.lock();
        let batch = match self.touch(&mut state, topic) {
            None => ReadBatch::default(),
            Some(log) => {
                let bounds = log.bounds();
                let start = after.saturating_add(1).max(bounds.first_seq);
                let skip = (start - bounds.first_seq) as usize;
                let mut bytes = 0usize;
                let messages = log
                    .messages
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .enumerate()
                    .take_while(|(i, m)| {
                        bytes += m.data.len();
                        *i == 0 || bytes <= max_bytes
                    })
                    .map(|(_, m)| m)
                    .cloned()
                    .collect();
                ReadBatch {
                    messages,
                    bounds: Some(bounds),
                }
            }
        };
        Box::pin(async move { Ok(batch) })
    }

    fn bounds(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<LogBounds>>> {
        let mut state = self.lock();
        let bounds = self.touch(&mut state, topic).map(|log| log.bounds());
        Box::pin(async move { Ok(bounds) })
    }

    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>> {
        let mut state = self.lock();
        let seq = match self.touch(&mut state, topic) {
            None => 0,
            Some(log) => {
                let idx = log.messages.partition_point(|m| m.time < time);
                log.messages.get(idx).map_or(log.head, |m| m.seq - 1)
            }
        };
        Box::pin(async move { Ok(seq) })
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        let mut state = self.lock();
        let now = now_millis();
        let mut infos: Vec<TopicInfo> = state
            .topics
            .iter_mut()
            .map(|(topic, log)| {
                log.trim(self.retention, now);
                info(topic, log)
            })
            .collect();
        infos.sort_by(|a, b| a.topic.cmp(&b.topic));
        Box::pin(async move { Ok(infos) })
    }

    fn topics_page(
        &self,
        after: Option<Topic>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        let mut state = self.lock();
        let now = now_millis();
        let mut names: Vec<Topic> = state
            .topics
            .keys()
            .filter(|t| after.as_ref().is_none_or(|a| *t > a))
            .cloned()
            .collect();
        names.sort();
        names.truncate(limit);
        let infos: Vec<TopicInfo> = names
            .iter()
            .filter_map(|topic| {
                let log = state.topics.get_mut(topic)?;
                log.trim(self.retention, now);
                Some(info(topic, log))
            })
            .collect();
        Box::pin(async move { Ok(infos) })
    }

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>> {
        let mut state = self.lock();
        let found = self.touch(&mut state, topic).map(|log| info(topic, log));
        Box::pin(async move { Ok(found) })
    }

    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>> {
        let mut state = self.lock();
        let found = match state.topics.get_mut(topic) {
            None => false,
            Some(log) => {
                log.messages.clear();
                log.bytes = 0;
                log.deleted_through = log.head;
                true
            }
        };
        Box::pin(async move { Ok(found) })
    }

    fn limit_topics(&self, max: u64) {
        self.max_topics.store(max, Ordering::Relaxed);
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Follow for MemoryLog {
    fn take_commits(&self) -> Option<CommitFeed> {
        self.feed.take()
    }
}

impl JobStore for MemoryLog {
    fn create_announced(
        &self,
        job: Job,
        idempotency_key: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        let mut state = self.lock();
        let result = (|| {
            let fp = fingerprint(&[&job.payload]);
            let batch = events(&job);
            if let Some(key) = &idempotency_key
                && let Some((known, id)) = state.job_keys.get(&(job.queue.clone(), key.clone()))
            {
                if *known != fp {
                    return Err(StoreError::IdempotencyConflict {
                        topic: job.queue.clone(),
                        key: key.clone(),
                    });
                }
                if let Some(first) = state.jobs.get(id) {
                    return Ok((first.clone(), true));
                }
            }
            // Refused before anything of the job is kept.
            self.admit(&state, &batch)?;
            if let Some(key) = &idempotency_key {
                state
                    .job_keys
                    .insert((job.queue.clone(), key.clone()), (fp, job.id.clone()));
            }
            state.jobs.insert(job.id.clone(), job.clone());
            self.append_in(&mut state, batch)?;
            Ok((job, false))
        })();
        Box::pin(async move { result })
    }

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let job = self.lock().jobs.get(id).cloned();
        Box::pin(async move { Ok(job) })
    }

    fn save_announced(
        &self,
        job: Job,
        expected_lease: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Job>> {
        let mut state = self.lock();
        let result = match state.jobs.get_mut(&job.id) {
            None => Err(StoreError::UnknownJob(job.id.clone())),
            Some(stored) if stored.lease != expected_lease => {
                Err(StoreError::JobChanged(job.id.clone()))
            }
            Some(_) => {
                let batch = events(&job);
                match self.admit(&state, &batch) {
                    Ok(()) => {
                        state.jobs.insert(job.id.clone(), job.clone());
                        self.append_in(&mut state, batch).map(|_| job)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        Box::pin(async move { result })
    }

    fn claim_announced(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let mut state = self.lock();
        let next = state
            .jobs
            .values()
            .filter(|j| {
                j.queue == *queue
                    && j.state == JobState::Queued
                    && j.run_at.is_none_or(|t| t <= now)
            })
            .min_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)))
            .map(|j| j.id.clone());
        let claimed = next.and_then(|id| state.jobs.get(&id)).map(|job| {
            let mut job = job.clone();
            job.claim(now, lease, lease_ms);
            job
        });
        let result = match claimed {
            Some(job) => {
                let batch = events(&job);
                match self.admit(&state, &batch) {
                    Ok(()) => {
                        state.jobs.insert(job.id.clone(), job.clone());
                        self.append_in(&mut state, batch).map(|_| Some(job))
                    }
                    Err(e) => Err(e),
                }
            }
            None => Ok(None),
        };
        Box::pin(async move { result })
    }

    fn purge_finished(&self, before: Millis, limit: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let mut state = self.lock();
        let gone: Vec<JobId> = state
            .jobs
            .values()
            .filter(|j| j.state.is_final() && j.updated < before)
            .take(limit)
            .map(|j| j.id.clone())
            .collect();
        for id in &gone {
            state.jobs.remove(id);
            state.topics.remove(&id.topic());
        }
        state.job_keys.retain(|_, (_, id)| !gone.contains(id));
        let purged = gone.len();
        Box::pin(async move { Ok(purged) })
    }

    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>> {
        let expired = self
            .lock()
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.lease_until.is_some_and(|t| t < now))
            .take(limit)
            .cloned()
            .collect();
        Box::pin(async move { Ok(expired) })
    }

    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>> {
        let next = self
            .lock()
            .jobs
            .values()
            .filter(|j| j.queue == *queue && j.state == JobState::Queued)
            .filter_map(|j| j.run_at)
            .min();
        Box::pin(async move { Ok(next) })
    }
}

fn info(topic: &Topic, log: &TopicLog) -> TopicInfo {
    let bounds = log.bounds();
    TopicInfo {
        topic: topic.clone(),
        first_seq: bounds.first_seq,
        last_seq: bounds.last_seq,
        messages: log.messages.len() as u64,
        bytes: log.bytes,
        last_publish: (log.head > 0).then_some(log.last_time),
    }
}

impl ConsumerStore for MemoryLog {
    fn consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<Option<StoredConsumer>>> {
        let found = self
            .lock()
            .consumers
            .get(name)
            .map(|(version, body)| StoredConsumer {
                name: name.to_string(),
                version: *version,
                body: body.clone(),
            });
        Box::pin(async move { Ok(found) })
    }

    fn put_consumer(
        &self,
        name: &str,
        expected: u64,
        body: Vec<u8>,
        events: Vec<NewMessage>,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>> {
        // The record and its dead letters under one lock: one commit.
        let result = (|| {
            let mut state = self.lock();
            let stored = state.consumers.get(name).map_or(0, |(v, _)| *v);
            if stored != expected {
                return Ok(None);
            }
            if !events.is_empty() {
                self.append_in(&mut state, events)?;
            }
            state
                .consumers
                .insert(name.to_string(), (expected + 1, body));
            Ok(Some(expected + 1))
        })();
        Box::pin(async move { result })
    }

    fn delete_consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let found = self.lock().consumers.remove(name).is_some();
        Box::pin(async move { Ok(found) })
    }

    fn consumers(&self) -> BoxFuture<'_, StoreResult<Vec<StoredConsumer>>> {
        let all = self
            .lock()
            .consumers
            .iter()
            .map(|(name, (version, body))| StoredConsumer {
                name: name.clone(),
                version: *version,
                body: body.clone(),
            })
            .collect();
        Box::pin(async move { Ok(all) })
    }
}
