//! The job JSON, used by the HTTP API and in the `_jobs.{id}` events.

use serde::Serialize;

use super::base64;
use crate::model::{Job, format_rfc3339_millis};

#[derive(Serialize)]
struct JobJson<'a> {
    id: &'a str,
    queue: &'a str,
    state: &'static str,
    attempts: u32,
    max_attempts: u32,
    created: String,
    updated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_until: Option<String>,
}

/// Text as itself, anything else as base64 in the `_base64` field.
fn text_or_base64(bytes: Option<&[u8]>) -> (Option<&str>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(base64::encode(b))),
        },
    }
}

/// The job as JSON; `with_lease` adds `lease` and `lease_until` (only the claimer sees them).
pub fn job_json(job: &Job, with_lease: bool) -> Vec<u8> {
    let (payload, payload_base64) = text_or_base64(Some(&job.payload));
    let (result, result_base64) = text_or_base64(job.result.as_deref());
    let value = JobJson {
        id: job.id.as_str(),
        queue: job.queue.as_str(),
        state: job.state.as_str(),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        created: format_rfc3339_millis(job.created),
        updated: format_rfc3339_millis(job.updated),
        payload,
        payload_base64,
        result,
        result_base64,
        error: job.error.as_deref(),
        run_at: job.run_at.map(format_rfc3339_millis),
        lease: if with_lease {
            job.lease.as_deref()
        } else {
            None
        },
        lease_until: if with_lease {
            job.lease_until.map(format_rfc3339_millis)
        } else {
            None
        },
    };
    // Serialising our own struct into memory cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}
