//! What a publish answers: where each message went.

use super::{Millis, Seq};

/// The receipt of one appended message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    pub time: Millis,
    /// The idempotency key was seen before with the same body: nothing was stored.
    pub replayed: bool,
}
