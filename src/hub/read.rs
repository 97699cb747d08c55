//! Short and long polls: resolve where a read starts, read every topic, report gaps, merge,
//! and hand out the cursor that resumes exactly after what was returned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, select_all};
use tokio::time::Instant;

use super::{Hub, HubError};
use crate::model::LogBounds;
use crate::model::{Cursor, Gap, GapReason, Message, Seq, Since, Topic, TopicList, now_millis};

#[derive(Clone, Debug)]
pub struct ReadRequest {
    pub topics: TopicList,
    pub since: Since,
    /// Where topics that a client cursor leaves out start (`all` for polls: docs/API.md, 2.2).
    pub default_since: Since,
    pub limit: usize,
    /// Zero: answer at once (short poll). Otherwise hold until data, a gap, or the timeout.
    pub wait: Duration,
}

#[derive(Clone, Debug)]
pub struct ReadResult {
    pub messages: Vec<Arc<Message>>,
    pub gaps: Vec<Gap>,
    pub next: Cursor,
}

/// Where one topic of a read stands.
#[derive(Clone, Debug)]
pub(super) struct Position {
    pub(super) topic: Topic,
    /// The last seq this reader has (or chose to skip).
    pub(super) after: Seq,
    /// The reader asked for the oldest retained message: what is gone below is not a gap.
    pub(super) from_oldest: bool,
}

