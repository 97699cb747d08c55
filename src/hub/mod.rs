//! The hub: per-topic heads and wake-ups, where a read starts, and the gaps it must report.
//! It knows neither HTTP nor storage details: it speaks `model` types and calls a [`Log`].

mod budget;
mod read;
mod subscribe;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::model::SlowPolicy;
pub use budget::Reservation;
pub use read::{ReadRequest, ReadResult};
pub use subscribe::{Event, Events, PageTurn, Subscription, TopicEvents};

use crate::feed::{self, Feed};
use crate::model::{Appended, StoreError, TopicInfo};
use crate::model::{Message, NewMessage, Seq, Topic};
use crate::stop::Stop;
use crate::store::{CommitFeed, Follow, Log};
use crate::wire::Encoded;

/// Topic states kept before the first sweep of unused ones.
const MIN_SWEEP: usize = 4096;

/// Messages a topic's live broadcast holds. A subscriber further behind than this catches
/// up from the store instead, so this (not the slowest client) bounds the hub's memory.
const LIVE_BUFFER: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    Store(StoreError),
    /// Clients may not publish to names starting with `_`.
    ReservedTopic(Topic),
    /// A bare seq as a cursor is ambiguous with several topics.
    BareCursorForTopics(usize),
    /// The node is shutting down or about to: it is not ready for new clients.
    Draining,
    /// The hub's budget for pages loaded on behalf of readers is spent: new reads wait.
    Busy,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Store(e) => e.fmt(f),
            HubError::ReservedTopic(t) => write!(
                f,
                "topic {t} is reserved for the hub (names starting with _ can be read, not published to)"
            ),
            HubError::BareCursorForTopics(n) => write!(
                f,
                "a bare seq cannot be a cursor for {n} topics; use topic:seq pairs such as a:1,b:2"
            ),
            HubError::Draining => write!(
                f,
                "this node is draining before a shutdown; connect to another node or retry shortly"
            ),
            HubError::Busy => write!(
                f,
                "the hub holds as many pages for readers as its memory budget allows; retry shortly"
            ),
        }
    }
}

impl std::error::Error for HubError {}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Store(e)
    }
}

/// Tunables of the hub, validated by the config layer.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Most payload bytes one read or subscription loads at a time, shared by its topics
    /// (at least one message is always returned).
    pub max_read_bytes: usize,
    /// Most payload bytes the hub holds at once for all reads and catch-ups together.
    pub read_budget_bytes: usize,
    /// Cancelled when the node starts draining: `/readyz` answers 503 from then on, while
    /// requests are still served until the shutdown token ends them.
    pub draining: CancellationToken,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            max_read_bytes: 8 << 20,
            read_budget_bytes: 256 << 20,
            draining: CancellationToken::new(),
        }
    }
}

/// Per topic with readers: a watch of its head seq, and the live broadcast of its messages.
/// Readers subscribe before they read the store, so a commit that lands after their read
/// always reaches them (no lost wake-up, no timer).
struct TopicState {
    head: watch::Sender<Seq>,
    live: Arc<Feed<Arc<Encoded>>>,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Hub {
    log: Arc<dyn Log>,
    /// The store's commit feed, and what this node wants fed of a shared store.
    follow: Arc<dyn Follow>,
    options: HubOptions,
    /// What all readers together may hold of loaded pages.
    budget: Arc<budget::Budget>,
    // A std mutex: held only to look up or insert a topic's state, never across an await.
    topics: Mutex<HashMap<Topic, Arc<TopicState>>>,
    shutdown: CancellationToken,
    /// The same shutdown, as subscriptions look at it once per wake-up.
    stop: Stop,
    /// The map size above which the next new state first sweeps unused ones.
    sweep_above: std::sync::atomic::AtomicUsize,
    /// 0: no resync running; 1: one running; 2: one running and another asked for.
    resyncs: std::sync::atomic::AtomicU8,
}

impl Hub {
    /// Builds the hub over a store's log and commit feed, and starts its fan-out task, which
    /// follows the feed. Must be called inside a tokio runtime.
    pub fn new(
        log: Arc<dyn Log>,
        follow: Arc<dyn Follow>,
        options: HubOptions,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let feed = follow.take_commits();
        let hub = Arc::new(Hub {
            log,
            follow,
            budget: budget::Budget::new(options.read_budget_bytes),
            options,
            topics: Mutex::new(HashMap::new()),
            stop: Stop::follow(&shutdown),
            shutdown,
            sweep_above: std::sync::atomic::AtomicUsize::new(MIN_SWEEP),
            resyncs: std::sync::atomic::AtomicU8::new(0),
        });
        match feed {
            Some(feed) => {
                tokio::spawn(fan_out(Arc::downgrade(&hub), feed));
            }
            None => tracing::error!("the store's commit feed was already taken: no live delivery"),
        }
        hub
    }

