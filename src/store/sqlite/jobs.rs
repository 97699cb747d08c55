//! Jobs in the `jobs` table: each function runs inside a transaction it is given (the
//! writer's group transaction for writes, a read snapshot for reads).

use bytes::Bytes;
use rusqlite::{OptionalExtension, Transaction, params};

use crate::model::{
    Job, JobId, JobState, Millis, StoreError, StoreResult, StoredFingerprint, Topic, fingerprint,
};

const JOB_COLUMNS: &str = "id, queue, state, attempts, max_attempts, created, updated, payload, \
    result, error, run_at, lease, lease_until, lease_ms";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Job>> {
    let id: String = r.get(0)?;
    let queue: String = r.get(1)?;
    let state: String = r.get(2)?;
    let (Ok(id), Ok(queue), Ok(state)) = (
        id.parse::<JobId>(),
        queue.parse::<Topic>(),
        state.parse::<JobState>(),
    ) else {
        return Ok(None);
    };
    Ok(Some(Job {
        id,
        queue,
        state,
        attempts: r.get(3)?,
        max_attempts: r.get(4)?,
        created: r.get(5)?,
        updated: r.get(6)?,
        payload: Bytes::from(r.get::<_, Vec<u8>>(7)?),
        result: r.get::<_, Option<Vec<u8>>>(8)?.map(Bytes::from),
        error: r.get(9)?,
        run_at: r.get(10)?,
        lease: r.get(11)?,
        lease_until: r.get(12)?,
        lease_ms: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
    }))
}

fn select_job(tx: &Transaction<'_>, id: &JobId) -> rusqlite::Result<Option<Job>> {
    Ok(tx
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row([id.as_str()], job_from_row)
        .optional()?
        .flatten())
}

fn write_job(tx: &Transaction<'_>, job: &Job) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE jobs SET state = ?2, attempts = ?3, max_attempts = ?4, updated = ?5, result = ?6,
         error = ?7, run_at = ?8, lease = ?9, lease_until = ?10, lease_ms = ?11 WHERE id = ?1",
    )?
    .execute(params![
        job.id.as_str(),
        job.state.as_str(),
        job.attempts,
        job.max_attempts,
        job.updated,
        job.result.as_deref(),
        job.error,
        job.run_at,
        job.lease,
        job.lease_until,
        job.lease_ms.map(|v| v as i64)
    ])?;
    Ok(())
}

/// Stores a new job, or answers the first one of its idempotency key.
pub(super) fn create(
    tx: &Transaction<'_>,
    job: Job,
    idempotency_key: Option<String>,
) -> rusqlite::Result<StoreResult<(Job, bool)>> {
    let fp = fingerprint(&[&job.payload]);
    if let Some(key) = &idempotency_key {
        let known: Option<(String, StoredFingerprint)> = tx
            .prepare_cached("SELECT id, fingerprint FROM jobs WHERE queue = ?1 AND idem_key = ?2")?
            .query_row(params![job.queue.as_str(), key], |r| {
                Ok((r.get(0)?, super::append::stored_fingerprint(r.get_ref(1)?)))
            })
            .optional()?;
        if let Some((id, known_fp)) = known {
            if !fp.matches(&known_fp) {
                return Ok(Err(StoreError::IdempotencyConflict {
                    topic: job.queue.clone(),
                    key: key.clone(),
                }));
            }
            if let Ok(id) = id.parse::<JobId>()
                && let Some(first) = select_job(tx, &id)?
            {
                return Ok(Ok((first, true)));
            }
        }
    }
    tx.prepare_cached(
        "INSERT INTO jobs (id, queue, state, attempts, max_attempts, created, updated, payload,
         result, error, run_at, lease, lease_until, lease_ms, idem_key, fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        job.id.as_str(),
        job.queue.as_str(),
        job.state.as_str(),
        job.attempts,
        job.max_attempts,
        job.created,
        job.updated,
        job.payload.as_ref(),
        job.result.as_deref(),
        job.error,
        job.run_at,
        job.lease,
        job.lease_until,
        job.lease_ms.map(|v| v as i64),
        idempotency_key,
        &fp.sha256()[..]
    ])?;
    Ok(Ok((job, false)))
}

