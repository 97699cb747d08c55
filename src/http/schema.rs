//! The OpenAPI schema types of the bodies, described by `openapi.rs` and named by the
//! handlers' `#[utoipa::path]` attributes. They are described, never built: the handlers
//! serialise borrowed types of the model and wire layers, which should not have to know about
//! OpenAPI.

// The schema structs are described, never built.
#![allow(dead_code)]

use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Ref, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// A payload: any bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Payload(Vec<u8>);

/// An error (RFC 9457), always served as `application/problem+json`.
#[derive(ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:plexus:problem:…`); once published, never reused.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    /// The HTTP status.
    status: u16,
    detail: String,
}

/// Where a published message was stored.
#[derive(ToSchema)]
pub struct Published {
    topic: String,
    seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    #[schema(format = DateTime)]
    time: String,
}

/// A batch: 1 to 1,000 items (written by hand: the derive cannot bound an array's length).
pub struct Batch;

impl PartialSchema for Batch {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name("BatchItem"))
            .min_items(Some(1))
            .max_items(Some(1000))
            .description(Some("1 to 1,000 items"))
            .into()
    }
}

impl ToSchema for Batch {}

/// One message of a batch: exactly one of `data` and `data_base64`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Text(TextItem),
    Base64(Base64Item),
}

/// An item whose payload is text.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextItem {
    #[schema(max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$")]
    topic: String,
    data: String,
    /// The event name (SSE `event:`).
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    event: Option<String>,
    /// Scoped to the topic, the same key space as the `Idempotency-Key` header.
    #[schema(pattern = "^[!-~]{1,200}$")]
    idempotency_key: Option<String>,
}

/// An item whose payload is bytes, as base64 (standard alphabet, padded).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Base64Item {
    #[schema(max_length = 200, pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$")]
    topic: String,
    #[schema(
        pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    data_base64: String,
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    event: Option<String>,
    #[schema(pattern = "^[!-~]{1,200}$")]
    idempotency_key: Option<String>,
}

/// Where a batch item was stored.
#[derive(ToSchema)]
pub struct BatchPublished {
    topic: String,
    seq: u64,
    /// RFC 3339 with milliseconds, UTC.
    #[schema(format = DateTime)]
    time: String,
    /// Present, and `true`, only when the item was answered from its idempotency key (it
    /// replays the first result and stored nothing).
    replayed: Option<bool>,
}

/// A batch's results, in the order of its items.
#[derive(ToSchema)]
pub struct BatchResults {
    results: Vec<BatchPublished>,
}

/// A message as JSON: `data` when the payload is UTF-8, `data_base64` when it is not.
#[derive(ToSchema)]
pub struct Envelope {
    topic: String,
    seq: u64,
    #[schema(format = DateTime)]
    time: String,
    #[schema(required = false)]
    event: String,
    #[schema(required = false)]
    data: String,
    #[schema(required = false)]
    data_base64: String,
}

/// Why messages are missing.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GapReason {
    Expired,
    Deleted,
    Skipped,
    Reset,
}

/// Messages a reader will never get; `from` and `to` (inclusive) are absent on a reset.
#[derive(ToSchema)]
pub struct Gap {
    topic: String,
    #[schema(required = false)]
    from: u64,
    #[schema(required = false)]
    to: u64,
    reason: GapReason,
}

/// A poll's answer: `next` is the cursor to pass as `since` next time.
#[derive(ToSchema)]
pub struct PollBody {
    messages: Vec<Envelope>,
    next: String,
    #[schema(required = false)]
    gaps: Vec<Gap>,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Dead,
}

/// A job. Text payloads and results as themselves, others as base64; `lease` and
/// `lease_until` only for the worker holding the claim.
#[derive(ToSchema)]
pub struct Job {
    id: String,
    queue: String,
    state: JobState,
    /// Claims so far.
    attempts: u32,
    max_attempts: u32,
    #[schema(format = DateTime)]
    created: String,
    #[schema(format = DateTime)]
    updated: String,
    #[schema(required = false)]
    payload: String,
    #[schema(required = false)]
    payload_base64: String,
    #[schema(required = false)]
    result: String,
    #[schema(required = false)]
    result_base64: String,
    #[schema(required = false)]
    error: String,
    /// When a failed job may be claimed again.
    #[schema(required = false, format = DateTime)]
    run_at: String,
    /// An opaque token naming this claim: pass it as `?lease=` to finish the job.
    #[schema(required = false)]
    lease: String,
    #[schema(required = false, format = DateTime)]
    lease_until: String,
}

