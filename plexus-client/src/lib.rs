//! A small async client of the Plexus hub: publish, read (short and long polls) and
//! subscribe (SSE, NDJSON, WebSocket), over HTTP/1.1 or HTTP/2.
//!
//! ```no_run
//! # async fn demo() -> Result<(), plexus_client::Error> {
//! let client = plexus_client::Client::new("http://127.0.0.1:7539")?;
//! let published = client.publish("orders", "hello", &Default::default()).await?;
//! let page = client.read("orders", &plexus_client::ReadOptions::default()).await?;
//! assert_eq!(page.messages[0].seq, published.seq);
//! # Ok(()) }
//! ```
//!
//! Many subscriptions on one HTTP/2 connection, each resuming by its cursor after a
//! disconnect or a hub restart, with gaps as values:
//!
//! ```no_run
//! # async fn demo() -> Result<(), plexus_client::Error> {
//! use plexus_client::{Client, Item, Transport};
//! let client = Client::builder("http://127.0.0.1:7539").http2_prior_knowledge().build()?;
//! let mut orders = client.follow("orders", Some("all"), Transport::Sse);
//! let mut alerts = client.follow("alerts", None, Transport::Sse);
//! loop {
//!     tokio::select! {
//!         item = orders.next() => match item? {
//!             Item::Message(m) => println!("order {}: {:?}", m.seq, m.data),
//!             Item::Gap(g) => println!("orders {:?}..{:?} are gone: {}", g.from, g.to, g.reason),
//!         },
//!         item = alerts.next() => println!("alert {:?}", item?),
//!     }
//! }
//! # }
//! ```

mod consumers;
mod counted;
mod follow;
mod forward;
mod jobs;
mod raw;
mod subscribe;
mod webhooks;

pub use counted::{Answer, Counted, Counter, H2, H2Body, Http1};
pub use follow::Follow;
pub use forward::Forwarded;
pub use jobs::Job;
pub use raw::{ByteStream, RawPoller, RawSocket};
pub use subscribe::{Item, Subscription, Transport};

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What went wrong talking to the hub.
#[derive(Debug)]
pub enum Error {
    /// The request could not be made or its answer not read.
    Transport(reqwest::Error),
    /// The hub answered with a problem (RFC 9457).
    Problem(Problem),
    /// The base URL given to [`Client::new`] is not usable.
    BadUrl(String),
    /// The WebSocket could not be opened or broke.
    WebSocket(String),
    /// The hub sent something this client cannot read.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(e) => write!(f, "cannot reach the hub: {e}"),
            Error::Problem(p) => write!(f, "{} ({}): {}", p.title, p.status, p.detail),
            Error::BadUrl(u) => write!(f, "{u:?} is not an http:// or https:// URL"),
            Error::WebSocket(e) => write!(f, "WebSocket: {e}"),
            Error::Protocol(e) => write!(f, "unexpected data from the hub: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Transport(e)
    }
}

/// A `problem+json` answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
}

/// A topic as `GET /v1/topics/{topic}` shows it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct TopicInfo {
    pub topic: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    /// Payload bytes retained.
    pub bytes: u64,
    /// Subscriptions and long polls open on this node now.
    pub subscribers: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_publish: Option<String>,
}

/// The acknowledgement of a publish.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub seq: u64,
    pub time: String,
    /// In a batch's results: the item was answered from its idempotency key (it replays the
    /// first result and stored nothing). A single publish says it in a header instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// A message as the hub shows it (the JSON envelope).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Envelope {
    pub topic: String,
    pub seq: u64,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Read through a durable consumer: 1 on the first delivery, +1 on each redelivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<u32>,
}

/// Messages a reader will never get: announced, never skipped silently.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Gap {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    pub reason: String,
}

/// One answer of a poll.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<Envelope>,
    /// The cursor to pass as `since` to continue exactly after this page.
    pub next: String,
    #[serde(default)]
    pub gaps: Vec<Gap>,
}

/// One message of a batch publish.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BatchItem {
    pub topic: String,
    /// The payload as text (use `data_base64` for bytes that are not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl BatchItem {
    /// A text message for `topic`.
    pub fn text(topic: &str, data: &str) -> Self {
        BatchItem {
            topic: topic.to_owned(),
            data: Some(data.to_owned()),
            data_base64: None,
            event: None,
            idempotency_key: None,
        }
    }
}

#[derive(Deserialize)]
struct BatchResults {
    results: Vec<Published>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub event: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// A cursor, `all`, `now`, an RFC 3339 time or a duration such as `10m`.
    pub since: Option<String>,
    pub limit: Option<u32>,
    /// Hold the request until a message comes or this long passes (long poll).
    pub wait: Option<Duration>,
}

/// A handle to one hub. Cheap to clone; reuses connections.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// TLS for `wss://` (HTTP/1.1 only: WebSockets over HTTP/2 need RFC 8441 on the client).
    ws_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The bearer token, for the connections this client opens itself.
    bearer: Option<String>,
}