/// Replaces a job if its stored lease is still `expected_lease`.
pub(super) fn save(
    tx: &Transaction<'_>,
    job: Job,
    expected_lease: Option<String>,
) -> rusqlite::Result<StoreResult<Job>> {
    let stored: Option<Option<String>> = tx
        .prepare_cached("SELECT lease FROM jobs WHERE id = ?1")?
        .query_row([job.id.as_str()], |r| r.get(0))
        .optional()?;
    match stored {
        None => Ok(Err(StoreError::UnknownJob(job.id.clone()))),
        Some(lease) if lease != expected_lease => Ok(Err(StoreError::JobChanged(job.id.clone()))),
        Some(_) => {
            write_job(tx, &job)?;
            Ok(Ok(job))
        }
    }
}

/// Claims the oldest queued job of `queue` due at `now`.
pub(super) fn claim(
    tx: &Transaction<'_>,
    queue: &Topic,
    now: Millis,
    lease: String,
    lease_ms: u64,
) -> rusqlite::Result<StoreResult<Option<Job>>> {
    let next = tx
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE queue = ?1 AND state = 'queued'
             AND (run_at IS NULL OR run_at <= ?2) ORDER BY created, id LIMIT 1"
        ))?
        .query_row(params![queue.as_str(), now], job_from_row)
        .optional()?
        .flatten();
    let Some(mut job) = next else {
        return Ok(Ok(None));
    };
    job.claim(now, lease, lease_ms);
    write_job(tx, &job)?;
    Ok(Ok(Some(job)))
}

pub(super) fn get(tx: &Transaction<'_>, id: &JobId) -> rusqlite::Result<Option<Job>> {
    select_job(tx, id)
}

/// Running jobs whose lease ended before `now`.
pub(super) fn expired(
    tx: &Transaction<'_>,
    now: Millis,
    limit: usize,
) -> rusqlite::Result<Vec<Job>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < ?1 LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit as i64], job_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(job) = row? {
            out.push(job);
        }
    }
    Ok(out)
}

/// When the earliest delayed job of `queue` becomes due.
pub(super) fn next_due(tx: &Transaction<'_>, queue: &Topic) -> rusqlite::Result<Option<Millis>> {
    tx.prepare_cached(
        "SELECT MIN(run_at) FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at IS NOT NULL",
    )?
    .query_row([queue.as_str()], |r| r.get(0))
}

/// Finished jobs last changed before `before` (at most `limit`), for retention.
pub(super) fn finished_before(
    tx: &Transaction<'_>,
    before: Millis,
    limit: usize,
) -> rusqlite::Result<Vec<JobId>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id FROM jobs WHERE state IN ('succeeded', 'dead') AND updated < ?1 LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before, limit as i64], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(id) = row?.parse::<JobId>() {
            out.push(id);
        }
    }
    Ok(out)
}

pub(super) fn delete(tx: &Transaction<'_>, id: &JobId) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Rewrites the job idempotency fingerprints a release before SHA-256 stored (an FNV-1a 64,
/// an integer in the column) as the SHA-256 of the job's payload, which is what that key was
/// first used with: such a key is then as strong as a new one. Only such rows are touched, so
/// after the first open this finds none. Returns how many were rewritten.
pub(super) fn rehash_legacy_keys(conn: &rusqlite::Connection) -> rusqlite::Result<usize> {
    let legacy: Vec<(String, Vec<u8>)> = conn
        .prepare("SELECT id, payload FROM jobs WHERE typeof(fingerprint) = 'integer'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = conn.prepare("UPDATE jobs SET fingerprint = ?2 WHERE id = ?1")?;
    for (id, payload) in &legacy {
        let fp = fingerprint(&[payload]);
        update.execute(rusqlite::params![id, fp.sha256().as_slice()])?;
    }
    Ok(legacy.len())
}
