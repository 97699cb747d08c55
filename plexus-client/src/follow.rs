//! A subscription that survives: it reconnects with backoff and resumes from its cursor.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Client, Error, Item, Subscription, Transport};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Follows topics across disconnects and hub restarts: every retained message arrives once,
/// in order per topic; what is gone arrives as an [`Item::Gap`]. Made by [`Client::follow`].
pub struct Follow {
    client: Client,
    topics: Vec<String>,
    /// Where to start when nothing was seen yet.
    since: Option<String>,
    transport: Transport,
    /// The last seq seen (or skipped past by a gap) per topic.
    seen: BTreeMap<String, u64>,
    current: Option<Subscription>,
    backoff: Duration,
    reconnects: u64,
}

impl Client {
    /// Follows `topics` (comma-separated) from `since` (`None`: from now), resuming by cursor
    /// whenever the connection drops.
    pub fn follow(&self, topics: &str, since: Option<&str>, transport: Transport) -> Follow {
        Follow {
            client: self.clone(),
            topics: topics.split(',').map(str::to_owned).collect(),
            since: since.map(str::to_owned),
            transport,
            seen: BTreeMap::new(),
            current: None,
            backoff: FIRST_BACKOFF,
            reconnects: 0,
        }
    }
}

impl Follow {
    /// How many times this follow reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The cursor that resumes exactly after what was delivered.
    pub fn cursor(&self) -> Option<String> {
        if self.seen.is_empty() {
            return self.since.clone();
        }
        if let [topic] = self.topics.as_slice() {
            return self.seen.get(topic).map(|s| s.to_string());
        }
        let start_all = self.since.as_deref() == Some("all");
        let pairs: Vec<String> = self
            .topics
            .iter()
            .filter_map(|t| match self.seen.get(t) {
                Some(seq) => Some(format!("{t}:{seq}")),
                // A topic with nothing yet: from the start if the follow began at `all`,
                // otherwise the hub's default for streams (now).
                None if start_all => Some(format!("{t}:0")),
                None => None,
            })
            .collect();
        Some(pairs.join(","))
    }

    /// The next message or gap. Transport failures are retried (with backoff) and never
    /// returned; a refusal from the hub (a problem, e.g. a bad topic) is returned.
    pub async fn next(&mut self) -> Result<Item, Error> {
        loop {
            let sub = match self.current.as_mut() {
                Some(sub) => sub,
                None => {
                    let topics = self.topics.join(",");
                    let since = self.cursor();
                    match self
                        .client
                        .subscribe(&topics, since.as_deref(), self.transport)
                        .await
                    {
                        Ok(sub) => self.current.insert(sub),
                        Err(Error::Problem(p)) if p.status < 500 => return Err(Error::Problem(p)),
                        Err(_) => {
                            self.wait().await;
                            continue;
                        }
                    }
                }
            };
            match sub.next().await {
                Some(Ok(item)) => {
                    self.backoff = FIRST_BACKOFF;
                    match &item {
                        Item::Message(m) => {
                            let seen = self.seen.entry(m.topic.clone()).or_insert(0);
                            if m.seq <= *seen {
                                continue; // already delivered before a reconnect
                            }
                            *seen = m.seq;
                        }
                        Item::Gap(g) => {
                            if let Some(to) = g.to {
                                let seen = self.seen.entry(g.topic.clone()).or_insert(0);
                                *seen = (*seen).max(to);
                            }
                        }
                    }
                    return Ok(item);
                }
                Some(Err(Error::Problem(p))) if p.status < 500 => return Err(Error::Problem(p)),
                // The stream ended or broke: resume from the cursor.
                Some(Err(_)) | None => {
                    self.current = None;
                    self.wait().await;
                }
            }
        }
    }

    async fn wait(&mut self) {
        self.reconnects += 1;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
