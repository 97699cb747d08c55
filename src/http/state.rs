//! What every handler shares: the options the HTTP layer takes from the configuration, and
//! the application state each request gets as `State<AppState>`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::limits::RateLimiter;
use crate::auth::Authenticator;
use crate::consumers::Consumers;
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::server::ConnStats;

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
    /// A request body that makes no progress this long fails (`408`).
    pub body_timeout: Duration,
    /// Peers whose `Forwarded` / `X-Forwarded-For` name the client (`limits.trusted_proxies`).
    pub trusted_proxies: Vec<crate::model::Cidr>,
    /// `lab.enabled`: the pattern lab's routes answer (otherwise `404`).
    pub lab_enabled: bool,
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
            body_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            lab_enabled: false,
        }
    }
}

/// Shared by every handler: a cheap handle, one reference count per clone. Each route
/// layer and each `State` extractor clones it per request; with its nine `Arc`s side by side
/// that was nine atomic increments and decrements each time (docs/BENCHMARKS.md, durable
/// publish).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppParts {
    pub hub: Arc<Hub>,
    pub jobs: Arc<Jobs>,
    pub consumers: Arc<Consumers>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
    /// The listener's connection counters (for `/metrics`).
    pub connections: Arc<ConnStats>,
    pub options: Arc<HttpOptions>,
    /// The pattern lab's runner, installed by the application once it listens.
    pub lab: LabSlot,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum LabStartError {
    /// Another run is going on (one at a time, so their CPU figures stay apart).
    Busy(String),
    /// The lab cannot measure this hub (e.g. its listener speaks only TLS).
    Unavailable(String),
}

/// Starts and shows pattern-lab runs (implemented by `src/lab/`).
pub trait LabRunner: Send + Sync {
    /// Starts a run in the background with the caller's bearer token (its clients send it);
    /// the run's id.
    fn start(
        &self,
        spec: crate::model::LabSpec,
        token: Option<String>,
    ) -> Result<String, LabStartError>;
    /// A run as `GET /v1/lab/runs/{id}` shows it; `None` when unknown.
    fn show(&self, id: &str) -> Option<serde_json::Value>;
}

/// Where the application puts its [`LabRunner`]; empty while none is installed.
pub type LabSlot = Arc<OnceLock<Arc<dyn LabRunner>>>;
