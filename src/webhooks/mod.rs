//! Webhooks: the hub POSTs each message of some topics to a URL, signed (Standard Webhooks),
//! strictly in order, retried, never lost. A webhook is a durable consumer (`auto`, named
//! `_webhook-{id}`) whose reader is the hub's own HTTP sender (`sender.rs`): its position is
//! the consumer's, advanced only once a message was answered with a 2xx or dead-lettered,
//! so a restart redelivers what was in flight and a replay is a seek. The webhook's own
//! settings (URL, secrets, state) are one record in the consumer store under
//! `webhook:{id}` (a name no consumer can have), written by compare-and-set.
//!
//! docs/API.md ("Webhooks") is the contract.

pub mod guard;
mod sender;
pub mod sign;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::consumers::{ConsumerError, ConsumerName, Consumers, Settings, SettingsRequest};
use crate::hub::{Hub, HubError};
use crate::model::{Cidr, Millis, NewMessage, Since, StoreError, Topic, now_millis};
use crate::store::ConsumerStore;

/// How long an old secret keeps signing after a rotation.
const ROTATION_GRACE_MS: Millis = 24 * 3600 * 1000;
/// How long a node's hold on a webhook lasts on a shared store without renewal.
pub const LEASE: Duration = Duration::from_secs(10);
/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Highest `rate` (deliveries per second) a webhook may set.
const MAX_RATE: f64 = 10_000.0;

/// `webhooks.*` of the configuration.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// The delays before each retry; after the last, the message is dead-lettered.
    pub retry: Vec<Duration>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Failing this long without a success disables a webhook.
    pub disable_after: Duration,
    /// Refused networks a webhook may reach all the same.
    pub allow_networks: Vec<Cidr>,
    /// A PEM file of certificates trusted for `https` receivers beside the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        let s = Duration::from_secs;
        WebhookOptions {
            retry: vec![
                s(5),
                s(30),
                s(120),
                s(600),
                s(1800),
                s(3600),
                s(7200),
                s(14400),
                s(28800),
                s(28800),
            ],
            timeout: s(15),
            connect_timeout: s(5),
            disable_after: s(3 * 24 * 3600),
            allow_networks: Vec::new(),
            ca_file: None,
        }
    }
}

#[derive(Debug)]
pub enum WebhookError {
    Consumer(ConsumerError),
    /// A bad URL, scheme, secret, since or rate.
    Bad(String),
    /// A URL whose host is a refused IP literal.
    AddressNotAllowed(String),
    Unknown(String),
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::Consumer(e) => e.fmt(f),
            WebhookError::Bad(m) | WebhookError::AddressNotAllowed(m) => f.write_str(m),
            WebhookError::Unknown(id) => write!(f, "no webhook {id}"),
        }
    }
}

impl std::error::Error for WebhookError {}

impl From<ConsumerError> for WebhookError {
    fn from(e: ConsumerError) -> Self {
        WebhookError::Consumer(e)
    }
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        WebhookError::Consumer(e.into())
    }
}

impl From<HubError> for WebhookError {
    fn from(e: HubError) -> Self {
        WebhookError::Consumer(e.into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Paused,
    Disabled,
}

/// A webhook as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    pub since: String,
    pub secret: String,
    /// The secret before the last rotation, signing until `old_until`.
    pub old_secret: Option<String>,
    pub old_until: Option<Millis>,
    pub raw: bool,
    pub rate: f64,
    pub state: State,
    pub disabled_reason: Option<String>,
    pub created: Millis,
}

/// A webhook as shown (no secret).
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    pub since: String,
    pub raw: bool,
    pub rate: f64,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    pub created: String,
    pub consumer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<serde_json::Value>,
}

impl Record {
    fn view(&self) -> View {
        View {
            id: self.id.clone(),
            url: self.url.clone(),
            topics: self.topics.clone(),
            since: self.since.clone(),
            raw: self.raw,
            rate: self.rate,
            state: self.state,
            disabled_reason: self.disabled_reason.clone(),
            created: crate::model::format_rfc3339_millis(self.created),
            consumer: consumer_name(&self.id)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            secret: None,
            lag: None,
            last_attempt: None,
        }
    }

    /// The keys that sign now: the current secret, and the old one during its grace.
    fn signing_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = sign::key_of(&self.secret).into_iter().collect();
        if let (Some(old), Some(until)) = (&self.old_secret, self.old_until)
            && until > now_millis()
            && let Ok(k) = sign::key_of(old)
        {
            keys.push(k);
        }
        keys
    }
}

