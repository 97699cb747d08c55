use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::{Millis, Topic};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead)
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(JobState::Queued),
            "running" => Ok(JobState::Running),
            "succeeded" => Ok(JobState::Succeeded),
            "dead" => Ok(JobState::Dead),
            _ => Err(format!("{s:?} is not a job state")),
        }
    }
}

/// A job id: 32 lowercase hex digits (so `_jobs.{id}` is a valid topic).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(JobId(s.to_owned()))
        } else {
            Err(format!(
                "{:?} is not a job id",
                s.chars().take(80).collect::<String>()
            ))
        }
    }
}

impl JobId {
    /// A fresh id from 16 random bytes.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        JobId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic that carries this job's state changes and progress.
    pub fn topic(&self) -> Topic {
        // 32 hex digits after a valid prefix always make a valid topic name (see the test).
        format!("_jobs.{}", self.0)
            .parse()
            .expect("a job id makes a valid topic")
    }
}

impl Job {
    /// A claim: `running` under a fresh lease, one more attempt. Every engine claims this way.
    pub fn claim(&mut self, now: Millis, lease: String, lease_ms: u64) {
        self.state = JobState::Running;
        self.attempts += 1;
        self.updated = now;
        self.run_at = None;
        self.lease = Some(lease);
        self.lease_until = Some(now + lease_ms as Millis);
        self.lease_ms = Some(lease_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_make_topics() {
        let id = JobId::from_random([0xab; 16]);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.as_str().parse::<JobId>(), Ok(id.clone()));
        assert_eq!(id.topic().as_str(), format!("_jobs.{id}"));
        assert!("xyz".parse::<JobId>().is_err());
        assert!("AB".repeat(16).parse::<JobId>().is_err());
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub queue: Topic,
    pub state: JobState,
    /// How many times it was claimed.
    pub attempts: u32,
    pub max_attempts: u32,
    pub created: Millis,
    pub updated: Millis,
    pub payload: Bytes,
    pub result: Option<Bytes>,
    pub error: Option<String>,
    /// A queued job is not claimed before this (retry backoff).
    pub run_at: Option<Millis>,
    /// The current claim: its token, its end, its length.
    pub lease: Option<String>,
    pub lease_until: Option<Millis>,
    pub lease_ms: Option<u64>,
}
