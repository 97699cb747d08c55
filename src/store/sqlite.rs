//! The `sqlite` engine, the default: embedded, bundled SQLite in WAL mode.
//!
//! One writer thread owns the only write connection. It drains its channel, commits every
//! queued operation in one transaction (group commit), then answers each caller: under
//! concurrency, one commit (and at `durability = machine`, one fsync) serves many publishes.
//! Between groups it applies retention in small chunks so publishers never wait on a long
//! delete. Reads run on separate connections beside the writer (WAL), each in one snapshot.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use super::{
    Appended, BoxFuture, CommitFeed, FeedSlot, IDEMPOTENCY_TTL, Log, LogBounds, ReadBatch,
    Retention, StoreError, StoreResult, TopicInfo,
};
use crate::model::{
    EventName, Job, JobId, JobState, Message, Millis, NewMessage, Seq, Topic, fingerprint,
    now_millis,
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
/// Most operations committed in one group.
const MAX_GROUP: usize = 1024;
/// Most rows a retention step deletes in one transaction.
const RETENTION_CHUNK: u64 = 2000;
const TICK: Duration = Duration::from_millis(500);
const READ_POOL: usize = 8;

const SCHEMA: &str = "
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

enum Op {
    Append {
        batch: Vec<NewMessage>,
        reply: oneshot::Sender<StoreResult<Vec<Appended>>>,
    },
    Delete {
        topic: Topic,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    /// Any other write, run inside the group's transaction; its answer is sent once the
    /// group commits (or fails).
    Exec(ExecFn),
}

type Deferred = Box<dyn FnOnce(StoreResult<()>) + Send>;
type ExecFn = Box<dyn FnOnce(&Transaction<'_>, Millis) -> rusqlite::Result<Deferred> + Send>;

/// The `sqlite` engine handle. Cheap to share: the writer is a thread behind a channel and
/// the read connections sit in a small pool.
pub struct SqliteLog {
    writer: Mutex<Option<mpsc::Sender<Op>>>,
    readers: Arc<ReadPool>,
    feed: FeedSlot,
}

struct ReadPool {
    path: PathBuf,
    // A std mutex: held only to push or pop a connection, never across an await.
    idle: Mutex<Vec<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteLog {
    /// Opens (creating if needed) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, retention: Retention, durability: Durability) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(unavailable)?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Machine => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000;"
        ))
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        let topics = load_topics(&conn).map_err(unavailable)?;
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
            .map_err(unavailable)?;
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
                .map_err(|_| unavailable("the sqlite writer has stopped")),
            None => Err(unavailable("the store is closed")),
        }
    }

    async fn call<T>(&self, op: Op, rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
        self.send(op)?;
        rx.await
            .unwrap_or_else(|_| Err(unavailable("the sqlite writer has stopped")))
    }

    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let pool = self.readers.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || pool.run(f))
                .await
                .map_err(unavailable)?
        })
    }
}

impl ReadPool {
    fn run<T>(&self, f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>) -> StoreResult<T> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path).map_err(unavailable)?;
                conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
                    .map_err(unavailable)?;
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
            .map_err(unavailable);
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

