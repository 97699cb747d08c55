//! The `redis` engine: the log in Redis, so nodes keep no state of their own and any node
//! serves any client. One Redis (`redis://HOST:PORT`) or a Redis Cluster
//! (`redis+cluster://HOST:PORT,HOST:PORT,…`).
//!
//! Keys; the topic or queue in braces is the hash tag, so each one's keys share a shard:
//! - `plexus:s:{T}` a Stream, one entry per message, entry id `SEQ-0`, fields `t` (ms),
//!   `e` (event, when there is one), `d` (payload);
//! - `plexus:m:{T}` a hash: `head` (the seq counter, which deletes and retention never lower),
//!   `ok` (the committed head: readers and the commit feed stop there; equal to `head` but
//!   under `durability = "replicated"`, where `commit.lua` raises it once replicas hold a
//!   write), `last` (time of the last message), `bytes` (payload retained), `del` (deleted
//!   through);
//! - `plexus:i:{T}:KEY` an idempotency key, `FINGERPRINT SEQ TIME` (the SHA-256 of event and
//!   payload in hex; a key from before SHA-256 holds an FNV-1a 64 in decimal), expiring after 24 h;
//! - `plexus:w:{T}:CALL` an append's receipt (its result, for 60 s), so that a call the client
//!   library repeats after a dropped connection does not append twice;
//! - the hub's job topics `_jobs.{id}` and `_queues.{Q}` under their queue's tag instead:
//!   `plexus:s:{Q}:_jobs.ID`, `plexus:m:{Q}:_jobs.ID`, `plexus:c:{Q}:_jobs.ID`, … (see
//!   `keys::Slot`), so a job and its events are one script on one slot. A release before this
//!   one kept them under `{_jobs.ID}`; a node carries such a topic's seq counter over (its old
//!   messages then read as deleted) and drops the old keys the first time it uses the topic;
//! - `plexus:topics` the set of topic names, its size the count that `limits.max_topics_total`
//!   caps (`topics_admit.lua`), and `{plexus:topics}:byname` the same names in a sorted set
//!   (scores 0), so that a page of the listing is one `ZRANGEBYLEX` (filled from the set at
//!   open when a release before this one left it short);
//! - `plexus:j:{Q}:ID` a job (a hash), `plexus:jr:{Q}` / `plexus:jd:{Q}` / `plexus:jl:{Q}` its
//!   queue's ready, delayed and running sorted sets, `plexus:jk:{Q}:KEY` a job idempotency key
//!   (24 h), `plexus:jq:ID` the queue of a job id, `plexus:queues` the set of queues,
//!   `plexus:jf:{Q}` the queue's finished jobs by finish time (for `jobs.retention`);
//! - `plexus:k:{consumers}:NAME` a durable consumer (a hash: `v` version, `b` body) and
//!   `plexus:k:{consumers}` the set of their names, on one shard.
//!
//! Every write of a topic is one Lua script (increment, append, trim, publish: atomic), and so
//! is every job write with its events (`job_create.lua`, `job_save.lua`). On one
//! Redis the script publishes the new messages on the channel `plexus:commits`; every node
//! subscribes to it. On a Redis Cluster it uses sharded Pub/Sub instead (`SPUBLISH` on
//! `plexus:c:{T}`, on the topic's own shard, so nothing crosses the cluster bus), and a node
//! subscribes (`SSUBSCRIBE`, over RESP3) to the channels of the topics its hub has readers
//! for. Either way each node feeds what arrives, in order, to its hub, its own publishes
//! included, so there is one path for local and remote commits. When a sharded subscription
//! is confirmed, the engine also feeds the topic's newest message, so a commit made between a
//! reader's store read and its subscription still reaches it. When the subscription comes back
//! after a drop, the engine feeds an empty batch and the hub re-checks the heads of the topics
//! it has readers for, so commits made meanwhile reach them without waiting for the next
//! publish.
//!
//! Under `durability = "replicated"` writes go on a connection of their own and each is
//! followed by Redis `WAIT` on the same connection and master; a topic's commit is published
//! by `commit.lua` after the `WAIT`, not by `append.lua` (docs/ARCHITECTURE.md, replicated
//! durability).
//!
//! Files, bottom up: `target` (URLs), `keys` (key and channel names), `core` (the connection,
//! the scripts, what every task shares); over them `read`, `append` (group commit, MULTI),
//! `jobs` and `feed` (the commit subscriptions), which never use each other; and this file,
//! the handle: `open`, and the store's traits, each method a call into one of them.

