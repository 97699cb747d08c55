use std::str::FromStr;

/// What a subscriber does when it falls behind the live broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SlowPolicy {
    /// Read behind from the store by cursor: every retained message arrives.
    #[default]
    Catchup,
    /// Skip to the newest message, announcing the skipped range as a gap.
    Latest,
    /// End the stream; its last cursor resumes it.
    Disconnect,
}

impl FromStr for SlowPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "catchup" => Ok(SlowPolicy::Catchup),
            "latest" => Ok(SlowPolicy::Latest),
            "disconnect" => Ok(SlowPolicy::Disconnect),
            _ => Err(format!(
                "slow={s:?} is not a slow-consumer policy; use catchup, latest or disconnect"
            )),
        }
    }
}
