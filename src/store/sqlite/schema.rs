//! The database schema, versioned with `PRAGMA user_version`, and its forward migrations.
//!
//! `MIGRATIONS` is an ordered list of steps: step `i` takes a database from version `i` to
//! `i + 1`, in one transaction that also sets the new version, so a crash leaves the database
//! at one version or the next, never between. A released step never changes; a new table or
//! column is a new step at the end. Version 1 is the schema of the releases before versions
//! existed: a database of theirs (`user_version` 0, the tables already there) is adopted as
//! version 1. A database of a newer version than this binary knows is refused: an older
//! binary cannot know what a newer one's data means.

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// Version 1. `IF NOT EXISTS` because releases before versions wrote the same tables without
/// a version: running it on one of their databases creates only what is missing.
const V1: &str = "
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    head INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    deleted_through INTEGER NOT NULL,
    msg_count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    last_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    topic_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    event TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (topic_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    topic_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    time INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (topic_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    payload BLOB NOT NULL,
    result BLOB,
    error TEXT,
    run_at INTEGER,
    lease TEXT,
    lease_until INTEGER,
    lease_ms INTEGER,
    idem_key TEXT,
    fingerprint INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (queue, state, created);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (state, lease_until);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs (queue, idem_key) WHERE idem_key IS NOT NULL;
";

/// Version 2: durable consumers, one record per consumer (its body is the consumer layer's).
const V2: &str = "
CREATE TABLE consumers (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    body BLOB NOT NULL
);
";

/// Step `i` makes version `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// The schema version this binary writes.
pub(super) const VERSION: u32 = MIGRATIONS.len() as u32;

/// Each table of version 1 and its columns: a database at version 0 that has these tables is
/// one of ours from before versions; one whose tables lack a column is not.
const V1_TABLES: &[(&str, &str)] = &[
    (
        "topics",
        "id, name, head, first_seq, deleted_through, msg_count, bytes, last_time",
    ),
    ("messages", "topic_id, seq, time, event, data"),
    (
        "idempotency",
        "topic_id, key, fingerprint, seq, time, expires",
    ),
    (
        "jobs",
        "id, queue, state, attempts, max_attempts, created, updated, payload, result, error, \
         run_at, lease, lease_until, lease_ms, idem_key, fingerprint",
    ),
];

/// Brings the database to [`VERSION`]; returns the version it was found at.
pub(super) fn migrate(conn: &mut Connection) -> Result<u32, String> {
    migrate_with(conn, MIGRATIONS)
}

fn migrate_with(conn: &mut Connection, steps: &[&str]) -> Result<u32, String> {
    let latest = steps.len() as u32;
    let mut found = None;
    loop {
        // The version is read inside the step's write transaction: of two processes opening
        // one database at once, the second sees the first one's result and does not step again.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        let version: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        let first = *found.get_or_insert(version);
        if version > latest {
            return Err(format!(
                "the database has schema version {version}, newer than this binary knows \
                 (up to {latest}): it was written by a newer plexus; run that version (or a \
                 later one), or restore a backup taken before the upgrade"
            ));
        }
        if version == latest {
            tx.commit().map_err(|e| e.to_string())?;
            return Ok(first);
        }
        if version == 0 {
            check_adoptable(&tx)?;
        }
        tx.execute_batch(steps[version as usize])
            .map_err(|e| format!("migration to schema version {}: {e}", version + 1))?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(|e| e.to_string())?;
        tx.commit()
            .map_err(|e| format!("migration to schema version {}: {e}", version + 1))?;
    }
}

/// A database at version 0 is empty, or one of ours from before versions: every table of
/// version 1 it has must have version 1's columns.
fn check_adoptable(tx: &Transaction<'_>) -> Result<(), String> {
    for (table, columns) in V1_TABLES {
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                [table],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if exists
            && tx
                .prepare(&format!("SELECT {columns} FROM {table} LIMIT 0"))
                .is_err()
        {
            return Err(format!(
                "the database has a table {table:?} without the columns plexus gives it \
                 ({columns}): it is not a plexus database; give plexus a data directory of its own"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn), Ok(0));
        assert_eq!(version(&conn), VERSION);
        assert_eq!(
            migrate(&mut conn),
            Ok(VERSION),
            "a second open changes nothing"
        );
    }

    #[test]
    fn a_database_from_before_versions_is_adopted_as_version_1() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(V1).unwrap();
        conn.execute_batch(
            "INSERT INTO topics VALUES (1, 'a', 2, 1, 0, 2, 2, 5);
             INSERT INTO messages VALUES (1, 1, 4, NULL, x'00'), (1, 2, 5, 'e', x'01');",
        )
        .unwrap();
        assert_eq!(version(&conn), 0);
        assert_eq!(migrate_with(&mut conn, &[V1]), Ok(0));
        assert_eq!(version(&conn), 1);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "the rows stay");
    }

    #[test]
    fn steps_run_in_order_from_the_version_found() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_with(&mut conn, &[V1]), Ok(0));
        let steps = [
            V1,
            "ALTER TABLE topics ADD COLUMN note TEXT",
            "UPDATE topics SET note = 'step 3'",
        ];
        conn.execute("INSERT INTO topics VALUES (1, 'a', 0, 1, 0, 0, 0, 0)", [])
            .unwrap();
        assert_eq!(migrate_with(&mut conn, &steps), Ok(1));
        assert_eq!(version(&conn), 3);
        let note: String = conn
            .query_row("SELECT note FROM topics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(note, "step 3", "step 3 ran after step 2 made its column");
    }

    #[test]
    fn a_newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn), Ok(0));
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let refused = migrate(&mut conn).unwrap_err();
        assert!(
            refused.contains(&format!("schema version {}", VERSION + 1))
                && refused.contains("newer"),
            "{refused}"
        );
        assert_eq!(version(&conn), VERSION + 1, "left as it was");
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE topics (id INTEGER PRIMARY KEY, title TEXT)")
            .unwrap();
        let refused = migrate(&mut conn).unwrap_err();
        assert!(refused.contains("not a plexus database"), "{refused}");
        assert_eq!(version(&conn), 0, "left as it was");
    }
}
