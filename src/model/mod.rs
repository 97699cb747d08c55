//! Pure domain types: no I/O, no HTTP, no storage. Everything here is parsed at the edge
//! (`FromStr`) into a value that cannot be invalid, then passed inward.

mod bounds;
mod cidr;
mod cursor;
mod duration;
mod gap;
mod grip;
mod job;
mod lab;
mod message;
mod pattern;
mod policy;
mod receipt;
mod since;
mod store_error;
mod time;
pub(crate) mod topic;
mod topic_info;

pub use bounds::LogBounds;
pub use cidr::{Cidr, client_key};
pub use cursor::{Cursor, CursorError};
pub use duration::{DurationError, parse_duration};
pub use gap::{Gap, GapReason};
pub use grip::{GRIP_EVENT, channel_topic, epcp_messages};
pub use job::{Job, JobId, JobState};
pub use lab::{LabPattern, LabSpec};
pub use message::{
    EventName, EventNameError, Fingerprint, Message, NewMessage, StoredFingerprint, fingerprint,
    valid_idempotency_key,
};
pub use pattern::{PatternError, TopicPattern};
pub use policy::SlowPolicy;
pub use receipt::Appended;
pub use since::{Since, SinceError};
pub use store_error::{StoreError, StoreResult};
pub use time::{Millis, format_rfc3339_millis, now_millis, parse_rfc3339};
pub use topic::{Topic, TopicError, TopicList};
pub use topic_info::TopicInfo;

/// A topic's sequence number: 1, 2, 3… without holes. 0 means "before the first message".
pub type Seq = u64;