mod append;
mod consumers;
mod core;
mod feed;
mod jobs;
mod keys;
mod read;
mod target;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use super::consumers::{ConsumerStore, StoredConsumer};
use super::follow::{CommitFeed, FeedSlot, Follow};
use super::jobs::{JobEvents, JobStore};
use super::log::{BoxFuture, Log, MAX_TOPICS_TOTAL, ReadBatch, Retention};
use crate::model::{
    Appended, Job, JobId, LogBounds, Millis, NewMessage, Seq, StoreError, StoreResult, Topic,
    TopicInfo,
};

pub use self::core::Replication;
pub use self::target::RedisTarget;

use self::append::Pending;
use self::core::{Conn, Core, Scripts, Tally, check_acks, node_id, unavailable};
use self::feed::{Followed, Interest, feed_pushes, follow_commits, follow_interests, subscribe};
use self::keys::*;
use self::target::{redact, tcp_settings};

/// Longest a command may take before the node calls Redis unavailable. redis-rs defaults to
/// 500 ms, which a large script under load can exceed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Write connections under `replicated`. Each `WAIT` holds its connection (on a cluster, its
/// connection to that master) until the replicas answer, so writes of other topics spread
/// over a few instead of queueing behind one.
const WRITE_CONNECTIONS: usize = 4;