/// A topic; with nothing retained, `first_seq` is `last_seq + 1`.
#[derive(ToSchema)]
pub struct TopicInfo {
    topic: String,
    first_seq: u64,
    last_seq: u64,
    messages: u64,
    /// Payload bytes retained.
    bytes: u64,
    subscribers: u64,
    #[schema(format = DateTime)]
    last_publish: Option<String>,
}

#[derive(ToSchema)]
pub struct TopicList {
    topics: Vec<TopicInfo>,
    /// Where the next page starts (`after=`), when there may be one.
    next: Option<String>,
}

#[derive(ToSchema)]
pub struct Health {
    status: String,
}

/// What a worker does to the job it claimed.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    /// Extend the lease by its length.
    Heartbeat,
    /// The body becomes a `progress` message on `_jobs.{id}`.
    Progress,
    /// The body becomes the result.
    Complete,
    /// The body is the error text; the job is retried after a backoff, or dead.
    Fail,
}

/// Slow-consumer policy of a stream.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Read behind from the store by cursor.
    Catchup,
    /// Skip to the newest message, reporting the skipped range as a gap.
    Latest,
    /// End the stream; its last cursor resumes it.
    Disconnect,
}

// The parameters' schemas: the bounds the server parses them with, so that what the
// description allows is accepted and what it forbids refused. The handlers name them as
// `inline(Option<schema::X>)` (utoipa's attributes take literals only, so a bound the code
// also checks is a constant here).

/// The shortest lease of a claim, in seconds (a millisecond): `?lease=` below it is `400`.
pub const MIN_LEASE_SECS: f64 = 0.001;

/// The largest `?limit=` of a poll: the server parses it as a `u64` (and clamps anything
/// above 1,000), so the description allows every value it accepts, and no other.
const MAX_LIMIT_PARAM: u64 = u64::MAX;

/// `?wait=` and `?lease=` are below this many seconds.
const SECONDS_BOUND: i64 = 1_000_000_000;

/// A topic of a read path, repeated: up to 64 comma-separated (each bounded to 100 characters
/// besides dots, within the 200-byte limit of a name).
const TOPICS_PATTERN: &str =
    "^[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}(,[A-Za-z0-9_-](\\.?[A-Za-z0-9_-]){0,99}){0,63}$";

/// What `since` parses: `all`, `now`, a seq, a duration back, a multi-topic cursor, an RFC 3339
/// time (an empty `since` is none of them).
const SINCE_PATTERN: &str = "^(all|now|[0-9]{1,19}|[0-9]{1,9}(ms|s|m|h|d)|(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19}(,(?=[^,:]{1,200}:)[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*:[0-9]{1,19})*|[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$";

fn pattern(pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

fn seconds(minimum: Option<utoipa::Number>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)))
        .minimum(minimum)
        .exclusive_maximum(Some(SECONDS_BOUND))
        .into()
}

/// The `{topics}` of a read path.
pub struct Topics;

impl PartialSchema for Topics {
    fn schema() -> RefOr<Schema> {
        pattern(TOPICS_PATTERN)
    }
}

impl ToSchema for Topics {}

/// `?since=`.
pub struct Since;

impl PartialSchema for Since {
    fn schema() -> RefOr<Schema> {
        pattern(SINCE_PATTERN)
    }
}

impl ToSchema for Since {}

/// `?limit=` of a poll: 1 to [`MAX_LIMIT_PARAM`].
pub struct Limit;

impl PartialSchema for Limit {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            // The OpenAPI format registry's `uint64`: int64 would forbid what the server takes.
            .format(Some(SchemaFormat::Custom("uint64".into())))
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT_PARAM))
            .into()
    }
}

impl ToSchema for Limit {}

/// `?wait=`: seconds from 0.
pub struct Wait;

impl PartialSchema for Wait {
    fn schema() -> RefOr<Schema> {
        seconds(Some(utoipa::Number::Int(0)))
    }
}

impl ToSchema for Wait {}

/// `?lease=` of a claim: seconds from [`MIN_LEASE_SECS`].
pub struct Lease;

impl PartialSchema for Lease {
    fn schema() -> RefOr<Schema> {
        seconds(Some(utoipa::Number::Float(MIN_LEASE_SECS)))
    }
}

impl ToSchema for Lease {}
