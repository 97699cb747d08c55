//! The application, built once: config → store → hub → jobs → router, and the real server
//! started on a bound listener.
//!
//! `plexus serve`, the load generators of [`crate::lab`] and whatever else needs a hub in
//! this process (a sidecar, the pattern lab) build it here, so the wiring exists once. Like
//! mini-redis's `server::run`, [`App::run`] takes a listener bound by the caller and a
//! shutdown token ([`App::shutdown`]): tests and benches pass port 0 and cancel it themselves.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthSetupError;
use crate::config::{Config, StorageKind};
use crate::consumers::Consumers;
use crate::http::{AppParts, AppState, HttpOptions};
/// The pattern lab's seam: `src/lab/` implements the runner that `src/http/` calls.
pub use crate::http::{LabRunner, LabStartError};
use crate::hub::{Hub, HubOptions};
use crate::jobs::Jobs;
use crate::server::{self, ConnStats, ServerOptions};
use crate::store::Engine;
use crate::tls::{TlsError, TlsSetup};

/// Why the application could not be built or started. Each message is one line for the user.
#[derive(Debug)]
pub enum AppError {
    /// The TLS certificate or key could not be loaded or made.
    Tls(TlsError),
    /// The store could not be opened (the message names where).
    Store(String),
    /// The authentication settings cannot be used (e.g. an unreadable public key).
    Auth(AuthSetupError),
    /// The listener could not be bound or read.
    Listen(String),
    /// The webhook sender's HTTP client could not be built.
    Webhooks(String),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Tls(e) => e.fmt(f),
            AppError::Auth(e) => e.fmt(f),
            AppError::Store(m) | AppError::Listen(m) | AppError::Webhooks(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for AppError {}

/// Opens the store a configuration names: the one place that chooses an engine.
pub async fn open_store(config: &Config) -> Result<Engine, AppError> {
    let engine = match &config.storage {
        StorageKind::Memory => Engine::memory(config.retention),
        StorageKind::Sqlite => {
            Engine::sqlite(&config.data_dir, config.retention, config.durability).map_err(|e| {
                AppError::Store(format!(
                    "cannot open the store in {}: {e}",
                    config.data_dir.display()
                ))
            })?
        }
        StorageKind::Redis(target) => {
            let replicated = config.durability == crate::store::Durability::Replicated;
            Engine::redis(
                target,
                config.retention,
                replicated.then_some(config.replication),
            )
            .await
            .map_err(|e| AppError::Store(format!("cannot open the redis store: {e}")))?
        }
    };
    engine.log.limit_topics(config.max_topics_total);
    Ok(engine)
}

/// A built application: every long-lived part, ready to serve.
pub struct App {
    pub config: Config,
    pub store: Engine,
    pub hub: Arc<Hub>,
    pub jobs: Arc<Jobs>,
    pub router: axum::Router,
    /// The TLS setup when the configuration asks for TLS (its fingerprint is worth printing).
    pub tls: Option<TlsSetup>,
    /// The listener's connection counters, shared with `/metrics`.
    pub connections: Arc<ConnStats>,
    /// Cancelled when the node starts draining: `/readyz` answers 503, requests still served.
    pub draining: CancellationToken,
    /// Cancelled to stop: no new connections, streams and polls end, the server drains.
    pub shutdown: CancellationToken,
    /// Where the pattern lab's runner goes once the listener is bound (see [`App::hub_notes`]).
    pub lab: crate::http::LabSlot,
}

impl App {
    /// Sets up TLS (if configured), opens the store and builds the rest on it.
    pub async fn build(config: &Config) -> Result<App, AppError> {
        let tls = match &config.tls {
            Some(source) => {
                Some(crate::tls::setup(source, &config.data_dir).map_err(AppError::Tls)?)
            }
            None => None,
        };
        let store = open_store(config).await?;
        let mut app = App::with_store(config, store)?;
        app.tls = tls;
        Ok(app)
    }

    /// Builds the hub, jobs and router on a store the caller opened (no TLS).
    pub fn with_store(config: &Config, store: Engine) -> Result<App, AppError> {
        let auth = Arc::new(config.auth.authenticator().map_err(AppError::Auth)?);
        // Installed before anything records a metric.
        crate::observe::prometheus();
        let (draining, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let options = HubOptions {
            max_read_bytes: config.max_read_bytes,
            read_budget_bytes: config.read_budget_bytes,
            draining: draining.clone(),
        };
        let hub = Hub::new(
            store.log.clone(),
            store.follow.clone(),
            options,
            shutdown.clone(),
        );
        let jobs = Jobs::new(hub.clone(), store.jobs.clone(), config.jobs.clone());
        let consumers = Consumers::new(
            hub.clone(),
            store.consumers.clone(),
            config.consumers.clone(),
        );
        let webhooks = crate::webhooks::Webhooks::new(
            hub.clone(),
            consumers.clone(),
            store.consumers.clone(),
            config.webhooks.clone(),
            config.max_topics,
        )
        .map_err(AppError::Webhooks)?;
        let connections = Arc::new(ConnStats::default());
        let lab = crate::http::LabSlot::default();
        let router = crate::http::router(AppState::new(AppParts {
            limiter: Arc::new(crate::http::limits::RateLimiter::new(
                config.rate,
                config.burst,
            )),
            hub: hub.clone(),
            jobs: jobs.clone(),
            consumers,
            webhooks,
            auth,
            connections: connections.clone(),
            options: Arc::new(http_options(config)),
            lab: lab.clone(),
        }));
        Ok(App {
            config: config.clone(),
            store,
            hub,
            jobs,
            router,
            tls: None,
            connections,
            draining,
            shutdown,
            lab,
        })
    }

    /// The accept loop's settings of this configuration.
    fn server_options(&self) -> ServerOptions {
        ServerOptions {
            header_timeout: self.config.header_timeout,
            shutdown_grace: self.config.shutdown_grace,
            tls: self.tls.as_ref().map(|t| t.config.clone()),
            stats: self.connections.clone(),
            max_connections: self.config.max_connections,
            max_connections_per_client: self.config.max_connections_per_client,
            write_timeout: self.config.write_timeout,
            trusted_proxies: self.config.trusted_proxies.clone(),
        }
    }

    /// Serves on `listener` until [`App::shutdown`] is cancelled and the connections have
    /// drained, then closes the store.
    pub async fn run(self, listener: TcpListener) {
        let options = self.server_options();
        server::run(listener, self.router, self.shutdown, options).await;
        self.store.close().await;
    }

    /// Starts [`App::run`] in a task and returns its handle.
    pub fn spawn(self, listener: TcpListener) -> Result<Running, AppError> {
        let addr = listener
            .local_addr()
            .map_err(|e| AppError::Listen(format!("cannot read the listening address: {e}")))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let shutdown = self.shutdown.clone();
        Ok(Running {
            url: format!("{scheme}://{addr}"),
            addr,
            shutdown,
            task: tokio::spawn(self.run(listener)),
        })
    }
}

/// The HTTP layer's limits of a configuration.
fn http_options(config: &Config) -> HttpOptions {
    HttpOptions {
        max_message_bytes: config.max_message_bytes,
        max_batch_bytes: config.max_batch_bytes,
        max_wait: config.max_wait,
        max_topics: config.max_topics,
        keepalive: config.keepalive,
        // A publish frame carries the payload plus a little JSON around it.
        max_ws_frame_bytes: config.max_message_bytes * 4 / 3 + 4096,
        cors_origins: config.cors_origins.clone(),
        body_timeout: config.body_timeout,
        trusted_proxies: config.trusted_proxies.clone(),
        lab_enabled: config.lab.enabled,
    }
}

/// Messages the hub publishes on its own reserved topics (the pattern lab's `_lab.{run}`),
/// for a part that is a client of the hub and so may not name it. A task publishes them one
/// after another, in the order given, so the sender never waits on the store.
#[derive(Clone)]
pub struct HubNotes {
    queue: tokio::sync::mpsc::UnboundedSender<(crate::model::Topic, String)>,
}

impl HubNotes {
    /// Queues `data` (JSON) for `topic`; a bad topic name is ignored.
    pub fn publish(&self, topic: &str, data: String) {
        if let Ok(topic) = topic.parse() {
            let _ = self.queue.send((topic, data));
        }
    }
}

impl App {
    /// A [`HubNotes`] of this hub; its task ends once every clone is dropped.
    pub fn hub_notes(&self) -> HubNotes {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Some((topic, data)) = rx.recv().await {
                let note = crate::model::NewMessage {
                    topic,
                    event: None,
                    data: bytes::Bytes::from(data),
                    idempotency_key: None,
                };
                if let Err(e) = hub.publish_internal(vec![note]).await {
                    tracing::warn!(error = %e, "cannot publish a lab note");
                }
            }
        });
        HubNotes { queue }
    }
}

/// A server started by [`App::spawn`]. Dropping it does not stop the server; [`Running::stop`]
/// does, and waits until it drained and closed its store.
pub struct Running {
    addr: SocketAddr,
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts the shutdown and waits for the drain and the store's close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn memory_config() -> Config {
        let args = ServeArgs {
            storage: Some("memory".into()),
            ..ServeArgs::default()
        };
        match Config::load(&args) {
            Ok(config) => config,
            Err(e) => panic!("the memory configuration is valid: {e}"),
        }
    }

