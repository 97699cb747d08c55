//! What the engine and its tasks all use: the connection, the scripts, the retention.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

use crate::model::{StoreError, StoreResult, Topic, now_millis};
use crate::store::log::Retention;

use super::keys::{Slot, TOPICS, TOPICS_BY_NAME, announced_queue, job_of_topic};

const PRELUDE: &str = include_str!("prelude.lua");
const JOBS_PRELUDE: &str = include_str!("jobs.lua");
const EVENTS: &str = include_str!("events.lua");

/// One connection handle, cheap to clone, to a server or a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => pipe.query_async(&mut c).await,
            Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }

    /// Redis `WAIT numreplicas timeout` on the connection (and, on a cluster, the master) that
    /// wrote `key`: how many replicas hold every write this connection made there.
    pub(super) async fn wait_for(
        &self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<i64, RedisError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(timeout.as_millis().min(i64::MAX as u128) as i64);
        match self.clone() {
            Conn::Single(mut c) => wait.query_async(&mut c).await,
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let value = c
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(value).map_err(RedisError::from)
            }
        }
    }

    /// Replicas that acknowledge this connection's writes within `timeout` (`WAIT` on every
    /// master): the fewest of any shard, or the sum over all shards.
    pub(super) async fn replicas(
        &self,
        replicas: u32,
        timeout: Duration,
        tally: Tally,
    ) -> Result<i64, RedisError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(timeout.as_millis().min(i64::MAX as u128) as i64);
        match self.clone() {
            Conn::Single(mut c) => wait.query_async(&mut c).await,
            Conn::Cluster(mut c) => {
                use redis::cluster_routing::{
                    AggregateOp, MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                let op = match tally {
                    Tally::Fewest => AggregateOp::Min,
                    Tally::Total => AggregateOp::Sum,
                };
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::Aggregate(op)),
                ));
                let value = c.route_command(wait, routing).await?;
                redis::from_redis_value(value).map_err(RedisError::from)
            }
        }
    }

    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => script.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await,
        }
    }
}

pub(super) struct Scripts {
    pub(super) append: Script,
    /// The append script's source, to load it when a MULTI of EVALSHAs finds it missing.
    pub(super) append_code: String,
    pub(super) read: Script,
    pub(super) info: Script,
    pub(super) seek: Script,
    pub(super) delete: Script,
    pub(super) job_create: Script,
    pub(super) job_save: Script,
    pub(super) job_pick: Script,
    pub(super) commit: Script,
    pub(super) carry: Script,
    pub(super) topics_admit: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let topic = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        // A job script writes the job and appends its events (the topic prelude's retention).
        let job = |body: &str| Script::new(&format!("{PRELUDE}\n{JOBS_PRELUDE}\n{EVENTS}\n{body}"));
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
            commit: topic(include_str!("commit.lua")),
            carry: Script::new(include_str!("carry.lua")),
            topics_admit: Script::new(include_str!("topics_admit.lua")),
        }
    }
}

/// How [`Conn::replicas`] sums up the shards.
#[derive(Clone, Copy, Debug)]
pub(super) enum Tally {
    Fewest,
    Total,
}

/// `durability = "replicated"`: how many replicas of a shard must hold a write before it is
/// acknowledged, and how long a write waits for them (Redis `WAIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    pub min_replicas: u32,
    pub timeout: Duration,
}

