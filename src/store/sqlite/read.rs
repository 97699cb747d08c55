//! Reads, on a small pool of connections beside the writer (WAL), each in one snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::topics::time_at;
use crate::model::{
    EventName, LogBounds, Message, Millis, Seq, StoreError, StoreResult, Topic, TopicInfo,
};
use crate::store::log::ReadBatch;

const READ_POOL: usize = 8;

pub(super) struct ReadPool {
    pub(super) path: PathBuf,
    // A std mutex: held only to push or pop a connection, never across an await.
    pub(super) idle: Mutex<Vec<Connection>>,
    /// At most `READ_POOL` reads run at once; the others wait here, as tasks. Without it a
    /// storm of requests (ten thousand subscribers connecting) put a blocking thread and a
    /// fresh connection under each read: a hundred threads, each with its stack and its
    /// allocator cache, still resident seconds after the storm.
    pub(super) gate: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(READ_POOL)),
        }
    }
}

/// A read for `/readyz`: the schema and the last page of each table's b-tree, so a malformed
/// or unreadable file answers an error, not `SELECT 1`'s success. Cheap: two index seeks.
pub(super) fn check(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.query_row("SELECT max(id) FROM topics", [], |_| Ok(()))?;
    tx.query_row(
        "SELECT topic_id FROM messages ORDER BY topic_id DESC, seq DESC LIMIT 1",
        [],
        |_| Ok(()),
    )
    .optional()?;
    Ok(())
}

impl ReadPool {
    pub(super) fn run<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path).map_err(StoreError::unavailable)?;
                conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
                    .map_err(StoreError::unavailable)?;
                conn
            }
        };
        // One deferred transaction: bounds and messages come from the same snapshot, so a
        // concurrent retention step can never make a read skip messages silently.
        let result = conn
            .transaction()
            .and_then(|tx| {
                let out = f(&tx)?;
                tx.finish()?;
                Ok(out)
            })
            .map_err(StoreError::unavailable);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < READ_POOL {
            idle.push(conn);
        }
        result
    }
}

fn read_bounds(tx: &Transaction<'_>, topic: &Topic) -> rusqlite::Result<Option<(i64, LogBounds)>> {
    tx.prepare_cached("SELECT id, head, first_seq, deleted_through FROM topics WHERE name = ?1")?
        .query_row([topic.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                LogBounds {
                    last_seq: r.get::<_, i64>(1)? as Seq,
                    first_seq: r.get::<_, i64>(2)? as Seq,
                    deleted_through: r.get::<_, i64>(3)? as Seq,
                },
            ))
        })
        .optional()
}

fn topic_info(topic: Topic, head: i64, first: i64, count: i64, bytes: i64, last: i64) -> TopicInfo {
    TopicInfo {
        topic,
        first_seq: first as Seq,
        last_seq: head as Seq,
        messages: count as u64,
        bytes: bytes as u64,
        last_publish: (head > 0).then_some(last),
    }
}

/// Up to `limit` messages after `after`, with the bounds they were read against.
pub(super) fn messages(
    tx: &Transaction<'_>,
    topic: &Topic,
    after: Seq,
    limit: usize,
    max_bytes: usize,
) -> rusqlite::Result<ReadBatch> {
    let Some((id, bounds)) = read_bounds(tx, topic)? else {
        return Ok(ReadBatch::default());
    };
    let mut stmt = tx.prepare_cached(
        "SELECT seq, time, event, data FROM messages
         WHERE topic_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![id, after.min(i64::MAX as u64) as i64, limit as i64])?;
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let data: Vec<u8> = row.get(3)?;
        if !messages.is_empty() && bytes + data.len() > max_bytes {
            break;
        }
        bytes += data.len();
        let event: Option<String> = row.get(2)?;
        messages.push(Arc::new(Message {
            topic: topic.clone(),
            seq: row.get::<_, i64>(0)? as Seq,
            time: row.get(1)?,
            event: event.and_then(|e| e.parse::<EventName>().ok()),
            data: Bytes::from(data),
        }));
    }
    Ok(ReadBatch {
        messages,
        bounds: Some(bounds),
    })
}

/// The position just before the first retained message at or after `time`.
pub(super) fn seek_time(
    tx: &Transaction<'_>,
    topic: &Topic,
    time: Millis,
) -> rusqlite::Result<Seq> {
    let Some((id, bounds)) = read_bounds(tx, topic)? else {
        return Ok(0);
    };
    // Times never decrease along a topic's seqs, and the retained seqs are contiguous:
    // a binary search of point lookups finds the first message at or after `time`.
    let (mut lo, mut hi) = (bounds.first_seq, bounds.last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match time_at(tx, id, mid)? {
            Some(t) if t < time => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo - 1)
}

pub(super) fn topics(tx: &Transaction<'_>) -> rusqlite::Result<Vec<TopicInfo>> {
    topics_page(tx, None, usize::MAX)
}

/// Up to `limit` topics named after `after`, in name order (the primary key's order).
pub(super) fn topics_page(
    tx: &Transaction<'_>,
    after: Option<&Topic>,
    limit: usize,
) -> rusqlite::Result<Vec<TopicInfo>> {
    let mut stmt = tx.prepare_cached(
        "SELECT name, head, first_seq, msg_count, bytes, last_time FROM topics \
         WHERE name > ?1 ORDER BY name LIMIT ?2",
    )?;
    let after = after.map_or("", |t| t.as_str());
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![after, limit], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, head, first, count, bytes, last) = row?;
        // Names were validated before they were stored; skip any that would not parse.
        if let Ok(topic) = name.parse::<Topic>() {
            out.push(topic_info(topic, head, first, count, bytes, last));
        }
    }
    Ok(out)
}

pub(super) fn topic(tx: &Transaction<'_>, topic: &Topic) -> rusqlite::Result<Option<TopicInfo>> {
    tx.prepare_cached(
        "SELECT head, first_seq, msg_count, bytes, last_time FROM topics WHERE name = ?1",
    )?
    .query_row([topic.as_str()], |r| {
        Ok(topic_info(
            topic.clone(),
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
        ))
    })
    .optional()
}
