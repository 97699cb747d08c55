//! Reads of the log, by `read.lua`.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::{
    EventName, LogBounds, Message, Millis, Seq, StoreError, StoreResult, Topic, TopicInfo,
};
use crate::store::log::ReadBatch;

use futures_util::StreamExt;

use super::core::{Core, unavailable};
use super::keys::*;

/// Topic infos a listing page asks Redis for at once.
const INFOS_IN_FLIGHT: usize = 64;

impl Core {
    /// Messages after `after` (see [`Log::read`](crate::store::Log::read)), by `read.lua`.
    pub(super) async fn read(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<ReadBatch> {
        let mut inv = self.scripts.read.prepare_invoke();
        let slot = self.slot(topic).await?;
        inv.key(slot.stream()).key(slot.meta());
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
    pub(super) async fn newest(&self, topic: &Topic) -> StoreResult<Option<Arc<Message>>> {
        let last = self.read(topic, 0, 0, 0).await?.bounds().last_seq;
        if last == 0 {
            return Ok(None);
        }
        Ok(self.read(topic, last - 1, 1, 0).await?.messages.pop())
    }

    /// What the admin API shows of a topic, by `info.lua`.
    pub(super) async fn topic_info(&self, topic: &Topic) -> StoreResult<Option<TopicInfo>> {
        let mut inv = self.scripts.info.prepare_invoke();
        let slot = self.slot(topic).await?;
        inv.key(slot.stream()).key(slot.meta());
        for arg in self.retention_args() {
            inv.arg(arg);
        }
        let v: Vec<i64> = self.conn.invoke(&inv).await.map_err(unavailable)?;
        Ok((v.len() == 6).then(|| TopicInfo {
            topic: topic.clone(),
            first_seq: v[0] as Seq,
            last_seq: v[1] as Seq,
            messages: v[3] as u64,
            bytes: v[4].max(0) as u64,
            last_publish: (v[1] > 0).then_some(v[5]),
        }))
    }

    /// Every listed topic's info, sorted by name.
    pub(super) async fn topic_infos(&self) -> StoreResult<Vec<TopicInfo>> {
        let names: Vec<String> = self
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
    }

    /// Up to `limit` topics named after `after`, in name order: one `ZRANGEBYLEX` of the
    /// sorted set of names (a name's bytes order it, as `Topic`'s order does); the infos are
    /// loaded for the page alone.
    pub(super) async fn topic_infos_page(
        &self,
        after: Option<&Topic>,
        limit: usize,
    ) -> StoreResult<Vec<TopicInfo>> {
        let from = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let names: Vec<String> = self
            .conn
            .query(
                redis::cmd("ZRANGEBYLEX")
                    .arg(TOPICS_BY_NAME)
                    .arg(from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.min(i64::MAX as usize)),
            )
            .await
            .map_err(unavailable)?;
        // The page's infos are asked for together (the connection pipelines them), in order.
        let topics: Vec<Topic> = names.iter().filter_map(|n| n.parse().ok()).collect();
        let infos: Vec<StoreResult<Option<TopicInfo>>> = futures_util::stream::iter(topics)
            .map(|topic| {
                let core = self.clone();
                async move { core.topic_info(&topic).await }
            })
            .buffered(INFOS_IN_FLIGHT)
            .collect()
            .await;
        infos.into_iter().filter_map(Result::transpose).collect()
    }

    /// The position just before the first retained message at or after `time`, by `seek.lua`.
    pub(super) async fn seek_time(&self, topic: &Topic, time: Millis) -> StoreResult<Seq> {
        let mut inv = self.scripts.seek.prepare_invoke();
        let slot = self.slot(topic).await?;
        inv.key(slot.stream()).key(slot.meta());
        for arg in self.retention_args() {
            inv.arg(arg);
        }
        inv.arg(time);
        let seq: i64 = self.conn.invoke(&inv).await.map_err(unavailable)?;
        Ok(seq.max(0) as Seq)
    }
}

pub(super) fn decode_read(topic: &Topic, v: Vec<redis::Value>) -> StoreResult<ReadBatch> {
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