pub(super) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// What the engine and its tasks (flushes, the sharded feed) all use; cheap to clone.
#[derive(Clone)]
pub(super) struct Core {
    pub(super) conn: Conn,
    /// Where writes go (never empty; see [`Core::writer`]). Under `replicated` connections
    /// of their own: each `WAIT` holds its connection until the replicas answer, and reads
    /// must not queue behind it. Otherwise only `conn`.
    pub(super) writes: Arc<[Conn]>,
    /// Under `replicated`: a connection that never writes, to count connected replicas.
    pub(super) probe: Option<Conn>,
    /// `Some` under `durability = "replicated"`.
    pub(super) replication: Option<Replication>,
    pub(super) scripts: Arc<Scripts>,
    pub(super) retention: Retention,
    pub(super) sharded: bool,
    /// Names each script call's receipt: this node's random id and a call counter.
    pub(super) calls: Arc<(u64, std::sync::atomic::AtomicU64)>,
    /// Topics and queues this node has already added to their sets.
    pub(super) known: Arc<Mutex<HashSet<String>>>,
    /// The slots of the job topics this node has used (a job's queue never changes).
    pub(super) slots: Arc<Mutex<HashMap<Topic, Slot>>>,
    /// `limits.max_topics_total`: the size of the topic set is the count.
    pub(super) max_topics: Arc<std::sync::atomic::AtomicU64>,
}

/// A random id for this node's append receipts.
pub(super) fn node_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}

impl Core {
    /// Under `replicated`: waits until enough replicas hold every write made on `writes` to
    /// `key`'s shard; a `NotReplicated` error when they do not in time. Without: nothing.
    pub(super) async fn confirm(&self, key: &str) -> StoreResult<()> {
        let Some(rep) = self.replication else {
            return Ok(());
        };
        let acks = self
            .writer(key)
            .wait_for(key, rep.min_replicas, rep.timeout)
            .await
            .map_err(unavailable)?;
        check_acks(acks, rep, key)
    }

    /// The write connection of `key`: always the same one, so a write and its `WAIT` share
    /// it (a `WAIT` counts the writes of its own connection).
    pub(super) fn writer(&self, key: &str) -> &Conn {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.writes[(h.finish() % self.writes.len() as u64) as usize]
    }

    pub(super) fn retention_args(&self) -> [i64; 3] {
        [
            now_millis(),
            self.retention.max_messages.min(i64::MAX as u64) as i64,
            self.retention.max_age.as_millis().min(i64::MAX as u128) as i64,
        ]
    }