    /// Takes `bytes` from the hub's global read budget for decoding a request body whose
    /// decode grows with its size (a batch publish): refused with [`HubError::Busy`] when the
    /// budget has no room, so batches and catch-up pages share one bound (docs/API.md).
    pub fn hold_for_decode(&self, bytes: usize) -> Result<Reservation, HubError> {
        if !self.budget.has_room(bytes) {
            return Err(HubError::Busy);
        }
        Ok(self.budget.take(bytes))
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The shutdown for loops that look at it at every wake-up (see [`Stop`]).
    pub fn stop(&self) -> &Stop {
        &self.stop
    }

    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// Whether other nodes share the store: their commits reach this hub's readers too.
    pub fn shared_store(&self) -> bool {
        self.follow.shared()
    }

    /// Runs `f` on the topic's state (made if missing) while holding the map's lock, so a
    /// receiver made in `f` exists before any sweep can look at the state.
    fn with_state<R>(&self, topic: &Topic, f: impl FnOnce(&Arc<TopicState>) -> R) -> R {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if !topics.contains_key(topic) && topics.len() >= self.sweep_at() {
            // States nobody listens to any more are dropped (a topic with readers keeps its
            // state; one without has nothing to wake). Amortised: the threshold doubles.
            topics.retain(|topic, s| {
                let used = s.head.receiver_count() + s.live.receiver_count() > 0;
                if !used {
                    self.follow.unfollow(topic);
                }
                used
            });
            self.sweep_above
                .store((topics.len() * 2).max(MIN_SWEEP), Ordering::Relaxed);
        }
        let state = topics.entry(topic.clone()).or_insert_with(|| {
            self.follow.follow(topic);
            Arc::new(TopicState {
                head: watch::Sender::new(0),
                live: Arc::new(Feed::new(LIVE_BUFFER)),
            })
        });
        f(state)
    }

    fn sweep_at(&self) -> usize {
        self.sweep_above.load(Ordering::Relaxed).max(MIN_SWEEP)
    }

    /// A receiver of the topic's head, for long polls.
    fn subscribe_head(&self, topic: &Topic) -> watch::Receiver<Seq> {
        self.with_state(topic, |s| s.head.subscribe())
    }

    /// A receiver of the topic's head: it changes whenever a commit of the topic reaches this
    /// node, from this node or (on a shared store) from another.
    pub fn head_watch(&self, topic: &Topic) -> watch::Receiver<Seq> {
        self.subscribe_head(topic)
    }

    /// The topic's state and a receiver of its live broadcast, for streams and long polls.
    fn subscribe_live(&self, topic: &Topic) -> (Arc<TopicState>, feed::Receiver<Arc<Encoded>>) {
        self.with_state(topic, |s| (s.clone(), s.live.subscribe()))
    }

    fn existing_state(&self, topic: &Topic) -> Option<Arc<TopicState>> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).cloned()
    }

    /// Publishes a batch from a client: reserved topics are refused before anything is stored.
    pub async fn publish(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, HubError> {
        if let Some(msg) = batch.iter().find(|m| m.topic.is_reserved()) {
            return Err(HubError::ReservedTopic(msg.topic.clone()));
        }
        self.publish_internal(batch).await
    }

    /// Publishes on behalf of the hub itself (reserved topics allowed).
    pub async fn publish_internal(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Appended>, HubError> {
        // Readers are woken by the fan-out task, which follows the store's commits in order.
        Ok(self.log.append(batch).await?)
    }

    /// Hands committed messages to the readers of their topics.
    fn deliver(&self, batch: Vec<Arc<Message>>) {
        let mut current: Option<(Topic, Option<Arc<TopicState>>)> = None;
        for msg in batch {
            if current.as_ref().is_none_or(|(t, _)| *t != msg.topic) {
                current = Some((msg.topic.clone(), self.existing_state(&msg.topic)));
            }
            let Some((_, Some(state))) = &current else {
                continue;
            };
            let seq = msg.seq;
            if state.live.receiver_count() > 0 {
                state.live.send(Arc::new(Encoded::new(msg)), seq);
            }
            state.head.send_modify(|head| *head = (*head).max(seq));
        }
    }

    pub async fn topics(&self) -> Result<Vec<(TopicInfo, usize)>, HubError> {
        let infos = self.log.topics().await?;
        Ok(infos
            .into_iter()
            .map(|info| {
                let subscribers = self.subscribers(&info.topic);
                (info, subscribers)
            })
            .collect())
    }

    /// Up to `limit` topics named after `after` that `visible` lets through, in name order,
    /// and whether more may follow. The store is read a page at a time and each page filtered
    /// before the next is loaded, so a listing never holds more than a page.
    pub async fn topics_page(
        &self,
        after: Option<Topic>,
        limit: usize,
        visible: impl Fn(&Topic) -> bool,
    ) -> Result<(Vec<(TopicInfo, usize)>, bool), HubError> {
        let mut out = Vec::new();
        let mut after = after;
        let page = limit.max(1);
        loop {
            let infos = self.log.topics_page(after.clone(), page).await?;
            let exhausted = infos.len() < page;
            after = infos.last().map(|i| i.topic.clone()).or(after);
            for info in infos {
                if !visible(&info.topic) {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                let subscribers = self.subscribers(&info.topic);
                out.push((info, subscribers));
            }
            if exhausted {
                return Ok((out, false));
            }
        }
    }

    pub async fn topic(&self, topic: &Topic) -> Result<Option<(TopicInfo, usize)>, HubError> {
        let info = self.log.topic(topic).await?;
        Ok(info.map(|info| (info, self.subscribers(topic))))
    }

    /// How many readers are waiting on or subscribed to the topic right now.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.existing_state(topic).map_or(0, |state| {
            state.head.receiver_count() + state.live.receiver_count()
        })
    }

