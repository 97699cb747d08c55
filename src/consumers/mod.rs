//! Durable consumers: the hub keeps a reader's place. A consumer is a name, a set of topics and
//! a per-topic position; with `ack: explicit` also a lease per delivered message (its delivery
//! count and deadline) until it is acknowledged, nak'ed or dead-lettered.
//!
//! Every consumer is one record in the store ([`ConsumerStore`]), written by compare-and-set:
//! each operation loads the record, decides (what to deliver, which leases ran out, what an ack
//! removes), and writes it back only if nobody wrote it meanwhile; a lost race reloads and
//! decides again. So readers on one node or on several nodes of one Redis never get the same
//! message twice, except by redelivery after `ack_wait`, and nothing but the store holds state:
//! a restarted hub goes on where the record says. The transports (`http`) and in-process
//! readers (a webhook sender) use the same calls: [`Consumers::read`], [`Consumers::settle`].
//!
//! docs/API.md ("Durable consumers") is the contract.

mod record;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, select_all};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::hub::{Hub, HubError, ReadRequest};
use crate::model::{
    Cursor, Gap, Message, Millis, NewMessage, Seq, Since, StoreError, Topic, TopicList, now_millis,
};
use crate::store::ConsumerStore;
use crate::wire::Envelope;

pub use record::{AckMode, Settings, SettingsRequest};
use record::{Lane, Lease, Record};

/// How many times one operation reloads after losing a race before it gives up (503).
const MAX_RACES: usize = 64;
/// A reader waiting on an explicit consumer looks again at least this often: an ack made
/// through another node reaches this one through the store only.
const RECHECK: Duration = Duration::from_secs(1);
/// Most items one ack, nak or term call may carry.
pub const MAX_ACKS: usize = 1000;

/// The defaults a consumer gets for what its creator leaves out (`consumers.*` in the config).
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pub ack_wait: Duration,
    pub max_deliver: u32,
    pub max_ack_pending: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

/// A consumer's name: `[A-Za-z0-9_-]{1,64}`, so `_dead.{name}` is a topic name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerName(String);

impl FromStr for ConsumerName {
    type Err = ConsumerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(ConsumerName(s.to_string()))
        } else {
            Err(ConsumerError::BadName(format!(
                "consumer name {s:?}: 1 to 64 characters of A-Z, a-z, 0-9, _ and -"
            )))
        }
    }
}

impl ConsumerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where this consumer's dead letters go.
    pub fn dead_letter_topic(&self) -> Option<Topic> {
        format!("_dead.{}", self.0).parse().ok()
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug)]
pub enum ConsumerError {
    Hub(HubError),
    BadName(String),
    BadSettings(String),
    Unknown(ConsumerName),
    /// Other settings under an existing name, or a read whose topics are not the consumer's.
    Conflict(String),
    /// An ack, nak or term naming a delivery that is not the current lease.
    StaleDelivery(String),
}

impl fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumerError::Hub(e) => e.fmt(f),
            ConsumerError::BadName(m)
            | ConsumerError::BadSettings(m)
            | ConsumerError::Conflict(m)
            | ConsumerError::StaleDelivery(m) => f.write_str(m),
            ConsumerError::Unknown(name) => write!(f, "no consumer {name}"),
        }
    }
}

impl std::error::Error for ConsumerError {}

impl From<HubError> for ConsumerError {
    fn from(e: HubError) -> Self {
        ConsumerError::Hub(e)
    }
}

impl From<StoreError> for ConsumerError {
    fn from(e: StoreError) -> Self {
        ConsumerError::Hub(HubError::Store(e))
    }
}

fn raced_too_often() -> ConsumerError {
    ConsumerError::Hub(HubError::Store(StoreError::Unavailable(
        "too many concurrent writers of one consumer; retry".into(),
    )))
}

/// What a consumer read hands out: each message with its delivery count, the gaps met, and
/// the positions after it.
#[derive(Debug, Default)]
pub struct Delivered {
    pub messages: Vec<(Arc<Message>, u32)>,
    pub gaps: Vec<Gap>,
    pub next: Option<Cursor>,
}

/// A batch for a stream, with the positions it starts from (for each frame's cursor).
#[derive(Debug)]
pub struct StreamBatch {
    pub delivered: Delivered,
    pub before: Vec<(Topic, Seq)>,
    /// An `auto` consumer: advance to `delivered.next` once the batch is written.
    pub advance: bool,
}

/// One topic's lag figures (see docs/API.md).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    pub delivered: Seq,
    pub ack_floor: Seq,
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
}

/// A consumer as shown: its settings and, per topic, its figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    #[serde(flatten)]
    pub settings: Settings,
    pub created: String,
    pub topics_state: BTreeMap<String, Figures>,
}

/// One item of an ack, nak or term call: the message, and the delivery it was read as
/// (`None`: whatever the current lease is).
#[derive(Clone, Debug)]
pub struct AckItem {
    pub topic: Topic,
    pub seq: Seq,
    pub delivery: Option<u32>,
}

/// What to do with acknowledged items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done with: never delivered again.
    Ack,
    /// Give it back: delivered again now or after the delay (dead-lettered when this was its
    /// `max_deliver`-th delivery).
    Nak(Duration),
    /// Dead-letter it now.
    Term,
}