/// The `redis` engine.
pub struct RedisLog {
    /// The connection, scripts and retention, shared with the engine's tasks.
    core: Core,
    /// On a cluster: where follow/unfollow requests go (sharded Pub/Sub per topic).
    interests: Option<tokio::sync::mpsc::UnboundedSender<Interest>>,
    /// On a cluster: the topics the hub wants followed now.
    followed: Followed,
    /// Per topic with a flush running: the appends waiting for the next script call.
    pending: Pending,
    feed: FeedSlot,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RedisLog {
    /// Connects, and subscribes to the commit channel before returning, so no commit made
    /// after `open` is missed. With `replication` (`durability = "replicated"`) every write
    /// waits for its shard's replicas (see `docs/ARCHITECTURE.md`, the committed head).
    pub async fn open(
        target: &RedisTarget,
        retention: Retention,
        replication: Option<Replication>,
    ) -> Result<Self, String> {
        let feed = FeedSlot::new();
        let followed = Followed::default();
        let mut tasks = Vec::new();
        // A write's `WAIT` may hold its connection for the whole replica timeout, and more
        // writes queue behind it there.
        let write_timeout = replication.map_or(RESPONSE_TIMEOUT, |r| {
            RESPONSE_TIMEOUT + r.timeout.saturating_mul(4)
        });
        let (conn, mut writes, sharded) = match target {
            RedisTarget::Single(url) => {
                let shown = redact(url);
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| format!("{shown}: {e}"))?
                    .set_tcp_settings(tcp_settings());
                let client = redis::Client::open(info).map_err(|e| format!("{shown}: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(3);
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await
                    .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
                let mut writes = Vec::new();
                if replication.is_some() {
                    let config = config.set_response_timeout(Some(write_timeout));
                    for _ in 0..WRITE_CONNECTIONS {
                        let write = client
                            .get_connection_manager_with_config(config.clone())
                            .await
                            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
                        writes.push(Conn::Single(write));
                    }
                }
                let pubsub = subscribe(&client)
                    .await
                    .map_err(|e| format!("cannot subscribe to {CHANNEL} on {shown}: {e}"))?;
                tasks.push(tokio::spawn(follow_commits(client, pubsub, feed.sender())));
                (Conn::Single(manager), writes, None)
            }
            RedisTarget::Cluster(nodes) => {
                let shown: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .response_timeout(RESPONSE_TIMEOUT)
                    .connection_timeout(Duration::from_secs(5))
                    .tcp_settings(tcp_settings())
                    .build()
                    .map_err(|e| format!("{shown:?}: {e}"))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| format!("cannot connect to the cluster {shown:?}: {e}"))?;
                let mut writes = Vec::new();
                if replication.is_some() {
                    let writer = redis::cluster::ClusterClient::builder(nodes.clone())
                        .response_timeout(write_timeout)
                        .connection_timeout(Duration::from_secs(5))
                        .tcp_settings(tcp_settings())
                        .build()
                        .map_err(|e| format!("{shown:?}: {e}"))?;
                    for _ in 0..WRITE_CONNECTIONS {
                        let write = writer
                            .get_async_connection()
                            .await
                            .map_err(|e| format!("cannot connect to the cluster {shown:?}: {e}"))?;
                        writes.push(Conn::Cluster(write));
                    }
                }
                // Sharded subscriptions need RESP3; their messages arrive as pushes.
                let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
                let subscriber = redis::cluster::ClusterClient::builder(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .connection_timeout(Duration::from_secs(5))
                    .tcp_settings(tcp_settings())
                    .build()
                    .map_err(|e| format!("{shown:?}: {e}"))?
                    .get_async_connection()
                    .await
                    .map_err(|e| format!("cannot subscribe on the cluster {shown:?}: {e}"))?;
                (Conn::Cluster(conn), writes, Some((subscriber, push_rx)))
            }
        };
        // Under `replicated`, a connection that never writes counts the replicas: `WAIT 0 0`
        // there answers at once with every connected replica (its offset to wait for is 0).
        let probe = match (&replication, target) {
            (None, _) => None,
            (Some(_), RedisTarget::Single(url)) => Some(Conn::Single(
                redis::Client::open(url.as_str())
                    .map_err(|e| format!("{}: {e}", redact(url)))?
                    .get_connection_manager()
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?,
            )),
            (Some(_), RedisTarget::Cluster(nodes)) => Some(Conn::Cluster(
                redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(Duration::from_secs(5))
                    .tcp_settings(tcp_settings())
                    .build()
                    .map_err(|e| format!("redis cluster: {e}"))?
                    .get_async_connection()
                    .await
                    .map_err(|e| format!("cannot connect to the cluster: {e}"))?,
            )),
        };
        if writes.is_empty() {
            writes.push(conn.clone());
        }
        let core = Core {
            conn,
            writes: writes.into(),
            probe,
            replication,
            scripts: Arc::new(Scripts::new()),
            retention,
            sharded: sharded.is_some(),
            calls: Arc::new((node_id(), 0.into())),
            known: Arc::default(),
            slots: Arc::default(),
            max_topics: Arc::new(MAX_TOPICS_TOTAL.into()),
        };
        core.index_topic_names()
            .await
            .map_err(|e| format!("cannot index the topic names: {e}"))?;
        let interests = sharded.map(|(subscriber, pushes)| {
            let (interests, interest_rx) = tokio::sync::mpsc::unbounded_channel();
            tasks.push(tokio::spawn(follow_interests(
                subscriber,
                interest_rx,
                followed.clone(),
                core.clone(),
            )));
            tasks.push(tokio::spawn(feed_pushes(
                pushes,
                feed.sender(),
                core.clone(),
                followed.clone(),
                interests.clone(),
            )));
            interests
        });
        core.check_replicas().await;
        if replication.is_some() {
            // Loaded ahead: a first EVALSHA that finds no script still waits for its WAIT.
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(&core.scripts.append_code);
            if let Err(e) = core.writes[0].query::<String>(&load).await {
                tracing::warn!(error = %e, "redis: cannot load the append script yet");
            }
        }
        Ok(RedisLog {
            core,
            interests,
            followed,
            pending: Arc::default(),
            feed,
            tasks: Mutex::new(tasks),
        })
    }
}

impl Core {
    /// Says at start what the replicas mean for durability: an error when `replicated` cannot
    /// be met yet (the hub starts; `/readyz` answers 503 until it can), a warning when there
    /// are replicas but writes do not wait for them.
    async fn check_replicas(&self) {
        // `WAIT 0 0` answers at once: every replica has acknowledged a fresh connection.
        let (tally, wanted) = match self.replication {
            Some(r) => (Tally::Fewest, i64::from(r.min_replicas)),
            None => (Tally::Total, 0),
        };
        let probe = self.probe.as_ref().unwrap_or(&self.conn);
        match probe.replicas(0, Duration::ZERO, tally).await {
            Ok(fewest) if self.replication.is_some() && fewest < wanted => {
                tracing::error!(
                    replicas = fewest,
                    min_replicas = wanted,
                    "durability is replicated, but a Redis shard has fewer connected replicas \
                     than redis.min_replicas: publishes and job writes answer 503, and /readyz \
                     503, until enough replicas connect"
                );
            }
            Ok(total) if self.replication.is_none() && total > 0 => {
                tracing::warn!(
                    replicas = total,
                    "the Redis store has replicas, but durability is not replicated: an \
                     acknowledged message can be lost when a master fails over (set \
                     durability = \"replicated\")"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "redis: cannot count the replicas"),
        }
    }
}

impl Log for RedisLog {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, StoreResult<Vec<Appended>>> {
        Box::pin(append::append(&self.core, &self.pending, batch))
    }

    fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, StoreResult<ReadBatch>> {
        let topic = topic.clone();
        Box::pin(async move { self.core.read(&topic, after, limit, max_bytes).await })
    }

    fn bounds(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<LogBounds>>> {
        let topic = topic.clone();
        Box::pin(async move { Ok(self.read(&topic, 0, 0, 0).await?.bounds) })
    }

    fn seek_time(&self, topic: &Topic, time: Millis) -> BoxFuture<'_, StoreResult<Seq>> {
        let topic = topic.clone();
        Box::pin(async move { self.core.seek_time(&topic, time).await })
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        Box::pin(self.core.topic_infos())
    }

    fn topics_page(
        &self,
        after: Option<Topic>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        Box::pin(async move { self.core.topic_infos_page(after.as_ref(), limit).await })
    }

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>> {
        let topic = topic.clone();
        Box::pin(async move { self.core.topic_info(&topic).await })
    }

    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>> {
        let topic = topic.clone();
        Box::pin(async move { self.core.delete_topic(&topic).await })
    }

    fn limit_topics(&self, max: u64) {
        self.core
            .max_topics
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.core
                .conn
                .query::<String>(&redis::cmd("PING"))
                .await
                .map_err(unavailable)?;
            // Under `replicated`, a shard without enough replicas refuses every write.
            if let (Some(rep), Some(probe)) = (self.core.replication, &self.core.probe) {
                let fewest = probe
                    .replicas(0, Duration::ZERO, Tally::Fewest)
                    .await
                    .map_err(unavailable)?;
                check_acks(fewest, rep, "every shard")
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            }
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Appends already queued finish (for at most a few seconds), then the
            // subscriptions stop.
            for _ in 0..100 {
                if self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for task in self
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                task.abort();
            }
        })
    }
}

impl Follow for RedisLog {
    fn take_commits(&self) -> Option<CommitFeed> {
        self.feed.take()
    }

