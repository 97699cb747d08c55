//! Appends: one run of `append.lua` per topic commit, concurrent appends of a topic grouped
//! by its flush task, a multi-topic batch on one Redis in one MULTI/EXEC.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::RedisError;

use crate::model::{Appended, NewMessage, Seq, StoreError, StoreResult, Topic};
use crate::store::log::IDEMPOTENCY_TTL;

use super::core::{Core, check_acks, unavailable};
use super::keys::*;

/// One append waiting for its topic's next script call, and where its result goes.
pub(super) type Waiter = (
    Vec<NewMessage>,
    tokio::sync::oneshot::Sender<StoreResult<Vec<Appended>>>,
);

/// Most messages, and payload bytes, one group commit carries.
pub(super) const MAX_GROUP: usize = 1024;
pub(super) const MAX_GROUP_BYTES: usize = 4 << 20;

impl Core {
    /// Appends one topic's messages (a script call); `check_only` tests the idempotency keys.
    pub(super) async fn append_topic(
        &self,
        topic: &Topic,
        messages: &[NewMessage],
        check_only: bool,
    ) -> StoreResult<Vec<Appended>> {
        let slot = self.slot(topic).await?;
        self.append_call(topic, &slot, messages, check_only, self.receipt(&slot))
            .await
    }

    /// A fresh receipt key for one append call of a topic.
    pub(super) fn receipt(&self, slot: &Slot) -> String {
        let (node, calls) = &*self.calls;
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slot.receipt(&format!("{node:016x}{call:x}"))
    }