/// What a creator asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub url: String,
    pub topics: Vec<Topic>,
    pub since: Option<String>,
    pub secret: Option<String>,
    pub raw: bool,
    pub rate: f64,
}

fn consumer_name(id: &str) -> Result<ConsumerName, ConsumerError> {
    format!("_webhook-{id}").parse()
}

fn record_key(id: &str) -> String {
    format!("webhook:{id}")
}

fn lease_key(id: &str) -> String {
    format!("webhook-lease:{id}")
}

/// A webhook id: 24 lowercase hex digits, so `_webhooks.{id}.dead` is a topic name.
fn check_id(id: &str) -> Result<(), WebhookError> {
    if id.len() == 24
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(WebhookError::Unknown(id.to_string()))
    }
}

/// The topic of one of a webhook's own streams (`dead`, `events`, `attempts`).
pub fn own_topic(id: &str, kind: &str) -> Option<Topic> {
    format!("_webhooks.{id}.{kind}").parse().ok()
}

/// Checks a URL: http or https, a host, no refused IP literal.
fn check_url(url: &str, policy: &guard::Policy) -> Result<reqwest::Url, WebhookError> {
    if url.len() > MAX_URL {
        return Err(WebhookError::Bad(format!(
            "url: longer than {MAX_URL} characters"
        )));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::Bad(format!("url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::Bad(format!(
            "url: scheme {:?}; http or https",
            parsed.scheme()
        )));
    }
    let Some(host) = parsed.host_str() else {
        return Err(WebhookError::Bad("url: no host".into()));
    };
    if let Some(ip) = literal_ip(host)
        && !policy.permits(ip)
    {
        return Err(WebhookError::AddressNotAllowed(format!(
            "url: {ip} is not an address webhooks may reach (webhooks.allow_networks)"
        )));
    }
    Ok(parsed)
}