fn time_at(tx: &Transaction<'_>, id: i64, seq: Seq) -> rusqlite::Result<Option<Millis>> {
    tx.prepare_cached("SELECT time FROM messages WHERE topic_id = ?1 AND seq = ?2")?
        .query_row(params![id, seq as i64], |r| r.get(0))
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
        self.with_reader(move |tx| {
            let Some((id, bounds)) = read_bounds(tx, &topic)? else {
                return Ok(ReadBatch::default());
            };
            let mut stmt = tx.prepare_cached(
                "SELECT seq, time, event, data FROM messages
                 WHERE topic_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows =
                stmt.query(params![id, after.min(i64::MAX as u64) as i64, limit as i64])?;
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
        })
    }

    fn bounds(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<LogBounds>>> {
        let topic = topic.clone();
        self.with_reader(move |tx| Ok(read_bounds(tx, &topic)?.map(|(_, b)| b)))
    }

    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>> {
        let topic = topic.clone();
        self.with_reader(move |tx| {
            let Some((id, bounds)) = read_bounds(tx, &topic)? else {
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
        })
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        self.with_reader(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT name, head, first_seq, msg_count, bytes, last_time FROM topics ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
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
        })
    }

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>> {
        let topic = topic.clone();
        self.with_reader(move |tx| {
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
        })
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

    fn take_commits(&self) -> Option<CommitFeed> {
        self.feed.take()
    }

    fn job_create(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        self.exec(move |tx, _now| {
            let fp = fingerprint(&[&job.payload]) as i64;
            if let Some(key) = &idempotency_key {
                let known: Option<(String, i64)> = tx
                    .prepare_cached("SELECT id, fingerprint FROM jobs WHERE queue = ?1 AND idem_key = ?2")?
                    .query_row(params![job.queue.as_str(), key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((id, known_fp)) = known {
                    if known_fp != fp {
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
                fp
            ])?;
            Ok(Ok((job, false)))
        })
    }

    fn job_get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let id = id.clone();
        self.with_reader(move |tx| select_job(tx, &id))
    }

    fn job_save(
        &self,
        job: Job,
        expected_lease: Option<String>,
    ) -> BoxFuture<'_, StoreResult<Job>> {
        self.exec(move |tx, _now| {
            let stored: Option<Option<String>> = tx
                .prepare_cached("SELECT lease FROM jobs WHERE id = ?1")?
                .query_row([job.id.as_str()], |r| r.get(0))
                .optional()?;
            match stored {
                None => Ok(Err(StoreError::UnknownJob(job.id.clone()))),
                Some(lease) if lease != expected_lease => {
                    Ok(Err(StoreError::JobChanged(job.id.clone())))
                }
                Some(_) => {
                    write_job(tx, &job)?;
                    Ok(Ok(job))
                }
            }
        })
    }

    fn job_claim(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let queue = queue.clone();
        self.exec(move |tx, _| {
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
        })
    }

    fn job_expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>> {
        self.with_reader(move |tx| {
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
        })
    }

    fn job_next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>> {
        let queue = queue.clone();
        self.with_reader(move |tx| {
            tx.prepare_cached(
                "SELECT MIN(run_at) FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at IS NOT NULL",
            )?
            .query_row([queue.as_str()], |r| r.get(0))
        })
    }
}

impl SqliteLog {
    /// Runs `f` in the writer's next group transaction; its value is returned once committed.
    fn exec<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>, Millis) -> rusqlite::Result<StoreResult<T>> + Send + 'static,
    ) -> BoxFuture<'_, StoreResult<T>> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Exec(Box::new(move |tx, now| {
            let value = f(tx, now)?;
            Ok(Box::new(move |committed: StoreResult<()>| {
                let _ = reply.send(committed.and(value));
            }) as Deferred)
        }));
        Box::pin(self.call(op, rx))
    }

    fn send_probe(&self) -> StoreResult<()> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(_) => Ok(()),
            None => Err(unavailable("the store is closed")),
        }
    }
}

/// The writer's cached copy of a `topics` row. The writer is the only one that changes
/// these rows, so its cache is authoritative.
#[derive(Clone, Debug)]
struct TopicRow {
    id: i64,
    head: Seq,
    first_seq: Seq,
    deleted_through: Seq,
    count: u64,
    bytes: u64,
    last_time: Millis,
    /// Time of the oldest retained message, to apply age retention without a query.
    oldest_time: Option<Millis>,
}

