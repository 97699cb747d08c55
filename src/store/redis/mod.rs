//! The `redis` engine: the log in Redis, so nodes keep no state of their own and any node
//! serves any client. One Redis (`redis://HOST:PORT`) or a Redis Cluster
//! (`redis+cluster://HOST:PORT,HOST:PORT,…`).
//!
//! Keys; the topic or queue in braces is the hash tag, so each one's keys share a shard:
//! - `plexus:s:{T}` a Stream, one entry per message, entry id `SEQ-0`, fields `t` (ms),
//!   `e` (event, when there is one), `d` (payload);
//! - `plexus:m:{T}` a hash: `head` (the seq counter, which deletes and retention never lower),
//!   `last` (time of the last message), `bytes` (payload retained), `del` (deleted through);
//! - `plexus:i:{T}:KEY` an idempotency key, `FINGERPRINT SEQ TIME` (the SHA-256 of event and
//!   payload in hex; a key from before SHA-256 holds an FNV-1a 64 in decimal), expiring after 24 h;
//! - `plexus:w:{T}:CALL` an append's receipt (its result, for 60 s), so that a call the client
//!   library repeats after a dropped connection does not append twice;
//! - `plexus:topics` the set of topic names, for listing;
//! - `plexus:j:{Q}:ID` a job (a hash), `plexus:jr:{Q}` / `plexus:jd:{Q}` / `plexus:jl:{Q}` its
//!   queue's ready, delayed and running sorted sets, `plexus:jk:{Q}:KEY` a job idempotency key
//!   (24 h), `plexus:jq:ID` the queue of a job id, `plexus:queues` the set of queues,
//!   `plexus:jf:{Q}` the queue's finished jobs by finish time (for `jobs.retention`);
//! - `plexus:k:{consumers}:NAME` a durable consumer (a hash: `v` version, `b` body) and
//!   `plexus:k:{consumers}` the set of their names, on one shard.
//!
//! Every write of a topic is one Lua script (increment, append, trim, publish: atomic). On one
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
use super::log::{BoxFuture, Log, ReadBatch, Retention};
use crate::model::{
    Appended, Job, JobId, LogBounds, Millis, NewMessage, Seq, StoreResult, Topic, TopicInfo,
};

pub use self::target::RedisTarget;

use self::append::Pending;
use self::core::{Conn, Core, Scripts, node_id, unavailable};
use self::feed::{Followed, Interest, feed_pushes, follow_commits, follow_interests, subscribe};
use self::keys::*;
use self::target::{redact, tcp_settings};

/// Longest a command may take before the node calls Redis unavailable. redis-rs defaults to
/// 500 ms, which a large script under load can exceed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// after `open` is missed.
    pub async fn open(target: &RedisTarget, retention: Retention) -> Result<Self, String> {
        let feed = FeedSlot::new();
        let followed = Followed::default();
        let mut tasks = Vec::new();
        let (conn, sharded) = match target {
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
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
                let pubsub = subscribe(&client)
                    .await
                    .map_err(|e| format!("cannot subscribe to {CHANNEL} on {shown}: {e}"))?;
                tasks.push(tokio::spawn(follow_commits(client, pubsub, feed.sender())));
                (Conn::Single(manager), None)
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
                let (interest_tx, interest_rx) = tokio::sync::mpsc::unbounded_channel();
                tasks.push(tokio::spawn(follow_interests(
                    subscriber,
                    interest_rx,
                    followed.clone(),
                )));
                (Conn::Cluster(conn), Some((interest_tx, push_rx)))
            }
        };
        let core = Core {
            conn,
            scripts: Arc::new(Scripts::new()),
            retention,
            sharded: sharded.is_some(),
            calls: Arc::new((node_id(), 0.into())),
            known: Arc::default(),
        };
        let interests = sharded.map(|(interests, pushes)| {
            tasks.push(tokio::spawn(feed_pushes(
                pushes,
                feed.sender(),
                core.clone(),
                followed.clone(),
                interests.clone(),
            )));
            interests
        });
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

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.core
                .conn
                .query::<String>(&redis::cmd("PING"))
                .await
                .map(|_| ())
                .map_err(unavailable)
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

// The job and its events are two commits here (the job's hash lives on its queue's shard, its
// topic on another): a crash between them leaves a state without its event.
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
            let (job, replayed) = self.core.create_job(job, idempotency_key).await?;
            if !replayed {
                self.announce(events(&job)).await?;
            }
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
            self.core.save_job(&job, "lease", &expected).await?;
            self.announce(events(&job)).await?;
            if job.state.is_final() {
                self.core.mark_finished(&job).await?;
            }
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
            let claimed = self.core.claim_job(&queue, now, lease, lease_ms).await?;
            if let Some(job) = &claimed {
                self.announce(events(job)).await?;
            }
            Ok(claimed)
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
    use crate::model::StoreError;

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
            RedisLog::open(&RedisTarget::Single(server.url()), Retention::default())
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
        let log = RedisLog::open(&RedisTarget::Single(server.url()), Retention::default())
            .await
            .expect("open");
        let topic: Topic = "r".parse().expect("topic");
        let batch = vec![msg("r", "a", None), msg("r", "b", None)];
        let receipt = "plexus:w:{r}:test".to_owned();
        let first = log
            .core
            .append_call(&topic, &batch, false, receipt.clone())
            .await
            .expect("first call");
        let again = log
            .core
            .append_call(&topic, &batch, false, receipt)
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
        let log = RedisLog::open(&RedisTarget::Single(server.url()), Retention::default())
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
}
