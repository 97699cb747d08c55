//! The spool: publishes accepted locally and not yet on the hub, in one SQLite database, in
//! acceptance order. One writer thread owns the connection and commits every append queued
//! at once in one transaction (group commit, as the hub's sqlite engine does), so that under
//! load one commit (one fsync at `durability = machine`) acknowledges many publishes. The
//! forwarder reads and removes through the same thread, so it never sees a row before the
//! publisher waiting for its answer is registered.
//!
//! At `durability = process` there is no fsync to share, and the thread was the cost: every
//! publish woke it and was woken back (a profile of the sidecar under load spent about a
//! third of its time switching threads; docs/BENCHMARKS.md). There the same writer runs on the
//! caller's task under a mutex instead: a commit without fsync is a write to the WAL, tens of
//! microseconds, and the operations still run one at a time in the order they take the lock.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

/// The spool database, in the spool directory.
const DB_FILE: &str = "spool.db";
/// Held while a sidecar runs on the directory: two sidecars forwarding one spool would race.
const LOCK_FILE: &str = "sidecar.lock";

/// A publish to spool: already validated by the caller.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub topic: String,
    pub event: Option<String>,
    pub data: Bytes,
    /// The client's own idempotency key; without one the spool makes `{sidecar_id}-{seq}`.
    pub key: Option<String>,
}

/// A spooled publish, as the forwarder sends it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: i64,
    pub topic: String,
    pub event: Option<String>,
    pub data: Bytes,
    pub key: String,
    /// When it was accepted, Unix milliseconds.
    pub accepted: i64,
}

/// What became of a spooled publish on the hub: its `201` body (`{"topic","seq","time"}`),
/// or the hub's refusal (status and problem body), told to a publisher still waiting.
#[derive(Debug, Clone)]
pub enum Outcome {
    Stored(serde_json::Value),
    Refused {
        status: u16,
        body: Bytes,
    },
    /// The hub could not be reached: the entry stays spooled (the publisher gets `202`).
    Deferred,
}

#[derive(Debug)]
pub enum SpoolError {
    /// Over `spool_max_bytes` or `spool_max_messages`: nothing was stored.
    Full,
    /// SQLite failed (a full disk, an I/O error): nothing was stored.
    Io(String),
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Full => f.write_str("the spool is full"),
            SpoolError::Io(e) => write!(f, "the spool failed: {e}"),
        }
    }
}

/// The spool's size now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub messages: u64,
    pub bytes: u64,
    /// Acceptance time of the oldest entry (Unix ms), when there is one.
    pub oldest: Option<i64>,
}

/// An append queued for the writer: its entries, whether its publisher waits, its reply.
type QueuedAppend = (
    Vec<NewEntry>,
    bool,
    oneshot::Sender<Result<Vec<Appended>, SpoolError>>,
);

type Waiters = Arc<Mutex<HashMap<i64, oneshot::Sender<Outcome>>>>;

enum Op {
    Append {
        entries: Vec<NewEntry>,
        wait: bool,
        reply: oneshot::Sender<Result<Vec<Appended>, SpoolError>>,
    },
    Pending {
        lane: Lane,
        max_items: usize,
        max_bytes: usize,
        /// With nothing spooled, hold the reply until the next append and answer it with the
        /// appended entries themselves (no read back, no second trip through the writer).
        park: bool,
        reply: oneshot::Sender<Result<Vec<Entry>, SpoolError>>,
    },
    Remove {
        seqs: Vec<i64>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// One appended entry: its spool seq and key, and the receiver of its outcome when the
/// publisher asked to wait for the hub.
pub struct Appended {
    pub seq: i64,
    pub key: String,
    pub outcome: Option<oneshot::Receiver<Outcome>>,
}

/// A forwarder's share of the spool: the entries whose topic hashes to `index` of `count`.
/// A topic always falls in the same lane, so one forwarder per lane, one batch in flight
/// each, keeps every topic's order while the lanes forward side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub index: usize,
    pub count: usize,
}

impl Lane {
    /// The whole spool, as one lane.
    #[cfg(test)]
    pub const ALL: Lane = Lane { index: 0, count: 1 };

