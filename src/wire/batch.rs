//! The body of a batch publish (`POST /v1/publish`, docs/API.md §2.1): its framing (a JSON
//! array or NDJSON, by content type or first byte) and each item's checks. The hub and the
//! sidecar decode it here, so both accept and refuse the same bodies with the same words.

use bytes::Bytes;
use serde::Deserialize;

use super::base64;
use crate::model::{EventName, Topic};

/// One item as written by the client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub topic: String,
    pub data: Option<String>,
    pub data_base64: Option<String>,
    pub event: Option<String>,
    pub idempotency_key: Option<String>,
}

/// An item whose topic, event and payload passed their checks; the idempotency key is left
/// to the caller, which owns its rules and errors.
pub struct CheckedItem {
    pub topic: Topic,
    pub event: Option<EventName>,
    pub data: Bytes,
    pub idempotency_key: Option<String>,
}

/// Why a batch body or one of its items is refused.
#[derive(Debug)]
pub enum BatchError {
    /// A `400`: bad framing, JSON, topic, event or data.
    Bad(String),
    /// A `413`: an item's payload over the limit.
    TooLarge(String),
}

/// How a batch body is written, by its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchFormat {
    /// `application/json` (any parameters, any case, or a `+json` type): a JSON array only.
    Array,
    /// `application/x-ndjson`: one item a line.
    Ndjson,
    /// No content type, or another one (e.g. curl's default for `-d`): an array when the body
    /// starts with `[`, NDJSON otherwise.
    Sniff,
}

impl BatchFormat {
    /// The format a `Content-Type` value names (`None`: no header).
    pub fn of(content_type: Option<&str>) -> Self {
        let Some(value) = content_type else {
            return BatchFormat::Sniff;
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            BatchFormat::Array
        } else if essence == "application/x-ndjson" {
            BatchFormat::Ndjson
        } else {
            BatchFormat::Sniff
        }
    }
}

/// The items of a batch body.
pub fn parse_items(body: &[u8], format: BatchFormat) -> Result<Vec<BatchItem>, BatchError> {
    let bad = |e: serde_json::Error| BatchError::Bad(format!("bad batch: {e}"));
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let array = match format {
        BatchFormat::Array if first != Some(&b'[') => {
            return Err(BatchError::Bad(
                "with Content-Type: application/json the batch is a JSON array; \
                 send one item a line as application/x-ndjson"
                    .into(),
            ));
        }
        BatchFormat::Array => true,
        BatchFormat::Ndjson => false,
        BatchFormat::Sniff => first == Some(&b'['),
    };
    if array {
        return serde_json::from_slice(body).map_err(bad);
    }
    // NDJSON: one item a line, blank lines ignored.
    body.split(|&b| b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|line| serde_json::from_slice(line).map_err(bad))
        .collect()
}

/// Checks item `i`: its topic, exactly one of `data` and `data_base64` (at most `max_bytes`),
/// its event name.
pub fn check_item(i: usize, item: BatchItem, max_bytes: usize) -> Result<CheckedItem, BatchError> {
    let topic: Topic = item
        .topic
        .parse()
        .map_err(|e| BatchError::Bad(format!("item {i}: {e}")))?;
    let data = match (item.data, item.data_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(base64::decode(&b64).ok_or_else(|| {
            BatchError::Bad(format!("item {i}: data_base64 is not valid base64"))
        })?),
        _ => {
            return Err(BatchError::Bad(format!(
                "item {i}: give exactly one of data and data_base64"
            )));
        }
    };
    if data.len() > max_bytes {
        return Err(BatchError::TooLarge(format!(
            "item {i}: the payload is {} bytes, at most {max_bytes} allowed",
            data.len()
        )));
    }
    let event = item
        .event
        .map(|e| e.parse::<EventName>())
        .transpose()
        .map_err(|e| BatchError::Bad(format!("item {i}: {e}")))?;
    Ok(CheckedItem {
        topic,
        event,
        data,
        idempotency_key: item.idempotency_key,
    })
}