impl Hub {
    /// A short poll (`wait` zero) or a long poll.
    pub async fn read(&self, req: ReadRequest) -> Result<ReadResult, HubError> {
        let mut positions = self
            .resolve(&req.topics, &req.since, &req.default_since)
            .await?;
        let deadline = Instant::now() + req.wait;
        if !req.wait.is_zero()
            && let [pos] = positions.as_mut_slice()
        {
            return self.wait_one(pos, req.limit, deadline).await;
        }
        loop {
            // Subscribe before reading: a publish committed after the read still wakes us.
            let mut watchers: Vec<_> = if req.wait.is_zero() {
                Vec::new()
            } else {
                positions
                    .iter()
                    .map(|p| self.subscribe_head(&p.topic))
                    .collect()
            };
            let result = self.read_once(&mut positions, req.limit).await?;
            let done = !result.messages.is_empty()
                || !result.gaps.is_empty()
                || watchers.is_empty()
                || Instant::now() >= deadline;
            if done {
                if !req.wait.is_zero() {
                    metrics::counter!("plexus_long_poll_answers_total", "source" => "store")
                        .increment(1);
                }
                return Ok(result);
            }
            let woken = select_all(watchers.iter_mut().map(|rx| rx.changed().boxed()));
            let waiting = metrics::gauge!("plexus_long_polls_waiting");
            waiting.increment(1.0);
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => {}
            }
            waiting.decrement(1.0);
            if self.shutdown.is_cancelled() {
                metrics::counter!("plexus_long_poll_answers_total", "source" => "store")
                    .increment(1);
                return self.read_once(&mut positions, req.limit).await;
            }
        }
    }

    /// A long poll of one topic. It waits on the topic's live broadcast rather than its head,
    /// so that the common wake-up — the next message, seq `after + 1` — is answered from the
    /// message the hub just broadcast, without a store read: ten thousand pollers of a topic
    /// cost one encoding of the message and no reads (docs/ARCHITECTURE.md, long polls). A
    /// hole, a lag past the broadcast's buffer or anything unexpected falls back to the store,
    /// which stays the truth.
    async fn wait_one(
        &self,
        pos: &mut Position,
        limit: usize,
        deadline: Instant,
    ) -> Result<ReadResult, HubError> {
        // Subscribe before reading: a publish committed after the read still reaches us.
        let (_state, mut live) = self.subscribe_live(&pos.topic);
        loop {
            let result = self.read_once(std::slice::from_mut(pos), limit).await?;
            if !result.messages.is_empty() || !result.gaps.is_empty() || Instant::now() >= deadline
            {
                metrics::counter!("plexus_long_poll_answers_total", "source" => "store")
                    .increment(1);
                return Ok(result);
            }
            let waiting = metrics::gauge!("plexus_long_polls_waiting");
            waiting.increment(1.0);
            let woken = loop {
                let received = tokio::select! {
                    r = live.recv(pos.after) => r,
                    _ = tokio::time::sleep_until(deadline) => break None,
                    _ = self.shutdown.cancelled() => break None,
                };
                match received {
                    // Already returned by the read: keep waiting.
                    Ok(enc) if enc.msg.seq <= pos.after => {}
                    Ok(enc) => break Some(enc),
                    // Lagged or closed: the store tells what happened.
                    Err(_) => break None,
                }
            };
            waiting.decrement(1.0);
            if self.shutdown.is_cancelled() {
                metrics::counter!("plexus_long_poll_answers_total", "source" => "store")
                    .increment(1);
                return self.read_once(std::slice::from_mut(pos), limit).await;
            }
            let Some(first) = woken else {
                continue;
            };
            if first.msg.seq != pos.after + 1 {
                // A hole (retention, a missed commit): the store read reports it.
                continue;
            }
            let mut bytes = first.msg.data.len();
            let mut messages = vec![first.msg.clone()];
            // What else is already broadcast joins the answer while it follows on.
            while messages.len() < limit {
                let Ok(next) = live.try_recv() else {
                    break;
                };
                let last = messages.last().map_or(pos.after, |m| m.seq);
                if next.msg.seq <= last {
                    continue;
                }
                if next.msg.seq != last + 1
                    || bytes + next.msg.data.len() > self.options.max_read_bytes
                {
                    // Left for the next poll, which starts after the last one returned.
                    break;
                }
                bytes += next.msg.data.len();
                messages.push(next.msg.clone());
            }
            pos.after = messages.last().map_or(pos.after, |m| m.seq);
            pos.from_oldest = false;
            metrics::counter!("plexus_long_poll_answers_total", "source" => "live").increment(1);
            return Ok(ReadResult {
                next: Cursor::Single(pos.after),
                messages,
                gaps: Vec::new(),
            });
        }
    }

    pub(super) async fn resolve(
        &self,
        topics: &TopicList,
        since: &Since,
        default_since: &Since,
    ) -> Result<Vec<Position>, HubError> {
        if let Since::Cursor(Cursor::Single(_)) = since
            && topics.len() > 1
        {
            return Err(HubError::BareCursorForTopics(topics.len()));
        }
        let mut positions = Vec::with_capacity(topics.len());
        for topic in topics.iter() {
            let effective = match since {
                Since::Cursor(cursor) => match cursor.position(topic) {
                    Some(seq) => Since::Cursor(Cursor::Single(seq)),
                    None => default_since.clone(),
                },
                other => other.clone(),
            };
            let (after, from_oldest) = match effective {
                Since::All => (0, true),
                Since::Now => (self.bounds(topic).await?.last_seq, false),
                Since::Time(t) => (self.log.seek_time(topic, t).await?, false),
                Since::Ago(d) => {
                    let t = now_millis().saturating_sub(d.as_millis() as i64);
                    (self.log.seek_time(topic, t).await?, false)
                }
                Since::Cursor(c) => (c.position(topic).unwrap_or(0), false),
            };
            positions.push(Position {
                topic: topic.clone(),
                after,
                from_oldest,
            });
        }
        Ok(positions)
    }

    async fn bounds(&self, topic: &Topic) -> Result<LogBounds, HubError> {
        Ok(self.log.bounds(topic).await?.unwrap_or(LogBounds::EMPTY))
    }

    /// The bounds of a topic's log (an unknown topic's are empty), for the consumer layer's
    /// lag figures.
    pub async fn topic_bounds(&self, topic: &Topic) -> Result<LogBounds, HubError> {
        self.bounds(topic).await
    }

    /// One retained message by its seq (`None`: never published, deleted or expired), for a
    /// redelivery or a dead letter.
    pub async fn message(&self, topic: &Topic, seq: Seq) -> Result<Option<Arc<Message>>, HubError> {
        let batch = self
            .log
            .read(topic, seq.saturating_sub(1), 1, self.options.max_read_bytes)
            .await?;
        Ok(batch.messages.into_iter().next().filter(|m| m.seq == seq))
    }

    /// Where a read from `since` starts on each topic, as positions to keep: `all` is just
    /// below the oldest retained message, so a consumer created with it reports no gap for
    /// what was gone before it existed.
    pub async fn start_positions(
        &self,
        topics: &TopicList,
        since: &Since,
    ) -> Result<Vec<(Topic, Seq)>, HubError> {
        let mut out = Vec::with_capacity(topics.len());
        for pos in self.resolve(topics, since, &Since::All).await? {
            let after = if pos.from_oldest {
                self.bounds(&pos.topic).await?.first_seq.saturating_sub(1)
            } else {
                pos.after
            };
            out.push((pos.topic, after));
        }
        Ok(out)
    }

    /// Reads every topic once from its position, then advances the positions past what is
    /// returned and past the gaps reported.
    ///
    /// The read's one byte budget (`max_read_bytes`) is shared by its topics: each loads at
    /// most its share (at least one message), reserved from the hub's budget first.
    async fn read_once(
        &self,
        positions: &mut [Position],
        limit: usize,
    ) -> Result<ReadResult, HubError> {
        let max_bytes = self.options.max_read_bytes;
        if !self.budget.has_room(max_bytes) {
            return Err(HubError::Busy);
        }
        let share = (max_bytes / positions.len().max(1)).max(1);
        let mut gaps = Vec::new();
        let mut lanes: Vec<Lane> = Vec::with_capacity(positions.len());
        for pos in positions.iter_mut() {
            let (topic_gaps, messages, complete) = self.read_topic(pos, limit, share).await?;
            gaps.extend(topic_gaps);
            lanes.push(Lane {
                last: messages.last().map_or(pos.after, |m| m.seq),
                messages: messages.into(),
                complete,
            });
        }
        let loaded = lanes
            .iter()
            .flat_map(|l| l.messages.iter())
            .map(|m| m.data.len())
            .sum();
        let _held = self.budget.take(loaded);
        let messages = self.merge(positions, lanes, limit, share).await?;
        for msg in &messages {
            if let Some(pos) = positions.iter_mut().find(|p| p.topic == msg.topic) {
                pos.after = pos.after.max(msg.seq);
            }
        }
        let pairs: Vec<(Topic, Seq)> = positions
            .iter()
            .map(|p| (p.topic.clone(), p.after))
            .collect();
        Ok(ReadResult {
            messages,
            gaps,
            next: Cursor::for_positions(&pairs),
        })
    }

    /// Reads one topic after its position: the gaps to report first, then the messages, and
    /// whether they reach the topic's head. Moves the position past the gaps (not past the
    /// messages: the caller decides what it keeps).
    pub(super) async fn read_topic(
        &self,
        pos: &mut Position,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Gap>, Vec<Arc<Message>>, bool), HubError> {
        let mut gaps = Vec::new();
        let mut batch = self
            .log
            .read(&pos.topic, pos.after, limit, max_bytes)
            .await?;
        let bounds = batch.bounds();
        if pos.after > bounds.last_seq {
            // The cursor is beyond the head: the log was reset. Restart at the oldest.
            gaps.push(Gap {
                topic: pos.topic.clone(),
                range: None,
                reason: GapReason::Reset,
            });
            let restart = bounds.first_seq.saturating_sub(1);
            batch = self.log.read(&pos.topic, restart, limit, max_bytes).await?;
            pos.after = restart;
        }
        let bounds = batch.bounds();
        // Something below the first message we got is gone; report it once, then move on.
        let first_available = batch.messages.first().map_or(bounds.first_seq, |m| m.seq);
        if pos.after + 1 < first_available {
            if !pos.from_oldest {
                gaps.extend(missing(
                    &pos.topic,
                    pos.after + 1,
                    first_available - 1,
                    &bounds,
                ));
            }
            pos.after = first_available - 1;
        }
        pos.from_oldest = false;
        for gap in &gaps {
            metrics::counter!("plexus_gaps_total", "reason" => gap.reason.as_str()).increment(1);
        }
        let complete = batch
            .messages
            .last()
            .is_none_or(|m| m.seq >= bounds.last_seq);
        Ok((gaps, batch.messages, complete))
    }
}

