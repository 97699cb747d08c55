//! What the admin API shows of a topic.

use super::{Millis, Seq, Topic};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: Topic,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub messages: u64,
    pub bytes: u64,
    pub last_publish: Option<Millis>,
}