    /// Whether `topic`'s entries are this lane's (FNV-1a of the name: the same in every run).
    pub fn holds(&self, topic: &str) -> bool {
        if self.count <= 1 {
            return true;
        }
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (hash % self.count as u64) as usize == self.index
    }
}

/// Where the spool's operations run: on the writer thread (group commit, for fsync), or on
/// the caller's task under a std mutex, held for one SQLite operation and never across an
/// await.
#[derive(Clone)]
enum Route {
    Thread(mpsc::Sender<Op>),
    Inline(Arc<Mutex<Writer>>),
}

/// The writer is gone (its thread ended): the spool cannot store anything.
struct Stopped;

impl Route {
    fn run(&self, op: Op) -> Result<(), Stopped> {
        match self {
            Route::Thread(tx) => tx.send(op).map_err(|_| Stopped),
            Route::Inline(writer) => {
                writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle(vec![op]);
                Ok(())
            }
        }
    }
}

/// A handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    route: Route,
    /// The sidecar's id, made once and kept in the spool: its keys stay the same across restarts.
    pub id: Arc<str>,
    /// Sizes, kept beside the database so a full spool is refused without touching it. A std
    /// mutex: held for a few arithmetic operations, never across an await.
    stats: Arc<Mutex<Stats>>,
    /// Publishers waiting for the hub's answer, by spool seq. A std mutex, as above.
    waiters: Waiters,
    max_bytes: u64,
    max_messages: u64,
    _lock: Arc<std::fs::File>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`.
    pub fn open(
        dir: &Path,
        fsync: bool,
        max_bytes: u64,
        max_messages: u64,
    ) -> Result<Spool, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the spool directory {}: {e}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(format!(
                "another sidecar runs on the spool directory {} (it holds {LOCK_FILE})",
                dir.display()
            ));
        }
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .map_err(|e| format!("cannot open the spool {}: {e}", path.display()))?;
        let sync = if fsync { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {sync};
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             -- AUTOINCREMENT: a seq is never reused after its row is forwarded and removed,
             -- so a made key `{{id}}-{{seq}}` never names two messages.
             CREATE TABLE IF NOT EXISTS spool (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic TEXT NOT NULL,
                 event TEXT,
                 data BLOB NOT NULL,
                 key TEXT,
                 accepted INTEGER NOT NULL
             );"
        ))
        .map_err(|e| format!("cannot set up the spool {}: {e}", path.display()))?;
        let id = sidecar_id(&conn).map_err(|e| format!("spool {}: {e}", path.display()))?;
        let stats = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0), MIN(accepted) FROM spool",
                [],
                |r| {
                    Ok(Stats {
                        messages: r.get::<_, i64>(0)? as u64,
                        bytes: r.get::<_, i64>(1)? as u64,
                        oldest: r.get(2)?,
                    })
                },
            )
            .map_err(|e| format!("cannot read the spool {}: {e}", path.display()))?;
        let waiters: Waiters = Arc::default();
        let stats = Arc::new(Mutex::new(stats));
        let writer = Writer {
            conn,
            id: id.clone(),
            waiters: waiters.clone(),
            stats: stats.clone(),
            parked: Vec::new(),
        };
        let route = if fsync {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("sidecar-spool".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| format!("cannot start the spool writer: {e}"))?;
            Route::Thread(tx)
        } else {
            Route::Inline(Arc::new(Mutex::new(writer)))
        };
        Ok(Spool {
            route,
            id: id.into(),
            stats,
            waiters,
            max_bytes,
            max_messages,
            _lock: Arc::new(lock),
        })
    }

    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `entries` all or nothing; `Full` when they do not fit (nothing stored).
    pub async fn append(
        &self,
        entries: Vec<NewEntry>,
        wait: bool,
    ) -> Result<Vec<Appended>, SpoolError> {
        let n = entries.len() as u64;
        let bytes: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
        {
            // Reserve the room first, so concurrent appends cannot overfill the spool together.
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            if s.messages + n > self.max_messages || s.bytes + bytes > self.max_bytes {
                return Err(SpoolError::Full);
            }
            s.messages += n;
            s.bytes += bytes;
        }
        let (reply, rx) = oneshot::channel();
        let sent = self.route.run(Op::Append {
            entries,
            wait,
            reply,
        });
        let result = match sent {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(SpoolError::Io("the spool writer stopped".into()))),
            Err(_) => Err(SpoolError::Io("the spool writer stopped".into())),
        };
        if result.is_err() {
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.messages -= n;
            s.bytes -= bytes;
        }
        result
    }

    /// The oldest entries, in acceptance order: at most `max_items`, and no more payload than
    /// `max_bytes` (at least one entry).
    #[cfg(test)]
    pub async fn pending(
        &self,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        self.read(Lane::ALL, max_items, max_bytes, false).await
    }

    /// As `pending`, for `lane`'s entries only, and with none spooled it waits for the next
    /// append of one and returns the appended entries: a forwarder's read, handed the entries
    /// by the commit that stored them.
    pub async fn next(
        &self,
        lane: Lane,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        self.read(lane, max_items, max_bytes, true).await
    }

    async fn read(
        &self,
        lane: Lane,
        max_items: usize,
        max_bytes: usize,
        park: bool,
    ) -> Result<Vec<Entry>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.route
            .run(Op::Pending {
                lane,
                max_items,
                max_bytes,
                park,
                reply,
            })
            .map_err(|_| SpoolError::Io("the spool writer stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(SpoolError::Io("the spool writer stopped".into())))
    }

    /// Tells the waiting publishers of forwarded entries what the hub did, then removes the
    /// entries. The answer goes first: the hub has the messages, and should the sidecar die
    /// before the removal commits, the entries are forwarded again under the same keys and the
    /// hub replays its first answers, so a publisher never waits on the spool's own commit.
    pub async fn remove(&self, done: Vec<(i64, Outcome)>) -> Result<(), SpoolError> {
        let seqs = done.iter().map(|(s, _)| *s).collect();
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for (seq, outcome) in done {
                if let Some(w) = waiters.remove(&seq) {
                    let _ = w.send(outcome);
                }
            }
        }
        // The publishers just told answer before the removal runs: inline, it would hold
        // this thread for its commit first (the sidecar serves on one thread).
        tokio::task::yield_now().await;
        // Not awaited: the writer runs operations in order, so the forwarder's next read
        // already sees the removal, and the forwarder sends the next batch meanwhile. A
        // removal that fails leaves the entries to be forwarded again (and replayed).
        let (reply, _) = oneshot::channel();
        self.route
            .run(Op::Remove { seqs, reply })
            .map_err(|_| SpoolError::Io("the spool writer stopped".into()))
    }

    /// Tells the publishers waiting for `seqs` that their entries stay spooled for now.
    pub fn defer(&self, seqs: impl Iterator<Item = i64>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for seq in seqs {
            if let Some(w) = waiters.remove(&seq) {
                let _ = w.send(Outcome::Deferred);
            }
        }
    }

    /// Forgets the waiter of `seq` (its publisher stopped waiting).
    pub fn unwait(&self, seq: i64) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }
}

/// The sidecar's id: read from the spool's `meta` table, or made once and stored there.
fn sidecar_id(conn: &Connection) -> rusqlite::Result<String> {
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'sidecar_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    let mut raw = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| rusqlite::Error::InvalidQuery)?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("sc{id}");
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('sidecar_id', ?1)",
        params![id],
    )?;
    Ok(id)
}

/// Runs `f` in one transaction. `BEGIN` and `COMMIT` are cached statements: rusqlite's
/// `Transaction` sends them as text, and SQLite parsing them on every commit showed up in the
/// sidecar's profile.
fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("BEGIN")?.execute([])?;
    let done = f(conn).and_then(|v| conn.prepare_cached("COMMIT")?.execute([]).map(|_| v));
    if done.is_err() && !conn.is_autocommit() {
        // Nothing of a failed transaction stays; a failed rollback leaves SQLite to roll back.
        let _ = conn
            .prepare_cached("ROLLBACK")
            .and_then(|mut s| s.execute([]));
    }
    done
}

/// A forwarder's read held until the next append of its lane: its lane, limits and reply.
type Parked = (
    Lane,
    usize,
    usize,
    oneshot::Sender<Result<Vec<Entry>, SpoolError>>,
);

struct Writer {
    conn: Connection,
    id: String,
    waiters: Waiters,
    stats: Arc<Mutex<Stats>>,
    /// At most one per lane.
    parked: Vec<Parked>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            while ops.len() < 1024 {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.handle(ops);
        }
    }

    /// Runs `ops` in order; consecutive appends share one transaction.
    fn handle(&mut self, ops: Vec<Op>) {
        let mut appends = Vec::new();
        for op in ops {
            match op {
                Op::Append {
                    entries,
                    wait,
                    reply,
                } => appends.push((entries, wait, reply)),
                other => {
                    self.append(std::mem::take(&mut appends));
                    self.other(other);
                }
            }
        }
        self.append(appends);
    }

    fn append(&mut self, group: Vec<QueuedAppend>) {
        if group.is_empty() {
            return;
        }
        let now = crate::model::now_millis() as i64;
        let id = &self.id;
        let result = in_transaction(&self.conn, |tx| {
            let mut all = Vec::with_capacity(group.len());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO spool (topic, event, data, key, accepted) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (entries, _, _) in &group {
                    let mut seqs = Vec::with_capacity(entries.len());
                    for e in entries {
                        insert.execute(params![e.topic, e.event, &e.data[..], e.key, now])?;
                        let seq = tx.last_insert_rowid();
                        let key = e.key.clone().unwrap_or_else(|| format!("{id}-{seq}"));
                        seqs.push((seq, key));
                    }
                    all.push(seqs);
                }
            }
            Ok(all)
        });
        match result {
            Ok(all) => {
                {
                    let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.oldest.get_or_insert(now);
                }
                // A parked read gets the entries of its lane just stored: the spool held
                // nothing older of the lane when it parked, and appends are stored in the
                // order they are queued. A read none of them is for stays parked.
                let mut handed = Vec::new();
                for (lane, max_items, max_bytes, reply) in std::mem::take(&mut self.parked) {
                    let mut out = Vec::new();
                    let mut bytes = 0usize;
                    'group: for ((entries, _, _), seqs) in group.iter().zip(&all) {
                        for (e, (seq, key)) in entries.iter().zip(seqs) {
                            if !lane.holds(&e.topic) {
                                continue;
                            }
                            let full = out.len() >= max_items
                                || (!out.is_empty() && bytes + e.data.len() > max_bytes);
                            if full {
                                break 'group;
                            }
                            bytes += e.data.len();
                            out.push(Entry {
                                seq: *seq,
                                topic: e.topic.clone(),
                                event: e.event.clone(),
                                data: e.data.clone(),
                                key: key.clone(),
                                accepted: now,
                            });
                        }
                    }
                    if out.is_empty() {
                        self.parked.push((lane, max_items, max_bytes, reply));
                    } else {
                        handed.push((out, reply));
                    }
                }
                let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                for ((_, wait, reply), seqs) in group.into_iter().zip(all) {
                    let appended = seqs
                        .into_iter()
                        .map(|(seq, key)| {
                            let outcome = wait.then(|| {
                                let (tx, rx) = oneshot::channel();
                                waiters.insert(seq, tx);
                                rx
                            });
                            Appended { seq, key, outcome }
                        })
                        .collect();
                    let _ = reply.send(Ok(appended));
                }
                drop(waiters);
                // After the waiters are registered: a forward's answer always finds its waiter.
                for (out, reply) in handed {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the spool could not store a publish");
                for (_, _, reply) in group {
                    let _ = reply.send(Err(SpoolError::Io(e.to_string())));
                }
            }
        }
    }

    fn other(&mut self, op: Op) {
        match op {
            Op::Append { .. } => {}
            Op::Pending {
                lane,
                max_items,
                max_bytes,
                park,
                reply,
            } => match self.pending(lane, max_items, max_bytes) {
                Ok(found) if found.is_empty() && park => {
                    // A lane's new read replaces one it left parked (that reader is gone).
                    self.parked.retain(|(l, ..)| *l != lane);
                    self.parked.push((lane, max_items, max_bytes, reply));
                }
                found => {
                    let _ = reply.send(found.map_err(|e| SpoolError::Io(e.to_string())));
                }
            },
            Op::Remove { seqs, reply } => {
                let removed = self
                    .remove(&seqs)
                    .map_err(|e| SpoolError::Io(e.to_string()));
                if let Err(e) = &removed {
                    tracing::error!(error = %e, "the spool could not remove forwarded entries; they will be forwarded again");
                }
                let _ = reply.send(removed);
            }
        }
    }

    fn pending(
        &mut self,
        lane: Lane,
        max_items: usize,
        max_bytes: usize,
    ) -> rusqlite::Result<Vec<Entry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, topic, event, data, key, accepted FROM spool ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(r) = rows.next()? {
            if out.len() >= max_items {
                break;
            }
            let topic: String = r.get(1)?;
            if !lane.holds(&topic) {
                continue;
            }
            let seq: i64 = r.get(0)?;
            let data: Vec<u8> = r.get(3)?;
            if !out.is_empty() && bytes + data.len() > max_bytes {
                break;
            }
            bytes += data.len();
            let key: Option<String> = r.get(4)?;
            out.push(Entry {
                seq,
                topic,
                event: r.get(2)?,
                data: Bytes::from(data),
                key: key.unwrap_or_else(|| format!("{}-{seq}", self.id)),
                accepted: r.get(5)?,
            });
        }
        Ok(out)
    }

    fn remove(&mut self, seqs: &[i64]) -> rusqlite::Result<()> {
        let mut removed = 0u64;
        let mut bytes = 0u64;
        let oldest = in_transaction(&self.conn, |tx| {
            let mut size = tx.prepare_cached("SELECT LENGTH(data) FROM spool WHERE seq = ?1")?;
            let mut delete = tx.prepare_cached("DELETE FROM spool WHERE seq = ?1")?;
            for seq in seqs {
                let len: Option<i64> = size.query_row(params![seq], |r| r.get(0)).optional()?;
                if let Some(len) = len {
                    delete.execute(params![seq])?;
                    removed += 1;
                    bytes += len as u64;
                }
            }
            tx.prepare_cached("SELECT accepted FROM spool ORDER BY seq LIMIT 1")?
                .query_row([], |r| r.get::<_, i64>(0))
                .optional()
        })?;
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.messages = s.messages.saturating_sub(removed);
        s.bytes = s.bytes.saturating_sub(bytes);
        s.oldest = oldest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on both routes: the writer thread (`fsync`) and the inline writer.

    fn entry(data: &'static str) -> NewEntry {
        NewEntry {
            topic: "t".into(),
            event: None,
            data: Bytes::from_static(data.as_bytes()),
            key: None,
        }
    }

    /// A made key never names two messages: seqs are not reused after a removal, nor after
    /// the spool is opened again, and the id stays.
    #[tokio::test]
    async fn made_keys_are_never_reused_and_the_id_is_kept() {
        for fsync in [false, true] {
            made_keys_are_never_reused_and_the_id_is_kept_on(fsync).await;
        }
    }

    async fn made_keys_are_never_reused_and_the_id_is_kept_on(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), fsync, 1 << 20, 100).unwrap();
        let id = spool.id.to_string();
        let first = spool
            .append(vec![entry("a"), entry("b")], false)
            .await
            .unwrap();
        assert_eq!(first[1].key, format!("{id}-2"));
        spool
            .remove(vec![(1, Outcome::Deferred), (2, Outcome::Deferred)])
            .await
            .unwrap();
        assert!(spool.pending(10, 1 << 20).await.unwrap().is_empty());
        assert_eq!(spool.stats().messages, 0);
        drop(spool);
        // The writer thread ends once every handle is gone; the lock goes with the last one.
        let mut reopened = Spool::open(dir.path(), fsync, 1 << 20, 100);
        for _ in 0..500 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            reopened = Spool::open(dir.path(), fsync, 1 << 20, 100);
        }
        let reopened = reopened.unwrap();
        assert_eq!(&*reopened.id, id);
        let next = reopened.append(vec![entry("c")], false).await.unwrap();
        assert_eq!(next[0].key, format!("{id}-3"));
        let pending = reopened.pending(10, 1 << 20).await.unwrap();
        assert_eq!(
            (pending.len(), pending[0].key.as_str()),
            (1, next[0].key.as_str())
        );
    }

    #[tokio::test]
    async fn a_full_spool_stores_nothing_of_an_append() {
        for fsync in [false, true] {
            a_full_spool_stores_nothing_of_an_append_on(fsync).await;
        }
    }

    async fn a_full_spool_stores_nothing_of_an_append_on(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), fsync, 3, 100).unwrap();
        spool.append(vec![entry("ab")], false).await.unwrap();
        assert!(matches!(
            spool.append(vec![entry("c"), entry("d")], false).await,
            Err(SpoolError::Full)
        ));
        assert_eq!((spool.stats().messages, spool.stats().bytes), (1, 2));
        assert_eq!(spool.pending(10, 1 << 20).await.unwrap().len(), 1);
    }

    /// The forwarder's read of an empty spool waits for the next append and gets exactly the
    /// entries it stored, in order, within the read's limits; the rest is read from the
    /// database; a read of a spool holding entries answers at once.
    #[tokio::test]
    async fn a_read_of_an_empty_spool_is_handed_the_next_append() {
        for fsync in [false, true] {
            a_read_of_an_empty_spool_is_handed_the_next_append_on(fsync).await;
        }
    }

    async fn a_read_of_an_empty_spool_is_handed_the_next_append_on(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), fsync, 1 << 20, 100).unwrap();
        let reader = spool.clone();
        let read = tokio::spawn(async move { reader.next(Lane::ALL, 2, 1 << 20).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!read.is_finished(), "a read of an empty spool waits");
        let appended = spool
            .append(vec![entry("a"), entry("b"), entry("c")], true)
            .await
            .unwrap();
        let got = read.await.unwrap().unwrap();
        let got: Vec<_> = got
            .iter()
            .map(|e| (e.seq, e.key.clone(), e.data.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    appended[0].seq,
                    appended[0].key.clone(),
                    Bytes::from_static(b"a")
                ),
                (
                    appended[1].seq,
                    appended[1].key.clone(),
                    Bytes::from_static(b"b")
                ),
            ]
        );
        // The waiters were registered before the read was answered.
        let done = vec![
            (appended[0].seq, Outcome::Deferred),
            (appended[1].seq, Outcome::Deferred),
        ];
        spool.remove(done).await.unwrap();
        let mut appended = appended;
        let first = appended.remove(0).outcome.unwrap();
        assert!(matches!(first.await, Ok(Outcome::Deferred)));
        let rest = spool.next(Lane::ALL, 10, 1 << 20).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].data, Bytes::from_static(b"c"));
    }

    /// Each lane reads only the entries of its topics, in acceptance order; a lane's parked
    /// read is not woken by another lane's append, and is handed its own lane's entries.
    #[tokio::test]
    async fn lanes_read_their_own_topics_in_order() {
        for fsync in [false, true] {
            lanes_read_their_own_topics_in_order_on(fsync).await;
        }
    }

    async fn lanes_read_their_own_topics_in_order_on(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), fsync, 1 << 20, 100).unwrap();
        let lanes = 4;
        let lane_of = |t: &str| {
            (0..lanes)
                .find(|&index| {
                    Lane {
                        index,
                        count: lanes,
                    }
                    .holds(t)
                })
                .unwrap()
        };
        // Two topics in different lanes.
        let a = "a".to_string();
        let b = (0..100)
            .map(|i| format!("b{i}"))
            .find(|t| lane_of(t) != lane_of(&a))
            .unwrap();
        let (la, lb) = (
            Lane {
                index: lane_of(&a),
                count: lanes,
            },
            Lane {
                index: lane_of(&b),
                count: lanes,
            },
        );
        let on = |topic: &str, data: &'static str| NewEntry {
            topic: topic.into(),
            ..entry(data)
        };
        let reader = spool.clone();
        let read_b = tokio::spawn(async move { reader.next(lb, 10, 1 << 20).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        spool
            .append(vec![on(&a, "a1"), on(&a, "a2")], false)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !read_b.is_finished(),
            "another lane's append leaves b's read parked"
        );
        spool
            .append(vec![on(&b, "b1"), on(&a, "a3"), on(&b, "b2")], false)
            .await
            .unwrap();
        let got: Vec<Bytes> = read_b
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(got, [Bytes::from_static(b"b1"), Bytes::from_static(b"b2")]);
        let got: Vec<Bytes> = spool
            .next(la, 10, 1 << 20)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(
            got,
            [
                Bytes::from_static(b"a1"),
                Bytes::from_static(b"a2"),
                Bytes::from_static(b"a3")
            ]
        );
        assert_eq!(spool.pending(10, 1 << 20).await.unwrap().len(), 5);
    }
}
