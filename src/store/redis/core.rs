//! What the engine and its tasks all use: the connection, the scripts, the retention.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

use crate::model::{StoreError, StoreResult, now_millis};
use crate::store::log::Retention;

const PRELUDE: &str = include_str!("prelude.lua");
const JOBS_PRELUDE: &str = include_str!("jobs.lua");

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
}

impl Scripts {
    pub(super) fn new() -> Self {
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

pub(super) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// What the engine and its tasks (flushes, the sharded feed) all use; cheap to clone.
#[derive(Clone)]
pub(super) struct Core {
    pub(super) conn: Conn,
    pub(super) scripts: Arc<Scripts>,
    pub(super) retention: Retention,
    pub(super) sharded: bool,
    /// Names each script call's receipt: this node's random id and a call counter.
    pub(super) calls: Arc<(u64, std::sync::atomic::AtomicU64)>,
    /// Topics and queues this node has already added to their sets.
    pub(super) known: Arc<Mutex<HashSet<String>>>,
}

/// A random id for this node's append receipts.
pub(super) fn node_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}

impl Core {
    pub(super) fn retention_args(&self) -> [i64; 3] {
        [
            now_millis(),
            self.retention.max_messages.min(i64::MAX as u64) as i64,
            self.retention.max_age.as_millis().min(i64::MAX as u128) as i64,
        ]
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
