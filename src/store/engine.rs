//! An opened engine: one store seen through its four traits, so the wiring hands each part
//! of the application only what it uses (the hub the log and the feed, `Jobs` the job store).

use std::path::Path;
use std::sync::Arc;

use super::consumers::ConsumerStore;
use super::follow::Follow;
use super::jobs::JobStore;
use super::log::{Log, Retention};
use super::memory::MemoryLog;
use super::redis::{RedisLog, RedisTarget, Replication};
use super::sqlite::{Durability, SqliteLog};
use crate::model::StoreResult;

/// The handles of one opened engine. Cheap to clone: four `Arc`s to the same engine.
#[derive(Clone)]
pub struct Engine {
    pub log: Arc<dyn Log>,
    pub jobs: Arc<dyn JobStore>,
    pub follow: Arc<dyn Follow>,
    pub consumers: Arc<dyn ConsumerStore>,
}

impl Engine {
    /// The handles of an engine that offers all four.
    pub fn new<E: Log + JobStore + Follow + ConsumerStore>(engine: Arc<E>) -> Engine {
        Engine {
            log: engine.clone(),
            jobs: engine.clone(),
            follow: engine.clone(),
            consumers: engine,
        }
    }

    pub fn memory(retention: Retention) -> Engine {
        Engine::new(Arc::new(MemoryLog::new(retention)))
    }

    /// Opens (creating or migrating it if needed) the sqlite database in `dir`.
    pub fn sqlite(dir: &Path, retention: Retention, durability: Durability) -> StoreResult<Engine> {
        Ok(Engine::new(Arc::new(SqliteLog::open(
            dir, retention, durability,
        )?)))
    }

    /// Connects to Redis; `replication` under `durability = "replicated"`.
    pub async fn redis(
        target: &RedisTarget,
        retention: Retention,
        replication: Option<Replication>,
    ) -> Result<Engine, String> {
        Ok(Engine::new(Arc::new(
            RedisLog::open(target, retention, replication).await?,
        )))
    }

    /// Finishes pending writes and releases the engine.
    pub async fn close(&self) {
        self.log.close().await;
    }
}
