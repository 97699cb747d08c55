//! Streaming subscriptions (SSE, NDJSON, WebSocket): live from the topic's broadcast while
//! the subscriber keeps up, from the store by cursor when it does not.
//!
//! The broadcast is only a fast path; the store is the truth. A subscriber delivers seq
//! `after + 1` from the broadcast, skips what it already has, and on anything else (a hole,
//! or having fallen more than the broadcast's buffer behind) reads the store after its cursor
//! until it is level again. So a slow client costs the hub a cursor, never a queue, and never
//! loses a retained message.
//!
//! What a subscription loads from the store is bounded as a whole, not per topic: its topics
//! take turns (one [`PageTurn`] per subscription), so only the topic being delivered holds a
//! catch-up page, of at most `max_read_bytes`, reserved from the hub's global budget until the
//! page is handed out.

use std::collections::VecDeque;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::Reservation;

use super::read::Position;
use super::{Hub, HubError, TopicState};
use crate::feed::Receiver;
use crate::model::{Cursor, Gap, GapReason, Message, Seq, Since, SlowPolicy, Topic, TopicList};
use crate::stop::StopWait;
use crate::wire::Encoded;

/// Messages read from the store per catch-up step.
const CATCHUP_PAGE: usize = 256;

/// One step of a subscription.
#[derive(Clone)]
pub enum Event {
    Message(Arc<Encoded>),
    /// Messages this subscriber will not get; `after` is its position once past the gap.
    Gap {
        gap: Gap,
        after: Seq,
    },
    /// The subscriber fell behind with the `disconnect` policy: the stream ends here.
    Disconnected,
}

impl Event {
    /// The subscriber's position in its topic after this event.
    pub fn after(&self) -> Option<Seq> {
        match self {
            Event::Message(enc) => Some(enc.msg.seq),
            Event::Gap { after, .. } => Some(*after),
            Event::Disconnected => None,
        }
    }
}

/// The right to hold a catch-up page, shared by the topics of one subscription (or of one
/// connection): one page at a time, taken in turn (the semaphore is fair).
#[derive(Clone, Debug)]
pub struct PageTurn(Arc<Semaphore>);

impl PageTurn {
    pub fn new() -> Self {
        PageTurn(Arc::new(Semaphore::new(1)))
    }
}

impl Default for PageTurn {
    fn default() -> Self {
        Self::new()
    }
}

/// A catch-up page's hold: the subscription's turn and the bytes it took from the hub's budget.
/// Dropped once the page is handed out.
struct PageHold {
    _turn: OwnedSemaphorePermit,
    _bytes: Reservation,
}

/// A subscription to one topic: a [`Stream`] of its events, `None` once it ended (disconnect
/// policy, store failure, or hub shutdown).
///
/// Written by hand rather than as an `async fn` behind `stream::unfold`: that moved the whole
/// subscription into a new future and back for every delivered message. Here a delivery is
/// one poll of the topic's live feed, whose receiver is kept in place (the fan-out profile,
/// docs/BENCHMARKS.md).
pub struct TopicEvents {
    hub: Arc<Hub>,
    state: Arc<TopicState>,
    /// The topic's live feed.
    live: Receiver<Arc<Encoded>>,
    pos: Position,
    policy: SlowPolicy,
    catching_up: bool,
    /// The catch-up page being fetched, while catching up.
    fetching: Option<BoxFuture<'static, Option<Fetched>>>,
    pending: VecDeque<Event>,
    ended: bool,
    turn: PageTurn,
    /// Held while `pending` has a catch-up page in it.
    hold: Option<PageHold>,
    /// The hub's shutdown, awaited through one future for the subscription's life: a poll of
    /// the token's own future takes two locks every subscription shares, once per delivered
    /// message (the fan-out profile at 10,000 subscribers, docs/BENCHMARKS.md). Looked at only
    /// when the subscription is about to wait.
    shutdown: StopWait,
}

/// A catch-up page as read: the turn taken for it, the position after it, and the read.
struct Fetched {
    turn: OwnedSemaphorePermit,
    pos: Position,
    read: Result<Page, HubError>,
}

