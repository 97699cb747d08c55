//! `plexus sidecar`: a small process beside an application that serves the hub's v1 API on a
//! loopback listener. Publishes go through a durable local spool (`spool`) and are forwarded
//! in acceptance order with idempotency keys (`forward`); every other v1 request is sent to
//! the hub as it came (`proxy`). The hub is reached only through `plexus-client`, over one
//! HTTP/2 connection (h2c by prior knowledge, or TLS with ALPN `h2`), and a second only when
//! the first carries the hub's limit of streams (`upstream`). docs/ARCHITECTURE.md follows a
//! publish through it.

mod forward;
mod grip;
mod problem;
mod proxy;
mod publish;
mod share;
mod spool;
mod upstream;
mod ws;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::SidecarConfig;
use problem::Problem;
use spool::Spool;

/// Largest body of a batch publish (the hub's default `limits.max_batch_bytes`) or of any
/// forwarded request.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// How often the hub's `/healthz` is asked while nothing else tells whether it is up.
const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum SidecarError {
    /// The spool could not be opened (a path, a lock, SQLite).
    Spool(String),
    /// The upstream client could not be built (a URL, a certificate).
    Upstream(String),
    /// The local listener failed.
    Listen(String),
}

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SidecarError::Spool(e) | SidecarError::Upstream(e) | SidecarError::Listen(e) => {
                f.write_str(e)
            }
        }
    }
}

impl std::error::Error for SidecarError {}

/// Counters of `/metrics`; atomics, read without a lock.
#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
    spool_full: AtomicU64,
    stale_keys: AtomicU64,
    /// Requests streamed from the hub as they are (multi-topic streams).
    streams: AtomicU64,
    /// Local subscribers served from a shared feed.
    local_streams: AtomicU64,
}

/// What every handler and task of the sidecar shares; one `Arc` of it is the router's state.
struct Shared {
    config: SidecarConfig,
    spool: Spool,
    /// The hub's connections: lease one for each request or stream.
    upstream: upstream::Upstream,
    /// Whether the last exchange with the hub succeeded (forward, probe or proxied request).
    hub_up: AtomicBool,
    counters: Counters,
    shutdown: CancellationToken,
    /// The shared upstream subscriptions, one per topic with local subscribers.
    feeds: share::Feeds,
    /// Woken when the probe finds the hub back, so the forwarder leaves its backoff at once.
    hub_back: tokio::sync::Notify,
    /// Hold mode: the application every non-sidecar path is proxied to.
    app: Option<grip::App>,
}

impl Shared {
    /// Whether the spool holds an entry older than `forward_wait`: the forwarder is behind,
    /// so a new publish is answered `202` at once rather than waiting behind the backlog.
    fn backlogged(&self) -> bool {
        let wait = self.config.forward_wait.as_millis() as i64;
        self.spool
            .stats()
            .oldest
            .is_some_and(|t| crate::model::now_millis() - t > wait)
    }
}

/// An opened sidecar: its spool and its upstream client, ready to serve.
pub struct Sidecar {
    shared: Arc<Shared>,
}

