//! Retention between groups: bounded steps, so publishers never wait on a long delete.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::topics::{CommittedBounds, TopicRow, load_topics, save_row, time_at};
use crate::model::{Millis, Seq, Topic, now_millis};
use crate::store::log::Retention;

/// Most rows a retention step deletes in one transaction.
const RETENTION_CHUNK: u64 = 2000;

/// What retention works on: the writer's connection and topic cache, borrowed between groups.
pub(super) struct Retainer<'a> {
    pub(super) conn: &'a mut Connection,
    pub(super) topics: &'a mut HashMap<Topic, TopicRow>,
    pub(super) bounds: &'a CommittedBounds,
    pub(super) retention: Retention,
}

impl Retainer<'_> {
    /// One bounded step of retention and idempotency-key expiry, each in its own short
    /// transaction. Returns true when work remains (the caller comes back at once, after
    /// serving whatever publishes queued meanwhile).
    pub(super) fn step(&mut self) -> bool {
        let now = now_millis();
        let max_age = self.retention.max_age.as_millis() as Millis;
        let oldest_allowed = now.saturating_sub(max_age);
        let due: Vec<Topic> = self
            .topics
            .iter()
            .filter(|(_, row)| {
                row.count > self.retention.max_messages
                    || row.oldest_time.is_some_and(|t| t < oldest_allowed)
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut more = false;
        let mut budget = RETENTION_CHUNK * 4;
        for topic in due {
            if budget == 0 {
                more = true;
                break;
            }
            match self.trim_topic(&topic, oldest_allowed, budget.min(RETENTION_CHUNK)) {
                Ok((removed, done)) => {
                    budget = budget.saturating_sub(removed.max(1));
                    more |= !done;
                }
                Err(e) => {
                    tracing::warn!(error = %e, %topic, "retention step failed; will retry");
                    if let Ok(topics) = load_topics(self.conn) {
                        *self.topics = topics;
                    }
                }
            }
        }
        let expired = self.conn.execute(
            "DELETE FROM idempotency WHERE (topic_id, key) IN
             (SELECT topic_id, key FROM idempotency WHERE expires <= ?1 LIMIT ?2)",
            params![now, RETENTION_CHUNK as i64],
        );
        match expired {
            Ok(n) if n as u64 == RETENTION_CHUNK => more = true,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency expiry failed; will retry"),
        }
        more
    }

    /// Removes up to `chunk` of the oldest messages of `topic` that retention no longer keeps.
    /// Returns how many were removed and whether the topic is now within its limits.
    fn trim_topic(
        &mut self,
        topic: &Topic,
        oldest_allowed: Millis,
        chunk: u64,
    ) -> rusqlite::Result<(u64, bool)> {
        let Some(row) = self.topics.get(topic).cloned() else {
            return Ok((0, true));
        };
        let by_count = row.head.saturating_sub(self.retention.max_messages) + 1;
        let limit = (row.first_seq + chunk).min(row.head + 1);
        let tx = self.conn.transaction()?;
        // The first seq young enough to keep, looked for only within this chunk.
        let young: Option<i64> = tx
            .prepare_cached(
                "SELECT seq FROM messages WHERE topic_id = ?1 AND seq >= ?2 AND seq < ?3
                 AND time >= ?4 ORDER BY seq LIMIT 1",
            )?
            .query_row(
                params![row.id, row.first_seq as i64, limit as i64, oldest_allowed],
                |r| r.get(0),
            )
            .optional()?;
        let by_age = young.map_or(limit, |s| s as Seq);
        let new_first = by_count.max(by_age).min(limit).max(row.first_seq);
        if new_first == row.first_seq {
            return Ok((0, true));
        }
        let (removed, bytes): (i64, i64) = tx
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM messages
                 WHERE topic_id = ?1 AND seq < ?2",
            )?
            .query_row(params![row.id, new_first as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        tx.prepare_cached("DELETE FROM messages WHERE topic_id = ?1 AND seq < ?2")?
            .execute(params![row.id, new_first as i64])?;
        let mut updated = row.clone();
        updated.first_seq = new_first;
        updated.count = updated.count.saturating_sub(removed as u64);
        updated.bytes = updated.bytes.saturating_sub(bytes as u64);
        updated.oldest_time = time_at(&tx, row.id, new_first)?;
        save_row(&tx, &updated)?;
        tx.commit()?;
        let done = updated.count <= self.retention.max_messages
            && updated.oldest_time.is_none_or(|t| t >= oldest_allowed);
        self.topics.insert(topic.clone(), updated);
        self.bounds.publish(self.topics, [topic]);
        Ok((removed as u64, done))
    }
}
