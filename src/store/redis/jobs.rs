//! Jobs: a hash per job on its queue's shard, with the queue's ready, delayed and running
//! sorted sets; every write a Lua script comparing the stored lease (or version).

use std::collections::HashMap;

use bytes::Bytes;
use redis::ScriptInvocation;

use crate::model::{
    Job, JobId, JobState, Millis, NewMessage, Seq, StoreError, StoreResult, Topic, fingerprint,
};
use crate::store::jobs::JobEvents;
use crate::store::log::IDEMPOTENCY_TTL;

use super::core::{Core, unavailable};
use super::keys::*;

/// How many times a claim retries when another node took its candidate first, and how many
/// of the oldest due jobs it considers.
const CLAIM_TRIES: usize = 32;
const CLAIM_CANDIDATES: usize = 16;

impl Core {
    /// A job read from its hash, with its version; `None` when it is not there.
    pub(super) async fn load_job(
        &self,
        queue: &Topic,
        id: &JobId,
    ) -> StoreResult<Option<(Job, String)>> {
        let fields: HashMap<String, Vec<u8>> = self
            .conn
            .query(redis::cmd("HGETALL").arg(job_key(queue, id)))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_job(id, queue, &fields).map(Some)
    }

    pub(super) async fn queue_of(&self, id: &JobId) -> StoreResult<Option<Topic>> {
        let queue: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(job_queue_key(id)))
            .await
            .map_err(unavailable)?;
        Ok(queue.and_then(|q| q.parse().ok()))
    }

    /// Writes a job through `job_save.lua`, compare-and-set on `mode` (`lease`|`version`),
    /// with `events` in the same script. Returns the events that could not share the job's
    /// slot (on a cluster, a topic that is not the job's own), for the caller to append.
    pub(super) async fn save_job(
        &self,
        job: &Job,
        mode: &str,
        expected: &str,
        events: Vec<NewMessage>,
    ) -> StoreResult<Vec<NewMessage>> {
        let block = self.events_block(job, events, 6).await?;
        let mut inv = self.scripts.job_save.prepare_invoke();
        inv.key(job_key(&job.queue, &job.id));
        for k in queue_keys(&job.queue) {
            inv.key(k);
        }
        inv.key(finished_key(&job.queue));
        for k in &block.keys {
            inv.key(k);
        }
        inv.arg(mode).arg(expected);
        placement_args(&mut inv, job);
        inv.arg(job.updated).arg(block.args.len());
        for a in &block.args {
            inv.arg(a.as_slice());
        }
        encode_job(&mut inv, job);
        let key = job_key(&job.queue, &job.id);
        match self.writer(&key).invoke::<Vec<i64>>(&inv).await {
            Ok(out) => {
                self.confirm(&key).await?;
                self.commit_events(&block.inside, out.get(1..).unwrap_or_default())
                    .await?;
                Ok(block.outside)
            }
            Err(e) if e.to_string().contains("PLEXUS_CHANGED") => {
                Err(StoreError::JobChanged(job.id.clone()))
            }
            Err(e) if e.to_string().contains("PLEXUS_UNKNOWN") => {
                Err(StoreError::UnknownJob(job.id.clone()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The keys and arguments of a job script's events block (see `events.lua`), its stream
    /// keys numbered from `first_key`. On one Redis every event goes in the script; on a
    /// cluster, those whose topic shares the job's slot (`_jobs.{id}`, `_queues.{queue}`).
    async fn events_block(
        &self,
        job: &Job,
        events: Vec<NewMessage>,
        first_key: usize,
    ) -> StoreResult<EventsBlock> {
        let mut block = EventsBlock::default();
        let mut topics: Vec<(Topic, Vec<NewMessage>)> = Vec::new();
        for m in events {
            match topics.iter_mut().find(|(t, _)| *t == m.topic) {
                Some((_, msgs)) => msgs.push(m),
                None => topics.push((m.topic.clone(), vec![m])),
            }
        }
        let tag = Slot::own(&job.queue);
        let [now, max_messages, max_age] = self.retention_args();
        let mut inside = Vec::new();
        for (topic, messages) in topics {
            let slot = if topic == job.id.topic() {
                self.job_topic_slot(job).await?
            } else {
                self.slot(&topic).await?
            };
            if self.sharded && slot.tag() != tag.tag() {
                block.outside.extend(messages);
                continue;
            }
            inside.push((topic, slot, messages));
        }
        // Refused here, before the script: nothing of the job is written.
        self.admit_topics(&inside.iter().map(|(t, _, _)| t).collect::<Vec<_>>())
            .await?;
        // Under `replicated` the script shows nothing: commit.lua does, once replicas hold it.
        let publish = match (self.replication, self.sharded) {
            (Some(_), _) => "",
            (None, true) => "SPUBLISH",
            (None, false) => "PUBLISH",
        };
        let head = [
            now.to_string(),
            max_messages.to_string(),
            max_age.to_string(),
            publish.to_owned(),
            inside.len().to_string(),
        ];
        block.args.extend(head.map(String::into_bytes));
        for (topic, slot, messages) in inside {
            let channel = match self.sharded {
                true => slot.channel(),
                false => CHANNEL.to_owned(),
            };
            block.inside.push((topic.clone(), slot.clone()));
            let index = first_key + block.keys.len();
            block.keys.push(slot.stream());
            block.keys.push(slot.meta());
            for a in [
                index.to_string(),
                topic.as_str().to_owned(),
                channel,
                messages.len().to_string(),
            ] {
                block.args.push(a.into_bytes());
            }
            for m in messages {
                let event = m.event.as_ref().map_or("", |e| e.as_str());
                block.args.push(event.as_bytes().to_vec());
                block.args.push(m.data.to_vec());
            }
        }
        Ok(block)
    }

    /// Under `replicated`, after the job script's `WAIT`: shows each topic's events (the
    /// `first, last` seq pairs `events.lua` returned, in the block's order) by commit.lua.
    async fn commit_events(&self, inside: &[(Topic, Slot)], heads: &[i64]) -> StoreResult<()> {
        if self.replication.is_none() {
            return Ok(());
        }
        for ((topic, slot), pair) in inside.iter().zip(heads.chunks_exact(2)) {
            self.commit_range(topic, slot, pair[0] as Seq, pair[1] as Seq)
                .await?;
        }
        Ok(())
    }

    /// The slot of a job's own `_jobs.{id}` topic, known from the job (no lookup).
    async fn job_topic_slot(&self, job: &Job) -> StoreResult<Slot> {
        let topic = job.id.topic();
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&topic)
        {
            return Ok(slot.clone());
        }
        let slot = Slot::of_queue(&job.queue, &topic);
        self.carry_over(&topic, &slot).await?;
        self.remember_slot(&topic, slot.clone());
        Ok(slot)
    }

    /// Claims the oldest due job of `queue`, with the claimed job's `events` in its script.
    /// Returns the job and the events that could not share its slot.
    pub(super) async fn claim_job(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
        events: &JobEvents,
    ) -> StoreResult<Option<(Job, Vec<NewMessage>)>> {
        let [ready, delayed, _] = queue_keys(queue);
        for attempt in 0..CLAIM_TRIES {
            let mut inv = self.scripts.job_pick.prepare_invoke();
            inv.key(&ready).key(&delayed).arg(now).arg(CLAIM_CANDIDATES);
            let picked: Vec<String> = self.conn.invoke(&inv).await.map_err(unavailable)?;
            if picked.is_empty() {
                return Ok(None);
            }
            // The oldest first; a claimer that lost a race moves on to the next candidates,
            // so many concurrent claimers spread over the queue's head instead of all
            // fighting over one job.
            let Ok(id) = picked[attempt % picked.len()].parse::<JobId>() else {
                continue;
            };
            let loaded = self.load_job(queue, &id).await?;
            let Some((mut job, version)) = loaded else {
                // An index entry without its job: drop it.
                self.conn
                    .query::<()>(redis::cmd("ZREM").arg(&ready).arg(id.as_str()))
                    .await
                    .map_err(unavailable)?;
                continue;
            };
            if job.state != JobState::Queued {
                // Another node claimed it between our pick and our read (its save moved it
                // out of the ready set): pick again.
                continue;
            }
            if job.run_at.is_some_and(|t| t > now) {
                // Made ready by a claimer whose clock is ahead of ours: saving it unchanged
                // (no event: its state did not change) puts it back among the delayed jobs,
                // where its run_at will bring it again.
                match self.save_job(&job, "version", &version, Vec::new()).await {
                    Ok(_) | Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            job.claim(now, lease.clone(), lease_ms);
            match self.save_job(&job, "version", &version, events(&job)).await {
                Ok(outside) => return Ok(Some((job, outside))),
                // Another node claimed it first: pick again.
                Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Stores a new job by `job_create.lua`, with `events` in the same script (none on a
    /// replay; see [`JobStore::create`](crate::store::JobStore::create)). Returns the job,
    /// whether it is a replay, and the events that could not share its slot.
    pub(super) async fn create_job(
        &self,
        job: Job,
        idempotency_key: Option<String>,
        events: Vec<NewMessage>,
    ) -> StoreResult<(Job, bool, Vec<NewMessage>)> {
        let queue = job.queue.clone();
        // A new job's topic has nothing to carry over from an older release.
        self.remember_slot(&job.id.topic(), Slot::of_queue(&queue, &job.id.topic()));
        // The cap on topics is checked here, before anything of the job is written.
        let block = self.events_block(&job, events, 5).await?;
        self.remember(QUEUES, queue.as_str()).await?;
        // The id → queue index before the job: a job is never stored where `job_get` cannot
        // see it.
        self.writer(&job_queue_key(&job.id))
            .query::<()>(
                redis::cmd("SET")
                    .arg(job_queue_key(&job.id))
                    .arg(queue.as_str()),
            )
            .await
            .map_err(unavailable)?;
        self.confirm(&job_queue_key(&job.id)).await?;
        let mut inv = self.scripts.job_create.prepare_invoke();
        inv.key(job_key(&queue, &job.id));
        for k in queue_keys(&queue) {
            inv.key(k);
        }
        for k in &block.keys {
            inv.key(k);
        }
        if let Some(key) = &idempotency_key {
            inv.key(format!("plexus:jk:{{{queue}}}:{key}"));
            let fp = fingerprint(&[&job.payload]);
            // The SHA-256 (stored) and the FNV-1a 64 of a key stored before it (job_create.lua).
            inv.arg(format!("{} {}", fp.hex(), fp.legacy()));
        } else {
            inv.arg("");
        }
        inv.arg(job.id.as_str())
            .arg(IDEMPOTENCY_TTL.as_millis() as u64);
        // job_create.lua takes the placement without the id.
        inv.arg(job.state.as_str())
            .arg(job.created)
            .arg(job.run_at.map(|t| t.to_string()).unwrap_or_default())
            .arg(job.lease_until.map(|t| t.to_string()).unwrap_or_default());
        inv.arg(block.args.len());
        for a in &block.args {
            inv.arg(a.as_slice());
        }
        encode_job(&mut inv, &job);
        let key = job_key(&queue, &job.id);
        let first = match self.writer(&key).invoke::<redis::Value>(&inv).await {
            // Stored: the events' seqs, to show them once replicas hold them.
            Ok(redis::Value::Array(heads)) => {
                let heads: Vec<i64> = heads
                    .into_iter()
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()
                    .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
                self.confirm(&key).await?;
                self.commit_events(&block.inside, &heads).await?;
                return Ok((job, false, block.outside));
            }
            // A replay: the id of the job the key first made.
            Ok(first) => redis::from_redis_value::<String>(first)
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?,
            Err(e) if e.to_string().contains("PLEXUS_CONFLICT") => {
                return Err(StoreError::IdempotencyConflict {
                    topic: queue,
                    key: idempotency_key.unwrap_or_default(),
                });
            }
            Err(e) => return Err(unavailable(e)),
        };
        let id: JobId = first
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        // A replay made no job: the listing forgets the topic named for the would-be one.
        self.forget_topic(&job.id.topic()).await?;
        match self.load_job(&queue, &id).await? {
            Some((first, _)) => Ok((first, true, Vec::new())),
            None => Err(StoreError::UnknownJob(id)),
        }
    }

    pub(super) async fn get_job(&self, id: &JobId) -> StoreResult<Option<Job>> {
        let Some(queue) = self.queue_of(id).await? else {
            return Ok(None);
        };
        Ok(self.load_job(&queue, id).await?.map(|(job, _)| job))
    }

    /// Running jobs whose lease ended before `now`, queue by queue.
    pub(super) async fn expired_jobs(&self, now: Millis, limit: usize) -> StoreResult<Vec<Job>> {
        let queues: Vec<String> = self
            .conn
            .query(redis::cmd("SMEMBERS").arg(QUEUES))
            .await
            .map_err(unavailable)?;
        let mut expired = Vec::new();
        for queue in queues.iter().filter_map(|q| q.parse::<Topic>().ok()) {
            if expired.len() >= limit {
                break;
            }
            let [_, _, running] = queue_keys(&queue);
            let ids: Vec<String> = self
                .conn
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&running)
                        .arg("-inf")
                        .arg(format!("({now}"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit - expired.len()),
                )
                .await
                .map_err(unavailable)?;
            for id in ids.iter().filter_map(|id| id.parse::<JobId>().ok()) {
                if let Some((job, _)) = self.load_job(&queue, &id).await?
                    && job.state == JobState::Running
                    && job.lease_until.is_some_and(|t| t < now)
                {
                    expired.push(job);
                }
            }
        }
        Ok(expired)
    }

    /// Deletes up to `limit` finished jobs listed before `before`, each with its topic.
    pub(super) async fn purge_finished(&self, before: Millis, limit: usize) -> StoreResult<usize> {
        let queues: Vec<String> = self
            .conn
            .query(redis::cmd("SMEMBERS").arg(QUEUES))
            .await
            .map_err(unavailable)?;
        let mut purged = 0;
        for queue in queues.iter().filter_map(|q| q.parse::<Topic>().ok()) {
            if purged >= limit {
                break;
            }
            let finished = finished_key(&queue);
            let ids: Vec<String> = self
                .conn
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&finished)
                        .arg("-inf")
                        .arg(format!("({before}"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit - purged),
                )
                .await
                .map_err(unavailable)?;
            for id in ids.iter().filter_map(|id| id.parse::<JobId>().ok()) {
                let topic = id.topic();
                let (slot, old) = (Slot::of_queue(&queue, &topic), Slot::own(&topic));
                // One command each (the index on its own shard), the index entry last; the
                // topic's keys where a release before this one kept them too.
                for key in [
                    job_key(&queue, &id),
                    job_queue_key(&id),
                    slot.stream(),
                    slot.meta(),
                    old.stream(),
                    old.meta(),
                ] {
                    self.conn
                        .query::<()>(redis::cmd("DEL").arg(key))
                        .await
                        .map_err(unavailable)?;
                }
                self.forget_topic(&topic).await?;
                self.conn
                    .query::<()>(redis::cmd("ZREM").arg(&finished).arg(id.as_str()))
                    .await
                    .map_err(unavailable)?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// When the earliest delayed job of `queue` becomes due.
    pub(super) async fn next_due(&self, queue: &Topic) -> StoreResult<Option<Millis>> {
        let [_, delayed, _] = queue_keys(queue);
        let first: Vec<(String, f64)> = self
            .conn
            .query(
                redis::cmd("ZRANGE")
                    .arg(&delayed)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            )
            .await
            .map_err(unavailable)?;
        Ok(first.first().map(|(_, score)| *score as Millis))
    }
}

/// The state, created, run_at and lease end arguments of the job scripts.
pub(super) fn placement_args(inv: &mut ScriptInvocation<'_>, job: &Job) {
    inv.arg(job.id.as_str())
        .arg(job.state.as_str())
        .arg(job.created)
        .arg(job.run_at.map(|t| t.to_string()).unwrap_or_default())
        .arg(job.lease_until.map(|t| t.to_string()).unwrap_or_default());
}

pub(super) fn encode_job(inv: &mut ScriptInvocation<'_>, job: &Job) {
    inv.arg("q")
        .arg(job.queue.as_str())
        .arg("state")
        .arg(job.state.as_str())
        .arg("attempts")
        .arg(job.attempts)
        .arg("max")
        .arg(job.max_attempts)
        .arg("created")
        .arg(job.created)
        .arg("updated")
        .arg(job.updated)
        .arg("payload")
        .arg(job.payload.as_ref());
    if let Some(result) = &job.result {
        inv.arg("result").arg(result.as_ref());
    }
    if let Some(error) = &job.error {
        inv.arg("error").arg(error.as_str());
    }
    if let Some(t) = job.run_at {
        inv.arg("run_at").arg(t);
    }
    if let Some(lease) = &job.lease {
        inv.arg("lease").arg(lease.as_str());
    }
    if let Some(t) = job.lease_until {
        inv.arg("lease_until").arg(t);
    }
    if let Some(ms) = job.lease_ms {
        inv.arg("lease_ms").arg(ms);
    }
}

pub(super) fn decode_job(
    id: &JobId,
    queue: &Topic,
    f: &HashMap<String, Vec<u8>>,
) -> StoreResult<(Job, String)> {
    let bad = |field: &str| StoreError::Unavailable(format!("redis: job {id} has a bad {field}"));
    let text = |field: &str| -> Option<String> {
        f.get(field)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let int = |field: &str| -> StoreResult<Option<i64>> {
        text(field)
            .map(|s| s.parse::<i64>().map_err(|_| bad(field)))
            .transpose()
    };
    let required = |field: &str| -> StoreResult<i64> { int(field)?.ok_or_else(|| bad(field)) };
    let job = Job {
        id: id.clone(),
        queue: queue.clone(),
        state: text("state")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("state"))?,
        attempts: required("attempts")? as u32,
        max_attempts: required("max")? as u32,
        created: required("created")?,
        updated: required("updated")?,
        payload: Bytes::from(f.get("payload").cloned().unwrap_or_default()),
        result: f.get("result").map(|v| Bytes::from(v.clone())),
        error: text("error"),
        run_at: int("run_at")?,
        lease: text("lease"),
        lease_until: int("lease_until")?,
        lease_ms: int("lease_ms")?.map(|ms| ms as u64),
    };
    Ok((job, text("v").unwrap_or_else(|| "0".into())))
}

/// What [`Core::events_block`] makes.
#[derive(Default)]
struct EventsBlock {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Events whose topic is on another shard than the job (cluster only).
    outside: Vec<NewMessage>,
    /// The topics whose events the script appends, in the order `events.lua` reports them.
    inside: Vec<(Topic, Slot)>,
}
