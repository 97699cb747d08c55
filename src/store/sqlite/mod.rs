//! The `sqlite` engine, the default: embedded, bundled SQLite in WAL mode.
//!
//! One writer thread owns the only write connection. It drains its channel, commits every
//! queued operation in one transaction (group commit), then answers each caller: under
//! concurrency, one commit (and at `durability = machine`, one fsync) serves many publishes.
//! Between groups it applies retention in small chunks so publishers never wait on a long
//! delete. Reads run on separate connections beside the writer (WAL), each in one snapshot.
//!
//! Files, bottom up: `schema` (versions and migrations), `topics` (the writer's cache of the
//! topic rows), `jobs` (the job table), `read`, `append` and `retention` (the log's reads and
//! writes), `writer` (the thread and its group commit), and this file, the handle that
//! implements the store's traits by sending work to the writer or the read pool.

mod append;
mod consumers;
mod jobs;
mod read;
mod retention;
mod schema;
mod topics;
mod writer;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use self::read::ReadPool;
use self::topics::CommittedBounds;
use self::writer::{Deferred, Op, Writer, WriterHealth};
use super::consumers::{ConsumerStore, StoredConsumer};
use super::follow::{CommitFeed, FeedSlot, Follow};
use super::jobs::{JobEvents, JobStore};
use super::log::{BoxFuture, Log, MAX_TOPICS_TOTAL, ReadBatch, Retention};
use crate::model::{
    Appended, Job, JobId, LogBounds, Millis, NewMessage, Seq, StoreError, StoreResult, Topic,
    TopicInfo,
};

/// How durable an acknowledged message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a crash of the hub (WAL, synchronous=NORMAL).
    #[default]
    Process,
    /// Also survives a crash of the machine (fsync before the acknowledgement).
    Machine,
    /// Redis engines only: held by `redis.min_replicas` replicas of its shard before the
    /// acknowledgement, and shown to readers only then (Redis `WAIT`).
    Replicated,
}

const DB_FILE: &str = "plexus.db";
/// Held locked (exclusively) by the process that has the database open. Two hubs on one
/// database would each trust their own cache of the topic rows and refuse each other's
/// writes, and neither would see the other's commits; the second one stops at start instead.
const LOCK_FILE: &str = "plexus.lock";

/// The `sqlite` engine handle. Cheap to share: the writer is a thread behind a channel and
/// the read connections sit in a small pool.
pub struct SqliteLog {
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    readers: Arc<ReadPool>,
    feed: FeedSlot,
    /// The error of the writer's last commit, `None` once one succeeds: `/readyz` reports it.
    health: WriterHealth,
    /// The data directory's lock, released when the handle is dropped or the process ends;
    /// also the handle `/readyz` asks for the directory's free space.
    lock: std::fs::File,
    /// `limits.max_topics_total`, shared with the writer, which counts the topics.
    max_topics: Arc<std::sync::atomic::AtomicU64>,
    /// Each topic's committed bounds, kept by the writer.
    bounds: CommittedBounds,
}

