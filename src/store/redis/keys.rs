//! Key and channel names (see the key list in this folder's `mod.rs`). The topic or queue
//! in braces is the hash tag, so each one's keys share a shard.

use crate::model::{JobId, Topic};

pub(super) const CHANNEL: &str = "plexus:commits";
pub(super) const TOPICS: &str = "plexus:topics";
pub(super) const QUEUES: &str = "plexus:queues";

pub(super) fn stream_key(t: &Topic) -> String {
    format!("plexus:s:{{{t}}}")
}

pub(super) fn meta_key(t: &Topic) -> String {
    format!("plexus:m:{{{t}}}")
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

pub(super) fn shard_channel(t: &Topic) -> String {
    format!("plexus:c:{{{t}}}")
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