impl Sidecar {
    /// Opens the spool and builds the upstream client; nothing talks to the hub yet.
    pub fn open(
        config: SidecarConfig,
        shutdown: CancellationToken,
    ) -> Result<Sidecar, SidecarError> {
        let spool = Spool::open(
            &config.spool_dir,
            config.fsync,
            config.spool_max_bytes,
            config.spool_max_messages,
        )
        .map_err(SidecarError::Spool)?;
        let upstream =
            |e: plexus_client::Error| SidecarError::Upstream(format!("hub {}: {e}", config.hub));
        let pem = match &config.cacert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                SidecarError::Upstream(format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        let (hub, token, wait) = (
            config.hub.clone(),
            config.token.clone(),
            config.forward_wait,
        );
        // Each client built here has its own pool, so its own connection: h2c by prior
        // knowledge; over TLS, ALPN picks h2.
        let make = move || {
            let mut builder = plexus_client::Client::builder(&hub).connect_timeout(wait);
            if hub.starts_with("http://") {
                builder = builder.http2_prior_knowledge();
            }
            if let Some(token) = &token {
                builder = builder.bearer_token(token);
            }
            if let Some(pem) = &pem {
                builder = builder.add_root_certificate_pem(pem)?;
            }
            builder.build()
        };
        let client = upstream::Upstream::new(Box::new(make), config.upstream_max_streams)
            .map_err(upstream)?;
        let app = config
            .app
            .as_deref()
            .map(|url| grip::App::new(url, config.grip_key.as_deref()))
            .transpose()
            .map_err(SidecarError::Upstream)?;
        Ok(Sidecar {
            shared: Arc::new(Shared {
                config,
                spool,
                upstream: client,
                // Optimistic: the first forward finds out, and fails fast when nothing listens.
                hub_up: AtomicBool::new(true),
                counters: Counters::default(),
                shutdown,
                hub_back: tokio::sync::Notify::new(),
                feeds: share::Feeds::default(),
                app,
            }),
        })
    }

    /// The id that prefixes the idempotency keys the sidecar makes.
    pub fn id(&self) -> &str {
        &self.shared.spool.id
    }

    /// Serves on `listener` until the shutdown token fires, forwarding the spool meanwhile.
    pub async fn run(self, listener: TcpListener) -> Result<(), SidecarError> {
        let sc = self.shared;
        let forwarders: Vec<_> = (0..forward::LANES)
            .map(|index| {
                let lane = spool::Lane {
                    index,
                    count: forward::LANES,
                };
                tokio::spawn(forward::run(sc.clone(), lane))
            })
            .collect();
        tokio::spawn(probe(sc.clone()));
        let shutdown = sc.shutdown.clone();
        let app = router(sc);
        // Small frames (a publish's answer, one stream event) go out at once: without
        // TCP_NODELAY, Nagle's algorithm holds each behind the client's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| SidecarError::Listen(e.to_string()));
        for forwarder in forwarders {
            let _ = forwarder.await;
        }
        served
    }
}

fn router(sc: Arc<Shared>) -> Router {
    let max_message = sc.config.max_message_bytes;
    let v1 = Router::new()
        .route(
            "/v1/topics/{topic}/messages",
            post(publish::publish_one)
                .layer(DefaultBodyLimit::max(max_message))
                .fallback(proxy::forward),
        )
        .route(
            "/v1/publish",
            post(publish::publish_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/sidecar", get(status))
        // Hold mode's EPCP publish (docs/API.md §9), spooled like any publish.
        .route(
            "/publish/",
            post(grip::epcp::publish).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/ws", axum::routing::any(ws::upgrade))
        .fallback(proxy::forward)
        .layer(middleware::from_fn_with_state(sc.clone(), local_auth));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        // Ready as soon as the spool is open: publishes are served with the hub down.
        .route(
            "/readyz",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        )
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(sc)
}

/// With `sidecar.local_token` set, every route but the three open ones needs it, as a Bearer
/// credential or `access_token` in the query.
async fn local_auth(State(sc): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &sc.config.local_token else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="));
    let given = bearer.or(query).unwrap_or_default();
    // Compared in constant time: the answer must not tell how much of a guess was right.
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        next.run(request).await
    } else {
        Problem::unauthorized("this sidecar needs its local token").into_response()
    }
}

/// `GET /v1/sidecar`: the hub's state, the spool and the upstream connection.
async fn status(State(sc): State<Arc<Shared>>) -> Response {
    let s = sc.spool.stats();
    let hub = if sc.hub_up.load(Ordering::Relaxed) {
        "connected"
    } else {
        "unreachable"
    };
    let oldest = s.oldest.map(crate::model::format_rfc3339_millis);
    axum::Json(json!({
        "id": &*sc.spool.id,
        "hub": hub,
        "spool": {"messages": s.messages, "bytes": s.bytes, "oldest": oldest},
        "upstream": {
            "connections": if sc.hub_up.load(Ordering::Relaxed) { sc.upstream.connections() as u64 } else { 0 },
            "streams": sc.counters.streams.load(Ordering::Relaxed) + sc.feeds.open() as u64,
            "subscriptions": sc.feeds.open(),
        },
        "local_streams": sc.counters.local_streams.load(Ordering::Relaxed),
        "forwarded": sc.counters.forwarded.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// `GET /metrics`: the sidecar's own families (docs/API.md §6), in Prometheus text.
async fn metrics(State(sc): State<Arc<Shared>>) -> Response {
    let s = sc.spool.stats();
    let c = &sc.counters;
    let age = s
        .oldest
        .map(|t| (crate::model::now_millis() - t).max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let text = format!(
        "# TYPE plexus_sidecar_hub_up gauge\nplexus_sidecar_hub_up {}\n\
         # TYPE plexus_sidecar_spool_messages gauge\nplexus_sidecar_spool_messages {}\n\
         # TYPE plexus_sidecar_spool_bytes gauge\nplexus_sidecar_spool_bytes {}\n\
         # TYPE plexus_sidecar_spool_oldest_seconds gauge\nplexus_sidecar_spool_oldest_seconds {age:.3}\n\
         # TYPE plexus_sidecar_forwarded_total counter\nplexus_sidecar_forwarded_total {}\n\
         # TYPE plexus_sidecar_forward_retries_total counter\nplexus_sidecar_forward_retries_total {}\n\
         # TYPE plexus_sidecar_refused_total counter\nplexus_sidecar_refused_total {}\n\
         # TYPE plexus_sidecar_spool_full_total counter\nplexus_sidecar_spool_full_total {}\n\
         # TYPE plexus_sidecar_stale_keys_total counter\nplexus_sidecar_stale_keys_total {}\n\
         # TYPE plexus_sidecar_upstream_streams gauge\nplexus_sidecar_upstream_streams {}\n\
         # TYPE plexus_sidecar_upstream_subscriptions gauge\nplexus_sidecar_upstream_subscriptions {}\n\
         # TYPE plexus_sidecar_local_streams gauge\nplexus_sidecar_local_streams {}\n\
         # TYPE plexus_sidecar_upstream_connections gauge\nplexus_sidecar_upstream_connections {}\n",
        u8::from(sc.hub_up.load(Ordering::Relaxed)),
        s.messages,
        s.bytes,
        load(&c.forwarded),
        load(&c.retries),
        load(&c.refused),
        load(&c.spool_full),
        load(&c.stale_keys),
        load(&c.streams) + sc.feeds.open() as u64,
        sc.feeds.open(),
        load(&c.local_streams),
        sc.upstream.connections(),
    );
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Asks the hub's `/healthz` every second, so the status (and whether a publish waits for the
/// hub or is answered `202` at once) follows the hub while nothing is forwarded.
async fn probe(sc: Arc<Shared>) {
    loop {
        let lease = sc.upstream.lease();
        let asked = lease.forward(
            "GET",
            "/healthz",
            &[],
            bytes::Bytes::new(),
            Some(sc.config.forward_wait),
        );
        let up = matches!(asked.await, Ok(a) if a.status == 200);
        let was = sc.hub_up.swap(up, Ordering::Relaxed);
        if was != up {
            tracing::info!(hub = %sc.config.hub, up, "the hub's state changed");
            if up {
                // Wake the forwarders out of their backoff: the spool can drain now. Every
                // lane paused wakes; the stored permit wakes one that was about to pause.
                sc.hub_back.notify_waiters();
                sc.hub_back.notify_one();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = sc.shutdown.cancelled() => return,
        }
    }
}