impl SqliteLog {
    /// Opens the log in `dir` — creating the database, or migrating it to this binary's
    /// schema version — and starts its writer thread.
    pub fn open(dir: &Path, retention: Retention, durability: Durability) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(StoreError::unavailable)?;
        check_integrity(&conn, &path)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Machine => "FULL",
            Durability::Replicated => {
                return Err(StoreError::unavailable(
                    "durability \"replicated\" needs a redis storage",
                ));
            }
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000;"
        ))
        .map_err(StoreError::unavailable)?;
        let found = schema::migrate(&mut conn)
            .map_err(|e| StoreError::unavailable(format!("{}: {e}", path.display())))?;
        if found != schema::VERSION {
            tracing::info!(
                path = %path.display(),
                from = found,
                to = schema::VERSION,
                "sqlite schema migrated"
            );
        }
        let rehashed = jobs::rehash_legacy_keys(&conn).map_err(StoreError::unavailable)?;
        if rehashed > 0 {
            tracing::info!(
                jobs = rehashed,
                "job idempotency fingerprints rehashed as SHA-256"
            );
        }
        let topics = topics::load_topics(&conn).map_err(StoreError::unavailable)?;
        let (tx, rx) = mpsc::channel();
        let feed = FeedSlot::new();
        let health = WriterHealth::default();
        let max_topics = Arc::new(std::sync::atomic::AtomicU64::new(MAX_TOPICS_TOTAL));
        let bounds = CommittedBounds::of(&topics);
        let mut writer = Writer {
            health: health.clone(),
            conn,
            topics,
            bounds: bounds.clone(),
            retention,
            max_topics: max_topics.clone(),
            feed: feed.sender(),
        };
        std::thread::Builder::new()
            .name("plexus-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::unavailable)?;
        Ok(SqliteLog {
            max_topics,
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(ReadPool::new(path)),
            feed,
            health,
            lock,
            bounds,
        })
    }

    fn send(&self, op: Op) -> StoreResult<()> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx
                .send(op)
                .map_err(|_| StoreError::unavailable("the sqlite writer has stopped")),
            None => Err(StoreError::unavailable("the store is closed")),
        }
    }

    async fn call<T>(&self, op: Op, rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
        self.send(op)?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::unavailable("the sqlite writer has stopped")))
    }

    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let pool = self.readers.clone();
        Box::pin(async move {
            let turn = pool
                .gate
                .clone()
                .acquire_owned()
                .await
                .map_err(StoreError::unavailable)?;
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                pool.run(f)
            })
            .await
            .map_err(StoreError::unavailable)?
        })
    }

    /// Runs `f` in the writer's next group transaction with the messages `events` makes of
    /// its value (nothing when it failed): one commit for both.
    fn exec_announced<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<StoreResult<T>> + Send + 'static,
        events: impl FnOnce(&T) -> Vec<NewMessage> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let (reply, rx) = oneshot::channel();
        let op = Op::ExecAppend(Box::new(move |tx, _now| {
            let value = f(tx)?;
            let batch = value.as_ref().map_or_else(|_| Vec::new(), events);
            let done = Box::new(move |committed: StoreResult<()>| {
                let _ = reply.send(committed.and(value));
            }) as Deferred;
            Ok((batch, done))
        }));
        Box::pin(self.call(op, rx))
    }

    fn send_probe(&self) -> StoreResult<()> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(_) => Ok(()),
            None => Err(StoreError::unavailable("the store is closed")),
        }
    }
}

/// Refuses a malformed database (`PRAGMA quick_check`): a hub started on one would answer
/// reads with errors while `/readyz` said it was fine, and keep writing into the broken file.
/// Free space the data directory's file system must keep for the hub to be ready: a commit,
/// its WAL growth and a checkpoint fit in it with room to spare, so `/readyz` turns `503`
/// (and a balancer sends new clients elsewhere) before commits start failing on a full disk.
pub const DISK_RESERVE_BYTES: u64 = 4 << 20;

/// Whether the file system holding `file` has [`DISK_RESERVE_BYTES`] free for this process
/// (blocks available to unprivileged users, as SQLite's writes are).
fn disk_room(file: &std::fs::File) -> StoreResult<()> {
    let stat = rustix::fs::fstatvfs(file)
        .map_err(|e| StoreError::unavailable(format!("cannot read the disk's free space: {e}")))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < DISK_RESERVE_BYTES {
        return Err(StoreError::unavailable(format!(
            "the data directory's disk is full: {free} bytes free, {DISK_RESERVE_BYTES} needed"
        )));
    }
    Ok(())
}

fn check_integrity(conn: &Connection, path: &Path) -> StoreResult<()> {
    let problems: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    let problems = match problems {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => return Ok(()),
        // One line for the user: sqlite puts a newline between the problems of one row.
        Ok(rows) => rows.join("; ").replace('\n', "; "),
        Err(e) => e.to_string(),
    };
    Err(StoreError::unavailable(format!(
        "the database {} is malformed (PRAGMA quick_check: {problems}); plexus will not serve \
         from it: restore it from a backup, or move it away to start with an empty store",
        path.display()
    )))
}