/// What a catch-up read found: the gaps before the messages, and the messages.
type Page = (Vec<Gap>, Vec<Arc<Message>>);

/// One page from the store after `pos`, once the subscription's turn and room in the hub's
/// budget are there; `None` if the turn can no longer be had.
async fn fetch_page(hub: Arc<Hub>, turn: Arc<Semaphore>, mut pos: Position) -> Option<Fetched> {
    let turn = turn.acquire_owned().await.ok()?;
    let max_bytes = hub.options.max_read_bytes;
    hub.budget.wait_for_room(max_bytes).await;
    let read = hub
        .read_topic(&mut pos, CATCHUP_PAGE, max_bytes)
        .await
        .map(|(gaps, messages, _)| (gaps, messages));
    Some(Fetched { turn, pos, read })
}

impl TopicEvents {
    pub fn topic(&self) -> &Topic {
        &self.pos.topic
    }

    /// What the broadcast handed over: the next message, or the reason to go to the store.
    fn take_live(&mut self, received: Result<Arc<Encoded>, RecvError>) -> Option<Event> {
        match received {
            Ok(enc) => {
                let seq = enc.msg.seq;
                if seq == self.pos.after + 1 {
                    self.pos.after = seq;
                    return Some(Event::Message(enc));
                }
                if seq > self.pos.after {
                    // A hole (we subscribed mid-commit, or the topic was reset): the store knows.
                    self.catching_up = true;
                }
            }
            Err(RecvError::Lagged(_)) => self.fell_behind(),
            Err(RecvError::Closed) => self.ended = true,
        }
        None
    }

    fn fell_behind(&mut self) {
        self.hub.count_slow(self.policy);
        match self.policy {
            SlowPolicy::Catchup => self.catching_up = true,
            SlowPolicy::Latest => {
                let head = *self.state.head.borrow();
                if head > self.pos.after + 1 {
                    let gap = Gap {
                        topic: self.pos.topic.clone(),
                        range: Some((self.pos.after + 1, head - 1)),
                        reason: GapReason::Skipped,
                    };
                    self.pos.after = head - 1;
                    metrics::counter!("plexus_gaps_total", "reason" => "skipped").increment(1);
                    self.pending.push_back(Event::Gap {
                        gap,
                        after: head - 1,
                    });
                }
                self.catching_up = true;
            }
            SlowPolicy::Disconnect => {
                self.ended = true;
                self.pending.push_back(Event::Disconnected);
            }
        }
    }