    fn shared(&self) -> bool {
        true
    }

    fn follow(&self, topic: &Topic) {
        if let Some(interests) = &self.interests {
            self.followed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(topic.clone());
            let _ = interests.send(Interest::Follow(topic.clone()));
        }
    }

    fn unfollow(&self, topic: &Topic) {
        if let Some(interests) = &self.interests {
            self.followed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(topic);
            let _ = interests.send(Interest::Unfollow(topic.clone()));
        }
    }
}

// A job and its events are one script (`job_create.lua`, `job_save.lua`): on a cluster the
// job's own topics share its queue's slot (see `keys::Slot`). An event on any other topic
// could not share it and is appended after the script, as a separate commit.
impl RedisLog {
    async fn announce(&self, events: Vec<NewMessage>) -> StoreResult<()> {
        if !events.is_empty() {
            append::append(&self.core, &self.pending, events).await?;
        }
        Ok(())
    }
}

// A consumer record and its dead letters are two commits here too (the letters' topic lives on
// another shard): the record first, so a crash between them loses a dead letter, never
// delivers a message again.
impl ConsumerStore for RedisLog {
    fn consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<Option<StoredConsumer>>> {
        let name = name.to_string();
        Box::pin(async move { self.core.load_consumer(&name).await })
    }

    fn put_consumer(
        &self,
        name: &str,
        expected: u64,
        body: Vec<u8>,
        events: Vec<NewMessage>,
    ) -> BoxFuture<'_, StoreResult<Option<u64>>> {
        let name = name.to_string();
        Box::pin(async move {
            let written = self.core.put_consumer(&name, expected, &body).await?;
            if written.is_some() {
                self.announce(events).await?;
            }
            Ok(written)
        })
    }