    #[tokio::test]
    async fn a_built_app_serves_on_port_zero_and_stops_on_its_token() {
        let app = match App::build(&memory_config()).await {
            Ok(app) => app,
            Err(e) => panic!("build: {e}"),
        };
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let running = match app.spawn(listener) {
            Ok(r) => r,
            Err(e) => panic!("spawn: {e}"),
        };
        assert!(running.url().starts_with("http://127.0.0.1:"));
        let client = match plexus_client::Client::new(running.url()) {
            Ok(c) => c,
            Err(e) => panic!("client: {e}"),
        };
        let published = client.publish("t", "hello", &Default::default()).await;
        assert!(matches!(&published, Ok(p) if p.seq == 1), "{published:?}");
        running.stop().await;
        assert!(
            client
                .publish("t", "late", &Default::default())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_unusable_store_is_a_store_error_naming_the_directory() {
        let file = std::env::temp_dir().join(format!("plexus-app-test-{}", std::process::id()));
        let _ = std::fs::write(&file, b"not a directory");
        let args = ServeArgs {
            data_dir: Some(file.join("sub")),
            ..ServeArgs::default()
        };
        let config = match Config::load(&args) {
            Ok(config) => config,
            Err(e) => panic!("config: {e}"),
        };
        let built = App::build(&config).await;
        let _ = std::fs::remove_file(&file);
        match built {
            Err(AppError::Store(m)) => assert!(m.starts_with("cannot open the store in "), "{m}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a store under a file opened"),
        }
    }
}