fn load_topics(conn: &Connection) -> rusqlite::Result<HashMap<Topic, TopicRow>> {
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

enum Reply {
    Deferred(Deferred),
    Append(
        oneshot::Sender<StoreResult<Vec<Appended>>>,
        StoreResult<Vec<Appended>>,
    ),
    Delete(oneshot::Sender<StoreResult<bool>>, bool),
    Close(oneshot::Sender<()>),
}

struct Writer {
    conn: Connection,
    topics: HashMap<Topic, TopicRow>,
    retention: Retention,
    /// Committed messages go here, in commit order, for the hub's fan-out.
    feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut ops = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(op) => ops.push(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while ops.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if !ops.is_empty() && self.commit_group(ops) {
                return;
            }
            if Instant::now() >= next_tick {
                let more = self.retention_step();
                next_tick = Instant::now() + if more { Duration::ZERO } else { TICK };
            }
        }
    }

    /// Commits every op in one transaction and answers them. Returns true after a `Close`.
    fn commit_group(&mut self, ops: Vec<Op>) -> bool {
        let started = Instant::now();
        metrics::histogram!("plexus_store_commit_ops").record(ops.len() as f64);
        let mut replies = Vec::with_capacity(ops.len());
        let mut dirty: HashSet<Topic> = HashSet::new();
        let mut committed: Vec<Arc<Message>> = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            let now = now_millis();
            for op in ops {
                match op {
                    Op::Append { batch, reply } => {
                        let result = apply_append(
                            &tx,
                            &mut self.topics,
                            &mut dirty,
                            &mut committed,
                            batch,
                            now,
                        )?;
                        replies.push(Reply::Append(reply, result));
                    }
                    Op::Delete { topic, reply } => {
                        let found = apply_delete(&tx, &mut self.topics, &topic)?;
                        replies.push(Reply::Delete(reply, found));
                    }
                    Op::Close { reply } => replies.push(Reply::Close(reply)),
                    Op::Exec(f) => replies.push(Reply::Deferred(f(&tx, now)?)),
                }
            }
            for topic in &dirty {
                if let Some(row) = self.topics.get(topic) {
                    save_row(&tx, row)?;
                }
            }
            tx.commit()
        })();
        let mut closing = false;
        metrics::histogram!("plexus_store_commit_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                if !committed.is_empty() {
                    let _ = self.feed.send(committed);
                }
                for reply in replies {
                    match reply {
                        Reply::Deferred(done) => done(Ok(())),
                        Reply::Append(tx, result) => {
                            let _ = tx.send(result);
                        }
                        Reply::Delete(tx, found) => {
                            let _ = tx.send(Ok(found));
                        }
                        Reply::Close(tx) => {
                            closing = true;
                            let _ = tx.send(());
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite commit failed; the whole group is refused");
                // The cache ran ahead of the rolled-back transaction: reload it.
                match load_topics(&self.conn) {
                    Ok(topics) => self.topics = topics,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload topics after a failed commit")
                    }
                }
                for reply in replies {
                    match reply {
                        Reply::Deferred(done) => done(Err(unavailable(&e))),
                        Reply::Append(tx, _) => {
                            let _ = tx.send(Err(unavailable(&e)));
                        }
                        Reply::Delete(tx, _) => {
                            let _ = tx.send(Err(unavailable(&e)));
                        }
                        Reply::Close(tx) => {
                            closing = true;
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
        closing
    }

    /// One bounded step of retention and idempotency-key expiry, each in its own short
    /// transaction. Returns true when work remains (the caller comes back at once, after
    /// serving whatever publishes queued meanwhile).
    fn retention_step(&mut self) -> bool {
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
                    if let Ok(topics) = load_topics(&self.conn) {
                        self.topics = topics;
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
        Ok((removed as u64, done))
    }
}

fn save_row(tx: &Transaction<'_>, row: &TopicRow) -> rusqlite::Result<()> {
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

type Known = Option<(u64, Appended)>;

fn lookup_key(tx: &Transaction<'_>, id: i64, key: &str, now: Millis) -> rusqlite::Result<Known> {
    tx.prepare_cached(
        "SELECT fingerprint, seq, time FROM idempotency
         WHERE topic_id = ?1 AND key = ?2 AND expires > ?3",
    )?
    .query_row(params![id, key, now], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            Appended {
                seq: r.get::<_, i64>(1)? as Seq,
                time: r.get(2)?,
                replayed: true,
            },
        ))
    })
    .optional()
}

/// Applies one publisher's batch inside the group's transaction. An idempotency conflict
/// refuses the batch before anything of it is written; an SQL error aborts the whole group.
fn apply_append(
    tx: &Transaction<'_>,
    topics: &mut HashMap<Topic, TopicRow>,
    dirty: &mut HashSet<Topic>,
    committed: &mut Vec<Arc<Message>>,
    batch: Vec<NewMessage>,
    now: Millis,
) -> rusqlite::Result<StoreResult<Vec<Appended>>> {
    let mut seen: HashMap<(&Topic, &str), u64> = HashMap::new();
    for msg in &batch {
        let Some(key) = msg.idempotency_key.as_deref() else {
            continue;
        };
        let known = match topics.get(&msg.topic) {
            Some(row) => lookup_key(tx, row.id, key, now)?.map(|(fp, _)| fp),
            None => None,
        }
        .or_else(|| seen.get(&(&msg.topic, key)).copied());
        match known {
            Some(fp) if fp != msg.fingerprint() => {
                return Ok(Err(StoreError::IdempotencyConflict {
                    topic: msg.topic.clone(),
                    key: key.to_owned(),
                }));
            }
            Some(_) => {}
            None => {
                seen.insert((&msg.topic, key), msg.fingerprint());
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
                msg.fingerprint() as i64,
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

fn apply_delete(
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
