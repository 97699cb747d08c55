//! The writer's cache of the `topics` rows: each topic's counter, bounds and totals.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::model::{LogBounds, Millis, Seq, Topic};

/// The writer's cached copy of a `topics` row. The writer is the only one that changes
/// these rows, so its cache is authoritative.
#[derive(Clone, Debug)]
pub(super) struct TopicRow {
    pub(super) id: i64,
    pub(super) head: Seq,
    pub(super) first_seq: Seq,
    pub(super) deleted_through: Seq,
    pub(super) count: u64,
    pub(super) bytes: u64,
    pub(super) last_time: Millis,
    /// Time of the oldest retained message, to apply age retention without a query.
    pub(super) oldest_time: Option<Millis>,
}

impl TopicRow {
    pub(super) fn bounds(&self) -> LogBounds {
        LogBounds {
            first_seq: self.first_seq,
            last_seq: self.head,
            deleted_through: self.deleted_through,
        }
    }
}

/// Every topic's bounds as last committed, for `bounds` to answer without a connection or a
/// blocking thread (a storm of subscribers from `now` asks it once each). The writer, which
/// holds every row, publishes a topic's bounds after each commit that changed them and
/// before it answers that commit's callers, so a reader never sees bounds older than a write
/// it was told of; a topic dropped altogether leaves the map with its row.
#[derive(Clone, Default)]
pub(super) struct CommittedBounds(Arc<RwLock<HashMap<Topic, LogBounds>>>);

impl CommittedBounds {
    pub(super) fn of(rows: &HashMap<Topic, TopicRow>) -> Self {
        let map = rows
            .iter()
            .map(|(t, row)| (t.clone(), row.bounds()))
            .collect();
        CommittedBounds(Arc::new(RwLock::new(map)))
    }

    /// After a commit: `changed` as the writer's `rows` now have them.
    pub(super) fn publish<'a>(
        &self,
        rows: &HashMap<Topic, TopicRow>,
        changed: impl IntoIterator<Item = &'a Topic>,
    ) {
        // A std lock: held only to copy a few values in or out, never across an await.
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        for topic in changed {
            match (rows.get(topic), map.get_mut(topic)) {
                (Some(row), Some(bounds)) => *bounds = row.bounds(),
                (Some(row), None) => {
                    map.insert(topic.clone(), row.bounds());
                }
                (None, _) => {
                    map.remove(topic);
                }
            }
        }
    }

    pub(super) fn get(&self, topic: &Topic) -> Option<LogBounds> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(topic).copied()
    }
}

pub(super) fn load_topics(conn: &Connection) -> rusqlite::Result<HashMap<Topic, TopicRow>> {
    let mut stmt = conn.prepare(
        "SELECT t.id, t.name, t.head, t.first_seq, t.deleted_through, t.msg_count, t.bytes,
                t.last_time, m.time
         FROM topics t LEFT JOIN messages m ON m.topic_id = t.id AND m.seq = t.first_seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            TopicRow {
                id: r.get(0)?,
                head: r.get::<_, i64>(2)? as Seq,
                first_seq: r.get::<_, i64>(3)? as Seq,
                deleted_through: r.get::<_, i64>(4)? as Seq,
                count: r.get::<_, i64>(5)? as u64,
                bytes: r.get::<_, i64>(6)? as u64,
                last_time: r.get(7)?,
                oldest_time: r.get(8)?,
            },
        ))
    })?;
    let mut topics = HashMap::new();
    for row in rows {
        let (name, row) = row?;
        if let Ok(topic) = name.parse::<Topic>() {
            topics.insert(topic, row);
        }
    }
    Ok(topics)
}

pub(super) fn save_row(tx: &Transaction<'_>, row: &TopicRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE topics SET head = ?2, first_seq = ?3, deleted_through = ?4, msg_count = ?5,
         bytes = ?6, last_time = ?7 WHERE id = ?1",
    )?
    .execute(params![
        row.id,
        row.head as i64,
        row.first_seq as i64,
        row.deleted_through as i64,
        row.count as i64,
        row.bytes as i64,
        row.last_time
    ])?;
    Ok(())
}

/// The time of one message (`None`: not retained).
pub(super) fn time_at(tx: &Transaction<'_>, id: i64, seq: Seq) -> rusqlite::Result<Option<Millis>> {
    tx.prepare_cached("SELECT time FROM messages WHERE topic_id = ?1 AND seq = ?2")?
        .query_row(params![id, seq as i64], |r| r.get(0))
        .optional()
}