/// Takes the data directory's lock (see [`LOCK_FILE`]) and writes this process's id in it, so
/// the message of a second hub can name the first.
fn lock_dir(dir: &Path) -> StoreResult<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            return Err(StoreError::unavailable(format!(
                "another plexus{holder} is using the data directory {}: it holds the lock {}; \
                 stop it, or give this one a data directory of its own (--data-dir)",
                dir.display(),
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::unavailable(format!(
                "cannot lock {}: {e}",
                path.display()
            )));
        }
    }
    // Only informative: a failure to record the pid does not stop the hub.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

impl Log for SqliteLog {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, StoreResult<Vec<Appended>>> {
        let (reply, rx) = oneshot::channel();
        Box::pin(self.call(Op::Append { batch, reply }, rx))
    }

    fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, StoreResult<ReadBatch>> {
        let topic = topic.clone();
        self.with_reader(move |tx| read::messages(tx, &topic, after, limit, max_bytes))
    }

    fn bounds(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<LogBounds>>> {
        let bounds = self.bounds.get(topic);
        Box::pin(async move { Ok(bounds) })
    }

    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>> {
        let topic = topic.clone();
        self.with_reader(move |tx| read::seek_time(tx, &topic, time))
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        self.with_reader(read::topics)
    }

    fn topics_page(
        &self,
        after: Option<Topic>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        self.with_reader(move |tx| read::topics_page(tx, after.as_ref(), limit))
    }

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>> {
        let topic = topic.clone();
        self.with_reader(move |tx| read::topic(tx, &topic))
    }

    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>> {
        let (reply, rx) = oneshot::channel();
        Box::pin(self.call(
            Op::Delete {
                topic: topic.clone(),
                reply,
            },
            rx,
        ))
    }

    /// Ready when the writer runs, its last commit succeeded (or a probe write succeeds now)
    /// and a read of both tables' last pages works. A failed commit (a full disk, a malformed
    /// page, an I/O error) keeps the store unready until a write succeeds again.
    fn limit_topics(&self, max: u64) {
        self.max_topics
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        // A full disk is seen before the next commit fails on it (docs/API.md, `/readyz`).
        let room = disk_room(&self.lock);
        let alive = self.send_probe();
        let failing = self.health.last_error().is_some();
        // Only while failing: a healthy hub's `/readyz` never writes. The probe rewrites the
        // header page, so it needs the disk like any commit.
        let probe = failing.then(|| {
            self.exec_announced(
                |tx| {
                    tx.pragma_update(None, "user_version", schema::VERSION)?;
                    Ok(Ok(()))
                },
                |_| Vec::new(),
            )
        });
        let read = self.with_reader(read::check);
        Box::pin(async move {
            room?;
            alive?;
            if let Some(probe) = probe {
                probe.await?;
            }
            read.await
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Op::Close { reply }).is_ok();
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        Box::pin(async move {
            if sent {
                let _ = rx.await;
            }
        })
    }
}

impl Follow for SqliteLog {
    fn take_commits(&self) -> Option<CommitFeed> {
        self.feed.take()
    }
}

impl JobStore for SqliteLog {
    fn create_announced(
        &self,
        job: Job,
        idempotency_key: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        self.exec_announced(
            move |tx| jobs::create(tx, job, idempotency_key),
            move |(job, replayed)| if *replayed { Vec::new() } else { events(job) },
        )
    }

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let id = id.clone();
        self.with_reader(move |tx| jobs::get(tx, &id))
    }

    fn save_announced(
        &self,
        job: Job,
        expected_lease: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Job>> {
        self.exec_announced(move |tx| jobs::save(tx, job, expected_lease), events)
    }

    fn claim_announced(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let queue = queue.clone();
        self.exec_announced(
            move |tx| jobs::claim(tx, &queue, now, lease, lease_ms),
            move |claimed| claimed.as_ref().map_or_else(Vec::new, events),
        )
    }

    fn purge_finished(&self, before: Millis, limit: usize) -> BoxFuture<'_, StoreResult<usize>> {
        let (reply, rx) = oneshot::channel();
        Box::pin(self.call(
            Op::PurgeJobs {
                before,
                limit,
                reply,
            },
            rx,
        ))
    }

    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>> {
        self.with_reader(move |tx| jobs::expired(tx, now, limit))
    }

    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>> {
        let queue = queue.clone();
        self.with_reader(move |tx| jobs::next_due(tx, &queue))
    }
}

impl ConsumerStore for SqliteLog {
    fn consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<Option<StoredConsumer>>> {
        let name = name.to_string();
        self.with_reader(move |tx| consumers::get(tx, &name))
    }

