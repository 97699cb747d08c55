//! Jobs: a hash per job on its queue's shard, with the queue's ready, delayed and running
//! sorted sets; every write a Lua script comparing the stored lease (or version).

use std::collections::HashMap;

use bytes::Bytes;
use redis::ScriptInvocation;

use crate::model::{Job, JobId, JobState, Millis, StoreError, StoreResult, Topic, fingerprint};
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

    /// Writes a job through `job_save.lua`, compare-and-set on `mode` (`lease`|`version`).
    pub(super) async fn save_job(&self, job: &Job, mode: &str, expected: &str) -> StoreResult<()> {
        let mut inv = self.scripts.job_save.prepare_invoke();
        inv.key(job_key(&job.queue, &job.id));
        for k in queue_keys(&job.queue) {
            inv.key(k);
        }
        inv.arg(mode).arg(expected);
        placement_args(&mut inv, job);
        encode_job(&mut inv, job);
        match self
            .writer(&job_key(&job.queue, &job.id))
            .invoke::<i64>(&inv)
            .await
        {
            Ok(_) => self.confirm(&job_key(&job.queue, &job.id)).await,
            Err(e) if e.to_string().contains("PLEXUS_CHANGED") => {
                Err(StoreError::JobChanged(job.id.clone()))
            }
            Err(e) if e.to_string().contains("PLEXUS_UNKNOWN") => {
                Err(StoreError::UnknownJob(job.id.clone()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn claim_job(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> StoreResult<Option<Job>> {
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
                // puts it back among the delayed jobs, where its run_at will bring it again.
                match self.save_job(&job, "version", &version).await {
                    Ok(()) | Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            job.claim(now, lease.clone(), lease_ms);
            match self.save_job(&job, "version", &version).await {
                Ok(()) => return Ok(Some(job)),
                // Another node claimed it first: pick again.
                Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Stores a new job by `job_create.lua` (see [`JobStore::create`](crate::store::JobStore::create)).
    pub(super) async fn create_job(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> StoreResult<(Job, bool)> {
        let queue = job.queue.clone();
        self.remember(QUEUES, queue.as_str()).await?;
        // The id → queue index first: a job is never stored where `job_get` cannot see it.
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
        if let Some(key) = &idempotency_key {
            inv.key(format!("plexus:jk:{{{queue}}}:{key}"));
        }
        let fp = fingerprint(&[&job.payload]);
        // The SHA-256 (stored) and the FNV-1a 64 of a key stored before it (job_create.lua).
        inv.arg(format!("{} {}", fp.hex(), fp.legacy()))
            .arg(job.id.as_str())
            .arg(IDEMPOTENCY_TTL.as_millis() as u64);
        // job_create.lua takes the placement without the id.
        inv.arg(job.state.as_str())
            .arg(job.created)
            .arg(job.run_at.map(|t| t.to_string()).unwrap_or_default())
            .arg(job.lease_until.map(|t| t.to_string()).unwrap_or_default());
        encode_job(&mut inv, &job);
        let first: String = match self.writer(&job_key(&queue, &job.id)).invoke(&inv).await {
            Ok(first) => {
                self.confirm(&job_key(&queue, &job.id)).await?;
                first
            }
            Err(e) if e.to_string().contains("PLEXUS_CONFLICT") => {
                return Err(StoreError::IdempotencyConflict {
                    topic: queue,
                    key: idempotency_key.unwrap_or_default(),
                });
            }
            Err(e) => return Err(unavailable(e)),
        };
        if first.is_empty() {
            return Ok((job, false));
        }
        let id: JobId = first
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        match self.load_job(&queue, &id).await? {
            Some((first, _)) => Ok((first, true)),
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

    /// Lists a finished job for retention (after its save: a crash between the two keeps the
    /// job for good, as before retention existed).
    pub(super) async fn mark_finished(&self, job: &Job) -> StoreResult<()> {
        self.writer(&finished_key(&job.queue))
            .query::<()>(
                redis::cmd("ZADD")
                    .arg(finished_key(&job.queue))
                    .arg(job.updated)
                    .arg(job.id.as_str()),
            )
            .await
            .map_err(unavailable)?;
        self.confirm(&finished_key(&job.queue)).await
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
                // Each key on its own shard: one command each, the index entry last.
                for key in [
                    job_key(&queue, &id),
                    job_queue_key(&id),
                    stream_key(&topic),
                    meta_key(&topic),
                ] {
                    self.conn
                        .query::<()>(redis::cmd("DEL").arg(key))
                        .await
                        .map_err(unavailable)?;
                }
                self.conn
                    .query::<()>(redis::cmd("SREM").arg(TOPICS).arg(topic.as_str()))
                    .await
                    .map_err(unavailable)?;
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