/// How a read without an existing consumer creates one.
#[derive(Clone, Debug)]
pub struct ReadSpec {
    pub topics: TopicList,
    pub limit: usize,
    pub wait: Duration,
    /// Where an implicitly created consumer starts (`all` for polls, `now` for streams).
    pub implicit_start: Since,
}

pub struct Consumers {
    hub: Arc<Hub>,
    store: Arc<dyn ConsumerStore>,
    options: ConsumerOptions,
    /// Woken on every local ack, nak, term and seek, so a reader held back by
    /// `max_ack_pending` or waiting on a lease moves at once.
    settled: Notify,
    /// Operations on one consumer from this node take turns (a consumer hashes to one
    /// stripe): racing readers of one node would otherwise mostly lose their compare-and-set
    /// and redo the work. The compare-and-set still decides between nodes. Async mutexes:
    /// held across the store calls of one load-decide-write, never while a reader waits.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// On a store only this node writes (sqlite, memory): each consumer's record as last
    /// written, so a read or an ack does not load and decode it again. Written only
    /// under the consumer's turn. A std mutex: held to look up or replace, never across an
    /// await.
    cache: std::sync::Mutex<std::collections::HashMap<String, (u64, Record)>>,
    /// On a store only this node writes: per consumer, new messages read past what the last
    /// read handed out (see `new_messages`). Taken from under the consumer's turn; a
    /// background read (`prefetch`) only appends to it.
    ahead: Arc<std::sync::Mutex<std::collections::HashMap<String, Ahead>>>,
}

/// Most messages one read of a consumer loads from the log: what the caller's `limit` leaves
/// is kept for the next reads of the consumer, so readers sharing a consumer do not each
/// wait for a log read while the consumer's turn is held.
const READ_AHEAD: usize = 1000;
/// Most payload bytes kept read ahead per consumer; a longer surplus is dropped (and read
/// again when its turn comes).
const READ_AHEAD_BYTES: usize = 1 << 20;

/// When fewer than this many messages are left read ahead (and the log had more), the next
/// `READ_AHEAD` are read in the background, outside the consumer's turn, and appended.
const PREFETCH_BELOW: usize = READ_AHEAD / 2;

/// Messages read from the log and not yet handed out: the continuation of a read from
/// `from`, which covered each topic up to `next` (docs/ARCHITECTURE.md, durable consumers).
struct Ahead {
    from: Vec<(Topic, Seq)>,
    messages: std::collections::VecDeque<Arc<Message>>,
    gaps: Vec<Gap>,
    next: Cursor,
    /// The last read filled its limit: the log may hold more after `next`.
    more: bool,
    /// A background read from `next` is under way.
    fetching: bool,
}

/// Messages handed out, the gaps met, and where each topic then stands.
type Taken = (Vec<Arc<Message>>, Vec<Gap>, Vec<(Topic, Seq)>);

impl Ahead {
    /// Payload bytes held.
    fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.data.len()).sum()
    }

    /// Hands out the first `n` messages (and the gaps, once), and where each topic then
    /// stands: after the last one taken while the topic has more here, else where the read
    /// ended.
    fn take(&mut self, n: usize) -> Taken {
        let taken: Vec<Arc<Message>> = self.messages.drain(..n.min(self.messages.len())).collect();
        let positions: Vec<(Topic, Seq)> = self
            .from
            .iter()
            .map(|(t, from)| {
                let seq = if self.messages.iter().any(|m| m.topic == *t) {
                    taken
                        .iter()
                        .rev()
                        .find(|m| m.topic == *t)
                        .map_or(*from, |m| m.seq)
                } else {
                    self.next.position(t).unwrap_or(*from)
                };
                (t.clone(), seq)
            })
            .collect();
        self.from = positions.clone();
        (taken, std::mem::take(&mut self.gaps), positions)
    }
}

/// How many stripes of consumer locks a node has.
const STRIPES: usize = 64;

/// The outcome of a queued write of a consumer's record (see `Consumers::queue_write`).
type Written<'a> = futures_util::future::BoxFuture<'a, Result<bool, ConsumerError>>;

/// What one read attempt decided: the batch, when the earliest lease runs out, and the write
/// that must land before the batch is handed out.
type ReadAttempt<'a> = (Delivered, Option<Millis>, Option<Written<'a>>);

