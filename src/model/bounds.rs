//! Where a topic's retained log stands.

use super::Seq;

/// Where a topic's retained log stands. A topic with nothing retained has
/// `first_seq == last_seq + 1`; an unknown topic is `first_seq 1, last_seq 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// The highest seq dropped by a topic delete (0: none), to tell `deleted` from `expired`.
    pub deleted_through: Seq,
}

impl LogBounds {
    pub const EMPTY: LogBounds = LogBounds {
        first_seq: 1,
        last_seq: 0,
        deleted_through: 0,
    };
}