    fn count_slow(&self, policy: SlowPolicy) {
        let policy = match policy {
            SlowPolicy::Catchup => "catchup",
            SlowPolicy::Latest => "latest",
            SlowPolicy::Disconnect => "disconnect",
        };
        metrics::counter!("plexus_slow_subscribers_total", "policy" => policy).increment(1);
    }

    /// The topic's last seq in the store (0: never published).
    pub async fn last_seq(&self, topic: &Topic) -> Result<Seq, HubError> {
        Ok(self.log.bounds(topic).await?.map_or(0, |b| b.last_seq))
    }

    pub async fn delete_topic(&self, topic: &Topic) -> Result<bool, HubError> {
        Ok(self.log.delete_topic(topic).await?)
    }

    pub async fn ready(&self) -> Result<(), HubError> {
        if self.shutdown.is_cancelled() || self.options.draining.is_cancelled() {
            return Err(HubError::Draining);
        }
        Ok(self.log.ping().await?)
    }
}

/// Follows the store's commit feed and delivers each commit, in order, to the topics' readers.
/// Holds the hub weakly so the hub can be dropped; ends with the feed.
async fn fan_out(hub: std::sync::Weak<Hub>, mut feed: CommitFeed) {
    while let Some(batch) = feed.recv().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if batch.is_empty() {
            // A burst of requests makes one pass, plus one more after it if any came during it.
            if hub.resyncs.fetch_add(1, Ordering::AcqRel) == 0 {
                tokio::spawn(resync(hub));
            } else {
                let _ = hub
                    .resyncs
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.min(2)));
            }
        } else {
            hub.deliver(batch);
        }
    }
}

/// After the feed may have missed commits: every topic with readers whose store head is past
/// what the hub delivered gets its newest message delivered again. Long polls wake on the
/// head and read the store; live subscribers see the hole before it and catch up from the
/// store by cursor, so nothing missed stays unseen until the topic's next publish.
async fn resync(hub: Arc<Hub>) {
    loop {
        resync_once(&hub).await;
        // Done unless another request came meanwhile (2 → 1: run once more).
        if hub.resyncs.fetch_sub(1, Ordering::AcqRel) == 1 {
            return;
        }
        hub.resyncs.store(1, Ordering::Release);
    }
}

async fn resync_once(hub: &Hub) {
    let held: Vec<(Topic, Seq)> = hub
        .topics
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, state)| state.head.receiver_count() + state.live.receiver_count() > 0)
        .map(|(topic, state)| (topic.clone(), *state.head.borrow()))
        .collect();
    for (topic, delivered) in held {
        match hub.log.bounds(&topic).await {
            Ok(Some(bounds)) if bounds.last_seq > delivered => {
                match hub.log.read(&topic, bounds.last_seq - 1, 1, 1).await {
                    Ok(read) => hub.deliver(read.messages),
                    Err(e) => tracing::warn!(%topic, error = %e, "resync read failed"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%topic, error = %e, "resync failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Engine, Retention};

    fn topics_held(hub: &Hub) -> usize {
        hub.topics.lock().unwrap().len()
    }

    #[tokio::test]
    async fn states_nobody_listens_to_are_swept() {
        let store = Engine::memory(Retention::default());
        let hub = Hub::new(
            store.log,
            store.follow,
            HubOptions::default(),
            CancellationToken::new(),
        );
        let kept = hub.subscribe_head(&"kept".parse().unwrap());
        for i in 1..MIN_SWEEP {
            drop(hub.subscribe_head(&format!("t{i}").parse().unwrap()));
        }
        assert_eq!(topics_held(&hub), MIN_SWEEP);
        // The next new topic sweeps: only the one with a receiver and the new one remain.
        let _new = hub.subscribe_live(&"new".parse().unwrap());
        assert_eq!(topics_held(&hub), 2);
        assert_eq!(hub.subscribers(&"kept".parse().unwrap()), 1);
        drop(kept);
    }
}