/// The address of a URL host that is an IP literal (`[::1]` as the URL writes it).
/// TLS for `https` receivers: rustls with the ring provider (the listener's; no second crypto
/// library), the system's roots plus those of `webhooks.ca_file`, ALPN `h2` then `http/1.1`.
/// The name checked against the certificate, and sent as SNI, is the URL's host; the address
/// connected to is still the one the guard vetted.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system root rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let key = "webhooks.ca_file";
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|e| format!("{key}: cannot read {shown}: {e}"))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{key}: bad PEM in {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{key}: unusable certificate in {shown}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{key}: no certificate in {shown}"));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("the webhook client's TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn literal_ip(host: &str) -> Option<std::net::IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Per webhook on this node: the sender's wake-up and a generation that a replay, pause or
/// delete bumps, so a sender drops the message in hand without advancing past it.
#[derive(Default)]
struct Handle {
    wake: Notify,
    generation: AtomicU64,
    /// The last attempt this node made, as logged.
    last_attempt: Mutex<Option<serde_json::Value>>,
}

impl Handle {
    fn poke(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

pub struct Webhooks {
    hub: Arc<Hub>,
    consumers: Arc<Consumers>,
    store: Arc<dyn ConsumerStore>,
    options: WebhookOptions,
    policy: guard::Policy,
    client: reqwest::Client,
    /// This node, as named in leases.
    node: String,
    /// The senders running on this node. A std mutex: held to look up or insert only.
    running: Mutex<HashMap<String, Arc<Handle>>>,
    max_topics: usize,
}

impl Webhooks {
    /// Builds the webhooks and starts a sender for every stored one (inside a runtime).
    pub fn new(
        hub: Arc<Hub>,
        consumers: Arc<Consumers>,
        store: Arc<dyn ConsumerStore>,
        options: WebhookOptions,
        max_topics: usize,
    ) -> Result<Arc<Self>, String> {
        let policy = guard::Policy {
            allow: options.allow_networks.clone().into(),
        };
        // reqwest is built without a crypto provider of its own: the process's, ring, which
        // `main` installs; an app built in-process (tests, the lab) may not have run it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .dns_resolver(Arc::new(guard::GuardedResolver {
                policy: policy.clone(),
            }))
            .no_proxy()
            .tls_backend_preconfigured(tls_config(options.ca_file.as_deref())?)
            .build()
            .map_err(|e| format!("the webhook client: {e}"))?;
        let hooks = Arc::new(Webhooks {
            hub,
            consumers,
            store,
            options,
            policy,
            client,
            node: sign::random_hex(8)?,
            running: Mutex::new(HashMap::new()),
            max_topics,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let h = hooks.clone();
            tokio::spawn(async move { h.start_all().await });
        }
        Ok(hooks)
    }

    async fn start_all(self: Arc<Self>) {
        let token = self.hub.shutdown_token().clone();
        // The store may be briefly unreachable at start: try until it answers. On a store
        // several nodes share, look again every LEASE: a webhook created through another
        // node gets a sender here too, which takes over when that node dies.
        loop {
            let mut again = Duration::from_secs(1);
            match self.store.consumers().await {
                Ok(all) => {
                    for stored in all {
                        if let Some(id) = stored.name.strip_prefix("webhook:") {
                            self.ensure_sender(id);
                        }
                    }
                    if !self.hub.shared_store() {
                        return;
                    }
                    again = LEASE;
                }
                Err(e) => tracing::warn!("webhooks: listing failed: {e}"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(again) => {}
            }
        }
    }

    fn handle(&self, id: &str) -> Option<Arc<Handle>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(id).cloned()
    }

    /// Starts the sender of `id` unless it runs.
    fn ensure_sender(self: &Arc<Self>, id: &str) {
        let handle = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(id) {
                return;
            }
            let h = Arc::new(Handle::default());
            running.insert(id.to_string(), h.clone());
            h
        };
        let hooks = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            sender::run(hooks.clone(), id.clone(), handle).await;
            let mut running = hooks.running.lock().unwrap_or_else(|p| p.into_inner());
            running.remove(&id);
        });
    }

    async fn load(&self, id: &str) -> Result<Option<(u64, Record)>, WebhookError> {
        let Some(stored) = self.store.consumer(&record_key(id)).await? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&stored.body).map_err(|e| {
            StoreError::Unavailable(format!("webhook {id} is stored unreadable: {e}"))
        })?;
        Ok(Some((stored.version, record)))
    }

    async fn load_known(&self, id: &str) -> Result<(u64, Record), WebhookError> {
        check_id(id)?;
        self.load(id)
            .await?
            .ok_or_else(|| WebhookError::Unknown(id.to_string()))
    }

    async fn write(&self, record: &Record, version: u64) -> Result<bool, WebhookError> {
        let body = serde_json::to_vec(record)
            .map_err(|e| StoreError::Unavailable(format!("webhook encoding: {e}")))?;
        Ok(self
            .store
            .put_consumer(&record_key(&record.id), version, body, Vec::new())
            .await?
            .is_some())
    }

    /// Loads, changes and writes back a record until no one raced it.
    async fn update(&self, id: &str, change: impl Fn(&mut Record)) -> Result<Record, WebhookError> {
        for _ in 0..64 {
            let (version, mut record) = self.load_known(id).await?;
            change(&mut record);
            if self.write(&record, version).await? {
                return Ok(record);
            }
        }
        Err(StoreError::Unavailable("too many concurrent writers of one webhook".into()).into())
    }

    /// The topics of a webhook (for the caller's rights), or `Unknown`.
    pub async fn topics(&self, id: &str) -> Result<Vec<Topic>, WebhookError> {
        let (_, record) = self.load_known(id).await?;
        Ok(record
            .topics
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect())
    }

    /// Creates a webhook; the view carries its secret (shown only here and on rotation).
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<View, WebhookError> {
        check_url(&req.url, &self.policy)?;
        let secret = match req.secret {
            Some(s) => {
                sign::key_of(&s).map_err(WebhookError::Bad)?;
                s
            }
            None => sign::new_secret().map_err(StoreError::Unavailable)?,
        };
        if !(req.rate.is_finite() && (0.0..=MAX_RATE).contains(&req.rate)) {
            return Err(WebhookError::Bad(format!(
                "rate: from 0 (no cap) to {MAX_RATE} deliveries per second"
            )));
        }
        let since = req.since.unwrap_or_else(|| "now".into());
        let settings = Settings::from_request(
            SettingsRequest {
                topics: req.topics.iter().map(|t| t.as_str().to_string()).collect(),
                start: Some(since.clone()),
                ack: Some("auto".into()),
                ..SettingsRequest::default()
            },
            self.consumers.options(),
            self.max_topics,
        )
        .map_err(|e| WebhookError::Bad(e.to_string().replace("start:", "since:")))?;
        let id = sign::random_hex(12).map_err(StoreError::Unavailable)?;
        let name = consumer_name(&id)?;
        let record = Record {
            id: id.clone(),
            url: req.url,
            topics: settings.topics.clone(),
            since,
            secret: secret.clone(),
            old_secret: None,
            old_until: None,
            raw: req.raw,
            rate: req.rate,
            state: State::Active,
            disabled_reason: None,
            created: now_millis(),
        };
        // The consumer first: a record without its consumer would have nothing to read.
        self.consumers.create(&name, settings).await?;
        if !self.write(&record, 0).await? {
            return Err(StoreError::Unavailable("webhook id collision; retry".into()).into());
        }
        self.ensure_sender(&id);
        let mut view = record.view();
        view.secret = Some(secret);
        Ok(view)
    }

    /// A webhook with its lag and the last attempt this node made.
    pub async fn get(&self, id: &str) -> Result<View, WebhookError> {
        let (_, record) = self.load_known(id).await?;
        let mut view = record.view();
        let info = self.consumers.info(&consumer_name(id)?).await?;
        view.lag = serde_json::to_value(&info.topics_state).ok();
        view.last_attempt = self.handle(id).and_then(|h| {
            h.last_attempt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        Ok(view)
    }

    pub async fn list(&self) -> Result<Vec<View>, WebhookError> {
        let mut out = Vec::new();
        for stored in self.store.consumers().await? {
            if stored.name.starts_with("webhook:")
                && let Ok(record) = serde_json::from_slice::<Record>(&stored.body)
            {
                out.push(record.view());
            }
        }
        Ok(out)
    }

    pub async fn pause(self: &Arc<Self>, id: &str) -> Result<View, WebhookError> {
        let record = self
            .update(id, |r| {
                if r.state == State::Active {
                    r.state = State::Paused;
                }
            })
            .await?;
        self.poke(id);
        Ok(record.view())
    }

    /// Resumes a paused or disabled webhook; its failure clock starts again.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<View, WebhookError> {
        let record = self
            .update(id, |r| {
                r.state = State::Active;
                r.disabled_reason = None;
            })
            .await?;
        self.ensure_sender(id);
        self.poke(id);
        Ok(record.view())
    }

    /// Delivers again from `since`, with the same `webhook-id`s.
    pub async fn replay(self: &Arc<Self>, id: &str, since: &Since) -> Result<View, WebhookError> {
        let (_, record) = self.load_known(id).await?;
        // The generation moves before the seek too: a read the sender began before it would
        // otherwise come back with a message from the new position under the old generation,
        // be sent, and not be advanced past once the poke below moved the generation (the
        // message then went out twice).
        if let Some(h) = self.handle(id) {
            h.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.consumers.seek(&consumer_name(id)?, since).await?;
        self.poke(id);
        Ok(record.view())
    }

    /// A new secret; the old one keeps signing for 24 h.
    pub async fn rotate(self: &Arc<Self>, id: &str) -> Result<View, WebhookError> {
        let fresh = sign::new_secret().map_err(StoreError::Unavailable)?;
        let record = self
            .update(id, |r| {
                r.old_secret = Some(std::mem::replace(&mut r.secret, fresh.clone()));
                r.old_until = Some(now_millis() + ROTATION_GRACE_MS);
            })
            .await?;
        let mut view = record.view();
        view.secret = Some(fresh);
        Ok(view)
    }

    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<(), WebhookError> {
        self.load_known(id).await?;
        if !self.store.delete_consumer(&record_key(id)).await? {
            return Err(WebhookError::Unknown(id.to_string()));
        }
        match self.consumers.delete(&consumer_name(id)?).await {
            Ok(()) | Err(ConsumerError::Unknown(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = self.store.delete_consumer(&lease_key(id)).await;
        self.poke(id);
        Ok(())
    }

    fn poke(&self, id: &str) {
        if let Some(h) = self.handle(id) {
            h.poke();
        }
    }

    /// Publishes one JSON message on a webhook's own topic; a failure is logged only.
    async fn publish_own(&self, id: &str, kind: &str, value: serde_json::Value) {
        let Some(topic) = own_topic(id, kind) else {
            return;
        };
        let msg = NewMessage {
            topic,
            event: None,
            data: serde_json::to_vec(&value).unwrap_or_default().into(),
            idempotency_key: None,
        };
        if let Err(e) = self.hub.publish_internal(vec![msg]).await {
            tracing::warn!("webhook {id}: publishing on _webhooks.{id}.{kind}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let missing = dir.path().join("missing.pem");
        let e = tls_config(Some(&missing)).err().unwrap_or_default();
        assert!(
            e.starts_with("webhooks.ca_file: cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap_or_else(|e| panic!("write: {e}"));
        let e = tls_config(Some(&empty)).err().unwrap_or_default();
        assert!(e.starts_with("webhooks.ca_file: no certificate"), "{e}");
    }

    #[test]
    fn ca_file_certificates_are_trusted_and_alpn_offers_h2() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("rcgen: {e}"));
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, made.cert.pem()).unwrap_or_else(|e| panic!("write: {e}"));
        let config = tls_config(Some(&file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(tls_config(None).is_ok());
    }
}
