//! The HTTP API: one file per feature, each with its own `routes()`. The only layer that
//! knows HTTP; it parses, calls the hub, and encodes.
//!
//! The files point one way, so that no two import each other:
//! - at the bottom, what every handler shares: `state` (`AppState`, `HttpOptions`), `error`
//!   (the one mapping of errors to problems and to WebSocket error statuses), `extract` (our
//!   parsing of paths, queries, headers and bodies), `auth` (the `Caller` and the credential
//!   check), `limits` (rate, body timeout), `client` (the client behind a trusted proxy),
//!   `origin` (Host and Origin checks of an open hub), `trace` (request id and log line) and
//!   `gate` (the one service before routing that runs those checks in turn), `schema` (the
//!   OpenAPI schema types), and `dashboard` (the embedded single-page app at `/`, which needs
//!   no state; the credential check asks it which paths are the page's);
//! - over those, `streaming`: what every stream shares (its parameters, the cursor after each
//!   event, the open-stream gauge, keepalives, ending on shutdown); SSE and NDJSON are built
//!   on it, the WebSocket takes its gauge and keeps its own ping and close handshake, since
//!   frames flow both ways on it; and `websocket`, the WebSocket's upgrade and connection
//!   (message frames written as encoded, beside tungstenite);
//! - above them the handlers, each registering its own routes: `publish`, `poll`, `sse`,
//!   `ndjson`, `ws`, `admin`, `jobs`, `consumers`, `webhooks`;
//! - on top `openapi`, which names the handlers, and this file, which assembles the router.
//!
//! Every byte a stream or socket sends (messages, gaps and control frames alike) is encoded in
//! [`crate::wire`].

mod admin;
mod auth;
mod client;
mod consumers;
mod dashboard;
mod epcp;
pub mod error;
mod extract;
mod gate;
mod jobs;
mod lab;
pub mod limits;
mod ndjson;
mod openapi;
mod origin;
mod poll;
mod publish;
mod schema;
mod sse;
mod state;
mod streaming;
mod trace;
mod webhooks;
mod websocket;
mod ws;

use axum::Router;
use axum::http::Uri;

use error::ApiError;
pub use state::{AppParts, AppState, HttpOptions, LabRunner, LabSlot, LabStartError};

/// The whole API as one router.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.options.cors_origins);
    let policy = gate::Policy {
        proxies: state.options.trusted_proxies.clone(),
        origins: origin::OriginPolicy {
            active: state.auth.mode() == crate::auth::AuthMode::Open
                || state.options.cors_origins.is_empty(),
            allowed: state.options.cors_origins.clone(),
        },
        limiter: state.limiter.clone(),
        auth: state.auth.clone(),
        body_timeout: state.options.body_timeout,
    };
    let routes = Router::new()
        .merge(publish::routes(&state.options))
        .merge(poll::routes())
        .merge(admin::routes())
        .merge(sse::routes())
        .merge(ndjson::routes())
        .merge(ws::routes())
        .merge(jobs::routes(&state.options))
        .merge(consumers::routes())
        .merge(webhooks::routes())
        // The pattern lab (docs/API.md, "The pattern lab").
        .merge(lab::routes())
        .merge(openapi::routes())
        // Hold mode's EPCP publish (docs/API.md §9).
        .merge(epcp::routes(&state.options))
        // The embedded dashboard at `/` and what a credential may do (docs/API.md §13).
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // Every request passes the gate before it is routed, refused ones included: the client
    // behind a trusted proxy, an id and a log line, foreign origins (403), the rate limit
    // (429), the credential (401), and the body timeout (408).
    let router = Router::new().fallback_service(gate::Gate::new(routes, policy));
    // Outermost: a browser's preflight is answered without credentials.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured origins: any method, the headers the API reads, `Last-Event-ID`
/// and `Prefer` included; `Location` and `Retry-After` readable by the page.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, header};
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("prefer"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("plexus-event"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
            ]),
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