    fn put_consumer(
        &self,
        name: &str,
        expected: u64,
        body: Vec<u8>,
        events: Vec<NewMessage>,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>> {
        let name = name.to_string();
        // The record and its dead letters are one commit; a lost race commits neither.
        // Queued now, not when first polled (see the trait): the consumer layer queues the
        // next write of a consumer before this one's group commits.
        let (reply, rx) = oneshot::channel();
        let op = Op::ExecAppend(Box::new(move |tx, _now| {
            let value = consumers::put(tx, &name, expected, &body)?;
            let batch = match &value {
                Ok(Some(_)) => events,
                _ => Vec::new(),
            };
            let done = Box::new(move |committed: StoreResult<()>| {
                let _ = reply.send(committed.and(value));
            }) as Deferred;
            Ok((batch, done))
        }));
        let sent = self.send(op);
        Box::pin(async move {
            sent?;
            rx.await
                .unwrap_or_else(|_| Err(StoreError::unavailable("the sqlite writer has stopped")))
        })
    }

    fn delete_consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let name = name.to_string();
        self.exec_announced(move |tx| consumers::delete(tx, &name), |_| Vec::new())
    }

    fn consumers(&self) -> BoxFuture<'_, StoreResult<Vec<StoredConsumer>>> {
        self.with_reader(consumers::all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::Log;

    fn message(topic: &str) -> NewMessage {
        NewMessage {
            topic: topic.parse().unwrap(),
            event: None,
            data: bytes::Bytes::from_static(b"x"),
            idempotency_key: None,
        }
    }

    /// A consumer write is queued by the call, before its future is polled: a second write
    /// over the version the first will write, called after it, lands after it.
    #[tokio::test]
    async fn consumer_writes_apply_in_call_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
        let first = log.put_consumer("c", 0, b"one".to_vec(), Vec::new());
        let second = log.put_consumer("c", 1, b"two".to_vec(), vec![message("_dead.c")]);
        // Polled in the other order: the order of the calls decides.
        assert_eq!(second.await.unwrap(), Some(2));
        assert_eq!(first.await.unwrap(), Some(1));
        let stored = log.consumer("c").await.unwrap().unwrap();
        assert_eq!((stored.version, stored.body), (2, b"two".to_vec()));
        let third = log.put_consumer("c", 1, b"stale".to_vec(), Vec::new());
        assert_eq!(third.await.unwrap(), None);
        log.close().await;
    }

    /// `ping` (and so `/readyz`) fails while the writer cannot commit, and recovers once a
    /// write goes through again. Before, it only ran `SELECT 1` on a reader, which a WAL
    /// database answers whatever the writer's state.
    #[tokio::test]
    async fn ping_fails_while_commits_fail_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
        log.ping().await.unwrap();
        // Another connection holds the write lock: the writer's commits fail (busy).
        let blocker = Connection::open(dir.path().join(DB_FILE)).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(log.append(vec![message("a")]).await.is_err());
        assert!(log.ping().await.is_err(), "not ready while writes fail");
        blocker.execute_batch("ROLLBACK").unwrap();
        log.ping().await.unwrap();
        assert!(log.append(vec![message("a")]).await.is_ok());
        log.close().await;
    }

    /// `ping` reads the tables, not `SELECT 1`: a database whose tables cannot be read is not
    /// ready.
    #[tokio::test]
    async fn ping_fails_when_the_tables_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
        log.ping().await.unwrap();
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch("DROP TABLE messages")
            .unwrap();
        assert!(log.ping().await.is_err());
        log.close().await;
    }
}
