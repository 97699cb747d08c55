//! `GET /openapi.json`: an OpenAPI 3.1 description of the whole API, made from the
//! `#[utoipa::path]` attributes on the handlers.
//!
//! The bodies are described by schema structs of their own, kept here: the handlers serialise
//! borrowed types of the model and wire layers, which should not have to know about OpenAPI.
//! `scripts/schemathesis` checks the description against the running server.
//!
//! Two things are added to every operation by [`Conventions`] rather than by hand: the `429`
//! problem of the rate limiter and the `Retry-After` headers. The credentials depend on the
//! server's `auth.mode`, so the document is made once per mode: with `required` it declares
//! the bearer and `access_token` schemes, the `401` problem, and `security: []` on the open
//! paths; with `open` it declares no security at all.

// The schema structs are described, never built.
#![allow(dead_code)]

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ArrayBuilder, ContentBuilder, HeaderBuilder, Object, ObjectBuilder, Ref, RefOr,
    ResponseBuilder, Schema, Type,
};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::AppState;
use crate::auth::AuthMode;

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// The description of a server in `mode`; the same for the life of the process: made once.
fn document(mode: AuthMode) -> &'static [u8] {
    static OPEN: OnceLock<Vec<u8>> = OnceLock::new();
    static REQUIRED: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = match mode {
        AuthMode::Open => &OPEN,
        AuthMode::Required => &REQUIRED,
    };
    cell.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        if mode == AuthMode::Required {
            require_credentials(&mut doc);
        }
        doc.to_json().unwrap_or_default().into_bytes()
    })
}

/// This OpenAPI description of the API
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "observe",
    responses((status = 200, description = "The OpenAPI 3.1 description", content_type = "application/json"))
)]
async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document(state.auth.mode()),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Plexus",
        description = "A self-hosted communication hub over one durable topic log: publish, read \
                       (short and long poll, SSE, NDJSON, WebSocket) and jobs."
    ),
    paths(
        super::publish::publish_one,
        super::publish::publish_batch,
        super::poll::poll,
        super::sse::sse,
        super::stream::ndjson,
        super::ws::upgrade,
        super::admin::list,
        super::admin::show,
        super::admin::delete,
        super::admin::healthz,
        super::admin::readyz,
        super::admin::metrics,
        super::jobs::submit,
        super::jobs::claim,
        super::jobs::status,
        super::jobs::act,
        openapi_json,
    ),
    components(schemas(
        Payload, Problem, Published, Batch, BatchItem, TextItem, Base64Item, BatchResults, Envelope, Gap, GapReason, PollBody, Job,
        JobState, JobAction, SlowPolicy, TopicInfo, TopicList, Health
    )),
    modifiers(&Conventions),
    tags(
        (name = "publish", description = "Publish one message or a batch"),
        (name = "read", description = "Poll, long-poll, and stream topics"),
        (name = "jobs", description = "Long requests: submit, follow, and work on jobs"),
        (name = "manage", description = "Topics"),
        (name = "observe", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct ApiDoc;

/// The paths that need no credentials (the middleware's `OPEN_PATHS`).
const OPEN: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Every operation of `doc`, with its path.
fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.put,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path, op))
    })
}

/// With `auth.mode = required`: the security schemes (a bearer token, or the same credential
/// as `access_token` in the query), required everywhere but on the open paths, and the
/// middleware's `401` on every other operation.
fn require_credentials(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearerAuth",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components.add_security_scheme(
        "accessToken",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "access_token",
            "The same credential in the query, for clients that cannot send headers \
             (browsers' EventSource and WebSocket)",
        ))),
    );
    doc.security = Some(vec![
        SecurityRequirement::new("bearerAuth", Vec::<String>::new()),
        SecurityRequirement::new("accessToken", Vec::<String>::new()),
    ]);
    for (path, op) in operations(doc) {
        if OPEN.contains(&path.as_str()) {
            op.security = Some(Vec::new());
        } else {
            op.responses
                .responses
                .entry("401".into())
                .or_insert_with(|| problem("No credential, or a bad one"));
        }
    }
}

/// The rate limiter's responses on every operation, and headers that are never `null`.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(doc) {
            for param in op.parameters.iter_mut().flatten() {
                if let RefOr::T(p) = param
                    && p.parameter_in == ParameterIn::Header
                {
                    not_null(&mut p.schema);
                }
            }
            let responses = &mut op.responses.responses;
            if !OPEN.contains(&path.as_str()) {
                responses
                    .entry("429".into())
                    .or_insert_with(|| problem("Over this client's request rate"));
            }
            for status in ["429", "503"] {
                if let Some(RefOr::T(r)) = responses.get_mut(status) {
                    r.headers.insert(
                        "Retry-After".into(),
                        HeaderBuilder::new()
                            .schema(Some(integer()))
                            .description(Some("Seconds to wait before trying again"))
                            .build()
                            .into(),
                    );
                }
            }
        }
    }
}

/// An optional header is absent or a string, never `null`.
fn not_null(schema: &mut Option<RefOr<Schema>>) {
    if let Some(RefOr::T(Schema::Object(o))) = schema
        && let SchemaType::Array(types) = &o.schema_type
    {
        let types: Vec<Type> = types
            .iter()
            .filter(|t| **t != Type::Null)
            .cloned()
            .collect();
        if let [only] = types.as_slice() {
            o.schema_type = SchemaType::Type(only.clone());
        }
    }
}

fn integer() -> Object {
    ObjectBuilder::new().schema_type(Type::Integer).build()
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

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

/// A batch's results, in the order of its items.
#[derive(ToSchema)]
pub struct BatchResults {
    results: Vec<Published>,
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
