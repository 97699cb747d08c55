//! Short and long polls: resolve where a read starts, read every topic, report gaps, merge,
//! and hand out the cursor that resumes exactly after what was returned.

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
                return self.read_once(&mut positions, req.limit).await;
            }
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
        let _held = self.budget.try_reserve(max_bytes).ok_or(HubError::Busy)?;
        let share = (max_bytes / positions.len().max(1)).max(1);
        let mut gaps = Vec::new();
        let mut runs: Vec<Run> = Vec::with_capacity(positions.len());
        for pos in positions.iter_mut() {
            let (topic_gaps, messages, complete) = self.read_topic(pos, limit, share).await?;
            gaps.extend(topic_gaps);
            runs.push(Run { messages, complete });
        }
        let messages = merge(runs, limit, max_bytes);
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

/// One topic's messages of a read, in seq order; `complete`: they reach the topic's head.
#[derive(Debug, Default)]
struct Run {
    messages: Vec<Arc<Message>>,
    complete: bool,
}

/// Merges per-topic runs (each in seq order) by time, keeping at most `limit` messages and
/// about `max_bytes` of payload. What is kept of each topic is a prefix of its run, so each
/// topic's cursor can simply move to its last kept seq. A run cut short (by its byte share or
/// the limit) bounds the merge: nothing later than its last message is kept, since what it
/// did not load may come before it.
fn merge(runs: Vec<Run>, limit: usize, max_bytes: usize) -> Vec<Arc<Message>> {
    if runs.len() == 1 {
        return runs
            .into_iter()
            .next()
            .map(|r| r.messages)
            .unwrap_or_default();
    }
    let cutoff = runs
        .iter()
        .enumerate()
        .filter(|(_, run)| !run.complete)
        .filter_map(|(i, run)| run.messages.last().map(|m| (m.time, i, m.seq)))
        .min();
    let mut all: Vec<(usize, Arc<Message>)> = runs
        .into_iter()
        .enumerate()
        .flat_map(|(i, run)| run.messages.into_iter().map(move |m| (i, m)))
        .collect();
    all.sort_by_key(|(i, m)| (m.time, *i, m.seq));
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for (i, msg) in all {
        if out.len() == limit
            || (!out.is_empty() && bytes + msg.data.len() > max_bytes)
            || cutoff.is_some_and(|c| (msg.time, i, msg.seq) > c)
        {
            break;
        }
        bytes += msg.data.len();
        out.push(msg);
    }
    out
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

    #[test]
    fn merge_keeps_prefixes_in_time_order() {
        let m = |topic: &str, seq, time| {
            Arc::new(Message {
                topic: t(topic),
                seq,
                time,
                event: None,
                data: bytes::Bytes::from_static(b"x"),
            })
        };
        let a = vec![m("a", 1, 10), m("a", 2, 30)];
        let b = vec![m("b", 1, 20), m("b", 2, 40)];
        let run = |messages| Run {
            messages,
            complete: true,
        };
        let out = merge(vec![run(a), run(b)], 3, 1000);
        let got: Vec<_> = out.iter().map(|m| (m.topic.to_string(), m.seq)).collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
    }

    #[test]
    fn merge_stops_at_the_end_of_a_run_cut_short() {
        let m = |topic: &str, seq, time| {
            Arc::new(Message {
                topic: t(topic),
                seq,
                time,
                event: None,
                data: bytes::Bytes::from_static(b"x"),
            })
        };
        // a's run stopped at its share after time 20: b's message at 30 may follow a's next.
        let a = Run {
            messages: vec![m("a", 1, 10), m("a", 2, 20)],
            complete: false,
        };
        let b = Run {
            messages: vec![m("b", 1, 15), m("b", 2, 30)],
            complete: true,
        };
        let out = merge(vec![a, b], 10, 1000);
        let got: Vec<_> = out.iter().map(|m| (m.topic.to_string(), m.seq)).collect();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]);
    }
}