    /// The keys and arguments of one run of `append.lua` (see the script for their order).
    /// Payloads and events are borrowed, not copied.
    pub(super) fn append_args<'m>(
        &self,
        topic: &Topic,
        slot: &Slot,
        messages: &'m [NewMessage],
        check_only: bool,
        receipt: String,
    ) -> (Vec<String>, Vec<Cow<'m, [u8]>>) {
        let mut keys = vec![slot.stream(), slot.meta(), receipt];
        keys.extend(
            messages
                .iter()
                .filter_map(|m| m.idempotency_key.as_ref())
                .map(|key| slot.idempotency(key)),
        );
        let (command, channel) = match (self.replication, self.sharded) {
            // commit.lua publishes, once replicas hold the write.
            (Some(_), _) => ("", String::new()),
            (None, false) => ("PUBLISH", CHANNEL.to_owned()),
            (None, true) => ("SPUBLISH", slot.channel()),
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
            // The SHA-256 (stored) and the FNV-1a 64 of a key stored before it (see
            // append.lua).
            let fp = m.fingerprint();
            args.push(Cow::Owned(
                format!("{} {}", fp.hex(), fp.legacy()).into_bytes(),
            ));
        }
        (keys, args)
    }

    /// One run of `append.lua`; a second run with the same receipt answers as the first.
    pub(super) async fn append_call(
        &self,
        topic: &Topic,
        slot: &Slot,
        messages: &[NewMessage],
        check_only: bool,
        receipt: String,
    ) -> StoreResult<Vec<Appended>> {
        let (keys, args) = self.append_args(topic, slot, messages, check_only, receipt);
        if !check_only && self.replication.is_some() {
            return self
                .append_replicated(topic, slot, messages, keys, args)
                .await;
        }
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

    /// `durability = "replicated"`: the script and `WAIT` in one pipeline on the write
    /// connection, so `WAIT` runs on the connection (and master) that wrote, even when
    /// redis-rs reconnects or re-routes (then both run again, and the receipt keeps the
    /// script from appending twice); then commit.lua shows the messages.
    async fn append_replicated(
        &self,
        topic: &Topic,
        slot: &Slot,
        messages: &[NewMessage],
        keys: Vec<String>,
        args: Vec<Cow<'_, [u8]>>,
    ) -> StoreResult<Vec<Appended>> {
        let Some(rep) = self.replication else {
            return Err(StoreError::Unavailable("redis: not replicated".into()));
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.scripts.append.get_hash())
            .arg(keys.len())
            .arg(&keys);
        for arg in &args {
            cmd.arg(arg.as_ref());
        }
        pipe.cmd("WAIT")
            .arg(rep.min_replicas)
            .arg(rep.timeout.as_millis().min(i64::MAX as u128) as i64);
        let started = std::time::Instant::now();
        let mut loaded = false;
        let writer = self.writer(&keys[0]);
        let (out, acks) = loop {
            let mut values: Vec<redis::Value> =
                writer.query_pipe(&pipe).await.map_err(unavailable)?;
            let (Some(acks), Some(out)) = (values.pop(), values.pop()) else {
                return Err(StoreError::Unavailable("redis: a short reply".into()));
            };
            match out {
                redis::Value::ServerError(e) => {
                    let e = RedisError::from(e);
                    if !loaded && e.to_string().to_lowercase().contains("noscript") {
                        // Redis lost its script cache (a restart or a failover): load, again.
                        loaded = true;
                        let mut load = redis::cmd("SCRIPT");
                        load.arg("LOAD").arg(&self.scripts.append_code);
                        writer.query::<String>(&load).await.map_err(unavailable)?;
                        continue;
                    }
                    return Err(append_error(e, topic, messages));
                }
                out => break (out, acks),
            }
        };
        let out: Vec<i64> = redis::from_redis_value(out)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let acks: i64 = redis::from_redis_value(acks)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        check_acks(acks, rep, &format!("topic {topic}"))?;
        let done = appended(&out);
        self.commit(topic, slot, &done).await?;
        metrics::histogram!("plexus_store_commit_ops").record(messages.len() as f64);
        metrics::histogram!("plexus_store_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok(done)
    }

    /// Raises the topic's committed head over the seqs of a replicated write (replayed ones
    /// too: their first write is older, so it is replicated as well), which shows them to
    /// readers and publishes them to every node, by commit.lua.
    pub(super) async fn commit(
        &self,
        topic: &Topic,
        slot: &Slot,
        done: &[Appended],
    ) -> StoreResult<()> {
        let (Some(first), Some(upto)) = (
            done.iter().map(|a| a.seq).min(),
            done.iter().map(|a| a.seq).max(),
        ) else {
            return Ok(());
        };
        self.commit_range(topic, slot, first, upto).await
    }

    /// Raises the topic's committed head to `upto`, publishing `first..=upto` (commit.lua).
    pub(super) async fn commit_range(
        &self,
        topic: &Topic,
        slot: &Slot,
        first: Seq,
        upto: Seq,
    ) -> StoreResult<()> {
        let (command, channel) = match self.sharded {
            false => ("PUBLISH", CHANNEL.to_owned()),
            true => ("SPUBLISH", slot.channel()),
        };
        let mut inv = self.scripts.commit.prepare_invoke();
        inv.key(slot.stream())
            .key(slot.meta())
            .arg(first)
            .arg(upto)
            .arg(command)
            .arg(channel)
            .arg(topic.as_str());
        self.writer(&slot.stream())
            .invoke::<i64>(&inv)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Appends a batch of several topics on one Redis in one MULTI/EXEC: every topic's
    /// script runs, or none (a dropped connection before EXEC runs nothing).
    pub(super) async fn append_topics(
        &self,
        topics: &[(Topic, Vec<NewMessage>)],
    ) -> StoreResult<Vec<Vec<Appended>>> {
        if self.replication.is_some() {
            return self.append_topics_replicated(topics).await;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (topic, messages) in topics {
            let slot = self.slot(topic).await?;
            let (keys, args) = self.append_args(topic, &slot, messages, false, self.receipt(&slot));
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

    /// [`Core::append_topics`] under `replicated`: MULTI, the scripts, EXEC and `WAIT` in one
    /// pipeline on the write connection, then each topic's commit.lua.
    async fn append_topics_replicated(
        &self,
        topics: &[(Topic, Vec<NewMessage>)],
    ) -> StoreResult<Vec<Vec<Appended>>> {
        let Some(rep) = self.replication else {
            return Err(StoreError::Unavailable("redis: not replicated".into()));
        };
        let mut slots = Vec::with_capacity(topics.len());
        for (topic, _) in topics {
            slots.push(self.slot(topic).await?);
        }
        let writer = self.writer(&slots.first().map(Slot::stream).unwrap_or_default());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("MULTI");
        for ((topic, messages), slot) in topics.iter().zip(&slots) {
            let (keys, args) = self.append_args(topic, slot, messages, false, self.receipt(slot));
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.scripts.append.get_hash())
                .arg(keys.len())
                .arg(keys);
            for arg in &args {
                cmd.arg(arg.as_ref());
            }
        }
        pipe.cmd("EXEC");
        pipe.cmd("WAIT")
            .arg(rep.min_replicas)
            .arg(rep.timeout.as_millis().min(i64::MAX as u128) as i64);
        let started = std::time::Instant::now();
        let mut loaded = false;
        let (items, acks) = loop {
            let mut values: Vec<redis::Value> =
                writer.query_pipe(&pipe).await.map_err(unavailable)?;
            let (Some(acks), Some(exec)) = (values.pop(), values.pop()) else {
                return Err(StoreError::Unavailable("redis: a short reply".into()));
            };
            let items = match exec {
                redis::Value::Array(items) if items.len() == topics.len() => items,
                other => {
                    return Err(StoreError::Unavailable(format!(
                        "redis: the transaction failed: {other:?}"
                    )));
                }
            };
            let failed = items
                .iter()
                .position(|v| matches!(v, redis::Value::ServerError(_)));
            let Some(i) = failed else {
                break (items, acks);
            };
            let redis::Value::ServerError(e) = items[i].clone() else {
                continue;
            };
            let e = RedisError::from(e);
            if !loaded && e.to_string().to_lowercase().contains("noscript") {
                // Every EVALSHA failed alike, so nothing ran: load the script, run again.
                loaded = true;
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(&self.scripts.append_code);
                writer.query::<String>(&load).await.map_err(unavailable)?;
                continue;
            }
            return Err(append_error(e, &topics[i].0, &topics[i].1));
        };
        let acks: i64 = redis::from_redis_value(acks)
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        check_acks(acks, rep, "a batch")?;
        let mut outs = Vec::with_capacity(items.len());
        for (((topic, _), slot), item) in topics.iter().zip(&slots).zip(items) {
            let out: Vec<i64> = redis::from_redis_value(item)
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
            let done = appended(&out);
            self.commit(topic, slot, &done).await?;
            outs.push(done);
        }
        let count: usize = topics.iter().map(|(_, m)| m.len()).sum();
        metrics::histogram!("plexus_store_commit_ops").record(count as f64);
        metrics::histogram!("plexus_store_commit_seconds").record(started.elapsed().as_secs_f64());
        Ok(outs)
    }

    /// Commits the appends of a group in one script call (a group commit: the script's fixed
    /// cost is paid once). If one of them reuses an idempotency key with another body, each
    /// runs alone instead, so the error reaches only that one, as if they had come in turn.
    pub(super) async fn commit_group(&self, topic: &Topic, group: Vec<Waiter>) {
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

    /// Drops every message of a topic, keeping its counter, by `delete.lua`.
    pub(super) async fn delete_topic(&self, topic: &Topic) -> StoreResult<bool> {
        let slot = self.slot(topic).await?;
        let mut inv = self.scripts.delete.prepare_invoke();
        inv.key(slot.stream()).key(slot.meta());
        let found: i64 = self
            .writer(&slot.stream())
            .invoke(&inv)
            .await
            .map_err(unavailable)?;
        // Under `replicated` a delete, too, is answered once replicas hold it.
        self.confirm(&slot.stream()).await?;
        Ok(found == 1)
    }
}

/// The `seq, time, replayed` triples `append.lua` returns.
pub(super) fn appended(out: &[i64]) -> Vec<Appended> {
    out.chunks_exact(3)
        .map(|c| Appended {
            seq: c[0] as Seq,
            time: c[1],
            replayed: c[2] == 1,
        })
        .collect()
}

/// An error of `append.lua`: a key conflict (naming the key) or Redis unavailable.
pub(super) fn append_error(e: RedisError, topic: &Topic, messages: &[NewMessage]) -> StoreError {
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
pub(super) async fn flush(
    appender: Core,
    pending: Arc<Mutex<HashMap<Topic, Vec<Waiter>>>>,
    topic: Topic,
) {
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

/// Per topic with a flush running: the appends waiting for the next script call.
pub(super) type Pending = Arc<Mutex<HashMap<Topic, Vec<Waiter>>>>;

/// Appends a batch: one script per topic, in the batch's order of first appearance; several
/// topics on one Redis in one MULTI/EXEC, on a cluster one commit per topic.
pub(super) async fn append(
    core: &Core,
    pending: &Pending,
    batch: Vec<NewMessage>,
) -> StoreResult<Vec<Appended>> {
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
            core.append_topic(topic, &split(topic), true).await?;
        }
    }
    // Everything that can fail before a commit happens first (the cap on topics too).
    core.admit_topics(&order.iter().collect::<Vec<_>>()).await?;
    let mut results = vec![None; batch.len()];
    if order.len() > 1 && !core.sharded {
        // One Redis: every topic in one MULTI/EXEC, all or nothing.
        let topics: Vec<(Topic, Vec<NewMessage>)> =
            order.iter().map(|t| (t.clone(), split(t))).collect();
        let outs = core.append_topics(&topics).await?;
        for (topic, appended) in order.iter().zip(outs) {
            for (&i, a) in groups[topic].iter().zip(appended) {
                results[i] = Some(a);
            }
        }
    } else {
        // One topic (sharing its flush task's group commit), or a cluster, where
        // topics on different shards cannot share a transaction: one commit each.
        for topic in &order {
            let appended = enqueue(core, pending, topic, split(topic)).await?;
            for (&i, a) in groups[topic].iter().zip(appended) {
                results[i] = Some(a);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Unavailable("redis: a short reply".into())))
        .collect()
}

/// Appends one topic's messages through its flush task: concurrent appends of a topic
/// share script calls.
pub(super) async fn enqueue(
    core: &Core,
    pending: &Pending,
    topic: &Topic,
    messages: Vec<NewMessage>,
) -> StoreResult<Vec<Appended>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let start = {
        let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
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
        tokio::spawn(flush(core.clone(), pending.clone(), topic.clone()));
    }
    rx.await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "redis: the append was dropped before its commit".into(),
        ))
    })
}