/// The gaps for seqs `from..=to`, split into the part a topic delete dropped and the part
/// retention expired.
fn missing(topic: &Topic, from: Seq, to: Seq, bounds: &LogBounds) -> Vec<Gap> {
    let mut gaps = Vec::new();
    let deleted_to = to.min(bounds.deleted_through);
    if from <= deleted_to {
        gaps.push(Gap {
            topic: topic.clone(),
            range: Some((from, deleted_to)),
            reason: GapReason::Deleted,
        });
    }
    let expired_from = from.max(bounds.deleted_through + 1);
    if expired_from <= to {
        gaps.push(Gap {
            topic: topic.clone(),
            range: Some((expired_from, to)),
            reason: GapReason::Expired,
        });
    }
    gaps
}

/// One topic's loaded messages during a read, in seq order.
struct Lane {
    messages: VecDeque<Arc<Message>>,
    /// The last seq loaded.
    last: Seq,
    /// Everything up to the topic's head is loaded.
    complete: bool,
}

impl Hub {
    /// Merges the topics' messages by time, keeping at most `limit` messages and about
    /// `max_read_bytes` of payload. A topic whose loaded messages run out before its head is
    /// refilled (its `share` of bytes at a time) before the merge goes on, so what is kept is
    /// in time order and each topic's part a prefix of it: each cursor simply moves to its last
    /// kept seq. Memory stays at the answer plus one share per topic.
    async fn merge(
        &self,
        positions: &[Position],
        mut lanes: Vec<Lane>,
        limit: usize,
        share: usize,
    ) -> Result<Vec<Arc<Message>>, HubError> {
        let max_bytes = self.options.max_read_bytes;
        let mut bytes = 0usize;
        let mut out: Vec<Arc<Message>> = Vec::new();
        while out.len() < limit {
            for (lane, pos) in lanes.iter_mut().zip(positions) {
                if !lane.messages.is_empty() || lane.complete {
                    continue;
                }
                let batch = self
                    .log
                    .read(&pos.topic, lane.last, limit - out.len(), share)
                    .await?;
                let head = batch.bounds().last_seq;
                match batch.messages.first() {
                    Some(first) if first.seq == lane.last + 1 => {}
                    // Nothing more, or a hole (retention ran meanwhile): the next read reports it.
                    None => {
                        lane.complete = true;
                        continue;
                    }
                    Some(_) => return Ok(out),
                }
                lane.last = batch.messages.last().map_or(lane.last, |m| m.seq);
                lane.complete = lane.last >= head;
                lane.messages.extend(batch.messages);
            }
            let next = lanes
                .iter()
                .enumerate()
                .filter_map(|(i, lane)| lane.messages.front().map(|m| ((m.time, i, m.seq), i)))
                .min();
            let Some((_, i)) = next else {
                break;
            };
            let Some(msg) = lanes[i].messages.pop_front() else {
                break;
            };
            if !out.is_empty() && bytes + msg.data.len() > max_bytes {
                break;
            }
            bytes += msg.data.len();
            out.push(msg);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        s.parse().unwrap()
    }

    #[test]
    fn gap_split_between_deleted_and_expired() {
        let b = LogBounds {
            first_seq: 11,
            last_seq: 20,
            deleted_through: 6,
        };
        let gaps = missing(&t("a"), 3, 10, &b);
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[0].range, Some((3, 6)));
        assert_eq!(gaps[0].reason, GapReason::Deleted);
        assert_eq!(gaps[1].range, Some((7, 10)));
        assert_eq!(gaps[1].reason, GapReason::Expired);
        let only_expired = missing(&t("a"), 8, 10, &b);
        assert_eq!(only_expired.len(), 1);
        assert_eq!(only_expired[0].reason, GapReason::Expired);
    }
}
