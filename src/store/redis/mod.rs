//! The `redis` engine: the log in Redis, so nodes keep no state of their own and any node
//! serves any client. One Redis (`redis://HOST:PORT`) or a Redis Cluster
//! (`redis+cluster://HOST:PORT,HOST:PORT,…`).
//!
//! Keys; the topic or queue in braces is the hash tag, so each one's keys share a shard:
//! - `plexus:s:{T}` a Stream, one entry per message, entry id `SEQ-0`, fields `t` (ms),
//!   `e` (event, when there is one), `d` (payload);
//! - `plexus:m:{T}` a hash: `head` (the seq counter, which deletes and retention never lower),
//!   `last` (time of the last message), `bytes` (payload retained), `del` (deleted through);
//! - `plexus:i:{T}:KEY` an idempotency key, `FINGERPRINT SEQ TIME`, expiring after 24 h;
//! - `plexus:w:{T}:CALL` an append's receipt (its result, for 60 s), so that a call the client
//!   library repeats after a dropped connection does not append twice;
//! - `plexus:topics` the set of topic names, for listing;
//! - `plexus:j:{Q}:ID` a job (a hash), `plexus:jr:{Q}` / `plexus:jd:{Q}` / `plexus:jl:{Q}` its
//!   queue's ready, delayed and running sorted sets, `plexus:jk:{Q}:KEY` a job idempotency key
//!   (24 h), `plexus:jq:ID` the queue of a job id, `plexus:queues` the set of queues.
//!
//! Every write of a topic is one Lua script (increment, append, trim, publish: atomic). On one
//! Redis the script publishes the new messages on the channel `plexus:commits`; every node
//! subscribes to it. On a Redis Cluster it uses sharded Pub/Sub instead (`SPUBLISH` on
//! `plexus:c:{T}`, on the topic's own shard, so nothing crosses the cluster bus), and a node
//! subscribes (`SSUBSCRIBE`, over RESP3) to the channels of the topics its hub has readers
//! for. Either way each node feeds what arrives, in order, to its hub, its own publishes
//! included, so there is one path for local and remote commits. When a sharded subscription
//! is confirmed, the engine also feeds the topic's newest message, so a commit made between a
//! reader's store read and its subscription still reaches it. When the subscription comes back after a drop, the
//! engine feeds an empty batch and the hub re-checks the heads of the topics it has readers
//! for, so commits made meanwhile reach them without waiting for the next publish.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

use super::follow::{CommitFeed, FeedSlot, Follow};
use super::jobs::JobStore;
use super::log::{BoxFuture, IDEMPOTENCY_TTL, Log, ReadBatch, Retention};
use crate::model::{
    Appended, EventName, Job, JobId, JobState, LogBounds, Message, Millis, NewMessage, Seq,
    StoreError, StoreResult, Topic, TopicInfo, fingerprint, now_millis,
};

const CHANNEL: &str = "plexus:commits";
const TOPICS: &str = "plexus:topics";
const QUEUES: &str = "plexus:queues";
/// Longest a command may take before the node calls Redis unavailable. redis-rs defaults to
/// 500 ms, which a large script under load can exceed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a claim retries when another node took its candidate first, and how many
/// of the oldest due jobs it considers.
const CLAIM_TRIES: usize = 32;
const CLAIM_CANDIDATES: usize = 16;

const PRELUDE: &str = include_str!("prelude.lua");
const JOBS_PRELUDE: &str = include_str!("jobs.lua");

/// Where the engine connects. Its `Debug` hides passwords (it is logged at start).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server: `redis://HOST:PORT`.
    Single(String),
    /// The seed nodes of a Redis Cluster: `redis+cluster://HOST:PORT,HOST:PORT`.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            RedisTarget::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A Redis URL with its password, if any, replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Every connection to Redis probes an idle peer: a subscription that only ever reads would
/// otherwise wait forever on a Redis that vanished without closing the socket.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    let settings = redis::io::tcp::TcpSettings::default().set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(30));
    settings
}

impl RedisTarget {
    /// Parses a `--storage` value; `None` when it is not a Redis URL.
    pub fn parse(url: &str) -> Option<Result<RedisTarget, String>> {
        if url.starts_with("redis://") {
            return Some(Ok(RedisTarget::Single(url.to_owned())));
        }
        let nodes = url.strip_prefix("redis+cluster://")?;
        let nodes: Vec<String> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| format!("redis://{n}"))
            .collect();
        Some(if nodes.is_empty() {
            Err(format!(
                "{url:?} names no node; use redis+cluster://HOST:PORT,HOST:PORT"
            ))
        } else {
            Ok(RedisTarget::Cluster(nodes))
        })
    }
}

/// One connection handle, cheap to clone, to a server or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => pipe.query_async(&mut c).await,
            Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }

    async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => script.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await,
        }
    }
}

struct Scripts {
    append: Script,
    /// The append script's source, to load it when a MULTI of EVALSHAs finds it missing.
    append_code: String,
    read: Script,
    info: Script,
    seek: Script,
    delete: Script,
    job_create: Script,
    job_save: Script,
    job_pick: Script,
}

impl Scripts {
    fn new() -> Self {
        let topic = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        let job = |body: &str| Script::new(&format!("{JOBS_PRELUDE}\n{body}"));
        Scripts {
            append: topic(include_str!("append.lua")),
            append_code: format!("{PRELUDE}\n{}", include_str!("append.lua")),
            read: topic(include_str!("read.lua")),
            info: topic(include_str!("info.lua")),
            seek: topic(include_str!("seek.lua")),
            delete: topic(include_str!("delete.lua")),
            job_create: job(include_str!("job_create.lua")),
            job_save: job(include_str!("job_save.lua")),
            job_pick: Script::new(include_str!("job_pick.lua")),
        }
    }
}