    fn delete_consumer(&self, name: &str) -> BoxFuture<'_, StoreResult<bool>> {
        let name = name.to_string();
        Box::pin(async move { self.core.delete_consumer(&name).await })
    }

    fn consumers(&self) -> BoxFuture<'_, StoreResult<Vec<StoredConsumer>>> {
        Box::pin(async move { self.core.all_consumers().await })
    }
}

impl JobStore for RedisLog {
    fn create_announced(
        &self,
        job: Job,
        idempotency_key: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        Box::pin(async move {
            let made = events(&job);
            let (job, replayed, outside) = self.core.create_job(job, idempotency_key, made).await?;
            self.announce(outside).await?;
            Ok((job, replayed))
        })
    }

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let id = id.clone();
        Box::pin(async move { self.core.get_job(&id).await })
    }

    fn save_announced(
        &self,
        job: Job,
        expected_lease: Option<String>,
        events: JobEvents,
    ) -> BoxFuture<'_, StoreResult<Job>> {
        Box::pin(async move {
            let expected = expected_lease.unwrap_or_default();
            let outside = self
                .core
                .save_job(&job, "lease", &expected, events(&job))
                .await?;
            self.announce(outside).await?;
            Ok(job)
        })
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
        Box::pin(async move {
            let claimed = self
                .core
                .claim_job(&queue, now, lease, lease_ms, &events)
                .await?;
            let Some((job, outside)) = claimed else {
                return Ok(None);
            };
            self.announce(outside).await?;
            Ok(Some(job))
        })
    }

    fn purge_finished(&self, before: Millis, limit: usize) -> BoxFuture<'_, StoreResult<usize>> {
        Box::pin(self.core.purge_finished(before, limit))
    }

    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>> {
        Box::pin(self.core.expired_jobs(now, limit))
    }

    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>> {
        let queue = queue.clone();
        Box::pin(async move { self.core.next_due(&queue).await })
    }
}