    /// Takes a catch-up page: level with the head when it came back empty.
    fn take_page(&mut self, fetched: Option<Fetched>) {
        let Some(Fetched {
            turn,
            mut pos,
            read,
        }) = fetched
        else {
            self.ended = true;
            return;
        };
        match read {
            Ok((gaps, messages)) => {
                if gaps.is_empty() && messages.is_empty() {
                    self.catching_up = false;
                }
                let bytes = self
                    .hub
                    .budget
                    .take(messages.iter().map(|m| m.data.len()).sum());
                let gap_end = pos.after;
                for gap in gaps {
                    self.pending.push_back(Event::Gap {
                        gap,
                        after: gap_end,
                    });
                }
                for msg in messages {
                    pos.after = msg.seq;
                    self.pending
                        .push_back(Event::Message(Arc::new(Encoded::new(msg))));
                }
                self.pos = pos;
                if !self.pending.is_empty() {
                    self.hold = Some(PageHold {
                        _turn: turn,
                        _bytes: bytes,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(topic = %self.pos.topic, error = %e, "catch-up read failed; ending the subscription");
                self.ended = true;
            }
        }
    }
}

impl Stream for TopicEvents {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.pop_front() {
                if this.pending.is_empty() {
                    // The page is handed out: the next topic's turn, and the bytes go back.
                    this.hold = None;
                }
                return Poll::Ready(Some(event));
            }
            if this.hold.is_some() {
                this.hold = None;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if this.catching_up {
                let fetching = this.fetching.get_or_insert_with(|| {
                    fetch_page(this.hub.clone(), this.turn.0.clone(), this.pos.clone()).boxed()
                });
                if let Poll::Ready(fetched) = fetching.as_mut().poll(cx) {
                    this.fetching = None;
                    this.take_page(fetched);
                    continue;
                }
            } else if let Poll::Ready(received) = this.live.poll_recv(this.pos.after, cx) {
                if let Some(event) = this.take_live(received) {
                    return Poll::Ready(Some(event));
                }
                continue;
            }
            // About to wait: the shutdown ends the subscription (the future is not polled again).
            if Pin::new(&mut this.shutdown).poll(cx).is_ready() {
                this.ended = true;
                this.fetching = None;
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }
}

/// A subscription to one or more topics, and where it started.
pub struct Subscription {
    pub topics: Vec<TopicEvents>,
}

impl Subscription {
    /// The cursor of the starting positions (names every topic).
    pub fn start_cursor(&self) -> Cursor {
        let pairs: Vec<(Topic, Seq)> = self
            .topics
            .iter()
            .map(|t| (t.pos.topic.clone(), t.pos.after))
            .collect();
        Cursor::for_positions(&pairs)
    }

    /// All topics' events as one stream of `(topic index, event)`, per-topic order kept.
    pub fn into_stream(mut self) -> Events {
        if self.topics.len() == 1
            && let Some(only) = self.topics.pop()
        {
            return Events::One(only);
        }
        Events::Many(stream::select_all(
            self.topics
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.map(move |event| (i, event)).boxed()),
        ))
    }
}

/// A subscription's events as `(topic index, event)`. One topic, as most subscriptions
/// follow, is polled in place: a delivery touches one allocation fewer than through a box.
#[allow(clippy::large_enum_variant)] // in place on purpose (above)
pub enum Events {
    One(TopicEvents),
    Many(stream::SelectAll<BoxStream<'static, (usize, Event)>>),
}

impl Stream for Events {
    type Item = (usize, Event);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(usize, Event)>> {
        match self.get_mut() {
            Events::One(only) => only.poll_next_unpin(cx).map(|e| e.map(|e| (0, e))),
            Events::Many(all) => all.poll_next_unpin(cx),
        }
    }
}

impl Hub {
    /// Subscribes to `topics` from `since` (topics a client cursor leaves out start at
    /// `default_since`), with a slow-consumer policy.
    pub async fn subscribe(
        self: &Arc<Self>,
        topics: &TopicList,
        since: &Since,
        default_since: &Since,
        policy: SlowPolicy,
    ) -> Result<Subscription, HubError> {
        self.subscribe_sharing(topics, since, default_since, policy, PageTurn::new())
            .await
    }

    /// Like [`Hub::subscribe`], with the topics taking their catch-up turns with every other
    /// subscription given the same `turn` (a WebSocket's subscriptions share one).
    pub async fn subscribe_sharing(
        self: &Arc<Self>,
        topics: &TopicList,
        since: &Since,
        default_since: &Since,
        policy: SlowPolicy,
        turn: PageTurn,
    ) -> Result<Subscription, HubError> {
        // A new subscription starts by catching up: refused while the budget has no room.
        if !self.budget.has_room(self.options.max_read_bytes) {
            return Err(HubError::Busy);
        }
        // Receivers first, then positions: whatever commits in between is seen either way.
        let receivers: Vec<_> = topics
            .iter()
            .map(|topic| self.subscribe_live(topic))
            .collect();
        let positions = self.resolve(topics, since, default_since).await?;
        // From `now` there is nothing to catch up on: the positions are the store's heads, read
        // after the receivers were made, so every later commit reaches them live (a hole, as
        // after a missed feed, still sends the subscription to the store). Skipping that first
        // read keeps a storm of new subscribers off the store.
        let level = matches!(since, Since::Now);
        Ok(Subscription {
            topics: receivers
                .into_iter()
                .zip(positions)
                .map(|((state, rx), pos)| TopicEvents {
                    hub: self.clone(),
                    state,
                    live: rx,
                    pos,
                    policy,
                    catching_up: !level,
                    fetching: None,
                    pending: VecDeque::new(),
                    ended: false,
                    turn: turn.clone(),
                    hold: None,
                    shutdown: self.stop.wait(),
                })
                .collect(),
        })
    }
}
