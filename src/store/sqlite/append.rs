//! The writes of the message log, inside the writer's group transaction: appends (with
//! their idempotency keys) and topic deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};

use super::topics::{TopicRow, save_row};
use crate::model::{
    Appended, Message, Millis, NewMessage, Seq, StoreError, StoreResult, StoredFingerprint, Topic,
};
use crate::store::log::IDEMPOTENCY_TTL;

type Known = Option<(StoredFingerprint, Appended)>;

/// A `fingerprint` column as stored: a 32-byte SHA-256 blob, or (a row written before
/// SHA-256, kept in the same column) the FNV-1a 64 as an integer. The value's SQLite type
/// marks which, so old rows need no migration and match the bodies they were first used with.
pub(super) fn stored_fingerprint(value: rusqlite::types::ValueRef<'_>) -> StoredFingerprint {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Integer(fnv) => StoredFingerprint::Legacy(fnv as u64),
        ValueRef::Blob(sha) => StoredFingerprint::Sha256(sha.to_vec()),
        // Nothing writes other types: such a row matches no body.
        _ => StoredFingerprint::Sha256(Vec::new()),
    }
}

fn lookup_key(tx: &Transaction<'_>, id: i64, key: &str, now: Millis) -> rusqlite::Result<Known> {
    tx.prepare_cached(
        "SELECT fingerprint, seq, time FROM idempotency
         WHERE topic_id = ?1 AND key = ?2 AND expires > ?3",
    )?
    .query_row(params![id, key, now], |r| {
        Ok((
            stored_fingerprint(r.get_ref(0)?),
            Appended {
                seq: r.get::<_, i64>(1)? as Seq,
                time: r.get(2)?,
                replayed: true,
            },
        ))
    })
    .optional()
}

/// Refuses a batch that would create topics beyond `max_topics` (`limits.max_topics_total`):
/// the writer's topic cache holds every topic, so its length is the count.
pub(super) fn admit(
    topics: &HashMap<Topic, TopicRow>,
    batch: &[NewMessage],
    max_topics: u64,
) -> StoreResult<()> {
    let new: HashSet<&Topic> = batch
        .iter()
        .map(|m| &m.topic)
        .filter(|t| !topics.contains_key(*t))
        .collect();
    if !new.is_empty() && (topics.len() + new.len()) as u64 > max_topics {
        return Err(StoreError::TooManyTopics { limit: max_topics });
    }
    Ok(())
}

/// Applies one publisher's batch inside the group's transaction. An idempotency conflict
/// refuses the batch before anything of it is written; an SQL error aborts the whole group.
pub(super) fn apply_append(
    tx: &Transaction<'_>,
    topics: &mut HashMap<Topic, TopicRow>,
    dirty: &mut HashSet<Topic>,
    committed: &mut Vec<Arc<Message>>,
    batch: Vec<NewMessage>,
    now: Millis,
    max_topics: u64,
) -> rusqlite::Result<StoreResult<Vec<Appended>>> {
    if let Err(e) = admit(topics, &batch, max_topics) {
        return Ok(Err(e));
    }
    let mut seen: HashMap<(&Topic, &str), StoredFingerprint> = HashMap::new();
    for msg in &batch {
        let Some(key) = msg.idempotency_key.as_deref() else {
            continue;
        };
        let known = match topics.get(&msg.topic) {
            Some(row) => lookup_key(tx, row.id, key, now)?.map(|(fp, _)| fp),
            None => None,
        }
        .or_else(|| seen.get(&(&msg.topic, key)).cloned());
        match known {
            Some(fp) if !msg.fingerprint().matches(&fp) => {
                return Ok(Err(StoreError::IdempotencyConflict {
                    topic: msg.topic.clone(),
                    key: key.to_owned(),
                }));
            }
            Some(_) => {}
            None => {
                seen.insert(
                    (&msg.topic, key),
                    StoredFingerprint::Sha256(msg.fingerprint().sha256().to_vec()),
                );
            }
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for msg in &batch {
        let row = match topics.get_mut(&msg.topic) {
            Some(row) => row,
            None => {
                tx.prepare_cached(
                    "INSERT INTO topics (name, head, first_seq, deleted_through, msg_count, bytes, last_time)
                     VALUES (?1, 0, 1, 0, 0, 0, 0)",
                )?
                .execute([msg.topic.as_str()])?;
                let row = TopicRow {
                    id: tx.last_insert_rowid(),
                    head: 0,
                    first_seq: 1,
                    deleted_through: 0,
                    count: 0,
                    bytes: 0,
                    last_time: 0,
                    oldest_time: None,
                };
                topics.entry(msg.topic.clone()).or_insert(row)
            }
        };
        if let Some(key) = msg.idempotency_key.as_deref()
            && let Some((_, first)) = lookup_key(tx, row.id, key, now)?
        {
            results.push(first);
            continue;
        }
        row.head += 1;
        row.last_time = row.last_time.max(now);
        row.count += 1;
        row.bytes += msg.data.len() as u64;
        if row.oldest_time.is_none() {
            row.oldest_time = Some(row.last_time);
        }
        tx.prepare_cached(
            "INSERT INTO messages (topic_id, seq, time, event, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            row.id,
            row.head as i64,
            row.last_time,
            msg.event.as_ref().map(|e| e.as_str()),
            msg.data.as_ref()
        ])?;
        let appended = Appended {
            seq: row.head,
            time: row.last_time,
            replayed: false,
        };
        if let Some(key) = msg.idempotency_key.as_deref() {
            tx.prepare_cached(
                "INSERT INTO idempotency (topic_id, key, fingerprint, seq, time, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (topic_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                 seq = excluded.seq, time = excluded.time, expires = excluded.expires",
            )?
            .execute(params![
                row.id,
                key,
                &msg.fingerprint().sha256()[..],
                appended.seq as i64,
                appended.time,
                now + IDEMPOTENCY_TTL.as_millis() as Millis
            ])?;
        }
        dirty.insert(msg.topic.clone());
        committed.push(Arc::new(Message {
            topic: msg.topic.clone(),
            seq: appended.seq,
            time: appended.time,
            event: msg.event.clone(),
            data: msg.data.clone(),
        }));
        results.push(appended);
    }
    Ok(Ok(results))
}

pub(super) fn apply_delete(
    tx: &Transaction<'_>,
    topics: &mut HashMap<Topic, TopicRow>,
    topic: &Topic,
) -> rusqlite::Result<bool> {
    let Some(row) = topics.get_mut(topic) else {
        return Ok(false);
    };
    tx.prepare_cached("DELETE FROM messages WHERE topic_id = ?1")?
        .execute([row.id])?;
    row.first_seq = row.head + 1;
    row.deleted_through = row.head;
    row.count = 0;
    row.bytes = 0;
    row.oldest_time = None;
    save_row(tx, row)?;
    Ok(true)
}

/// Drops a topic altogether (its messages, keys and row): a finished job's `_jobs.{id}`.
pub(super) fn apply_drop_topic(
    tx: &Transaction<'_>,
    topics: &mut HashMap<Topic, TopicRow>,
    topic: &Topic,
) -> rusqlite::Result<()> {
    let Some(row) = topics.remove(topic) else {
        return Ok(());
    };
    tx.prepare_cached("DELETE FROM messages WHERE topic_id = ?1")?
        .execute([row.id])?;
    tx.prepare_cached("DELETE FROM idempotency WHERE topic_id = ?1")?
        .execute([row.id])?;
    tx.prepare_cached("DELETE FROM topics WHERE id = ?1")?
        .execute([row.id])?;
    Ok(())
}