/// The topics a cluster node's hub wants followed: kept so that a subscription Redis drops
/// (a slot moved, a failover) or one that failed is made again while it is wanted.
type Followed = Arc<Mutex<HashSet<Topic>>>;

fn wanted(followed: &Followed, topic: &Topic) -> bool {
    followed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(topic)
}

/// What the hub asks a cluster node to follow (see [`Follow::follow`]).
enum Interest {
    Follow(Topic),
    Unfollow(Topic),
}

/// The `redis` engine.
pub struct RedisLog {
    /// The connection, scripts and retention, shared with the engine's tasks.
    core: Core,
    /// On a cluster: where follow/unfollow requests go (sharded Pub/Sub per topic).
    interests: Option<tokio::sync::mpsc::UnboundedSender<Interest>>,
    /// On a cluster: the topics the hub wants followed now.
    followed: Followed,
    /// Per topic with a flush running: the appends waiting for the next script call.
    pending: Arc<Mutex<HashMap<Topic, Vec<Waiter>>>>,
    feed: FeedSlot,
    /// Topics and queues this node has already added to their sets.
    known: Mutex<HashSet<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn stream_key(t: &Topic) -> String {
    format!("plexus:s:{{{t}}}")
}

fn meta_key(t: &Topic) -> String {
    format!("plexus:m:{{{t}}}")
}

fn queue_keys(q: &Topic) -> [String; 3] {
    [
        format!("plexus:jr:{{{q}}}"),
        format!("plexus:jd:{{{q}}}"),
        format!("plexus:jl:{{{q}}}"),
    ]
}

fn job_key(q: &Topic, id: &JobId) -> String {
    format!("plexus:j:{{{q}}}:{id}")
}

fn shard_channel(t: &Topic) -> String {
    format!("plexus:c:{{{t}}}")
}

fn job_queue_key(id: &JobId) -> String {
    format!("plexus:jq:{id}")
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
            known: Mutex::new(HashSet::new()),
            tasks: Mutex::new(tasks),
        })
    }

    /// Adds a name to a set once per node (the set only lists; a missing entry hides a
    /// topic from listings, never loses its messages).
    async fn remember(&self, set: &str, name: &str) -> StoreResult<()> {
        let id = format!("{set}\n{name}");
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        self.core
            .conn
            .query::<()>(redis::cmd("SADD").arg(set).arg(name))
            .await
            .map_err(unavailable)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > 100_000 {
            known.clear();
        }
        known.insert(id);
        Ok(())
    }

    /// Appends one topic's messages through its flush task: concurrent appends of a topic
    /// share script calls.
    async fn enqueue(
        &self,
        topic: &Topic,
        messages: Vec<NewMessage>,
    ) -> StoreResult<Vec<Appended>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get_mut(topic) {
                Some(queue) => {
                    queue.push((messages, tx));
                    false
                }
                None => {
                    pending.insert(topic.clone(), vec![(messages, tx)]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(flush(
                self.core.clone(),
                self.pending.clone(),
                topic.clone(),
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "redis: the append was dropped before its commit".into(),
            ))
        })
    }

    async fn topic_info(&self, topic: &Topic) -> StoreResult<Option<TopicInfo>> {
        let mut inv = self.core.scripts.info.prepare_invoke();
        inv.key(stream_key(topic)).key(meta_key(topic));
        for arg in self.core.retention_args() {
            inv.arg(arg);
        }
        let v: Vec<i64> = self.core.conn.invoke(&inv).await.map_err(unavailable)?;
        Ok((v.len() == 6).then(|| TopicInfo {
            topic: topic.clone(),
            first_seq: v[0] as Seq,
            last_seq: v[1] as Seq,
            messages: v[3] as u64,
            bytes: v[4].max(0) as u64,
            last_publish: (v[1] > 0).then_some(v[5]),
        }))
    }

    /// A job read from its hash, with its version; `None` when it is not there.
    async fn load_job(&self, queue: &Topic, id: &JobId) -> StoreResult<Option<(Job, String)>> {
        let fields: HashMap<String, Vec<u8>> = self
            .core
            .conn
            .query(redis::cmd("HGETALL").arg(job_key(queue, id)))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_job(id, queue, &fields).map(Some)
    }

    async fn queue_of(&self, id: &JobId) -> StoreResult<Option<Topic>> {
        let queue: Option<String> = self
            .core
            .conn
            .query(redis::cmd("GET").arg(job_queue_key(id)))
            .await
            .map_err(unavailable)?;
        Ok(queue.and_then(|q| q.parse().ok()))
    }

    /// Writes a job through `job_save.lua`, compare-and-set on `mode` (`lease`|`version`).
    async fn save_job(&self, job: &Job, mode: &str, expected: &str) -> StoreResult<()> {
        let mut inv = self.core.scripts.job_save.prepare_invoke();
        inv.key(job_key(&job.queue, &job.id));
        for k in queue_keys(&job.queue) {
            inv.key(k);
        }
        inv.arg(mode).arg(expected);
        placement_args(&mut inv, job);
        encode_job(&mut inv, job);
        match self.core.conn.invoke::<i64>(&inv).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("PLEXUS_CHANGED") => {
                Err(StoreError::JobChanged(job.id.clone()))
            }
            Err(e) if e.to_string().contains("PLEXUS_UNKNOWN") => {
                Err(StoreError::UnknownJob(job.id.clone()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn claim_job(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> StoreResult<Option<Job>> {
        let [ready, delayed, _] = queue_keys(queue);
        for attempt in 0..CLAIM_TRIES {
            let mut inv = self.core.scripts.job_pick.prepare_invoke();
            inv.key(&ready).key(&delayed).arg(now).arg(CLAIM_CANDIDATES);
            let picked: Vec<String> = self.core.conn.invoke(&inv).await.map_err(unavailable)?;
            if picked.is_empty() {
                return Ok(None);
            }
            // The oldest first; a claimer that lost a race moves on to the next candidates,
            // so many concurrent claimers spread over the queue's head instead of all
            // fighting over one job.
            let Ok(id) = picked[attempt % picked.len()].parse::<JobId>() else {
                continue;
            };
            let loaded = self.load_job(queue, &id).await?;
            let Some((mut job, version)) = loaded else {
                // An index entry without its job: drop it.
                self.core
                    .conn
                    .query::<()>(redis::cmd("ZREM").arg(&ready).arg(id.as_str()))
                    .await
                    .map_err(unavailable)?;
                continue;
            };
            if job.state != JobState::Queued {
                // Another node claimed it between our pick and our read (its save moved it
                // out of the ready set): pick again.
                continue;
            }
            if job.run_at.is_some_and(|t| t > now) {
                // Made ready by a claimer whose clock is ahead of ours: saving it unchanged
                // puts it back among the delayed jobs, where its run_at will bring it again.
                match self.save_job(&job, "version", &version).await {
                    Ok(()) | Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            job.claim(now, lease.clone(), lease_ms);
            match self.save_job(&job, "version", &version).await {
                Ok(()) => return Ok(Some(job)),
                // Another node claimed it first: pick again.
                Err(StoreError::JobChanged(_) | StoreError::UnknownJob(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// One append waiting for its topic's next script call, and where its result goes.
type Waiter = (
    Vec<NewMessage>,
    tokio::sync::oneshot::Sender<StoreResult<Vec<Appended>>>,
);

/// Most messages, and payload bytes, one group commit carries.
const MAX_GROUP: usize = 1024;
const MAX_GROUP_BYTES: usize = 4 << 20;

/// What the engine and its tasks (flushes, the sharded feed) all use; cheap to clone.
#[derive(Clone)]
struct Core {
    conn: Conn,
    scripts: Arc<Scripts>,
    retention: Retention,
    sharded: bool,
    /// Names each script call's receipt: this node's random id and a call counter.
    calls: Arc<(u64, std::sync::atomic::AtomicU64)>,
}

/// A random id for this node's append receipts.
fn node_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}

impl Core {
    /// Messages after `after` (see [`Log::read`]), by `read.lua`.
    async fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<ReadBatch> {
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(stream_key(topic)).key(meta_key(topic));
        for arg in self.retention_args() {
            inv.arg(arg);
        }
        inv.arg(format!(
            "{}-0",
            after.saturating_add(1).min(i64::MAX as u64)
        ))
        // Lua numbers are doubles: keep the count where they print as integers.
        .arg(limit.min(1 << 40))
        .arg(max_bytes.min(i64::MAX as usize));
        let v: Vec<redis::Value> = self.conn.invoke(&inv).await.map_err(unavailable)?;
        decode_read(topic, v)
    }

    /// The newest retained message of a topic.
    async fn newest(&self, topic: &Topic) -> StoreResult<Option<Arc<Message>>> {
        let last = self.read(topic, 0, 0, 0).await?.bounds().last_seq;
        if last == 0 {
            return Ok(None);
        }
        Ok(self.read(topic, last - 1, 1, 0).await?.messages.pop())
    }

    /// `now`, max messages, max age ms: the arguments every topic script starts with.
    fn retention_args(&self) -> [i64; 3] {
        [
            now_millis(),
            self.retention.max_messages.min(i64::MAX as u64) as i64,
            self.retention.max_age.as_millis().min(i64::MAX as u128) as i64,
        ]
    }
    /// Appends one topic's messages (a script call); `check_only` tests the idempotency keys.
    async fn append_topic(
        &self,
        topic: &Topic,
        messages: &[NewMessage],
        check_only: bool,
    ) -> StoreResult<Vec<Appended>> {
        self.append_call(topic, messages, check_only, self.receipt(topic))
            .await
    }

    /// A fresh receipt key for one append call of a topic.
    fn receipt(&self, topic: &Topic) -> String {
        let (node, calls) = &*self.calls;
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("plexus:w:{{{topic}}}:{node:016x}{call:x}")
    }

    /// The keys and arguments of one run of `append.lua` (see the script for their order).
    /// Payloads and events are borrowed, not copied.
    fn append_args<'m>(
        &self,
        topic: &Topic,
        messages: &'m [NewMessage],
        check_only: bool,
        receipt: String,
    ) -> (Vec<String>, Vec<Cow<'m, [u8]>>) {
        let mut keys = vec![stream_key(topic), meta_key(topic), receipt];
        keys.extend(
            messages
                .iter()
                .filter_map(|m| m.idempotency_key.as_ref())
                .map(|key| format!("plexus:i:{{{topic}}}:{key}")),
        );
        let (command, channel) = match self.sharded {
            false => ("PUBLISH", CHANNEL.to_owned()),
            true => ("SPUBLISH", shard_channel(topic)),
        };
        let [now, max_messages, max_age] = self.retention_args();
        let mut args: Vec<Cow<'m, [u8]>> = [
            now.to_string(),
            max_messages.to_string(),
            max_age.to_string(),
            IDEMPOTENCY_TTL.as_millis().to_string(),
            topic.as_str().to_owned(),
            if check_only { "1" } else { "0" }.to_owned(),
            command.to_owned(),
            channel,
            messages.len().to_string(),
        ]
        .into_iter()
        .map(|a| Cow::Owned(a.into_bytes()))
        .collect();
        for m in messages {
            args.push(Cow::Borrowed(
                m.event.as_ref().map_or("", |e| e.as_str()).as_bytes(),
            ));
            args.push(Cow::Borrowed(&m.data));
            args.push(Cow::Borrowed(match m.idempotency_key {
                Some(_) => b"1",
                None => b"0",
            }));
            args.push(Cow::Owned(m.fingerprint().to_string().into_bytes()));
        }
        (keys, args)
    }

    /// One run of `append.lua`; a second run with the same receipt answers as the first.
    async fn append_call(
        &self,
        topic: &Topic,
        messages: &[NewMessage],
        check_only: bool,
        receipt: String,
    ) -> StoreResult<Vec<Appended>> {
        let (keys, args) = self.append_args(topic, messages, check_only, receipt);
        let mut inv = self.scripts.append.prepare_invoke();
        for key in keys {
            inv.key(key);
        }
        for arg in &args {
            inv.arg(arg.as_ref());
        }
        let started = std::time::Instant::now();
        match self.conn.invoke::<Vec<i64>>(&inv).await {
            Ok(out) => {
                // One script call is one atomic commit of this topic's messages.
                if !check_only {
                    metrics::histogram!("plexus_store_commit_ops").record(messages.len() as f64);
                    metrics::histogram!("plexus_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Ok(appended(&out))
            }
            Err(e) => Err(append_error(e, topic, messages)),
        }
    }

    /// Appends a batch of several topics on one Redis in one MULTI/EXEC: every topic's
    /// script runs, or none (a dropped connection before EXEC runs nothing).
    async fn append_topics(
        &self,
        topics: &[(Topic, Vec<NewMessage>)],
    ) -> StoreResult<Vec<Vec<Appended>>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (topic, messages) in topics {
            let (keys, args) = self.append_args(topic, messages, false, self.receipt(topic));
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.scripts.append.get_hash())
                .arg(keys.len())
                .arg(keys);
            for arg in &args {
                cmd.arg(arg.as_ref());
            }
        }
        let started = std::time::Instant::now();
        let mut done = self.conn.query_pipe::<Vec<Vec<i64>>>(&pipe).await;
        if done
            .as_ref()
            .is_err_and(|e| e.to_string().to_lowercase().contains("noscript"))
        {
            // Redis lost its script cache (a restart): every EVALSHA failed, so nothing ran.
            // Load the script and run the transaction once more.
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(&self.scripts.append_code);
            self.conn
                .query::<String>(&load)
                .await
                .map_err(unavailable)?;
            done = self.conn.query_pipe::<Vec<Vec<i64>>>(&pipe).await;
        }
        match done {
            Ok(outs) => {
                let count: usize = topics.iter().map(|(_, m)| m.len()).sum();
                metrics::histogram!("plexus_store_commit_ops").record(count as f64);
                metrics::histogram!("plexus_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(outs.iter().map(|out| appended(out)).collect())
            }
            Err(e) => {
                let (topic, messages) = topics
                    .iter()
                    .find(|(_, m)| m.iter().any(|m| m.idempotency_key.is_some()))
                    .or(topics.first())
                    .map(|(t, m)| (t.clone(), m.as_slice()))
                    .ok_or_else(|| StoreError::Unavailable("redis: an empty batch".into()))?;
                Err(append_error(e, &topic, messages))
            }
        }
    }

    /// Commits the appends of a group in one script call (a group commit: the script's fixed
    /// cost is paid once). If one of them reuses an idempotency key with another body, each
    /// runs alone instead, so the error reaches only that one, as if they had come in turn.
    async fn commit_group(&self, topic: &Topic, group: Vec<Waiter>) {
        if group.len() == 1 {
            for (messages, tx) in group {
                let _ = tx.send(self.append_topic(topic, &messages, false).await);
            }
            return;
        }
        let all: Vec<NewMessage> = group.iter().flat_map(|(m, _)| m.iter().cloned()).collect();
        match self.append_topic(topic, &all, false).await {
            Ok(appended) => {
                let mut appended = appended.into_iter();
                for (messages, tx) in group {
                    let mine: Vec<Appended> = appended.by_ref().take(messages.len()).collect();
                    let _ = tx.send(Ok(mine));
                }
            }
            Err(StoreError::IdempotencyConflict { .. }) => {
                for (messages, tx) in group {
                    let _ = tx.send(self.append_topic(topic, &messages, false).await);
                }
            }
            Err(e) => {
                for (_, tx) in group {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The `seq, time, replayed` triples `append.lua` returns.
fn appended(out: &[i64]) -> Vec<Appended> {
    out.chunks_exact(3)
        .map(|c| Appended {
            seq: c[0] as Seq,
            time: c[1],
            replayed: c[2] == 1,
        })
        .collect()
}

/// An error of `append.lua`: a key conflict (naming the key) or Redis unavailable.
fn append_error(e: RedisError, topic: &Topic, messages: &[NewMessage]) -> StoreError {
    if !e.to_string().contains("PLEXUS_CONFLICT") {
        return unavailable(e);
    }
    let index = e
        .detail()
        .and_then(|d| d.split_whitespace().last())
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(0);
    let key = messages
        .get(index)
        .and_then(|m| m.idempotency_key.clone())
        .or_else(|| messages.iter().find_map(|m| m.idempotency_key.clone()))
        .unwrap_or_default();
    StoreError::IdempotencyConflict {
        topic: topic.clone(),
        key,
    }
}

/// A topic's flush task: while appends wait, commits them in groups, in arrival order.
async fn flush(appender: Core, pending: Arc<Mutex<HashMap<Topic, Vec<Waiter>>>>, topic: Topic) {
    loop {
        let group = {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            let Some(queue) = pending.get_mut(&topic) else {
                return;
            };
            if queue.is_empty() {
                pending.remove(&topic);
                return;
            }
            let (mut count, mut bytes, mut take) = (0, 0, 0);
            for (messages, _) in queue.iter() {
                let size: usize = messages.iter().map(|m| m.data.len()).sum();
                if take > 0
                    && (count + messages.len() > MAX_GROUP || bytes + size > MAX_GROUP_BYTES)
                {
                    break;
                }
                count += messages.len();
                bytes += size;
                take += 1;
            }
            queue.drain(..take).collect::<Vec<_>>()
        };
        appender.commit_group(&topic, group).await;
    }
}

/// The state, created, run_at and lease end arguments of the job scripts.
fn placement_args(inv: &mut ScriptInvocation<'_>, job: &Job) {
    inv.arg(job.id.as_str())
        .arg(job.state.as_str())
        .arg(job.created)
        .arg(job.run_at.map(|t| t.to_string()).unwrap_or_default())
        .arg(job.lease_until.map(|t| t.to_string()).unwrap_or_default());
}

fn encode_job(inv: &mut ScriptInvocation<'_>, job: &Job) {
    inv.arg("q")
        .arg(job.queue.as_str())
        .arg("state")
        .arg(job.state.as_str())
        .arg("attempts")
        .arg(job.attempts)
        .arg("max")
        .arg(job.max_attempts)
        .arg("created")
        .arg(job.created)
        .arg("updated")
        .arg(job.updated)
        .arg("payload")
        .arg(job.payload.as_ref());
    if let Some(result) = &job.result {
        inv.arg("result").arg(result.as_ref());
    }
    if let Some(error) = &job.error {
        inv.arg("error").arg(error.as_str());
    }
    if let Some(t) = job.run_at {
        inv.arg("run_at").arg(t);
    }
    if let Some(lease) = &job.lease {
        inv.arg("lease").arg(lease.as_str());
    }
    if let Some(t) = job.lease_until {
        inv.arg("lease_until").arg(t);
    }
    if let Some(ms) = job.lease_ms {
        inv.arg("lease_ms").arg(ms);
    }
}

fn decode_job(
    id: &JobId,
    queue: &Topic,
    f: &HashMap<String, Vec<u8>>,
) -> StoreResult<(Job, String)> {
    let bad = |field: &str| StoreError::Unavailable(format!("redis: job {id} has a bad {field}"));
    let text = |field: &str| -> Option<String> {
        f.get(field)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let int = |field: &str| -> StoreResult<Option<i64>> {
        text(field)
            .map(|s| s.parse::<i64>().map_err(|_| bad(field)))
            .transpose()
    };
    let required = |field: &str| -> StoreResult<i64> { int(field)?.ok_or_else(|| bad(field)) };
    let job = Job {
        id: id.clone(),
        queue: queue.clone(),
        state: text("state")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("state"))?,
        attempts: required("attempts")? as u32,
        max_attempts: required("max")? as u32,
        created: required("created")?,
        updated: required("updated")?,
        payload: Bytes::from(f.get("payload").cloned().unwrap_or_default()),
        result: f.get("result").map(|v| Bytes::from(v.clone())),
        error: text("error"),
        run_at: int("run_at")?,
        lease: text("lease"),
        lease_until: int("lease_until")?,
        lease_ms: int("lease_ms")?.map(|ms| ms as u64),
    };
    Ok((job, text("v").unwrap_or_else(|| "0".into())))
}

async fn subscribe(client: &redis::Client) -> Result<redis::aio::PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}

/// Feeds every commit published on the channel to the hub, resubscribing when the
/// connection drops.
async fn follow_commits(
    client: redis::Client,
    mut pubsub: redis::aio::PubSub,
    feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                match decode_commit(msg.get_payload_bytes()) {
                    Some(batch) => {
                        if feed.send(batch).is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!("redis: an undecodable message on {CHANNEL}"),
                }
            }
        }
        tracing::warn!("redis: the commit subscription dropped; reconnecting");
        let mut delay = Duration::from_millis(100);
        pubsub = loop {
            tokio::time::sleep(delay).await;
            match subscribe(&client).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "redis: cannot resubscribe yet");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!("redis: the commit subscription is back");
        // Commits made while it was down were not fed: an empty batch tells the hub to
        // check the heads of the topics it serves.
        if feed.send(Vec::new()).is_err() {
            return;
        }
    }
}

/// Subscribes to (and from) the sharded channels of the topics the hub follows. redis-rs
/// resubscribes after a reconnect or a resharding; a failed request is retried a few times.
async fn follow_interests(
    mut conn: ClusterConnection,
    mut interests: tokio::sync::mpsc::UnboundedReceiver<Interest>,
    followed: Followed,
) {
    while let Some(interest) = interests.recv().await {
        match interest {
            Interest::Follow(topic) => {
                // Retried, with a capped backoff, for as long as the topic is wanted.
                let mut delay = Duration::from_millis(100);
                while wanted(&followed, &topic) {
                    match conn.ssubscribe(shard_channel(&topic)).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "redis: cannot subscribe to the topic's shard channel; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            Interest::Unfollow(topic) => {
                if !wanted(&followed, &topic)
                    && let Err(e) = conn.sunsubscribe(shard_channel(&topic)).await
                {
                    tracing::debug!(%topic, error = %e, "redis: cannot unsubscribe");
                }
            }
        }
    }
}

/// Feeds the hub what the sharded subscriptions receive. When a topic's subscription is
/// confirmed (a new topic, or every topic again after a reconnect), the topic's newest message
/// is fed too: a commit made before the subscription took effect then reaches its readers (a
/// reader behind it sees the hole and catches up from the store; one level with it ignores
/// the repeat).
async fn feed_pushes(
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
    reader: Core,
    followed: Followed,
    interests: tokio::sync::mpsc::UnboundedSender<Interest>,
) {
    let topic_of = |channel: &[u8]| {
        std::str::from_utf8(channel)
            .ok()
            .and_then(|c| c.strip_prefix("plexus:c:{"))
            .and_then(|c| c.strip_suffix('}'))
            .and_then(|t| t.parse::<Topic>().ok())
    };
    while let Some(push) = pushes.recv().await {
        if push.kind == redis::PushKind::SUnsubscribe
            && let Some(redis::Value::BulkString(channel)) = push.data.first()
            && let Some(topic) = topic_of(channel)
            && wanted(&followed, &topic)
        {
            // Redis dropped a subscription the hub still wants (its slot moved): again.
            let _ = interests.send(Interest::Follow(topic));
            continue;
        }
        let bytes = match push.data.first() {
            Some(redis::Value::BulkString(channel)) if push.kind == redis::PushKind::SSubscribe => {
                if let Some(topic) = topic_of(channel) {
                    let (reader, feed) = (reader.clone(), feed.clone());
                    tokio::spawn(async move {
                        match reader.newest(&topic).await {
                            Ok(Some(newest)) => {
                                let _ = feed.send(vec![newest]);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(%topic, error = %e, "redis: cannot read the head of a followed topic");
                                let _ = feed.send(Vec::new());
                            }
                        }
                    });
                }
                continue;
            }
            _ if push.kind == redis::PushKind::SMessage => push.data.get(1),
            _ if push.kind == redis::PushKind::Disconnection => {
                // Resubscribing confirms each topic again (above); until then, a full check.
                if feed.send(Vec::new()).is_err() {
                    return;
                }
                continue;
            }
            _ => continue,
        };
        let batch = match bytes {
            Some(redis::Value::BulkString(bytes)) => decode_commit(bytes),
            _ => None,
        };
        let Some(batch) = batch else {
            tracing::warn!("redis: an undecodable sharded message");
            continue;
        };
        if feed.send(batch).is_err() {
            return;
        }
    }
}

/// `TOPIC\n` then per message `SEQ TIME EVENT_LEN DATA_LEN\n EVENT DATA` (see append.lua).
fn decode_commit(bytes: &[u8]) -> Option<Vec<Arc<Message>>> {
    fn line(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = b.iter().position(|&c| c == b'\n')?;
        Some((&b[..end], &b[end + 1..]))
    }
    let (topic, mut rest) = line(bytes)?;
    let topic: Topic = std::str::from_utf8(topic).ok()?.parse().ok()?;
    let mut batch = Vec::new();
    while !rest.is_empty() {
        let (head, body) = line(rest)?;
        let mut nums = std::str::from_utf8(head).ok()?.split(' ');
        let mut next = || nums.next()?.parse::<u64>().ok();
        let (seq, time, elen, dlen) = (next()?, next()?, next()? as usize, next()? as usize);
        if body.len() < elen + dlen {
            return None;
        }
        let event = match elen {
            0 => None,
            _ => Some(
                std::str::from_utf8(&body[..elen])
                    .ok()?
                    .parse::<EventName>()
                    .ok()?,
            ),
        };
        batch.push(Arc::new(Message {
            topic: topic.clone(),
            seq,
            time: time as Millis,
            event,
            data: Bytes::copy_from_slice(&body[elen..elen + dlen]),
        }));
        rest = &body[elen + dlen..];
    }
    Some(batch)
}

impl Log for RedisLog {
    fn append(&self, batch: Vec<NewMessage>) -> BoxFuture<'_, StoreResult<Vec<Appended>>> {
        Box::pin(async move {
            // One script per topic, in the batch's order of first appearance.
            let mut order: Vec<Topic> = Vec::new();
            let mut groups: HashMap<Topic, Vec<usize>> = HashMap::new();
            for (i, m) in batch.iter().enumerate() {
                groups
                    .entry(m.topic.clone())
                    .or_insert_with(|| {
                        order.push(m.topic.clone());
                        Vec::new()
                    })
                    .push(i);
            }
            let split = |topic: &Topic| -> Vec<NewMessage> {
                groups[topic].iter().map(|&i| batch[i].clone()).collect()
            };
            // Across topics, check every key first, so a conflict stores nothing (a script
            // that fails inside a MULTI does not undo the others).
            if order.len() > 1 && batch.iter().any(|m| m.idempotency_key.is_some()) {
                for topic in &order {
                    self.core.append_topic(topic, &split(topic), true).await?;
                }
            }
            // Everything that can fail before a commit happens first.
            for topic in &order {
                self.remember(TOPICS, topic.as_str()).await?;
            }
            let mut results = vec![None; batch.len()];
            if order.len() > 1 && self.interests.is_none() {
                // One Redis: every topic in one MULTI/EXEC, all or nothing.
                let topics: Vec<(Topic, Vec<NewMessage>)> =
                    order.iter().map(|t| (t.clone(), split(t))).collect();
                let outs = self.core.append_topics(&topics).await?;
                for (topic, appended) in order.iter().zip(outs) {
                    for (&i, a) in groups[topic].iter().zip(appended) {
                        results[i] = Some(a);
                    }
                }
            } else {
                // One topic (sharing its flush task's group commit), or a cluster, where
                // topics on different shards cannot share a transaction: one commit each.
                for topic in &order {
                    let appended = self.enqueue(topic, split(topic)).await?;
                    for (&i, a) in groups[topic].iter().zip(appended) {
                        results[i] = Some(a);
                    }
                }
            }
            results
                .into_iter()
                .map(|r| r.ok_or_else(|| StoreError::Unavailable("redis: a short reply".into())))
                .collect()
        })
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
        Box::pin(async move {
            let mut inv = self.core.scripts.seek.prepare_invoke();
            inv.key(stream_key(&topic)).key(meta_key(&topic));
            for arg in self.core.retention_args() {
                inv.arg(arg);
            }
            inv.arg(time);
            let seq: i64 = self.core.conn.invoke(&inv).await.map_err(unavailable)?;
            Ok(seq.max(0) as Seq)
        })
    }

    fn topics(&self) -> BoxFuture<'_, StoreResult<Vec<TopicInfo>>> {
        Box::pin(async move {
            let names: Vec<String> = self
                .core
                .conn
                .query(redis::cmd("SMEMBERS").arg(TOPICS))
                .await
                .map_err(unavailable)?;
            let mut infos = Vec::with_capacity(names.len());
            for name in names {
                let Ok(topic) = name.parse::<Topic>() else {
                    continue;
                };
                if let Some(info) = self.topic_info(&topic).await? {
                    infos.push(info);
                }
            }
            infos.sort_by(|a, b| a.topic.cmp(&b.topic));
            Ok(infos)
        })
    }

    fn topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<Option<TopicInfo>>> {
        let topic = topic.clone();
        Box::pin(async move { self.topic_info(&topic).await })
    }

    fn delete_topic(&self, topic: &Topic) -> BoxFuture<'_, StoreResult<bool>> {
        let topic = topic.clone();
        Box::pin(async move {
            let mut inv = self.core.scripts.delete.prepare_invoke();
            inv.key(stream_key(&topic)).key(meta_key(&topic));
            let found: i64 = self.core.conn.invoke(&inv).await.map_err(unavailable)?;
            Ok(found == 1)
        })
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

impl JobStore for RedisLog {
    fn create(
        &self,
        job: Job,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'_, StoreResult<(Job, bool)>> {
        Box::pin(async move {
            let queue = job.queue.clone();
            self.remember(QUEUES, queue.as_str()).await?;
            // The id → queue index first: a job is never stored where `job_get` cannot see it.
            self.core
                .conn
                .query::<()>(
                    redis::cmd("SET")
                        .arg(job_queue_key(&job.id))
                        .arg(queue.as_str()),
                )
                .await
                .map_err(unavailable)?;
            let mut inv = self.core.scripts.job_create.prepare_invoke();
            inv.key(job_key(&queue, &job.id));
            for k in queue_keys(&queue) {
                inv.key(k);
            }
            if let Some(key) = &idempotency_key {
                inv.key(format!("plexus:jk:{{{queue}}}:{key}"));
            }
            inv.arg(fingerprint(&[&job.payload]).to_string())
                .arg(job.id.as_str())
                .arg(IDEMPOTENCY_TTL.as_millis() as u64);
            // job_create.lua takes the placement without the id.
            inv.arg(job.state.as_str())
                .arg(job.created)
                .arg(job.run_at.map(|t| t.to_string()).unwrap_or_default())
                .arg(job.lease_until.map(|t| t.to_string()).unwrap_or_default());
            encode_job(&mut inv, &job);
            let first: String = match self.core.conn.invoke(&inv).await {
                Ok(first) => first,
                Err(e) if e.to_string().contains("PLEXUS_CONFLICT") => {
                    return Err(StoreError::IdempotencyConflict {
                        topic: queue,
                        key: idempotency_key.unwrap_or_default(),
                    });
                }
                Err(e) => return Err(unavailable(e)),
            };
            if first.is_empty() {
                return Ok((job, false));
            }
            let id: JobId = first
                .parse()
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
            match self.load_job(&queue, &id).await? {
                Some((first, _)) => Ok((first, true)),
                None => Err(StoreError::UnknownJob(id)),
            }
        })
    }

    fn get(&self, id: &JobId) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let id = id.clone();
        Box::pin(async move {
            let Some(queue) = self.queue_of(&id).await? else {
                return Ok(None);
            };
            Ok(self.load_job(&queue, &id).await?.map(|(job, _)| job))
        })
    }

    fn save(&self, job: Job, expected_lease: Option<String>) -> BoxFuture<'_, StoreResult<Job>> {
        Box::pin(async move {
            let expected = expected_lease.unwrap_or_default();
            self.save_job(&job, "lease", &expected).await?;
            Ok(job)
        })
    }

    fn claim(
        &self,
        queue: &Topic,
        now: Millis,
        lease: String,
        lease_ms: u64,
    ) -> BoxFuture<'_, StoreResult<Option<Job>>> {
        let queue = queue.clone();
        Box::pin(async move { self.claim_job(&queue, now, lease, lease_ms).await })
    }

    fn expired(&self, now: Millis, limit: usize) -> BoxFuture<'_, StoreResult<Vec<Job>>> {
        Box::pin(async move {
            let queues: Vec<String> = self
                .core
                .conn
                .query(redis::cmd("SMEMBERS").arg(QUEUES))
                .await
                .map_err(unavailable)?;
            let mut expired = Vec::new();
            for queue in queues.iter().filter_map(|q| q.parse::<Topic>().ok()) {
                if expired.len() >= limit {
                    break;
                }
                let [_, _, running] = queue_keys(&queue);
                let ids: Vec<String> = self
                    .core
                    .conn
                    .query(
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&running)
                            .arg("-inf")
                            .arg(format!("({now}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(limit - expired.len()),
                    )
                    .await
                    .map_err(unavailable)?;
                for id in ids.iter().filter_map(|id| id.parse::<JobId>().ok()) {
                    if let Some((job, _)) = self.load_job(&queue, &id).await?
                        && job.state == JobState::Running
                        && job.lease_until.is_some_and(|t| t < now)
                    {
                        expired.push(job);
                    }
                }
            }
            Ok(expired)
        })
    }

    fn next_due(&self, queue: &Topic) -> BoxFuture<'_, StoreResult<Option<Millis>>> {
        let queue = queue.clone();
        Box::pin(async move {
            let [_, delayed, _] = queue_keys(&queue);
            let first: Vec<(String, f64)> = self
                .core
                .conn
                .query(
                    redis::cmd("ZRANGE")
                        .arg(&delayed)
                        .arg(0)
                        .arg(0)
                        .arg("WITHSCORES"),
                )
                .await
                .map_err(unavailable)?;
            Ok(first.first().map(|(_, score)| *score as Millis))
        })
    }
}

fn decode_read(topic: &Topic, v: Vec<redis::Value>) -> StoreResult<ReadBatch> {
    if v.is_empty() {
        return Ok(ReadBatch::default());
    }
    let bad = || StoreError::Unavailable("redis: a malformed read reply".into());
    let int = |v: &redis::Value| -> StoreResult<i64> {
        match v {
            redis::Value::Int(i) => Ok(*i),
            _ => Err(bad()),
        }
    };
    let bytes = |v: redis::Value| -> StoreResult<Vec<u8>> {
        match v {
            redis::Value::BulkString(b) => Ok(b),
            redis::Value::SimpleString(s) => Ok(s.into_bytes()),
            _ => Err(bad()),
        }
    };
    if v.len() < 3 || !(v.len() - 3).is_multiple_of(4) {
        return Err(bad());
    }
    let bounds = LogBounds {
        first_seq: int(&v[0])? as Seq,
        last_seq: int(&v[1])? as Seq,
        deleted_through: int(&v[2])? as Seq,
    };
    let mut messages = Vec::with_capacity((v.len() - 3) / 4);
    let mut rest = v.into_iter().skip(3);
    while let (Some(seq), Some(time), Some(event), Some(data)) =
        (rest.next(), rest.next(), rest.next(), rest.next())
    {
        let event = bytes(event)?;
        let event = match event.is_empty() {
            true => None,
            false => Some(
                String::from_utf8(event)
                    .ok()
                    .and_then(|e| e.parse::<EventName>().ok())
                    .ok_or_else(bad)?,
            ),
        };
        messages.push(Arc::new(Message {
            topic: topic.clone(),
            seq: int(&seq)? as Seq,
            time: int(&time)?,
            event,
            data: Bytes::from(bytes(data)?),
        }));
    }
    Ok(ReadBatch {
        messages,
        bounds: Some(bounds),
    })
}

/// A private `redis-server` for tests: on a free loopback port, no persistence, killed on drop.
#[cfg(test)]
pub(crate) struct TestRedis {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl TestRedis {
    pub(crate) async fn start() -> TestRedis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("a redis url");
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return TestRedis {
                    child,
                    url,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not answer on {url}");
    }
}

#[cfg(test)]
impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_decode() {
        let mut wire = b"news.eu\n".to_vec();
        wire.extend_from_slice(b"7 1700000000000 4 3\nnoteabc");
        wire.extend_from_slice(b"8 1700000000001 0 2\n\n\x00");
        let batch = decode_commit(&wire).expect("decodes");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].seq, 7);
        assert_eq!(batch[0].event.as_ref().map(|e| e.as_str()), Some("note"));
        assert_eq!(&batch[0].data[..], b"abc");
        assert_eq!(batch[1].seq, 8);
        assert_eq!(batch[1].event, None);
        assert_eq!(&batch[1].data[..], b"\n\x00");
        assert!(decode_commit(b"news\n9 1 0 5\nab").is_none(), "short body");
        assert!(decode_commit(b"bad topic!\n").is_none());
    }

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
        let server = TestRedis::start().await;
        let log = Arc::new(
            RedisLog::open(
                &RedisTarget::Single(server.url.clone()),
                Retention::default(),
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
        let server = TestRedis::start().await;
        let log = RedisLog::open(
            &RedisTarget::Single(server.url.clone()),
            Retention::default(),
        )
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
        let server = TestRedis::start().await;
        let log = RedisLog::open(
            &RedisTarget::Single(server.url.clone()),
            Retention::default(),
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

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact("redis://me:s3cret@h:6379/0"),
            "redis://me:***@h:6379/0"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let shown = format!(
            "{:?}",
            RedisTarget::Cluster(vec!["redis://:pw@a:1".into(), "redis://b:2".into()])
        );
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Some(Ok(RedisTarget::Single("redis://127.0.0.1:6379".into())))
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1,b:2"),
            Some(Ok(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://"),
            Some(Err(_))
        ));
        assert_eq!(RedisTarget::parse("sqlite"), None);
    }
}