/// The system's roots plus the ones the application added.
fn ws_tls_config(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra {
        roots
            .add(cert)
            .map_err(|e| Error::Protocol(format!("unusable root certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Protocol(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    http2_prior_knowledge: bool,
    pool_max_idle_per_host: Option<usize>,
    roots: Vec<reqwest::Certificate>,
    /// The same roots for the WebSocket's own TLS connection.
    ws_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Sent as `Authorization: Bearer …` on every request.
    bearer: Option<String>,
    connect_timeout: Option<Duration>,
}

impl ClientBuilder {
    /// Speak HTTP/2 from the first byte on an `http://` URL (h2c): every request and
    /// subscription of this client shares one connection. Over `https://`, HTTP/2 is chosen
    /// by ALPN without this.
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.http2_prior_knowledge = true;
        self
    }

    /// Keeps at most `n` idle connections to the hub for reuse (reqwest's default: no limit).
    /// A load generator that gives each simulated client a `Client` of its own sets 1.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// Sends `Authorization: Bearer TOKEN` with every request (a hub in `auth.mode = required`).
    pub fn bearer_token(mut self, token: &str) -> Self {
        self.bearer = Some(token.to_owned());
        self
    }

    /// Gives up connecting to the hub after `d` (reqwest's default: no limit).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Trusts a certificate (PEM), e.g. the hub's `--tls-self-signed` one.
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        self.roots.push(reqwest::Certificate::from_pem(pem)?);
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            self.ws_roots
                .push(cert.map_err(|e| Error::Protocol(format!("bad certificate PEM: {e}")))?);
        }
        Ok(self)
    }

    pub fn build(self) -> Result<Client, Error> {
        if !(self.base.starts_with("http://") || self.base.starts_with("https://")) {
            return Err(Error::BadUrl(self.base));
        }
        // reqwest is built without a TLS provider of its own: use ring, as the hub does.
        // (Already installed by the application: fine.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder();
        if self.http2_prior_knowledge {
            http = http.http2_prior_knowledge();
        }
        if let Some(n) = self.pool_max_idle_per_host {
            http = http.pool_max_idle_per_host(n);
        }
        for root in self.roots {
            http = http.add_root_certificate(root);
        }
        if let Some(token) = &self.bearer {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Protocol("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            http = http.default_headers(headers);
        }
        if let Some(d) = self.connect_timeout {
            http = http.connect_timeout(d);
        }
        let ws_tls = if self.base.starts_with("https://") {
            Some(ws_tls_config(self.ws_roots)?)
        } else {
            None
        };
        Ok(Client {
            http: http.build()?,
            base: self.base.trim_end_matches('/').to_owned(),
            ws_tls,
            bearer: self.bearer,
        })
    }
}

impl Client {
    pub fn new(base: &str) -> Result<Self, Error> {
        Self::builder(base).build()
    }

    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_owned(),
            http2_prior_knowledge: false,
            pool_max_idle_per_host: None,
            roots: Vec::new(),
            ws_roots: Vec::new(),
            bearer: None,
            connect_timeout: None,
        }
    }

    /// The hub's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Publishes one message; returns once the hub has made it durable.
    pub async fn publish(
        &self,
        topic: &str,
        data: impl Into<Bytes>,
        options: &PublishOptions,
    ) -> Result<Published, Error> {
        let mut request = self
            .http
            .post(format!("{}/v1/topics/{topic}/messages", self.base))
            .body(data.into());
        if let Some(event) = &options.event {
            request = request.header("plexus-event", event);
        }
        if let Some(key) = &options.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        decode(request.send().await?).await
    }

    /// Publishes 1–1,000 messages all or nothing, in one commit; results are in item order.
    pub async fn publish_batch(&self, items: &[BatchItem]) -> Result<Vec<Published>, Error> {
        let response = self
            .http
            .post(format!("{}/v1/publish", self.base))
            .json(items)
            .send()
            .await?;
        decode::<BatchResults>(response).await.map(|b| b.results)
    }

    /// The topic's retained range, size and open subscriptions (a `404` problem when it was
    /// never published to).
    pub async fn topic(&self, topic: &str) -> Result<TopicInfo, Error> {
        let response = self
            .http
            .get(format!("{}/v1/topics/{topic}", self.base))
            .send()
            .await?;
        decode(response).await
    }

    /// Reads `topics` (one, or several comma-separated): a short poll, or a long poll with `wait`.
    pub async fn read(&self, topics: &str, options: &ReadOptions) -> Result<Page, Error> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(since) = &options.since {
            query.push(("since", since.clone()));
        }
        if let Some(limit) = options.limit {
            query.push(("limit", limit.to_string()));
        }
        let mut request = self
            .http
            .get(format!("{}/v1/topics/{topics}/messages", self.base));
        if let Some(wait) = options.wait {
            query.push(("wait", format!("{:.3}", wait.as_secs_f64())));
            // The hub holds the request up to `wait`: leave room for the answer.
            request = request.timeout(wait + Duration::from_secs(30));
        }
        decode(request.query(&query).send().await?).await
    }
}

async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, Error> {
    if response.status().is_success() {
        return Ok(response.json().await?);
    }
    Err(problem(response).await)
}

/// The problem of an unsuccessful answer.
async fn problem(response: reqwest::Response) -> Error {
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Error::Transport(e),
    };
    let problem = serde_json::from_slice(&body).unwrap_or_else(|_| Problem {
        kind: String::new(),
        title: status.canonical_reason().unwrap_or("error").to_owned(),
        status: status.as_u16(),
        detail: String::from_utf8_lossy(&body).chars().take(500).collect(),
    });
    Error::Problem(problem)
}
