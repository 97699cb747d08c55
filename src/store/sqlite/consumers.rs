//! Consumers in the `consumers` table: each write a compare-and-set on the record's version,
//! run inside the writer's group transaction; reads in a read snapshot.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::model::StoreResult;
use crate::store::consumers::StoredConsumer;

pub(super) fn get(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<StoredConsumer>> {
    tx.prepare_cached("SELECT version, body FROM consumers WHERE name = ?1")?
        .query_row([name], |r| {
            Ok(StoredConsumer {
                name: name.to_string(),
                version: r.get::<_, i64>(0)? as u64,
                body: r.get(1)?,
            })
        })
        .optional()
}

pub(super) fn all(tx: &Transaction<'_>) -> rusqlite::Result<Vec<StoredConsumer>> {
    tx.prepare_cached("SELECT name, version, body FROM consumers ORDER BY name")?
        .query_map([], |r| {
            Ok(StoredConsumer {
                name: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
            })
        })?
        .collect()
}

/// `Some(new version)` when the stored version was `expected` (0: none stored).
pub(super) fn put(
    tx: &Transaction<'_>,
    name: &str,
    expected: u64,
    body: &[u8],
) -> rusqlite::Result<StoreResult<Option<u64>>> {
    let stored = tx
        .prepare_cached("SELECT version FROM consumers WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |v| v as u64);
    if stored != expected {
        return Ok(Ok(None));
    }
    let version = expected + 1;
    tx.prepare_cached(
        "INSERT INTO consumers (name, version, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, body = excluded.body",
    )?
    .execute(params![name, version as i64, body])?;
    Ok(Ok(Some(version)))
}

pub(super) fn delete(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<StoreResult<bool>> {
    let n = tx
        .prepare_cached("DELETE FROM consumers WHERE name = ?1")?
        .execute([name])?;
    Ok(Ok(n > 0))
}
