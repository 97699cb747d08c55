//! Consumers: a hash per consumer (`v` its version, `b` its body) and the set of their names,
//! all under the hash tag `{consumers}` so one script sees both on a cluster. Every write is
//! `CAS` below: two nodes serving one consumer race on the version, and the loser reloads.

use std::sync::LazyLock;

use redis::Script;

use crate::model::StoreResult;
use crate::store::consumers::StoredConsumer;

use super::core::{Core, unavailable};
use super::keys::{CONSUMERS, consumer_key};

/// KEYS: the consumer's hash, the set of names. ARGV: expected version, body, name.
/// Answers the new version, or -1 when the stored one is not the expected one.
static CAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v, 'b', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return v
",
    )
});

/// KEYS: the consumer's hash, the set of names. ARGV: name. Answers how many were deleted.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
",
    )
});

impl Core {
    pub(super) async fn load_consumer(&self, name: &str) -> StoreResult<Option<StoredConsumer>> {
        let (version, body): (Option<u64>, Option<Vec<u8>>) = self
            .conn
            .query(
                redis::cmd("HMGET")
                    .arg(consumer_key(name))
                    .arg("v")
                    .arg("b"),
            )
            .await
            .map_err(unavailable)?;
        Ok(match (version, body) {
            (Some(version), Some(body)) => Some(StoredConsumer {
                name: name.to_string(),
                version,
                body,
            }),
            _ => None,
        })
    }

    pub(super) async fn put_consumer(
        &self,
        name: &str,
        expected: u64,
        body: &[u8],
    ) -> StoreResult<Option<u64>> {
        let mut inv = CAS.prepare_invoke();
        inv.key(consumer_key(name))
            .key(CONSUMERS)
            .arg(expected)
            .arg(body)
            .arg(name);
        let version: i64 = self.conn.invoke(&inv).await.map_err(unavailable)?;
        Ok((version > 0).then_some(version as u64))
    }

    pub(super) async fn delete_consumer(&self, name: &str) -> StoreResult<bool> {
        let mut inv = DELETE.prepare_invoke();
        inv.key(consumer_key(name)).key(CONSUMERS).arg(name);
        let n: i64 = self.conn.invoke(&inv).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    pub(super) async fn all_consumers(&self) -> StoreResult<Vec<StoredConsumer>> {
        let mut names: Vec<String> = self
            .conn
            .query(redis::cmd("SMEMBERS").arg(CONSUMERS))
            .await
            .map_err(unavailable)?;
        names.sort();
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            if let Some(c) = self.load_consumer(&name).await? {
                all.push(c);
            }
        }
        Ok(all)
    }
}
