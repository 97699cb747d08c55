//! How the hub follows the log's commits: the commit feed, and — on a store several nodes
//! share — which topics this node wants fed.

use std::sync::Arc;

use crate::model::{Message, Topic};

/// Every committed message, in commit order, one batch per commit. An empty batch means
/// commits may have been missed (a shared engine's subscription to other nodes' commits
/// reconnected): the hub then checks the heads of the topics it has readers for.
pub type CommitFeed = tokio::sync::mpsc::UnboundedReceiver<Vec<Arc<Message>>>;

pub trait Follow: Send + Sync + 'static {
    /// The feed of committed messages, in commit order (so in seq order per topic), for the
    /// hub's fan-out. Taken once; later calls get `None`. An engine shared by several nodes
    /// (Redis) also feeds what the other nodes commit.
    fn take_commits(&self) -> Option<CommitFeed>;

    /// Whether other nodes share this store (their commits come through the feed too).
    fn shared(&self) -> bool {
        false
    }

    /// The hub has readers of this topic now. An engine shared by several nodes that feeds
    /// only the topics asked for (sharded Pub/Sub on a Redis Cluster) starts following it and,
    /// once it does, feeds the topic's newest message again, so a commit made meanwhile
    /// reaches the readers. Engines that feed every commit ignore it.
    fn follow(&self, _topic: &Topic) {}

    /// The hub has no readers of this topic any more.
    fn unfollow(&self, _topic: &Topic) {}
}

/// The sending side of a [`CommitFeed`], kept by an engine until the hub takes the receiver.
pub(crate) struct FeedSlot {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
    rx: std::sync::Mutex<Option<CommitFeed>>,
}

impl FeedSlot {
    pub(crate) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        FeedSlot {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn sender(&self) -> tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>> {
        self.tx.clone()
    }

    /// Publishes a commit; nobody listening (no hub yet, or a bench) is fine.
    pub(crate) fn send(&self, batch: Vec<Arc<Message>>) {
        if !batch.is_empty() {
            let _ = self.tx.send(batch);
        }
    }

    pub(crate) fn take(&self) -> Option<CommitFeed> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
