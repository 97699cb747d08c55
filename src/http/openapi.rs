//! `GET /openapi.json`: an OpenAPI 3.1 description of the whole API, made from the
//! `#[utoipa::path]` attributes on the handlers.
//!
//! This file is the top of `http/`: it names every handler, and no handler names it. The
//! bodies are described by the schema types of `schema.rs`.
//! `scripts/schemathesis` checks the description against the running server.
//!
//! Two things are added to every operation by [`Conventions`] rather than by hand: the `429`
//! problem of the rate limiter and the `Retry-After` headers. The credentials depend on the
//! server's `auth.mode`, so the document is made once per mode: with `required` it declares
//! the bearer and `access_token` schemes, the `401` problem, and `security: []` on the open
//! paths; with `open` it declares no security at all.

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
    ContentBuilder, HeaderBuilder, Object, ObjectBuilder, Ref, RefOr, ResponseBuilder, Schema, Type,
};
use utoipa::{Modify, OpenApi};

use super::auth::OPEN_PATHS;
use super::schema::{
    Base64Item, Batch, BatchItem, BatchPublished, BatchResults, Envelope, Gap, GapReason, Health,
    Job, JobAction, JobState, Payload, PollBody, Problem, Published, SlowPolicy, TextItem,
    TopicInfo, TopicList,
};
use super::state::AppState;
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
        super::ndjson::ndjson,
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
        super::jobs::retry,
        super::consumers::create,
        super::consumers::show,
        super::consumers::list,
        super::consumers::remove,
        super::consumers::act,
        super::webhooks::create,
        super::webhooks::list,
        super::webhooks::show,
        super::webhooks::remove,
        super::webhooks::act,
        super::admin::me,
        super::lab::create,
        super::lab::show,
        openapi_json,
    ),
    components(schemas(
        Payload, Problem, Published, Batch, BatchItem, TextItem, Base64Item, BatchPublished, BatchResults, Envelope, Gap, GapReason, PollBody, Job,
        JobState, JobAction, SlowPolicy, TopicInfo, TopicList, Health
    )),
    modifiers(&Conventions),
    tags(
        (name = "publish", description = "Publish one message or a batch"),
        (name = "read", description = "Poll, long-poll, and stream topics"),
        (name = "jobs", description = "Long requests: submit, follow, and work on jobs"),
        (name = "consumers", description = "Durable consumers: the hub keeps the reader's place"),
        (name = "webhooks", description = "Webhooks: the hub POSTs each message, signed and in order"),
        (name = "lab", description = "The pattern lab: measure each delivery pattern on this hub"),
        (name = "manage", description = "Topics"),
        (name = "observe", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct ApiDoc;

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
/// gate's `401` on every other operation.
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
        if OPEN_PATHS.contains(&path.as_str()) {
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
            if !OPEN_PATHS.contains(&path.as_str()) {
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