/// The tests' private `redis-server`: the same fixture the integration tests use.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../tests/it/kit/redis.rs"]
pub(crate) mod test_redis;

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::model::{StoreError, now_millis};

    fn msg(topic: &str, data: &str, key: Option<&str>) -> NewMessage {
        NewMessage {
            topic: topic.parse().expect("a topic"),
            event: None,
            data: Bytes::from(data.to_owned()),
            idempotency_key: key.map(str::to_owned),
        }
    }

    /// Concurrent appends of one topic share script calls (group commit) and each still gets
    /// its own seqs, in its own order, exactly once; a key reused with another body inside a
    /// group fails only that append.
    #[tokio::test]
    async fn concurrent_appends_are_grouped_and_each_gets_its_own_result() {
        let server = test_redis::RedisServer::start().await;
        let log = Arc::new(
            RedisLog::open(
                &RedisTarget::Single(server.url()),
                Retention::default(),
                None,
            )
            .await
            .expect("open"),
        );
        let tasks: Vec<_> = (0..20)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..10 {
                        let batch = vec![
                            msg("g", &format!("{t}-{i}a"), None),
                            msg("g", &format!("{t}-{i}b"), None),
                        ];
                        let done = log.append(batch).await.expect("append");
                        assert_eq!(done[1].seq, done[0].seq + 1, "a batch stays together");
                        seqs.extend(done.iter().map(|a| a.seq));
                    }
                    seqs
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            let seqs = task.await.expect("task");
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "each publisher's order: {seqs:?}"
            );
            all.extend(seqs);
        }
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<Seq>>(), "every seq once");
        let read = log
            .read(&"g".parse().expect("topic"), 0, 1000, usize::MAX)
            .await
            .expect("read");
        assert_eq!(read.messages.len(), 400);

        // The same key from many tasks at once: one stores, the rest replay it or conflict.
        let tasks: Vec<_> = (0..10)
            .map(|t| {
                let log = log.clone();
                let body = if t % 2 == 0 { "same" } else { "other" };
                tokio::spawn(
                    async move { (body, log.append(vec![msg("k", body, Some("key"))]).await) },
                )
            })
            .collect();
        let mut stored = None;
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("task"));
        }
        for (body, result) in &results {
            if let Ok(done) = result
                && !done[0].replayed
            {
                assert!(stored.is_none(), "only one append stores the key");
                stored = Some(*body);
            }
        }
        let stored = stored.expect("one append stored the key");
        for (body, result) in &results {
            match result {
                Ok(done) => assert_eq!(
                    (*body, done[0].seq),
                    (stored, 1),
                    "a replay has the first seq"
                ),
                Err(StoreError::IdempotencyConflict { .. }) => assert_ne!(*body, stored),
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }

    /// A script call repeated with the same receipt (as redis-rs repeats one after a dropped
    /// connection) answers as the first and appends nothing.
    #[tokio::test]
    async fn a_repeated_append_call_appends_once() {
        let server = test_redis::RedisServer::start().await;
        let log = RedisLog::open(
            &RedisTarget::Single(server.url()),
            Retention::default(),
            None,
        )
        .await
        .expect("open");
        let topic: Topic = "r".parse().expect("topic");
        let batch = vec![msg("r", "a", None), msg("r", "b", None)];
        let receipt = "plexus:w:{r}:test".to_owned();
        let first = log
            .core
            .append_call(&topic, &Slot::own(&topic), &batch, false, receipt.clone())
            .await
            .expect("first call");
        let again = log
            .core
            .append_call(&topic, &Slot::own(&topic), &batch, false, receipt)
            .await
            .expect("repeated call");
        assert_eq!(first, again, "the repeat answers as the first");
        let read = log.read(&topic, 0, 10, usize::MAX).await.expect("read");
        assert_eq!(read.messages.len(), 2, "appended once");
        let other = log.append(batch).await.expect("a new call");
        assert_eq!(other[0].seq, 3, "a new call appends");
    }

    /// A multi-topic batch on one Redis is one MULTI of EVALSHAs; after Redis lost its
    /// script cache it loads the script and runs it once, all or nothing.
    #[tokio::test]
    async fn a_multi_topic_batch_survives_a_flushed_script_cache() {
        let server = test_redis::RedisServer::start().await;
        let log = RedisLog::open(
            &RedisTarget::Single(server.url()),
            Retention::default(),
            None,
        )
        .await
        .expect("open");
        let batch = || {
            vec![
                msg("x", "1", None),
                msg("y", "1", None),
                msg("x", "2", None),
            ]
        };
        log.append(batch()).await.expect("first batch");
        log.core
            .conn
            .query::<String>(redis::cmd("SCRIPT").arg("FLUSH"))
            .await
            .expect("SCRIPT FLUSH");
        let done = log.append(batch()).await.expect("a batch after the flush");
        let seqs: Vec<Seq> = done.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, vec![3, 2, 4], "each topic counts on, once");
    }

    /// A replicated log on a master with one replica.
    async fn replicated() -> (test_redis::RedisServer, test_redis::RedisServer, RedisLog) {
        let master = test_redis::RedisServer::start().await;
        let replica = test_redis::RedisServer::start_replica_of(&master).await;
        let replication = Replication {
            min_replicas: 1,
            timeout: Duration::from_secs(2),
        };
        let log = RedisLog::open(
            &RedisTarget::Single(master.url()),
            Retention::default(),
            Some(replication),
        )
        .await
        .expect("open");
        (master, replica, log)
    }

    async fn next_commit(feed: &mut CommitFeed) -> Vec<Seq> {
        let batch = tokio::time::timeout(Duration::from_secs(10), feed.recv())
            .await
            .expect("a commit is fed")
            .expect("the feed is open");
        batch.iter().map(|m| m.seq).collect()
    }

    /// Under `replicated` a write the paused replica cannot confirm is refused, never shown
    /// nor fed; once the replica is back, the next commit shows both and feeds its own.
    #[tokio::test]
    async fn replicated_writes_stay_hidden_until_a_replica_confirms() {
        let (_master, replica, log) = replicated().await;
        let mut feed = log.take_commits().expect("the feed");
        let t: Topic = "r".parse().expect("topic");
        let a = log.append(vec![msg("r", "a", None)]).await.expect("a");
        assert_eq!(a[0].seq, 1);
        assert_eq!(next_commit(&mut feed).await, vec![1]);

        replica.pause();
        let b = log.append(vec![msg("r", "b", None)]).await;
        assert!(matches!(b, Err(StoreError::NotReplicated(_))), "{b:?}");
        let read = log.read(&t, 0, 10, usize::MAX).await.expect("read");
        let seqs: Vec<Seq> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1], "the unconfirmed write is not shown");
        assert_eq!(read.bounds().last_seq, 1);
        assert_eq!(log.seek_time(&t, now_millis() + 60_000).await, Ok(1));
        let info = log.topic(&t).await.expect("info").expect("a topic");
        assert_eq!((info.last_seq, info.messages), (1, 1), "{info:?}");

        replica.resume();
        // Retried with one key until the replica confirms: every try answers the first seq.
        let mut c = Err(StoreError::Unavailable("not tried".into()));
        for _ in 0..20 {
            c = log.append(vec![msg("r", "c", Some("c"))]).await;
            if c.is_ok() {
                break;
            }
        }
        let c = c.expect("c, once the replica is back");
        assert_eq!(c[0].seq, 3, "the refused write kept its seq");
        assert_eq!(
            next_commit(&mut feed).await,
            vec![3],
            "the feed carries the commit's own messages; readers find 2 as a hole"
        );
        let read = log.read(&t, 0, 10, usize::MAX).await.expect("read");
        let seqs: Vec<Seq> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            vec![1, 2, 3],
            "the later commit covers the earlier write"
        );
    }

    /// A failover can lose the raise of the committed head though the messages under it were
    /// replicated (and shown): a reader whose cursor is past the head it finds waits there,
    /// and is not told the log was reset.
    #[tokio::test]
    async fn a_cursor_past_a_lost_raise_waits_instead_of_resetting() {
        let (_master, _replica, log) = replicated().await;
        let t: Topic = "w".parse().expect("topic");
        let batch = vec![
            msg("w", "1", None),
            msg("w", "2", None),
            msg("w", "3", None),
        ];
        log.append(batch).await.expect("append");
        log.core
            .conn
            .query::<()>(
                redis::cmd("HSET")
                    .arg(Slot::own(&t).meta())
                    .arg("ok")
                    .arg(1),
            )
            .await
            .expect("lower the committed head");
        let read = log.read(&t, 2, 10, usize::MAX).await.expect("read");
        assert!(read.messages.is_empty());
        assert_eq!(read.bounds().last_seq, 2, "the head this reader saw");
        let read = log.read(&t, 0, 10, usize::MAX).await.expect("read");
        assert_eq!(read.messages.len(), 1, "others see the committed head");
        let read = log.read(&t, 9, 10, usize::MAX).await.expect("read");
        assert_eq!(
            read.bounds().last_seq,
            1,
            "a cursor past every write is a reset"
        );
        log.append(vec![msg("w", "4", None)]).await.expect("append");
        let read = log.read(&t, 2, 10, usize::MAX).await.expect("read");
        let seqs: Vec<Seq> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
    }

    /// Under `replicated`, after Redis lost its script cache (a restart, a failover), a
    /// single-topic append and a multi-topic batch load the script and run once.
    #[tokio::test]
    async fn replicated_appends_survive_a_flushed_script_cache() {
        let (_master, _replica, log) = replicated().await;
        log.append(vec![msg("x", "1", None)]).await.expect("first");
        let flush = || async {
            log.core.writes[0]
                .query::<String>(redis::cmd("SCRIPT").arg("FLUSH"))
                .await
                .expect("SCRIPT FLUSH");
        };
        flush().await;
        let one = log
            .append(vec![msg("x", "2", None)])
            .await
            .expect("one topic");
        assert_eq!(one[0].seq, 2);
        flush().await;
        let batch = vec![msg("x", "3", None), msg("y", "1", None)];
        let done = log.append(batch).await.expect("a batch after the flush");
        let seqs: Vec<Seq> = done.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, vec![3, 1], "each topic counts on, once");
        let x: Topic = "x".parse().expect("topic");
        let read = log.read(&x, 0, 10, usize::MAX).await.expect("read");
        assert_eq!(read.messages.len(), 3, "every confirmed write is shown");
    }
}
