use super::{Seq, Topic};

/// Why messages a reader asked for are not there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// Removed by retention (count or age).
    Expired,
    /// Dropped by `DELETE /v1/topics/{topic}`.
    Deleted,
    /// Passed over by the `latest` slow-consumer policy.
    Skipped,
    /// The reader's cursor was beyond the head: the log was reset.
    Reset,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::Deleted => "deleted",
            GapReason::Skipped => "skipped",
            GapReason::Reset => "reset",
        }
    }
}

/// Messages a reader will never get, announced before the messages that follow them.
/// `range` is inclusive; a `Reset` gap has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub topic: Topic,
    pub range: Option<(Seq, Seq)>,
    pub reason: GapReason,
}
