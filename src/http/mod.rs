//! The HTTP API: one file per feature, each with its own `routes()`. The only layer that
//! knows HTTP; it parses, calls the hub, and encodes.

mod admin;
mod auth;
pub mod error;
mod jobs;
pub mod limits;
mod openapi;
mod params;
mod poll;
mod publish;
mod sse;
mod stream;
mod trace;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Uri;

use crate::hub::Hub;
use error::ApiError;

/// What the HTTP layer needs to know of the configuration.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub max_message_bytes: usize,
    /// Largest `POST /v1/publish` body.
    pub max_batch_bytes: usize,
    pub max_wait: Duration,
    /// Most topics one read or subscription may name.
    pub max_topics: usize,
    /// Interval of keepalives on idle streams.
    pub keepalive: Duration,
    /// Largest WebSocket frame accepted (larger: an error frame).
    pub max_ws_frame_bytes: usize,
    /// Browser origins allowed by CORS (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_message_bytes: 1 << 20,
            max_batch_bytes: 16 << 20,
            max_wait: Duration::from_secs(60),
            max_topics: 64,
            keepalive: Duration::from_secs(15),
            max_ws_frame_bytes: (1 << 20) + 4096,
            cors_origins: Vec::new(),
        }
    }
}

/// Shared by every handler: a cheap handle.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub auth: Arc<crate::auth::Authenticator>,
    pub limiter: Arc<limits::RateLimiter>,
    /// The listener's connection counters (for `/metrics`).
    pub connections: Arc<crate::server::ConnStats>,
    pub options: Arc<HttpOptions>,
}

/// The whole API as one router.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.options.cors_origins);
    let router = Router::new()
        .merge(publish::routes(&state.options))
        .merge(poll::routes())
        .merge(admin::routes())
        .merge(sse::routes())
        .merge(stream::routes())
        .merge(ws::routes())
        .merge(jobs::routes(&state.options))
        .merge(openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // A client over its rate is refused before anything else is done.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::limit,
        ))
        .with_state(state)
        // Every request, refused ones included, gets an id and a log line.
        .layer(axum::middleware::from_fn(trace::trace));
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