    /// Adds topics to the topic set, refusing them all if that would pass the cap on topics
    /// (`topics_admit.lua`, atomic across nodes). A topic this node already added costs
    /// nothing; a new one, one script call before its first write.
    pub(super) async fn admit_topics(&self, topics: &[&Topic]) -> StoreResult<()> {
        let mut new: Vec<&Topic> = Vec::new();
        {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for t in topics {
                if !known.contains(&format!("{TOPICS}\n{t}")) && !new.contains(t) {
                    new.push(t);
                }
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let limit = self.max_topics.load(std::sync::atomic::Ordering::Relaxed);
        let mut inv = self.scripts.topics_admit.prepare_invoke();
        inv.key(TOPICS).key(TOPICS_BY_NAME).arg(limit);
        for t in &new {
            inv.arg(t.as_str());
        }
        match self.conn.invoke::<i64>(&inv).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("PLEXUS_TOO_MANY_TOPICS") => {
                return Err(StoreError::TooManyTopics { limit });
            }
            Err(e) => return Err(unavailable(e)),
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > 100_000 {
            known.clear();
        }
        for t in new {
            known.insert(format!("{TOPICS}\n{t}"));
        }
        Ok(())
    }

    /// Forgets a topic name (a purged job's topic): from the set and the sorted set.
    pub(super) async fn forget_topic(&self, topic: &Topic) -> StoreResult<()> {
        for cmd in [
            redis::cmd("SREM").arg(TOPICS).arg(topic.as_str()).clone(),
            redis::cmd("ZREM")
                .arg(TOPICS_BY_NAME)
                .arg(topic.as_str())
                .clone(),
        ] {
            self.conn.query::<()>(&cmd).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Fills the sorted set of topic names from the set when a release before this one left
    /// it short (it kept only the set): once, at open, a thousand names a command.
    pub(super) async fn index_topic_names(&self) -> StoreResult<()> {
        let count = |key: &'static str, cmd: &'static str| async move {
            self.conn
                .query::<u64>(redis::cmd(cmd).arg(key))
                .await
                .map_err(unavailable)
        };
        if count(TOPICS_BY_NAME, "ZCARD").await? >= count(TOPICS, "SCARD").await? {
            return Ok(());
        }
        let mut cursor = 0u64;
        loop {
            let (next, names): (u64, Vec<String>) = self
                .conn
                .query(
                    redis::cmd("SSCAN")
                        .arg(TOPICS)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await
                .map_err(unavailable)?;
            if !names.is_empty() {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(TOPICS_BY_NAME);
                for name in &names {
                    zadd.arg(0).arg(name);
                }
                self.conn.query::<()>(&zadd).await.map_err(unavailable)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Adds a name to a set once per node (the set only lists; a missing entry hides a
    /// topic from listings, never loses its messages).
    pub(super) async fn remember(&self, set: &str, name: &str) -> StoreResult<()> {
        let id = format!("{set}\n{name}");
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        self.conn
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
}

/// Enough replicas acknowledged, or `NotReplicated` naming what was missing.
pub(super) fn check_acks(acks: i64, rep: Replication, what: &str) -> StoreResult<()> {
    if acks >= i64::from(rep.min_replicas) {
        return Ok(());
    }
    Err(StoreError::NotReplicated(format!(
        "{acks} of {} replicas confirmed the write of {what} within {} ms",
        rep.min_replicas,
        rep.timeout.as_millis()
    )))
}

/// Most job topics whose slot a node remembers; past it the memory starts again (each one
/// then costs a lookup again, never a wrong answer).
const SLOTS_REMEMBERED: usize = 100_000;

impl Core {
    /// Where `topic`'s keys live (see [`Slot`]). A `_jobs.{id}` topic costs one lookup of its
    /// job's queue on a node's first use; a job that does not exist keeps its topic under its
    /// own name, where nothing is ever written.
    pub(super) async fn slot(&self, topic: &Topic) -> StoreResult<Slot> {
        let announced = announced_queue(topic);
        let job = match announced {
            Some(_) => None,
            None => match job_of_topic(topic) {
                Some(id) => Some(id),
                None => return Ok(Slot::own(topic)),
            },
        };
        if let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
        {
            return Ok(slot.clone());
        }
        let queue = match (announced, job) {
            (Some(queue), _) => queue,
            (None, Some(id)) => match self.queue_of(&id).await? {
                Some(queue) => queue,
                None => return Ok(Slot::own(topic)),
            },
            (None, None) => return Ok(Slot::own(topic)),
        };
        let slot = Slot::of_queue(&queue, topic);
        self.carry_over(topic, &slot).await?;
        self.remember_slot(topic, slot.clone());
        Ok(slot)
    }

    /// Records a job topic's slot without a lookup (a new job: nothing to carry over).
    pub(super) fn remember_slot(&self, topic: &Topic, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= SLOTS_REMEMBERED {
            slots.clear();
        }
        slots.insert(topic.clone(), slot);
    }

    /// A job topic written by a release that kept it under its own name: its seq counter
    /// moves to the new slot (the old messages read as deleted, so a follower's cursor stays
    /// valid and sees a gap rather than seqs counted again from 1), and the old keys go.
    pub(super) async fn carry_over(&self, topic: &Topic, slot: &Slot) -> StoreResult<()> {
        let old = Slot::own(topic);
        let (head, last): (Option<i64>, Option<i64>) = self
            .conn
            .query(redis::cmd("HMGET").arg(old.meta()).arg("head").arg("last"))
            .await
            .map_err(unavailable)?;
        let Some(head) = head else {
            return Ok(());
        };
        let mut inv = self.scripts.carry.prepare_invoke();
        inv.key(slot.meta()).arg(head).arg(last.unwrap_or(0));
        self.conn.invoke::<i64>(&inv).await.map_err(unavailable)?;
        for key in [old.stream(), old.meta()] {
            self.conn
                .query::<()>(redis::cmd("DEL").arg(key))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
