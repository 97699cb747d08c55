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
use self::writer::{Deferred, Op, Writer};
use super::follow::{CommitFeed, FeedSlot, Follow};
use super::jobs::{JobEvents, JobStore};
use super::log::{BoxFuture, Log, ReadBatch, Retention};
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
}

const DB_FILE: &str = "plexus.db";

/// The `sqlite` engine handle. Cheap to share: the writer is a thread behind a channel and
/// the read connections sit in a small pool.
pub struct SqliteLog {
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    readers: Arc<ReadPool>,
    feed: FeedSlot,
}

impl SqliteLog {
    /// Opens the log in `dir` — creating the database, or migrating it to this binary's
    /// schema version — and starts its writer thread.
    pub fn open(dir: &Path, retention: Retention, durability: Durability) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(StoreError::unavailable)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Machine => "FULL",
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
        let topics = topics::load_topics(&conn).map_err(StoreError::unavailable)?;
        let (tx, rx) = mpsc::channel();
        let feed = FeedSlot::new();
        let mut writer = Writer {
            conn,
            topics,
            retention,
            feed: feed.sender(),
        };
        std::thread::Builder::new()
            .name("plexus-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::unavailable)?;
        Ok(SqliteLog {
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            feed,
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
            tokio::task::spawn_blocking(move || pool.run(f))
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
        let topic = topic.clone();
        self.with_reader(move |tx| read::bounds(tx, &topic))
    }

    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>> {
        let topic = topic.clone();
        self.with_reader(move |tx| read::seek_time(tx, &topic, time))
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        self.with_reader(read::topics)
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

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        let alive = self.send_probe();
        let read = self.with_reader(|tx| tx.query_row("SELECT 1", [], |_| Ok(())));
        Box::pin(async move {
            alive?;
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
