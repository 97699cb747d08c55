//! The hub: per-topic heads and wake-ups, where a read starts, and the gaps it must report.
//! It knows neither HTTP nor storage details: it speaks `model` types and calls a [`Log`].

mod read;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use read::{ReadRequest, ReadResult};

use crate::model::{NewMessage, Seq, Topic};
use crate::store::{Appended, Log, StoreError, TopicInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    Store(StoreError),
    /// Clients may not publish to names starting with `_`.
    ReservedTopic(Topic),
    /// A bare seq as a cursor is ambiguous with several topics.
    BareCursorForTopics(usize),
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
    /// Most payload bytes one read gathers (at least one message is always returned).
    pub max_read_bytes: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            max_read_bytes: 8 << 20,
        }
    }
}

/// Per topic: a watch of its head seq. Long polls subscribe to it before they read, so a
/// publish committed after their read always wakes them (no lost wake-up, no timer).
struct TopicState {
    head: watch::Sender<Seq>,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Hub {
    store: Arc<dyn Log>,
    options: HubOptions,
    // A std mutex: held only to look up or insert a topic's state, never across an await.
    topics: Mutex<HashMap<Topic, Arc<TopicState>>>,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(store: Arc<dyn Log>, options: HubOptions, shutdown: CancellationToken) -> Self {
        Hub {
            store,
            options,
            topics: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    pub fn store(&self) -> &Arc<dyn Log> {
        &self.store
    }

    fn state(&self, topic: &Topic) -> Arc<TopicState> {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(TopicState {
                    head: watch::Sender::new(0),
                })
            })
            .clone()
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
        let topics: Vec<Topic> = batch.iter().map(|m| m.topic.clone()).collect();
        let results = self.store.append(batch).await?;
        for (topic, appended) in topics.iter().zip(&results) {
            if let Some(state) = self.existing_state(topic) {
                state
                    .head
                    .send_modify(|head| *head = (*head).max(appended.seq));
            }
        }
        Ok(results)
    }

    pub async fn topics(&self) -> Result<Vec<(TopicInfo, usize)>, HubError> {
        let infos = self.store.topics().await?;
        Ok(infos
            .into_iter()
            .map(|info| {
                let subscribers = self.subscribers(&info.topic);
                (info, subscribers)
            })
            .collect())
    }

    pub async fn topic(&self, topic: &Topic) -> Result<Option<(TopicInfo, usize)>, HubError> {
        let info = self.store.topic(topic).await?;
        Ok(info.map(|info| (info, self.subscribers(topic))))
    }

    /// How many readers are waiting on or subscribed to the topic right now.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.existing_state(topic)
            .map_or(0, |state| state.head.receiver_count())
    }

    pub async fn delete_topic(&self, topic: &Topic) -> Result<bool, HubError> {
        Ok(self.store.delete_topic(topic).await?)
    }

    pub async fn ready(&self) -> Result<(), HubError> {
        if self.shutdown.is_cancelled() {
            return Err(HubError::Store(StoreError::Unavailable(
                "the hub is shutting down".into(),
            )));
        }
        Ok(self.store.ping().await?)
    }
}
