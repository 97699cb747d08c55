//! The writer thread: the only write connection. It drains its channel, commits every
//! queued operation in one transaction (group commit), then answers each caller; between
//! groups it runs a retention step.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use super::append::{admit, apply_append, apply_delete, apply_drop_topic};
use super::retention::Retainer;
use super::topics::{CommittedBounds, TopicRow, load_topics, save_row};
use crate::model::{
    Appended, Message, Millis, NewMessage, StoreError, StoreResult, Topic, now_millis,
};
use crate::store::log::Retention;

/// Most operations committed in one group.
const MAX_GROUP: usize = 1024;
const TICK: Duration = Duration::from_millis(500);

pub(super) enum Op {
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
    /// Job retention: finished jobs changed before `before`, with their topics.
    PurgeJobs {
        before: Millis,
        limit: usize,
        reply: oneshot::Sender<StoreResult<usize>>,
    },
    /// Any other write (a job's), run inside the group's transaction with the messages it
    /// commits with it (the job's events): both or neither are kept. Its answer is sent once
    /// the group commits (or fails).
    ExecAppend(ExecAppendFn),
}

pub(super) type Deferred = Box<dyn FnOnce(StoreResult<()>) + Send>;
pub(super) type ExecAppendFn = Box<
    dyn FnOnce(&Transaction<'_>, Millis) -> rusqlite::Result<(Vec<NewMessage>, Deferred)> + Send,
>;

enum Reply {
    Deferred(Deferred),
    Append(
        oneshot::Sender<StoreResult<Vec<Appended>>>,
        StoreResult<Vec<Appended>>,
    ),
    Delete(oneshot::Sender<StoreResult<bool>>, bool),
    Close(oneshot::Sender<()>),
}

/// The outcome of the writer's last commit, shared with the handle's `ping`.
#[derive(Clone, Default)]
pub(super) struct WriterHealth(Arc<Mutex<Option<String>>>);

impl WriterHealth {
    pub(super) fn last_error(&self) -> Option<String> {
        // A std mutex: held only to read or replace the value.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, error: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

pub(super) struct Writer {
    pub(super) health: WriterHealth,
    pub(super) conn: Connection,
    pub(super) topics: HashMap<Topic, TopicRow>,
    /// The rows' bounds as committed, for the readers.
    pub(super) bounds: CommittedBounds,
    pub(super) retention: Retention,
    /// `limits.max_topics_total`, set by the handle.
    pub(super) max_topics: Arc<AtomicU64>,
    /// Committed messages go here, in commit order, for the hub's fan-out.
    pub(super) feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
}

impl Writer {
    pub(super) fn run(&mut self, rx: mpsc::Receiver<Op>) {
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
                let more = Retainer {
                    conn: &mut self.conn,
                    topics: &mut self.topics,
                    bounds: &self.bounds,
                    retention: self.retention,
                }
                .step();
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
        // Topics whose bounds change beside the appends' (`dirty`): deleted or dropped.
        let mut emptied: Vec<Topic> = Vec::new();
        let mut committed: Vec<Arc<Message>> = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            let now = now_millis();
            for op in ops {
                match op {
                    // On an error the op's reply is kept in `replies`, so its caller hears of
                    // the failure only after the writer's health says so (a `/readyz` right
                    // after a failed publish must not find the store healthy).
                    Op::Append { batch, reply } => {
                        match apply_append(
                            &tx,
                            &mut self.topics,
                            &mut dirty,
                            &mut committed,
                            batch,
                            now,
                            self.max_topics.load(Ordering::Relaxed),
                        ) {
                            Ok(result) => replies.push(Reply::Append(reply, result)),
                            Err(e) => {
                                replies.push(Reply::Append(reply, Ok(Vec::new())));
                                return Err(e);
                            }
                        }
                    }
                    Op::Delete { topic, reply } => {
                        match apply_delete(&tx, &mut self.topics, &topic) {
                            Ok(found) => {
                                replies.push(Reply::Delete(reply, found));
                                emptied.push(topic);
                            }
                            Err(e) => {
                                replies.push(Reply::Delete(reply, false));
                                return Err(e);
                            }
                        }
                    }
                    Op::Close { reply } => replies.push(Reply::Close(reply)),
                    Op::PurgeJobs {
                        before,
                        limit,
                        reply,
                    } => {
                        let ids = super::jobs::finished_before(&tx, before, limit)?;
                        for id in &ids {
                            super::jobs::delete(&tx, id)?;
                            let topic = id.topic();
                            apply_drop_topic(&tx, &mut self.topics, &topic)?;
                            emptied.push(topic);
                        }
                        let purged = ids.len();
                        replies.push(Reply::Deferred(Box::new(move |committed| {
                            let _ = reply.send(committed.map(|()| purged));
                        })));
                    }
                    Op::ExecAppend(f) => {
                        // A job write whose events would create a topic beyond the cap is
                        // undone: neither the job nor its events are kept.
                        tx.execute_batch("SAVEPOINT job_write")?;
                        let (batch, done) = f(&tx, now)?;
                        let max_topics = self.max_topics.load(Ordering::Relaxed);
                        if let Err(e) = admit(&self.topics, &batch, max_topics) {
                            tx.execute_batch("ROLLBACK TO job_write; RELEASE job_write")?;
                            replies.push(Reply::Deferred(Box::new(move |_| done(Err(e)))));
                            continue;
                        }
                        tx.execute_batch("RELEASE job_write")?;
                        replies.push(Reply::Deferred(done));
                        if !batch.is_empty() {
                            // Messages without idempotency keys: no conflict can refuse them.
                            if let Err(e) = apply_append(
                                &tx,
                                &mut self.topics,
                                &mut dirty,
                                &mut committed,
                                batch,
                                now,
                                max_topics,
                            )? {
                                tracing::error!(error = %e, "a job's events were refused");
                            }
                        }
                    }
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
                self.health.set(None);
                self.bounds
                    .publish(&self.topics, dirty.iter().chain(&emptied));
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
                self.health.set(Some(e.to_string()));
                // The cache ran ahead of the rolled-back transaction: reload it.
                match load_topics(&self.conn) {
                    Ok(topics) => self.topics = topics,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload topics after a failed commit")
                    }
                }
                for reply in replies {
                    match reply {
                        Reply::Deferred(done) => done(Err(StoreError::unavailable(&e))),
                        Reply::Append(tx, _) => {
                            let _ = tx.send(Err(StoreError::unavailable(&e)));
                        }
                        Reply::Delete(tx, _) => {
                            let _ = tx.send(Err(StoreError::unavailable(&e)));
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
}