impl Consumers {
    pub fn new(
        hub: Arc<Hub>,
        store: Arc<dyn ConsumerStore>,
        options: ConsumerOptions,
    ) -> Arc<Self> {
        Arc::new(Consumers {
            hub,
            store,
            options,
            settled: Notify::new(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            ahead: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
        })
    }

    /// This node's turn on `name` (see `stripes`).
    async fn turn(&self, name: &ConsumerName) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name.as_str());
        self.stripes[(hash as usize) % STRIPES].lock().await
    }

    pub fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    async fn load(&self, name: &ConsumerName) -> Result<Option<(u64, Record)>, ConsumerError> {
        if let Some(cached) = self.cached(name) {
            return Ok(Some(cached));
        }
        let Some(stored) = self.store.consumer(name.as_str()).await? else {
            return Ok(None);
        };
        let record = Record::decode(&stored.body).map_err(|e| {
            StoreError::Unavailable(format!("consumer {name} is stored unreadable: {e}"))
        })?;
        // Not cached here: only a write under the consumer's turn knows it has the latest.
        Ok(Some((stored.version, record)))
    }

    /// The record as this node last wrote it, on a store no other node writes.
    fn cached(&self, name: &ConsumerName) -> Option<(u64, Record)> {
        if self.hub.shared_store() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(name.as_str()).cloned()
    }

    /// Keeps (or, `None`, forgets) the record of `name` as the store has it now.
    fn remember(&self, name: &ConsumerName, record: Option<(u64, Record)>) {
        if self.hub.shared_store() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match record {
            Some(r) => cache.insert(name.as_str().to_string(), r),
            None => {
                self.forget_ahead(name);
                cache.remove(name.as_str())
            }
        };
    }

    fn forget_ahead(&self, name: &ConsumerName) {
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        ahead.remove(name.as_str());
    }

    /// At most `room` new messages after `positions` (under the consumer's turn), as a log
    /// read with that limit would give them: the gaps met, and where each topic then stands.
    /// On a store only this node writes, from what an earlier read kept ahead when it starts
    /// at `positions`, else from a read of up to `READ_AHEAD` messages whose surplus is kept.
    async fn new_messages(
        &self,
        name: &ConsumerName,
        topics: &TopicList,
        positions: &[(Topic, Seq)],
        room: usize,
    ) -> Result<Taken, ConsumerError> {
        let local = !self.hub.shared_store();
        if local {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(kept) = ahead.get_mut(name.as_str()) {
                if kept.from == positions && kept.messages.len() >= room {
                    let out = kept.take(room);
                    self.prefetch(name, topics, kept);
                    return Ok(out);
                }
                ahead.remove(name.as_str());
            }
        }
        let limit = if local { room.max(READ_AHEAD) } else { room };
        let result = self
            .hub
            .read(ReadRequest {
                topics: topics.clone(),
                since: Since::Cursor(Cursor::for_positions(positions)),
                default_since: Since::All,
                limit,
                wait: Duration::ZERO,
            })
            .await?;
        let mut read = Ahead {
            from: positions.to_vec(),
            more: result.messages.len() >= limit,
            messages: result.messages.into(),
            gaps: result.gaps,
            next: result.next,
            fetching: false,
        };
        let out = read.take(room);
        if local && !read.messages.is_empty() && read.bytes() <= READ_AHEAD_BYTES {
            // Kept first, then the background read started under the same lock: it cannot
            // finish before there is a read-ahead to append to (and clear `fetching` on).
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            let kept = ahead.entry(name.as_str().to_string()).insert_entry(read);
            self.prefetch(name, topics, kept.into_mut());
        }
        Ok(out)
    }

    /// Starts a background read of the next `READ_AHEAD` messages after what `kept` holds
    /// when it runs low, so the consumer's turn seldom waits for the log. The result is
    /// appended only to a read ahead that still ends where the background read began (an
    /// append-only log gives the same messages to any read from there), and only when it
    /// met no gap; otherwise it is dropped, and a read under the turn does the work.
    fn prefetch(&self, name: &ConsumerName, topics: &TopicList, kept: &mut Ahead) {
        if kept.fetching
            || !kept.more
            || kept.messages.len() >= PREFETCH_BELOW
            || kept.bytes() > READ_AHEAD_BYTES / 2
        {
            return;
        }
        kept.fetching = true;
        let from = kept.next.clone();
        let (hub, ahead, name, topics) = (
            self.hub.clone(),
            self.ahead.clone(),
            name.as_str().to_string(),
            topics.clone(),
        );
        tokio::spawn(async move {
            let read = hub
                .read(ReadRequest {
                    topics,
                    since: Since::Cursor(from.clone()),
                    default_since: Since::All,
                    limit: READ_AHEAD,
                    wait: Duration::ZERO,
                })
                .await;
            let mut ahead = ahead.lock().unwrap_or_else(|p| p.into_inner());
            let Some(kept) = ahead.get_mut(&name) else {
                return;
            };
            if kept.next != from {
                return;
            }
            kept.fetching = false;
            let Ok(result) = read else {
                return;
            };
            let read: usize = result.messages.iter().map(|m| m.data.len()).sum();
            if !result.gaps.is_empty() || kept.bytes() + read > READ_AHEAD_BYTES {
                // Left to the read under the turn, which meets the gap or drops the surplus;
                // no more background reads for this read-ahead.
                kept.more = false;
                return;
            }
            kept.more = result.messages.len() >= READ_AHEAD;
            kept.messages.extend(result.messages);
            kept.next = result.next;
        });
    }

    async fn load_known(&self, name: &ConsumerName) -> Result<(u64, Record), ConsumerError> {
        self.load(name)
            .await?
            .ok_or_else(|| ConsumerError::Unknown(name.clone()))
    }

    /// Writes `record` over `version`; `false`: someone wrote first.
    async fn write(
        &self,
        name: &ConsumerName,
        version: u64,
        record: &Record,
        dead: Vec<NewMessage>,
    ) -> Result<bool, ConsumerError> {
        self.queue_write(name, version, record, dead).await
    }

    /// Queues the write of `record` over `version` (under the consumer's turn) and answers
    /// the future of its outcome; `false`: someone wrote first. On a store only this node
    /// writes, the cache holds `record` at once, as the version it gets when it lands: the
    /// next operation of the turn decides on it and queues its own write behind this one,
    /// so one group commit serves several operations (see `landed`). Whoever acts on a
    /// decision (answers a read, an ack) waits for its write first, and a write decided on
    /// a queued one that failed fails its compare-and-set too, so nothing is handed out or
    /// settled that the store does not hold.
    fn queue_write(
        &self,
        name: &ConsumerName,
        version: u64,
        record: &Record,
        dead: Vec<NewMessage>,
    ) -> Written<'_> {
        let written = self
            .store
            .put_consumer(name.as_str(), version, record.encode(), dead);
        self.remember(name, Some((version + 1, record.clone())));
        let name = name.clone();
        Box::pin(async move {
            match written.await {
                Ok(Some(v)) if v == version + 1 => Ok(true),
                Ok(Some(_)) => {
                    self.remember(&name, None);
                    Ok(true)
                }
                // Lost a race (or the store failed): what is cached is not what is stored.
                Ok(None) => {
                    self.remember(&name, None);
                    Ok(false)
                }
                Err(e) => {
                    self.remember(&name, None);
                    Err(e.into())
                }
            }
        })
    }

    /// Waits for a queued write. On a store only this node writes, the turn is given up
    /// first: the next operation decides on the cached record, and the writes of several
    /// operations share a commit. On a shared store the turn is kept until the write lands,
    /// so the next local operation loads what this one wrote instead of losing its race.
    async fn landed(
        &self,
        turn: tokio::sync::MutexGuard<'_, ()>,
        written: Option<Written<'_>>,
    ) -> Result<bool, ConsumerError> {
        let held = if self.hub.shared_store() {
            Some(turn)
        } else {
            drop(turn);
            None
        };
        let won = match written {
            Some(w) => w.await,
            None => Ok(true),
        };
        drop(held);
        won
    }

    /// The topics of a consumer (for the caller's rights), or `Unknown`.
    pub async fn topics(&self, name: &ConsumerName) -> Result<TopicList, ConsumerError> {
        self.load_known(name).await?.1.settings.topic_list()
    }

    /// Creates a consumer. `true`: created; `false`: it existed with these very settings.
    /// Other settings under the name are a conflict.
    pub async fn create(
        &self,
        name: &ConsumerName,
        settings: Settings,
    ) -> Result<(ConsumerInfo, bool), ConsumerError> {
        let topics = settings.topic_list()?;
        let start = settings.start_since()?;
        let positions = self.hub.start_positions(&topics, &start).await?;
        let record = Record {
            settings: settings.clone(),
            created: now_millis(),
            topics: positions
                .into_iter()
                .map(|(t, seq)| (t.as_str().to_string(), Lane::at(seq)))
                .collect(),
        };
        let turn = self.turn(name).await;
        if self.write(name, 0, &record, Vec::new()).await? {
            drop(turn);
            return Ok((self.describe(name, &record).await?, true));
        }
        let (_, existing) = self.load_known(name).await?;
        drop(turn);
        if existing.settings == settings {
            Ok((self.describe(name, &existing).await?, false))
        } else {
            Err(ConsumerError::Conflict(format!(
                "consumer {name} exists with other settings; delete it first, or use its settings"
            )))
        }
    }

    pub async fn info(&self, name: &ConsumerName) -> Result<ConsumerInfo, ConsumerError> {
        let (_, record) = self.load_known(name).await?;
        self.describe(name, &record).await
    }

    pub async fn list(&self) -> Result<Vec<ConsumerInfo>, ConsumerError> {
        let mut out = Vec::new();
        for stored in self.store.consumers().await? {
            let (Ok(name), Ok(record)) = (
                stored.name.parse::<ConsumerName>(),
                Record::decode(&stored.body),
            ) else {
                continue;
            };
            out.push(self.describe(&name, &record).await?);
        }
        Ok(out)
    }

    pub async fn delete(&self, name: &ConsumerName) -> Result<(), ConsumerError> {
        let _turn = self.turn(name).await;
        let deleted = self.store.delete_consumer(name.as_str()).await;
        self.remember(name, None);
        if deleted? {
            self.settled.notify_waiters();
            Ok(())
        } else {
            Err(ConsumerError::Unknown(name.clone()))
        }
    }

    async fn describe(
        &self,
        name: &ConsumerName,
        record: &Record,
    ) -> Result<ConsumerInfo, ConsumerError> {
        let mut topics_state = BTreeMap::new();
        for (topic, lane) in &record.topics {
            let Ok(t) = topic.parse::<Topic>() else {
                continue;
            };
            let bounds = self.hub.topic_bounds(&t).await?;
            topics_state.insert(topic.clone(), lane.figures(&bounds));
        }
        Ok(ConsumerInfo {
            name: name.to_string(),
            settings: record.settings.clone(),
            created: crate::model::format_rfc3339_millis(record.created),
            topics_state,
        })
    }

    /// `plexus_consumer_pending` and `plexus_consumer_ack_pending` in Prometheus text, computed
    /// from the store at each scrape, so they equal what the API answers on every node.
    pub async fn metrics_text(&self) -> Result<String, ConsumerError> {
        use std::fmt::Write;
        let all = self.list().await?;
        let mut pending = String::from(
            "# HELP plexus_consumer_pending Retained messages a consumer has not been given yet.\n\
             # TYPE plexus_consumer_pending gauge\n",
        );
        let mut ack_pending = String::from(
            "# HELP plexus_consumer_ack_pending Messages given to a consumer and not yet acknowledged.\n\
             # TYPE plexus_consumer_ack_pending gauge\n",
        );
        for c in &all {
            for (topic, f) in &c.topics_state {
                let labels = format!("consumer=\"{}\",topic=\"{}\"", c.name, topic);
                let _ = writeln!(pending, "plexus_consumer_pending{{{labels}}} {}", f.pending);
                let _ = writeln!(
                    ack_pending,
                    "plexus_consumer_ack_pending{{{labels}}} {}",
                    f.ack_pending
                );
            }
        }
        if all.is_empty() {
            return Ok(String::new());
        }
        Ok(pending + &ack_pending)
    }

    /// Reads through a consumer: redeliveries whose lease ran out first, then new messages,
    /// at most `limit`, waiting up to `wait` for any. Creates an `auto` consumer of these
    /// topics when none has the name. The topics must be the consumer's.
    pub async fn read(
        &self,
        name: &ConsumerName,
        spec: &ReadSpec,
    ) -> Result<Delivered, ConsumerError> {
        let deadline = Instant::now() + spec.wait;
        let mut races = 0;
        loop {
            let turn = self.turn(name).await;
            let Some((version, record)) = self.load(name).await? else {
                drop(turn);
                let settings =
                    Settings::implicit(&spec.topics, &spec.implicit_start, &self.options);
                match self.create(name, settings).await {
                    Ok(_) | Err(ConsumerError::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            };
            if !record.settings.same_topics(&spec.topics) {
                return Err(ConsumerError::Conflict(format!(
                    "consumer {name} reads {}; read it with exactly those topics",
                    record.settings.topics.join(",")
                )));
            }
            let waiting = !spec.wait.is_zero() && Instant::now() < deadline;
            // Subscribed before the attempt reads: what is committed or settled after it
            // still wakes this reader.
            let mut watchers: Vec<_> = if waiting {
                spec.topics.iter().map(|t| self.hub.head_watch(t)).collect()
            } else {
                Vec::new()
            };
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let (delivered, next_due, written) = self
                .attempt_read(name, version, record, spec.limit, None)
                .await?;
            if !self.landed(turn, written).await? {
                races += 1;
                if races > MAX_RACES {
                    return Err(raced_too_often());
                }
                tokio::task::yield_now().await;
                continue;
            }
            if !delivered.messages.is_empty() || !delivered.gaps.is_empty() || !waiting {
                return Ok(delivered);
            }
            let mut wake = deadline.min(Instant::now() + RECHECK);
            if let Some(due) = next_due {
                let ms = due.saturating_sub(now_millis()).max(0) as u64;
                wake = wake.min(Instant::now() + Duration::from_millis(ms));
            }
            let woken = select_all(watchers.iter_mut().map(|rx| rx.changed().boxed()));
            tokio::select! {
                _ = woken => {}
                _ = &mut settled => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.hub.shutdown_token().cancelled() => return Ok(delivered),
            }
        }
    }

    /// One read against one version of the record, its write queued (its outcome says
    /// whether another writer got there first). Also answers when the earliest lease runs out
    /// (to wait for it). `settled`: the record carries a settlement made in the same turn
    /// (with these dead letters), so it is written even when the read changes nothing.
    async fn attempt_read(
        &self,
        name: &ConsumerName,
        version: u64,
        mut record: Record,
        limit: usize,
        settled: Option<Vec<NewMessage>>,
    ) -> Result<ReadAttempt<'_>, ConsumerError> {
        let now = now_millis();
        let settings = record.settings.clone();
        let explicit = settings.ack == AckMode::Explicit;
        let mut out: Vec<(Arc<Message>, u32)> = Vec::new();
        let mut changed = settled.is_some();
        let mut dead = settled.unwrap_or_default();
        if explicit {
            for (topic, lane) in record.topics.iter_mut() {
                let Ok(t) = topic.parse::<Topic>() else {
                    continue;
                };
                let due: Vec<(Seq, Lease)> = lane
                    .leases
                    .iter()
                    .filter(|(_, l)| l.until <= now)
                    .map(|(s, l)| (*s, *l))
                    .collect();
                for (seq, lease) in due {
                    if out.len() >= limit && lease.delivery < settings.max_deliver {
                        continue;
                    }
                    changed = true;
                    let Some(msg) = self.hub.message(&t, seq).await? else {
                        // Gone (retention, a topic delete): nothing left to deliver.
                        lane.leases.remove(&seq);
                        continue;
                    };
                    if lease.delivery >= settings.max_deliver {
                        lane.leases.remove(&seq);
                        dead.extend(self.dead_letter(name, &t, seq, lease.delivery, Some(&msg)));
                        continue;
                    }
                    let delivery = lease.delivery + 1;
                    lane.leases
                        .insert(seq, Lease::new(delivery, now, settings.ack_wait_ms));
                    out.push((msg, delivery));
                }
            }
        }
        let leased: usize = record.topics.values().map(|l| l.leases.len()).sum();
        let room = if explicit {
            (settings.max_ack_pending as usize)
                .saturating_sub(leased)
                .min(limit.saturating_sub(out.len()))
        } else {
            limit
        };
        let mut gaps = Vec::new();
        let topics = settings.topic_list()?;
        let positions: Vec<(Topic, Seq)> = topics
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    record.topics.get(t.as_str()).map_or(0, |l| l.delivered),
                )
            })
            .collect();
        let mut next = Cursor::for_positions(&positions);
        if room > 0 {
            let (messages, met, after) = self.new_messages(name, &topics, &positions, room).await?;
            for msg in messages {
                if explicit && let Some(lane) = record.topics.get_mut(msg.topic.as_str()) {
                    lane.leases
                        .insert(msg.seq, Lease::new(1, now, settings.ack_wait_ms));
                }
                out.push((msg, 1));
            }
            for (t, seq) in &after {
                let lane = record.topics.entry(t.as_str().to_string()).or_default();
                if *seq != lane.delivered {
                    lane.delivered = *seq;
                    changed = true;
                }
            }
            gaps = met;
            next = Cursor::for_positions(&after);
        }
        let written = changed.then(|| self.queue_write(name, version, &record, dead));
        let next_due = record
            .topics
            .values()
            .flat_map(|l| l.leases.values().map(|l| l.until))
            .min();
        Ok((
            Delivered {
                messages: out,
                gaps,
                next: Some(next),
            },
            next_due,
            written,
        ))
    }

    /// The dead letter of a message: its envelope with its delivery count, on `_dead.{name}`.
    fn dead_letter(
        &self,
        name: &ConsumerName,
        topic: &Topic,
        seq: Seq,
        delivery: u32,
        msg: Option<&Message>,
    ) -> Option<NewMessage> {
        let data = match msg {
            Some(msg) => serde_json::to_vec(&Envelope::delivered(msg, delivery)),
            None => serde_json::to_vec(&serde_json::json!({
                "topic": topic.as_str(), "seq": seq, "delivery": delivery
            })),
        }
        .ok()?;
        metrics::counter!("plexus_consumer_dead_letters_total").increment(1);
        Some(NewMessage {
            topic: name.dead_letter_topic()?,
            event: None,
            data: data.into(),
            idempotency_key: None,
        })
    }

    /// Acks, naks or terms `items` of an explicit consumer, all or none: an item that names
    /// no current lease (never delivered, already settled, or a delivery that is not the
    /// current one) refuses the whole call.
    pub async fn settle(
        &self,
        name: &ConsumerName,
        items: &[AckItem],
        how: Settle,
    ) -> Result<(), ConsumerError> {
        for _ in 0..MAX_RACES {
            let turn = self.turn(name).await;
            let (version, mut record) = self.load_known(name).await?;
            let dead = self.apply_settlement(name, &mut record, items, how).await?;
            let written = self.queue_write(name, version, &record, dead);
            if self.landed(turn, Some(written)).await? {
                self.settled.notify_waiters();
                return Ok(());
            }
        }
        Err(raced_too_often())
    }

    /// Settles `items`, then reads through the consumer as [`Consumers::read`] does, in one
    /// call. On a store only this node writes, the settlement and the read are decided on the
    /// record in one turn and stored by one write (one compare-and-set per batch): the read's
    /// leases and the settlement land together or not at all. On a shared store the two run
    /// one after the other.
    pub async fn settle_and_read(
        &self,
        name: &ConsumerName,
        items: &[AckItem],
        how: Settle,
        spec: &ReadSpec,
    ) -> Result<Delivered, ConsumerError> {
        let together = if self.hub.shared_store() {
            None
        } else {
            self.settle_and_read_together(name, items, how, spec)
                .await?
        };
        let delivered = match together {
            Some(delivered) => delivered,
            // One after the other, each with its own retries.
            None => {
                self.settle(name, items, how).await?;
                return self.read(name, spec).await;
            }
        };
        self.settled.notify_waiters();
        let empty = delivered.messages.is_empty() && delivered.gaps.is_empty();
        if empty && !spec.wait.is_zero() {
            return self.read(name, spec).await;
        }
        Ok(delivered)
    }

    /// [`Consumers::settle_and_read`] in one turn and one write, on a store only this node
    /// writes. `None`: not done, nothing stored (the topics differ from the consumer's, or
    /// the write was decided on a queued one that failed); the caller settles, then reads.
    async fn settle_and_read_together(
        &self,
        name: &ConsumerName,
        items: &[AckItem],
        how: Settle,
        spec: &ReadSpec,
    ) -> Result<Option<Delivered>, ConsumerError> {
        let turn = self.turn(name).await;
        let (version, mut record) = self.load_known(name).await?;
        if !record.settings.same_topics(&spec.topics) {
            return Ok(None);
        }
        let dead = self.apply_settlement(name, &mut record, items, how).await?;
        let (delivered, _, written) = match self
            .attempt_read(name, version, record, spec.limit, Some(dead))
            .await
        {
            Ok(attempt) => attempt,
            Err(e) => {
                // The read failed (a full read budget, a store error): the settlement is
                // still stored, on its own, and the read's error answered.
                drop(turn);
                self.settle(name, items, how).await?;
                return Err(e);
            }
        };
        Ok(self.landed(turn, written).await?.then_some(delivered))
    }

    /// Settles `items` on `record` (under the consumer's turn), all or none, and answers the
    /// dead letters the settlement makes.
    async fn apply_settlement(
        &self,
        name: &ConsumerName,
        record: &mut Record,
        items: &[AckItem],
        how: Settle,
    ) -> Result<Vec<NewMessage>, ConsumerError> {
        if record.settings.ack != AckMode::Explicit {
            return Err(ConsumerError::BadSettings(format!(
                "consumer {name} acknowledges automatically (ack: auto): it takes no acks"
            )));
        }
        let now = now_millis();
        let max_deliver = record.settings.max_deliver;
        let mut dead_seqs = Vec::new();
        for item in items {
            let lease = record
                .topics
                .get(item.topic.as_str())
                .and_then(|lane| lane.leases.get(&item.seq))
                .copied();
            let current =
                lease.filter(|l| !l.released && item.delivery.is_none_or(|d| d == l.delivery));
            let Some(lease) = current else {
                return Err(ConsumerError::StaleDelivery(format!(
                    "{}:{}{} is not leased to this reader by consumer {name}: never \
                     delivered, already settled, or delivered again since (nothing was changed)",
                    item.topic,
                    item.seq,
                    item.delivery
                        .map(|d| format!(" delivery {d}"))
                        .unwrap_or_default()
                )));
            };
            let Some(lane) = record.topics.get_mut(item.topic.as_str()) else {
                continue;
            };
            let dead_now = match how {
                Settle::Ack => {
                    lane.leases.remove(&item.seq);
                    false
                }
                Settle::Term => true,
                Settle::Nak(_) if lease.delivery >= max_deliver => true,
                Settle::Nak(delay) => {
                    lane.leases.insert(
                        item.seq,
                        Lease {
                            delivery: lease.delivery,
                            until: now + delay.as_millis() as Millis,
                            released: true,
                        },
                    );
                    false
                }
            };
            if dead_now {
                lane.leases.remove(&item.seq);
                dead_seqs.push((item.topic.clone(), item.seq, lease.delivery));
            }
        }
        let mut dead = Vec::new();
        for (topic, seq, delivery) in dead_seqs {
            let msg = self.hub.message(&topic, seq).await?;
            dead.extend(self.dead_letter(name, &topic, seq, delivery, msg.as_deref()));
        }
        Ok(dead)
    }

    /// Moves a consumer's position on every topic to where a read from `since` starts; the
    /// messages it held leases on are released (they are before or after the new position,
    /// and are read again from there or not at all).
    pub async fn seek(
        &self,
        name: &ConsumerName,
        since: &Since,
    ) -> Result<ConsumerInfo, ConsumerError> {
        for _ in 0..MAX_RACES {
            let _turn = self.turn(name).await;
            let (version, mut record) = self.load_known(name).await?;
            let topics = record.settings.topic_list()?;
            let positions = self.hub.start_positions(&topics, since).await?;
            self.forget_ahead(name);
            record.topics = positions
                .into_iter()
                .map(|(t, seq)| (t.as_str().to_string(), Lane::at(seq)))
                .collect();
            if self.write(name, version, &record, Vec::new()).await? {
                self.settled.notify_waiters();
                return self.describe(name, &record).await;
            }
        }
        Err(raced_too_often())
    }

    /// The consumer a read names, created (`auto`, from `spec.implicit_start`) when missing;
    /// `Conflict` when its topics are not the read's.
    pub async fn ensure(&self, name: &ConsumerName, spec: &ReadSpec) -> Result<(), ConsumerError> {
        loop {
            let Some((_, record)) = self.load(name).await? else {
                let settings =
                    Settings::implicit(&spec.topics, &spec.implicit_start, &self.options);
                match self.create(name, settings).await {
                    Ok(_) | Err(ConsumerError::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            };
            if !record.settings.same_topics(&spec.topics) {
                return Err(ConsumerError::Conflict(format!(
                    "consumer {name} reads {}; read it with exactly those topics",
                    record.settings.topics.join(",")
                )));
            }
            return Ok(());
        }
    }

    /// The next batch for a stream. An `explicit` consumer leases it as a poll does. An `auto`
    /// consumer's position does not move yet: the stream calls [`Consumers::advance`] once the
    /// batch is written, so what a client that went away never got comes again.
    pub async fn stream_batch(
        &self,
        name: &ConsumerName,
        spec: &ReadSpec,
    ) -> Result<StreamBatch, ConsumerError> {
        let (_, record) = self.load_known(name).await?;
        let topics = record.settings.topic_list()?;
        let before: Vec<(Topic, Seq)> = topics
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    record.topics.get(t.as_str()).map_or(0, |l| l.delivered),
                )
            })
            .collect();
        if record.settings.ack == AckMode::Explicit {
            let delivered = self.read(name, spec).await?;
            return Ok(StreamBatch {
                delivered,
                before,
                advance: false,
            });
        }
        let result = self
            .hub
            .read(ReadRequest {
                topics,
                since: Since::Cursor(Cursor::for_positions(&before)),
                default_since: Since::All,
                limit: spec.limit,
                wait: spec.wait,
            })
            .await?;
        Ok(StreamBatch {
            delivered: Delivered {
                messages: result.messages.into_iter().map(|m| (m, 1)).collect(),
                gaps: result.gaps,
                next: Some(result.next),
            },
            before,
            advance: true,
        })
    }

    /// Moves an `auto` consumer forward to `positions` (never back) once a stream wrote them.
    pub async fn advance(
        &self,
        name: &ConsumerName,
        positions: &[(Topic, Seq)],
    ) -> Result<(), ConsumerError> {
        self.move_to(name, positions, true, None).await.map(|_| ())
    }

    /// [`Consumers::advance`] only while the consumer still stands at `from` on those topics
    /// (where the read of what was written began): a seek made meanwhile wins, and what the
    /// read found at the new position is not skipped or sent twice. `false`: it had moved.
    pub async fn advance_from(
        &self,
        name: &ConsumerName,
        from: &[(Topic, Seq)],
        positions: &[(Topic, Seq)],
    ) -> Result<bool, ConsumerError> {
        self.move_to(name, positions, true, Some(from)).await
    }

    /// Moves an `auto` consumer's position on `topic` back to `seq` when it is ahead (an SSE
    /// reconnect with a `Last-Event-ID` below it: frames lost in flight come again).
    pub async fn rewind(
        &self,
        name: &ConsumerName,
        positions: &[(Topic, Seq)],
    ) -> Result<(), ConsumerError> {
        self.move_to(name, positions, false, None).await.map(|_| ())
    }

    /// Moves the positions (forward or back), only from `expect` when given; `false` when
    /// the consumer did not stand there.
    async fn move_to(
        &self,
        name: &ConsumerName,
        positions: &[(Topic, Seq)],
        forward: bool,
        expect: Option<&[(Topic, Seq)]>,
    ) -> Result<bool, ConsumerError> {
        for _ in 0..MAX_RACES {
            let _turn = self.turn(name).await;
            let (version, mut record) = self.load_known(name).await?;
            if record.settings.ack != AckMode::Auto {
                return Ok(true);
            }
            let moved = expect.is_some_and(|from| {
                from.iter().any(|(t, seq)| {
                    record.topics.get(t.as_str()).map_or(0, |l| l.delivered) != *seq
                })
            });
            if moved {
                return Ok(false);
            }
            let mut changed = false;
            for (topic, seq) in positions {
                if let Some(lane) = record.topics.get_mut(topic.as_str())
                    && (if forward {
                        *seq > lane.delivered
                    } else {
                        *seq < lane.delivered
                    })
                {
                    lane.delivered = *seq;
                    changed = true;
                }
            }
            if !changed || self.write(name, version, &record, Vec::new()).await? {
                return Ok(true);
            }
        }
        Err(raced_too_often())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, seq: Seq) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.parse().unwrap(),
            seq,
            time: 0,
            event: None,
            data: bytes::Bytes::from_static(b"x"),
        })
    }

    fn topic(t: &str) -> Topic {
        t.parse().unwrap()
    }

    /// What is read ahead is handed out in order, each topic standing after the last message
    /// taken while it has more kept, else where the read ended; gaps go with the first take.
    #[test]
    fn read_ahead_is_taken_in_order() {
        let mut ahead = Ahead {
            from: vec![(topic("a"), 3), (topic("b"), 10), (topic("c"), 5)],
            messages: vec![msg("a", 4), msg("b", 11), msg("a", 5), msg("b", 12)].into(),
            gaps: vec![Gap {
                topic: topic("a"),
                range: Some((1, 3)),
                reason: crate::model::GapReason::Expired,
            }],
            next: Cursor::Multi(vec![(topic("a"), 5), (topic("b"), 20), (topic("c"), 9)]),
            more: false,
            fetching: false,
        };
        let (taken, gaps, after) = ahead.take(2);
        let seqs: Vec<(String, Seq)> = taken.iter().map(|m| (m.topic.to_string(), m.seq)).collect();
        assert_eq!(seqs, [("a".to_string(), 4), ("b".to_string(), 11)]);
        assert_eq!(gaps.len(), 1);
        // a and b have more kept: after what was taken; c has none: where the read ended.
        assert_eq!(after, [(topic("a"), 4), (topic("b"), 11), (topic("c"), 9)]);
        assert_eq!(ahead.from, after);
        let (taken, gaps, after) = ahead.take(5);
        assert_eq!(taken.len(), 2);
        assert!(gaps.is_empty(), "gaps are handed out once");
        assert_eq!(after, [(topic("a"), 5), (topic("b"), 20), (topic("c"), 9)]);
        assert!(ahead.messages.is_empty());
    }
}
