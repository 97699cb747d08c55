//! Key and channel names (see the key list in this folder's `mod.rs`). The part in braces is
//! the hash tag, so the keys that one script touches share a shard.

use crate::model::{JobId, Topic};

pub(super) const CHANNEL: &str = "plexus:commits";
pub(super) const TOPICS: &str = "plexus:topics";
/// The topic names again, in a sorted set (all scores 0) so that a page of the listing is one
/// `ZRANGEBYLEX`. Its hash tag is the set's own name, so both share a slot and one script
/// writes both.
pub(super) const TOPICS_BY_NAME: &str = "{plexus:topics}:byname";
pub(super) const QUEUES: &str = "plexus:queues";

/// Where a topic's keys live: the part of each of its key names after the key's prefix.
///
/// A topic's own name in braces (`{T}`), so each topic's keys share a shard; but the hub's
/// job topics live with their queue, so that a job write and its events are one script on one
/// shard: `_jobs.{id}` is `{Q}:_jobs.{id}` (Q the job's queue, which the engine looks up once
/// per job) and `_queues.{q}` is `{q}:_queues.{q}`. A release before this one kept those two
/// under their own names; [`Core::slot`](super::core::Core::slot) carries each one's seq
/// counter over on first use (docs/ARCHITECTURE.md, "Jobs").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Slot(String);

impl Slot {
    /// A topic under its own name: every topic but the hub's job topics.
    pub(super) fn own(t: &Topic) -> Slot {
        Slot(format!("{{{t}}}"))
    }

    /// A job topic under its queue's hash tag.
    pub(super) fn of_queue(queue: &Topic, t: &Topic) -> Slot {
        Slot(format!("{{{queue}}}:{t}"))
    }

    /// The hash tag, braces included.
    pub(super) fn tag(&self) -> &str {
        self.0.find('}').map_or(&self.0, |end| &self.0[..=end])
    }

    pub(super) fn stream(&self) -> String {
        format!("plexus:s:{}", self.0)
    }

    pub(super) fn meta(&self) -> String {
        format!("plexus:m:{}", self.0)
    }

    pub(super) fn idempotency(&self, key: &str) -> String {
        format!("plexus:i:{}:{key}", self.0)
    }

    pub(super) fn receipt(&self, call: &str) -> String {
        format!("plexus:w:{}:{call}", self.0)
    }

    /// The topic's sharded Pub/Sub channel (on a cluster).
    pub(super) fn channel(&self) -> String {
        format!("plexus:c:{}", self.0)
    }

    /// The topic whose [`channel`](Self::channel) this is.
    pub(super) fn topic_of_channel(channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix("plexus:c:{")?;
        let name = match rest.strip_suffix('}') {
            Some(own) if !own.contains('}') => own,
            _ => rest.split_once("}:")?.1,
        };
        name.parse().ok()
    }
}

/// The queue whose hash tag a `_queues.{q}` topic takes (known from its name alone).
pub(super) fn announced_queue(t: &Topic) -> Option<Topic> {
    t.as_str().strip_prefix("_queues.")?.parse().ok()
}

/// The job whose events a `_jobs.{id}` topic carries.
pub(super) fn job_of_topic(t: &Topic) -> Option<JobId> {
    t.as_str().strip_prefix("_jobs.")?.parse().ok()
}

pub(super) fn queue_keys(q: &Topic) -> [String; 3] {
    [
        format!("plexus:jr:{{{q}}}"),
        format!("plexus:jd:{{{q}}}"),
        format!("plexus:jl:{{{q}}}"),
    ]
}

pub(super) fn job_key(q: &Topic, id: &JobId) -> String {
    format!("plexus:j:{{{q}}}:{id}")
}

pub(super) fn job_queue_key(id: &JobId) -> String {
    format!("plexus:jq:{id}")
}

/// A queue's finished jobs (`succeeded`, `dead`) by the time they finished, for retention.
pub(super) fn finished_key(q: &Topic) -> String {
    format!("plexus:jf:{{{q}}}")
}

/// The set of consumer names; it shares its hash tag with every consumer's hash.
pub(super) const CONSUMERS: &str = "plexus:k:{consumers}";

pub(super) fn consumer_key(name: &str) -> String {
    format!("plexus:k:{{consumers}}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        s.parse().expect("a topic")
    }

    #[test]
    fn job_topics_share_their_queue_tag() {
        let q = t("thumbs.big");
        let job = t("_jobs.0123456789abcdef0123456789abcdef");
        let slot = Slot::of_queue(&q, &job);
        assert_eq!(slot.tag(), "{thumbs.big}");
        assert_eq!(
            slot.stream(),
            "plexus:s:{thumbs.big}:_jobs.0123456789abcdef0123456789abcdef"
        );
        assert_eq!(Slot::own(&q).tag(), "{thumbs.big}");
        assert_eq!(Slot::own(&q).stream(), "plexus:s:{thumbs.big}");
        for (slot, topic) in [(Slot::own(&q), &q), (slot.clone(), &job)] {
            assert_eq!(
                Slot::topic_of_channel(&slot.channel()).as_ref(),
                Some(topic)
            );
        }
        assert_eq!(Slot::topic_of_channel("plexus:c:{a"), None);
        assert_eq!(announced_queue(&t("_queues.thumbs.big")), Some(q));
        assert_eq!(announced_queue(&t("queues.x")), None);
        assert!(job_of_topic(&job).is_some());
        assert_eq!(job_of_topic(&t("_jobs.nothex")), None);
    }
}
