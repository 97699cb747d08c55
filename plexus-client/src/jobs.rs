//! Jobs: submit long requests and wait for them (or not), and work them as a worker.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Client, Error, decode};

/// A job as the hub shows it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub queue: String,
    /// `queued`, `running`, `succeeded` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created: String,
    pub updated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// The claim's token (only in a claim's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<String>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        self.state == "succeeded" || self.state == "dead"
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

impl Client {
    /// Submits a job; with `wait`, the hub answers as soon as it succeeded or died, or with the
    /// job as it is when the wait ends.
    pub async fn submit_job(
        &self,
        queue: &str,
        payload: impl Into<Bytes>,
        wait: Option<Duration>,
    ) -> Result<Job, Error> {
        let mut request = self
            .http
            .post(format!("{}/v1/queues/{queue}/jobs", self.base))
            .body(payload.into());
        if let Some(wait) = wait {
            request = request
                .header("prefer", format!("wait={}", secs(wait)))
                .timeout(wait + Duration::from_secs(30));
        }
        decode(request.send().await?).await
    }

    /// The job; with `wait`, once something happens to it or the wait ends.
    pub async fn job(&self, id: &str, wait: Option<Duration>) -> Result<Job, Error> {
        let mut request = self.http.get(format!("{}/v1/jobs/{id}", self.base));
        if let Some(wait) = wait {
            request = request
                .query(&[("wait", secs(wait))])
                .timeout(wait + Duration::from_secs(30));
        }
        decode(request.send().await?).await
    }

    /// Claims a job of `queue` for `lease`, waiting up to `wait` for one (`None`: none came).
    pub async fn claim(
        &self,
        queue: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Job>, Error> {
        let response = self
            .http
            .post(format!("{}/v1/queues/{queue}/claim", self.base))
            .query(&[("wait", secs(wait)), ("lease", secs(lease))])
            .timeout(wait + Duration::from_secs(30))
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        decode(response).await.map(Some)
    }

    async fn act(&self, id: &str, action: &str, lease: &str, body: Bytes) -> Result<Job, Error> {
        let response = self
            .http
            .post(format!("{}/v1/jobs/{id}/{action}", self.base))
            .query(&[("lease", lease)])
            .body(body)
            .send()
            .await?;
        decode(response).await
    }

    /// Extends the claim by its length.
    pub async fn heartbeat(&self, id: &str, lease: &str) -> Result<Job, Error> {
        self.act(id, "heartbeat", lease, Bytes::new()).await
    }

    pub async fn progress(
        &self,
        id: &str,
        lease: &str,
        body: impl Into<Bytes>,
    ) -> Result<Job, Error> {
        self.act(id, "progress", lease, body.into()).await
    }

    pub async fn complete(
        &self,
        id: &str,
        lease: &str,
        result: impl Into<Bytes>,
    ) -> Result<Job, Error> {
        self.act(id, "complete", lease, result.into()).await
    }

    pub async fn fail(&self, id: &str, lease: &str, error: impl Into<Bytes>) -> Result<Job, Error> {
        self.act(id, "fail", lease, error.into()).await
    }
}
