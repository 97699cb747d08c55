//! Configuration: the embedded default file < the `--config` file < `PLEXUS_*` environment
//! variables < flags, validated into a [`Config`]. Every mistake names its key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::model::parse_duration;
use crate::store::{Durability, Retention};
use crate::tls::TlsSource;

/// The default configuration, every key with a comment; also what `--print-config` prints.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The flags of `plexus serve`. Each has a `PLEXUS_*` environment variable; clap lets a flag
/// beat its variable, and both beat the file.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// A TOML configuration file (see --print-config for every key)
    #[arg(long, env = "PLEXUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7539]
    #[arg(long, env = "PLEXUS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the sqlite database [default: ./plexus-data]
    #[arg(long, env = "PLEXUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage engine: sqlite or memory [default: sqlite]
    #[arg(long, env = "PLEXUS_STORAGE", value_name = "ENGINE")]
    pub storage: Option<String>,
    /// process (survives a hub crash), machine (fsync: survives a machine crash) or replicated (redis: held by replicas) [default: process]
    #[arg(long, env = "PLEXUS_DURABILITY", value_name = "LEVEL")]
    pub durability: Option<String>,
    /// Messages kept per topic [default: 100000]
    #[arg(long, env = "PLEXUS_RETENTION_MESSAGES", value_name = "N")]
    pub retention_messages: Option<u64>,
    /// Age after which messages expire, e.g. 7d, 12h [default: 7d]
    #[arg(long, env = "PLEXUS_RETENTION_AGE", value_name = "DUR")]
    pub retention_age: Option<String>,
    /// Largest message payload in bytes [default: 1048576]
    #[arg(long, env = "PLEXUS_MAX_MESSAGE_BYTES", value_name = "N")]
    pub max_message_bytes: Option<u64>,
    /// Longest long-poll wait [default: 60s]
    #[arg(long, env = "PLEXUS_MAX_WAIT", value_name = "DUR")]
    pub max_wait: Option<String>,
    /// Keepalive interval of idle streams [default: 15s]
    #[arg(long, env = "PLEXUS_KEEPALIVE", value_name = "DUR")]
    pub keepalive: Option<String>,
    /// Cut a client that has not sent its request head by then [default: 10s]
    #[arg(long, env = "PLEXUS_HEADER_TIMEOUT", value_name = "DUR")]
    pub header_timeout: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "PLEXUS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Grace period of a shutdown [default: 10s]
    #[arg(long, env = "PLEXUS_SHUTDOWN_GRACE", value_name = "DUR")]
    pub shutdown_grace: Option<String>,
    /// Time to serve with /readyz at 503 before draining on a signal [default: 0s]
    #[arg(long, env = "PLEXUS_DRAIN_DELAY", value_name = "DUR")]
    pub drain_delay: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key the port speaks TLS only
    #[arg(long, env = "PLEXUS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "PLEXUS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a development certificate made at start (fingerprint printed)
    #[arg(long, env = "PLEXUS_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Attempts before a failing job is dead [default: 5]
    #[arg(long, env = "PLEXUS_JOBS_MAX_ATTEMPTS", value_name = "N")]
    pub jobs_max_attempts: Option<u32>,
    /// First retry delay of a failed job, doubling each attempt [default: 1s]
    #[arg(long, env = "PLEXUS_JOBS_BACKOFF", value_name = "DUR")]
    pub jobs_backoff: Option<String>,
    /// Lease of a claim that names none [default: 30s]
    #[arg(long, env = "PLEXUS_JOBS_DEFAULT_LEASE", value_name = "DUR")]
    pub jobs_default_lease: Option<String>,
    /// How long a finished job and its events are kept [default: 7d]
    #[arg(long, env = "PLEXUS_JOBS_RETENTION", value_name = "DUR")]
    pub jobs_retention: Option<String>,
    /// Lease of a message read through an explicit consumer that names none [default: 30s]
    #[arg(long, env = "PLEXUS_CONSUMERS_ACK_WAIT", value_name = "DUR")]
    pub consumers_ack_wait: Option<String>,
    /// Deliveries of a message before it is dead-lettered, for consumers that name none [default: 5]
    #[arg(long, env = "PLEXUS_CONSUMERS_MAX_DELIVER", value_name = "N")]
    pub consumers_max_deliver: Option<u32>,
    /// Unacknowledged messages an explicit consumer holds before it delivers no more [default: 1000]
    #[arg(long, env = "PLEXUS_CONSUMERS_MAX_ACK_PENDING", value_name = "N")]
    pub consumers_max_ack_pending: Option<u32>,
    /// Delays before each webhook retry, comma-separated [default: 5s,30s,2m,10m,30m,1h,2h,4h,8h,8h]
    #[arg(long, env = "PLEXUS_WEBHOOKS_RETRY", value_name = "DURS")]
    pub webhooks_retry: Option<String>,
    /// Timeout of one webhook request [default: 15s]
    #[arg(long, env = "PLEXUS_WEBHOOKS_TIMEOUT", value_name = "DUR")]
    pub webhooks_timeout: Option<String>,
    /// Timeout of a webhook connection [default: 5s]
    #[arg(long, env = "PLEXUS_WEBHOOKS_CONNECT_TIMEOUT", value_name = "DUR")]
    pub webhooks_connect_timeout: Option<String>,
    /// A webhook failing this long without a success is disabled [default: 3d]
    #[arg(long, env = "PLEXUS_WEBHOOKS_DISABLE_AFTER", value_name = "DUR")]
    pub webhooks_disable_after: Option<String>,
    /// Refused networks webhooks may reach all the same, comma-separated CIDRs [default: none]
    #[arg(long, env = "PLEXUS_WEBHOOKS_ALLOW_NETWORKS", value_name = "CIDRS")]
    pub webhooks_allow_networks: Option<String>,
    /// PEM certificates trusted for https webhooks beside the system's roots [default: none]
    #[arg(long, env = "PLEXUS_WEBHOOKS_CA_FILE", value_name = "PATH")]
    pub webhooks_ca_file: Option<PathBuf>,
    /// Enable the pattern lab's runs (POST /v1/lab/runs) [default: off]
    #[arg(long, env = "PLEXUS_LAB_ENABLED")]
    pub lab_enabled: bool,
    /// open (no credentials) or required (tokens or JWTs, see the config file) [default: open]
    #[arg(long, env = "PLEXUS_AUTH", value_name = "MODE")]
    pub auth: Option<String>,
    /// HS256 secret for JWTs
    #[arg(
        long,
        env = "PLEXUS_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// RS256/ES256 public key (PEM) for JWTs
    #[arg(long, env = "PLEXUS_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// The `aud` every JWT must name [default: none, not checked]
    #[arg(long, env = "PLEXUS_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// The `iss` every JWT must carry [default: none, not checked]
    #[arg(long, env = "PLEXUS_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Longest JWT lifetime, exp - iat (or exp - now), e.g. 1h [default: none, no limit]
    #[arg(long, env = "PLEXUS_JWT_MAX_LIFETIME", value_name = "DUR")]
    pub jwt_max_lifetime: Option<String>,
    /// Connections open at once [default: 50000]
    #[arg(long, env = "PLEXUS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Connections open at once per client address [default: 4096]
    #[arg(long, env = "PLEXUS_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    pub max_connections_per_client: Option<u64>,
    /// Requests per second per client address, 0 for no limit [default: 5000]
    #[arg(long, env = "PLEXUS_RATE", value_name = "N")]
    pub rate: Option<f64>,
    /// Requests a client may send at once above its rate [default: 10000]
    #[arg(long, env = "PLEXUS_BURST", value_name = "N")]
    pub burst: Option<f64>,
    /// Fail a request whose body makes no progress for this long [default: 30s]
    #[arg(long, env = "PLEXUS_BODY_TIMEOUT", value_name = "DUR")]
    pub body_timeout: Option<String>,
    /// Close a connection (stream, WebSocket) that takes no written byte for this long [default: 30s]
    #[arg(long, env = "PLEXUS_WRITE_TIMEOUT", value_name = "DUR")]
    pub write_timeout: Option<String>,
    /// Reverse proxies whose Forwarded / X-Forwarded-For name the client, comma-separated CIDRs [default: none]
    #[arg(long, env = "PLEXUS_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// durability = replicated: replicas of a shard that must hold a write [default: 1]
    #[arg(long, env = "PLEXUS_REDIS_MIN_REPLICAS", value_name = "N")]
    pub redis_min_replicas: Option<u32>,
    /// durability = replicated: longest wait for them before a 503 [default: 5s]
    #[arg(long, env = "PLEXUS_REDIS_REPLICA_TIMEOUT", value_name = "DUR")]
    pub redis_replica_timeout: Option<String>,
    /// Most topics the hub holds, reserved ones included; a write creating one more gets 507 [default: 1000000]
    #[arg(long, env = "PLEXUS_MAX_TOPICS_TOTAL", value_name = "N")]
    pub max_topics_total: Option<u64>,
    /// Print the default configuration file (every key, its default) and exit
    #[arg(long)]
    pub print_config: bool,
    /// Validate the configuration, print it, and exit
    #[arg(long)]
    pub check_config: bool,
}

/// The file's shape. Unknown keys are errors, so a typo is a message, not a silent default.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: String,
    data_dir: PathBuf,
    storage: String,
    durability: String,
    shutdown_grace: String,
    drain_delay: String,
    tls: FileTls,
    auth: FileAuth,
    cors: FileCors,
    retention: FileRetention,
    limits: FileLimits,
    streams: FileStreams,
    jobs: FileJobs,
    log: FileLog,
    redis: FileRedis,
    sidecar: FileSidecar,
    consumers: FileConsumers,
    webhooks: FileWebhooks,
    lab: FileLab,
}

/// `[lab]`: the pattern lab (docs/API.md, "The pattern lab").
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileLab {
    enabled: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileWebhooks {
    retry: Vec<String>,
    timeout: String,
    connect_timeout: String,
    disable_after: String,
    allow_networks: Vec<String>,
    ca_file: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    min_replicas: u32,
    replica_timeout: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileConsumers {
    ack_wait: String,
    max_deliver: u32,
    max_ack_pending: u32,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileJobs {
    max_attempts: u32,
    backoff: String,
    default_lease: String,
    retention: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileCors {
    allowed_origins: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: String,
    jwt_secret: String,
    jwt_public_key: PathBuf,
    tokens: Vec<FileToken>,
    jwt_audience: String,
    jwt_issuer: String,
    jwt_max_lifetime: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileToken {
    token: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    jobs: Vec<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    self_signed: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    max_messages: u64,
    max_age: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_bytes: u64,
    max_batch_bytes: u64,
    max_wait: String,
    max_topics: u64,
    header_timeout: String,
    max_connections: u64,
    max_connections_per_client: u64,
    rate: f64,
    burst: f64,
    body_timeout: String,
    write_timeout: String,
    max_read_bytes: u64,
    read_budget_bytes: u64,
    trusted_proxies: Vec<String>,
    max_topics_total: u64,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileStreams {
    keepalive: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageKind {
    Sqlite,
    Memory,
    Redis(crate::store::RedisTarget),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of `plexus serve`.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub storage: StorageKind,
    pub durability: Durability,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
    pub retention: Retention,
    pub max_message_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_wait: Duration,
    pub max_topics: usize,
    pub header_timeout: Duration,
    pub keepalive: Duration,
    pub log_format: LogFormat,
    pub tls: Option<TlsSource>,
    pub jobs: crate::jobs::JobsOptions,
    pub consumers: crate::consumers::ConsumerOptions,
    pub webhooks: crate::webhooks::WebhookOptions,
    pub auth: AuthConfig,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub rate: f64,
    pub burst: f64,
    /// Browser origins allowed to call the API (`*`: any); empty: no CORS.
    pub cors_origins: Vec<String>,
    /// A request body that makes no progress this long fails (`408`, connection closed).
    pub body_timeout: Duration,
    /// A connection whose writes make no progress this long is closed.
    pub write_timeout: Duration,
    /// Most payload one read or subscription loads at a time, shared by its topics.
    pub max_read_bytes: usize,
    /// Most payload all reads and catch-ups hold at once; over it, new reads get `503`.
    pub read_budget_bytes: usize,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<crate::model::Cidr>,
    /// `redis.min_replicas` and `redis.replica_timeout`, used under `durability = "replicated"`.
    pub replication: crate::store::Replication,
    /// Most topics the store holds; a write that would create one more is refused (`507`).
    pub max_topics_total: u64,
    /// `[lab]`: whether `POST /v1/lab/runs` may start pattern-lab runs.
    pub lab: LabConfig,
}

/// `[lab]` settings.
#[derive(Clone, Debug, Default)]
pub struct LabConfig {
    pub enabled: bool,
}

/// Authentication settings; secrets are redacted when printed.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: crate::auth::AuthMode,
    pub jwt_secret: Option<crate::auth::Secret>,
    pub jwt_public_key: Option<PathBuf>,
    pub tokens: Vec<(crate::auth::Secret, crate::auth::Rules)>,
    /// `auth.jwt_audience`, `auth.jwt_issuer`, `auth.jwt_max_lifetime`.
    pub jwt_checks: crate::auth::JwtChecks,
}

impl AuthConfig {
    /// The authenticator of these settings (reads the public key file).
    pub fn authenticator(&self) -> Result<crate::auth::Authenticator, crate::auth::AuthSetupError> {
        let pem = match &self.jwt_public_key {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                crate::auth::AuthSetupError::ReadPublicKey {
                    path: path.display().to_string(),
                    why: e.to_string(),
                }
            })?),
            None => None,
        };
        crate::auth::Authenticator::new(
            self.mode,
            self.tokens.clone(),
            self.jwt_secret.as_ref(),
            pem.as_deref(),
            &self.jwt_checks,
        )
    }
}

/// Overlays `over` onto `base`, table by table.
/// `[webhooks]`: the sender's retry schedule, timeouts and the networks it may reach.
fn webhook_options(
    a: &ServeArgs,
    f: &FileWebhooks,
) -> Result<crate::webhooks::WebhookOptions, ConfigError> {
    let list = |flag: &Option<String>, file: &[String]| -> Vec<String> {
        match flag {
            Some(text) => text
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.to_vec(),
        }
    };
    let mut retry = Vec::new();
    for (i, text) in list(&a.webhooks_retry, &f.retry).iter().enumerate() {
        retry.push(duration(&format!("webhooks.retry[{i}]"), text)?);
    }
    if retry.len() > 100 {
        return Err(ConfigError("webhooks.retry: at most 100 delays".into()));
    }
    let mut allow_networks = Vec::new();
    for (i, text) in list(&a.webhooks_allow_networks, &f.allow_networks)
        .iter()
        .enumerate()
    {
        allow_networks.push(
            text.parse()
                .map_err(|e| ConfigError(format!("webhooks.allow_networks[{i}]: {e}")))?,
        );
    }
    let positive = |key: &str, flag: &Option<String>, file: &str| {
        let d = duration(key, flag.as_deref().unwrap_or(file))?;
        if d.is_zero() {
            return Err(ConfigError(format!("{key}: must be more than 0")));
        }
        Ok(d)
    };
    Ok(crate::webhooks::WebhookOptions {
        retry,
        timeout: positive("webhooks.timeout", &a.webhooks_timeout, &f.timeout)?,
        connect_timeout: positive(
            "webhooks.connect_timeout",
            &a.webhooks_connect_timeout,
            &f.connect_timeout,
        )?,
        disable_after: positive(
            "webhooks.disable_after",
            &a.webhooks_disable_after,
            &f.disable_after,
        )?,
        allow_networks,
        ca_file: match &a.webhooks_ca_file {
            Some(p) => Some(p.clone()),
            None if f.ca_file.is_empty() => None,
            None => Some(PathBuf::from(&f.ca_file)),
        },
    })
}

/// The `[consumers]` defaults: what a consumer gets for the settings its creator leaves out.
fn consumer_options(
    a: &ServeArgs,
    f: &FileConsumers,
) -> Result<crate::consumers::ConsumerOptions, ConfigError> {
    let ack_wait = duration(
        "consumers.ack_wait",
        a.consumers_ack_wait.as_deref().unwrap_or(&f.ack_wait),
    )?;
    if ack_wait.is_zero() || ack_wait > Duration::from_secs(24 * 3600) {
        return Err(ConfigError(
            "consumers.ack_wait: must be from 1ms to 24h".into(),
        ));
    }
    let max_deliver = a.consumers_max_deliver.unwrap_or(f.max_deliver);
    if !(1..=1000).contains(&max_deliver) {
        return Err(ConfigError(
            "consumers.max_deliver: must be from 1 to 1000".into(),
        ));
    }
    let max_ack_pending = a.consumers_max_ack_pending.unwrap_or(f.max_ack_pending);
    if !(1..=100_000).contains(&max_ack_pending) {
        return Err(ConfigError(
            "consumers.max_ack_pending: must be from 1 to 100000".into(),
        ));
    }
    Ok(crate::consumers::ConsumerOptions {
        ack_wait,
        max_deliver,
        max_ack_pending,
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|e| ConfigError(format!("{key}: {e}")))
}

impl Config {
    /// Loads the configuration of `plexus serve` from its layers.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut table: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError(format!("the embedded default config is broken: {e}")))?;
        let mut source = "the default configuration".to_owned();
        if let Some(path) = &args.config {
            merge(&mut table, read_file(path)?);
            source = path.display().to_string();
        }
        // Deserialised from text, so an error quotes the offending line and so names the key.
        let text = toml::to_string(&table).map_err(|e| ConfigError(format!("{source}: {e}")))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{source}: {e}")))?;
        Self::validate(file, args)
    }

    fn validate(f: FileConfig, a: &ServeArgs) -> Result<Config, ConfigError> {
        let listen_text = a.listen.clone().unwrap_or(f.listen);
        let listen = listen_text.parse().map_err(|_| {
            ConfigError(format!(
                "listen: {listen_text:?} is not an address such as 127.0.0.1:7539"
            ))
        })?;
        let storage = match a.storage.as_deref().unwrap_or(&f.storage) {
            "sqlite" => StorageKind::Sqlite,
            "memory" => StorageKind::Memory,
            s => match crate::store::RedisTarget::parse(s) {
                Some(Ok(target)) => StorageKind::Redis(target),
                Some(Err(why)) => return Err(ConfigError(format!("storage: {why}"))),
                None => {
                    return Err(ConfigError(format!(
                        "storage: {s:?} is not one of sqlite, memory, redis://HOST:PORT, \
                         redis+cluster://HOST:PORT,HOST:PORT"
                    )));
                }
            },
        };
        let durability = match a.durability.as_deref().unwrap_or(&f.durability) {
            "process" => Durability::Process,
            "machine" => Durability::Machine,
            "replicated" if matches!(storage, StorageKind::Redis(_)) => Durability::Replicated,
            "replicated" => {
                return Err(ConfigError(
                    "durability: \"replicated\" needs a redis storage (redis://HOST:PORT or \
                     redis+cluster://HOST:PORT,HOST:PORT): it waits for Redis replicas"
                        .into(),
                ));
            }
            s => {
                return Err(ConfigError(format!(
                    "durability: {s:?} is not one of process, machine, replicated"
                )));
            }
        };
        let min_replicas = a.redis_min_replicas.unwrap_or(f.redis.min_replicas);
        if min_replicas == 0 {
            return Err(ConfigError("redis.min_replicas: must be at least 1".into()));
        }
        let replica_timeout = duration(
            "redis.replica_timeout",
            a.redis_replica_timeout
                .as_deref()
                .unwrap_or(&f.redis.replica_timeout),
        )?;
        if replica_timeout.as_millis() < 1 || replica_timeout > Duration::from_secs(60) {
            return Err(ConfigError(
                "redis.replica_timeout: must be from 1ms to 60s".into(),
            ));
        }
        let max_messages = a.retention_messages.unwrap_or(f.retention.max_messages);
        if max_messages == 0 {
            return Err(ConfigError(
                "retention.max_messages: must be at least 1".into(),
            ));
        }
        let max_age = duration(
            "retention.max_age",
            a.retention_age.as_deref().unwrap_or(&f.retention.max_age),
        )?;
        if max_age.is_zero() {
            return Err(ConfigError("retention.max_age: must be more than 0".into()));
        }
        let max_message_bytes = a.max_message_bytes.unwrap_or(f.limits.max_message_bytes);
        if max_message_bytes == 0 || max_message_bytes > 64 << 20 {
            return Err(ConfigError(
                "limits.max_message_bytes: must be from 1 to 67108864".into(),
            ));
        }
        if f.limits.max_batch_bytes < max_message_bytes {
            return Err(ConfigError(
                "limits.max_batch_bytes: must be at least limits.max_message_bytes".into(),
            ));
        }
        if f.limits.max_topics == 0 || f.limits.max_topics > 10_000 {
            return Err(ConfigError(
                "limits.max_topics: must be from 1 to 10000".into(),
            ));
        }
        if f.limits.max_read_bytes == 0 || f.limits.max_read_bytes > 1 << 30 {
            return Err(ConfigError(
                "limits.max_read_bytes: must be from 1 to 1073741824".into(),
            ));
        }
        if f.limits.read_budget_bytes < f.limits.max_read_bytes {
            return Err(ConfigError(
                "limits.read_budget_bytes: must be at least limits.max_read_bytes".into(),
            ));
        }
        let log_format = match a.log_format.as_deref().unwrap_or(&f.log.format) {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            s => {
                return Err(ConfigError(format!(
                    "log.format: {s:?} is not one of text, json"
                )));
            }
        };
        let cert = a.tls_cert.clone().unwrap_or(f.tls.cert);
        let key = a.tls_key.clone().unwrap_or(f.tls.key);
        let empty = |p: &PathBuf| p.as_os_str().is_empty();
        let tls = match (
            a.tls_self_signed || f.tls.self_signed,
            empty(&cert),
            empty(&key),
        ) {
            (true, true, true) => Some(TlsSource::SelfSigned),
            (true, _, _) => {
                return Err(ConfigError(
                    "tls.self_signed: cannot be combined with tls.cert and tls.key".into(),
                ));
            }
            (false, true, true) => None,
            (false, false, false) => Some(TlsSource::Files { cert, key }),
            (false, false, true) => {
                return Err(ConfigError("tls.key: needed with tls.cert".into()));
            }
            (false, true, false) => {
                return Err(ConfigError("tls.cert: needed with tls.key".into()));
            }
        };
        let max_attempts = a.jobs_max_attempts.unwrap_or(f.jobs.max_attempts);
        if !(1..=1000).contains(&max_attempts) {
            return Err(ConfigError(
                "jobs.max_attempts: must be from 1 to 1000".into(),
            ));
        }
        let default_lease = duration(
            "jobs.default_lease",
            a.jobs_default_lease
                .as_deref()
                .unwrap_or(&f.jobs.default_lease),
        )?;
        if default_lease.is_zero() {
            return Err(ConfigError(
                "jobs.default_lease: must be more than 0".into(),
            ));
        }
        let jobs = crate::jobs::JobsOptions {
            max_attempts,
            backoff: duration(
                "jobs.backoff",
                a.jobs_backoff.as_deref().unwrap_or(&f.jobs.backoff),
            )?,
            default_lease,
            retention: duration(
                "jobs.retention",
                a.jobs_retention.as_deref().unwrap_or(&f.jobs.retention),
            )?,
        };
        let consumers = consumer_options(a, &f.consumers)?;
        let webhooks = webhook_options(a, &f.webhooks)?;
        let mode = match a.auth.as_deref().unwrap_or(&f.auth.mode) {
            "open" => crate::auth::AuthMode::Open,
            "required" => crate::auth::AuthMode::Required,
            s => {
                return Err(ConfigError(format!(
                    "auth.mode: {s:?} is not one of open, required"
                )));
            }
        };
        let mut tokens = Vec::new();
        for (i, t) in f.auth.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}].token: use at least 8 characters"
                )));
            }
            let rules = crate::auth::RulesText {
                publish: t.publish.clone(),
                subscribe: t.subscribe.clone(),
                jobs: t.jobs.clone(),
                admin: t.admin,
            }
            .parse()
            .map_err(|e| ConfigError(format!("auth.tokens[{i}].{e}")))?;
            tokens.push((crate::auth::Secret(t.token.clone()), rules));
        }
        let jwt_checks = jwt_checks(a, &f.auth)?;
        let jwt_secret = a.jwt_secret.clone().unwrap_or(f.auth.jwt_secret);
        if !jwt_secret.is_empty() && jwt_secret.len() < crate::auth::MIN_JWT_SECRET_BYTES {
            return Err(ConfigError(
                crate::auth::AuthSetupError::ShortSecret.to_string(),
            ));
        }
        let jwt_public_key = a.jwt_public_key.clone().unwrap_or(f.auth.jwt_public_key);
        let auth = AuthConfig {
            mode,
            jwt_secret: (!jwt_secret.is_empty()).then_some(crate::auth::Secret(jwt_secret)),
            jwt_public_key: (!jwt_public_key.as_os_str().is_empty()).then_some(jwt_public_key),
            tokens,
            jwt_checks,
        };
        if auth.mode == crate::auth::AuthMode::Required
            && auth.tokens.is_empty()
            && auth.jwt_secret.is_none()
            && auth.jwt_public_key.is_none()
        {
            return Err(ConfigError(
                "auth.mode: required, but no auth.tokens, auth.jwt_secret or auth.jwt_public_key is set".into(),
            ));
        }
        let rate = a.rate.unwrap_or(f.limits.rate);
        let burst = a.burst.unwrap_or(f.limits.burst);
        if !(rate.is_finite() && rate >= 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(ConfigError(
                "limits.rate: must be 0 or more, and limits.burst at least 1".into(),
            ));
        }
        let max_connections = a.max_connections.unwrap_or(f.limits.max_connections);
        let per_client = a
            .max_connections_per_client
            .unwrap_or(f.limits.max_connections_per_client);
        if max_connections == 0 || per_client == 0 {
            return Err(ConfigError(
                "limits.max_connections: limits.max_connections and limits.max_connections_per_client must be at least 1".into(),
            ));
        }
        for (i, origin) in f.cors.allowed_origins.iter().enumerate() {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !ok {
                return Err(ConfigError(format!(
                    "cors.allowed_origins[{i}]: {origin:?} is not an origin such as https://app.example.com (or *)"
                )));
            }
        }
        let body_timeout = duration(
            "limits.body_timeout",
            a.body_timeout.as_deref().unwrap_or(&f.limits.body_timeout),
        )?;
        let write_timeout = duration(
            "limits.write_timeout",
            a.write_timeout
                .as_deref()
                .unwrap_or(&f.limits.write_timeout),
        )?;
        if body_timeout.is_zero() || write_timeout.is_zero() {
            return Err(ConfigError(
                "limits.body_timeout: limits.body_timeout and limits.write_timeout must be more than 0".into(),
            ));
        }
        let proxies: Vec<String> = match &a.trusted_proxies {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            None => f.limits.trusted_proxies,
        };
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in proxies.iter().enumerate() {
            trusted_proxies.push(
                cidr.parse()
                    .map_err(|e| ConfigError(format!("limits.trusted_proxies[{i}]: {e}")))?,
            );
        }
        let max_topics_total = a.max_topics_total.unwrap_or(f.limits.max_topics_total);
        if max_topics_total == 0 {
            return Err(ConfigError(
                "limits.max_topics_total: must be at least 1".into(),
            ));
        }
        Ok(Config {
            replication: crate::store::Replication {
                min_replicas,
                timeout: replica_timeout,
            },
            max_topics_total,
            trusted_proxies,
            body_timeout,
            write_timeout,
            cors_origins: f.cors.allowed_origins,
            max_connections: max_connections as usize,
            max_connections_per_client: per_client as usize,
            rate,
            burst,
            auth,
            jobs,
            consumers,
            webhooks,
            lab: LabConfig {
                enabled: a.lab_enabled || f.lab.enabled,
            },
            tls,
            listen,
            data_dir: a.data_dir.clone().unwrap_or(f.data_dir),
            storage,
            durability,
            shutdown_grace: duration(
                "shutdown_grace",
                a.shutdown_grace.as_deref().unwrap_or(&f.shutdown_grace),
            )?,
            drain_delay: duration(
                "drain_delay",
                a.drain_delay.as_deref().unwrap_or(&f.drain_delay),
            )?,
            retention: Retention {
                max_messages,
                max_age,
            },
            max_message_bytes: max_message_bytes as usize,
            max_batch_bytes: f.limits.max_batch_bytes as usize,
            max_read_bytes: f.limits.max_read_bytes as usize,
            read_budget_bytes: f.limits.read_budget_bytes as usize,
            max_wait: duration(
                "limits.max_wait",
                a.max_wait.as_deref().unwrap_or(&f.limits.max_wait),
            )?,
            max_topics: f.limits.max_topics as usize,
            header_timeout: duration(
                "limits.header_timeout",
                a.header_timeout
                    .as_deref()
                    .unwrap_or(&f.limits.header_timeout),
            )?,
            keepalive: duration(
                "streams.keepalive",
                a.keepalive.as_deref().unwrap_or(&f.streams.keepalive),
            )?,
            log_format,
        })
    }
}

/// `auth.jwt_audience`, `auth.jwt_issuer` and `auth.jwt_max_lifetime`; empty is unset.
fn jwt_checks(a: &ServeArgs, f: &FileAuth) -> Result<crate::auth::JwtChecks, ConfigError> {
    let text = |flag: &Option<String>, file: &String, key: &str| {
        let value = flag.clone().unwrap_or_else(|| file.clone());
        if value.chars().any(char::is_control) || value.trim() != value {
            return Err(ConfigError(format!(
                "{key}: {value:?} has spaces around it or control characters"
            )));
        }
        Ok((!value.is_empty()).then_some(value))
    };
    let audience = text(&a.jwt_audience, &f.jwt_audience, "auth.jwt_audience")?;
    let issuer = text(&a.jwt_issuer, &f.jwt_issuer, "auth.jwt_issuer")?;
    let max_lifetime = match a.jwt_max_lifetime.as_deref().unwrap_or(&f.jwt_max_lifetime) {
        "" => None,
        s => {
            let d = duration("auth.jwt_max_lifetime", s)?;
            if d.as_secs() == 0 {
                return Err(ConfigError(
                    "auth.jwt_max_lifetime: must be at least 1s (or empty for no limit)".into(),
                ));
            }
            Some(d)
        }
    };
    Ok(crate::auth::JwtChecks {
        audience,
        issuer,
        max_lifetime,
    })
}

/// Whether `--jwt-secret` was given among `args` (the process's own arguments): a secret on
/// the command line shows in the process list, unlike `PLEXUS_JWT_SECRET` or the file.
pub fn jwt_secret_on_command_line(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == "--jwt-secret" || arg.starts_with("--jwt-secret=")
    })
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError(format!("{}: {e}", path.display())))
}

/// The flags of `plexus sidecar`. Each has a `PLEXUS_SIDECAR_*` environment variable; the
/// file's keys sit under `[sidecar]`.
#[derive(Args, Debug, Clone, Default)]
pub struct SidecarArgs {
    /// A TOML configuration file; its `[sidecar]` section configures the sidecar
    #[arg(long, env = "PLEXUS_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The hub's base URL, http:// (h2c) or https:// (ALPN h2) [default: http://127.0.0.1:7539]
    #[arg(long, env = "PLEXUS_SIDECAR_HUB", value_name = "URL")]
    pub hub: Option<String>,
    /// The credential the sidecar sends to the hub
    #[arg(
        long,
        env = "PLEXUS_SIDECAR_TOKEN",
        value_name = "T",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the hub credential
    #[arg(long, env = "PLEXUS_SIDECAR_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Local address to listen on [default: 127.0.0.1:7540]
    #[arg(long, env = "PLEXUS_SIDECAR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the spool database and the sidecar id [default: ./plexus-sidecar]
    #[arg(long, env = "PLEXUS_SIDECAR_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Trust this certificate (PEM) for an https:// hub
    #[arg(long, env = "PLEXUS_SIDECAR_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Payload bytes the spool may hold [default: 1073741824]
    #[arg(long, env = "PLEXUS_SIDECAR_SPOOL_MAX_BYTES", value_name = "N")]
    pub spool_max_bytes: Option<u64>,
    /// Messages the spool may hold [default: 1000000]
    #[arg(long, env = "PLEXUS_SIDECAR_SPOOL_MAX_MESSAGES", value_name = "N")]
    pub spool_max_messages: Option<u64>,
    /// How long a publish waits for the hub's own answer before 202 [default: 2s]
    #[arg(long, env = "PLEXUS_SIDECAR_FORWARD_WAIT", value_name = "DUR")]
    pub forward_wait: Option<String>,
    /// A token local clients must send (Bearer or access_token) [default: none]
    #[arg(
        long,
        env = "PLEXUS_SIDECAR_LOCAL_TOKEN",
        value_name = "T",
        hide_env_values = true
    )]
    pub local_token: Option<String>,
    /// process or machine (fsync before a 202) [default: process]
    #[arg(long, env = "PLEXUS_SIDECAR_DURABILITY", value_name = "LEVEL")]
    pub durability: Option<String>,
    /// Largest message payload accepted locally [default: 1048576]
    #[arg(long, env = "PLEXUS_SIDECAR_MAX_MESSAGE_BYTES", value_name = "N")]
    pub max_message_bytes: Option<u64>,
    /// Hold mode: proxy every path outside the sidecar's own to this app (http://) [default: none]
    #[arg(long, env = "PLEXUS_SIDECAR_APP", value_name = "URL")]
    pub app: Option<String>,
    /// Hold mode: sign proxied requests with Grip-Sig (HS256) under this key [default: none]
    #[arg(
        long,
        env = "PLEXUS_SIDECAR_GRIP_KEY",
        value_name = "K",
        hide_env_values = true
    )]
    pub grip_key: Option<String>,
    /// Streams on one upstream connection before another opens (the hub's limit) [default: 1000]
    #[arg(long, env = "PLEXUS_SIDECAR_UPSTREAM_MAX_STREAMS", value_name = "N")]
    pub upstream_max_streams: Option<u64>,
    /// Validate the configuration, print it, and exit
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileSidecar {
    hub: String,
    token: String,
    token_file: PathBuf,
    listen: String,
    spool_dir: PathBuf,
    cacert: PathBuf,
    spool_max_bytes: u64,
    spool_max_messages: u64,
    forward_wait: String,
    local_token: String,
    durability: String,
    max_message_bytes: u64,
    app: String,
    grip_key: String,
    upstream_max_streams: u64,
}

/// The validated configuration of `plexus sidecar`; secrets are redacted when printed.
#[derive(Clone)]
pub struct SidecarConfig {
    pub hub: String,
    pub token: Option<String>,
    pub listen: SocketAddr,
    pub spool_dir: PathBuf,
    /// A PEM file of roots to trust for an `https://` hub.
    pub cacert: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub spool_max_messages: u64,
    pub forward_wait: Duration,
    pub local_token: Option<String>,
    /// `true` at `durability = machine`: the spool fsyncs before it acknowledges.
    pub fsync: bool,
    pub max_message_bytes: usize,
    /// Hold mode: the application's base URL.
    pub app: Option<String>,
    /// Hold mode: the `Grip-Sig` key.
    pub grip_key: Option<String>,
    /// Streams one upstream connection carries before the next one opens.
    pub upstream_max_streams: usize,
}

impl fmt::Debug for SidecarConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("SidecarConfig")
            .field("hub", &self.hub)
            .field("token", &redact(&self.token))
            .field("listen", &self.listen)
            .field("spool_dir", &self.spool_dir)
            .field("cacert", &self.cacert)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("spool_max_messages", &self.spool_max_messages)
            .field("forward_wait", &self.forward_wait)
            .field("local_token", &redact(&self.local_token))
            .field("fsync", &self.fsync)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("app", &self.app)
            .field("grip_key", &redact(&self.grip_key))
            .field("upstream_max_streams", &self.upstream_max_streams)
            .finish()
    }
}

impl SidecarConfig {
    /// Loads the configuration of `plexus sidecar`: the embedded defaults < `--config` <
    /// `PLEXUS_SIDECAR_*` < flags. The whole file is validated as `serve` validates it, so
    /// one file can configure both.
    pub fn load(args: &SidecarArgs) -> Result<SidecarConfig, ConfigError> {
        let mut table: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| ConfigError(format!("the embedded default config is broken: {e}")))?;
        let mut source = "the default configuration".to_owned();
        if let Some(path) = &args.config {
            merge(&mut table, read_file(path)?);
            source = path.display().to_string();
        }
        let text = toml::to_string(&table).map_err(|e| ConfigError(format!("{source}: {e}")))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{source}: {e}")))?;
        Self::validate(file.sidecar, args)
    }

    fn validate(f: FileSidecar, a: &SidecarArgs) -> Result<SidecarConfig, ConfigError> {
        let hub = a.hub.clone().unwrap_or(f.hub);
        if !(hub.starts_with("http://") || hub.starts_with("https://")) {
            return Err(ConfigError(format!(
                "sidecar.hub: {hub:?} is not an http:// or https:// URL"
            )));
        }
        let listen_text = a.listen.clone().unwrap_or(f.listen);
        let listen = listen_text.parse().map_err(|_| {
            ConfigError(format!(
                "sidecar.listen: {listen_text:?} is not an address such as 127.0.0.1:7540"
            ))
        })?;
        let token_file = a.token_file.clone().unwrap_or(f.token_file);
        let token = match (a.token.clone().unwrap_or(f.token), token_file) {
            (t, file) if !file.as_os_str().is_empty() => {
                if !t.is_empty() {
                    return Err(ConfigError(
                        "sidecar.token_file: give sidecar.token or sidecar.token_file, not both"
                            .into(),
                    ));
                }
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    ConfigError(format!(
                        "sidecar.token_file: cannot read {}: {e}",
                        file.display()
                    ))
                })?;
                Some(text.trim().to_owned())
            }
            (t, _) => (!t.is_empty()).then_some(t),
        };
        if token
            .as_deref()
            .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError(
                "sidecar.token: must be visible ASCII characters".into(),
            ));
        }
        let local_token = a.local_token.clone().unwrap_or(f.local_token);
        if !local_token.is_empty() && local_token.len() < 8 {
            return Err(ConfigError(
                "sidecar.local_token: use at least 8 characters".into(),
            ));
        }
        let fsync = match a.durability.as_deref().unwrap_or(&f.durability) {
            "process" => false,
            "machine" => true,
            s => {
                return Err(ConfigError(format!(
                    "sidecar.durability: {s:?} is not one of process, machine"
                )));
            }
        };
        let spool_max_bytes = a.spool_max_bytes.unwrap_or(f.spool_max_bytes);
        let spool_max_messages = a.spool_max_messages.unwrap_or(f.spool_max_messages);
        if spool_max_bytes == 0 || spool_max_messages == 0 {
            return Err(ConfigError(
                "sidecar.spool_max_bytes: sidecar.spool_max_bytes and sidecar.spool_max_messages must be at least 1".into(),
            ));
        }
        let max_message_bytes = a.max_message_bytes.unwrap_or(f.max_message_bytes);
        if max_message_bytes == 0 || max_message_bytes > 64 << 20 {
            return Err(ConfigError(
                "sidecar.max_message_bytes: must be from 1 to 67108864".into(),
            ));
        }
        let cacert = a.cacert.clone().unwrap_or(f.cacert);
        let app = a.app.clone().unwrap_or(f.app);
        if !app.is_empty() && !app.starts_with("http://") {
            return Err(ConfigError(format!(
                "sidecar.app: {app:?} is not an http:// URL"
            )));
        }
        let grip_key = a.grip_key.clone().unwrap_or(f.grip_key);
        let upstream_max_streams = a.upstream_max_streams.unwrap_or(f.upstream_max_streams);
        if upstream_max_streams == 0 || upstream_max_streams > 1 << 31 {
            return Err(ConfigError(
                "sidecar.upstream_max_streams: must be from 1 to 2147483648".into(),
            ));
        }
        Ok(SidecarConfig {
            hub: hub.trim_end_matches('/').to_owned(),
            token,
            listen,
            spool_dir: a.spool_dir.clone().unwrap_or(f.spool_dir),
            cacert: (!cacert.as_os_str().is_empty()).then_some(cacert),
            spool_max_bytes,
            spool_max_messages,
            forward_wait: duration(
                "sidecar.forward_wait",
                a.forward_wait.as_deref().unwrap_or(&f.forward_wait),
            )?,
            local_token: (!local_token.is_empty()).then_some(local_token),
            fsync,
            max_message_bytes: max_message_bytes as usize,
            app: (!app.is_empty()).then(|| app.trim_end_matches('/').to_owned()),
            grip_key: (!grip_key.is_empty()).then_some(grip_key),
            upstream_max_streams: upstream_max_streams as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plexus.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
    }

    #[test]
    fn defaults_match_design() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7539");
        assert_eq!(c.retention.max_messages, 100_000);
        assert_eq!(c.retention.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(c.max_message_bytes, 1 << 20);
        assert_eq!(c.max_wait, Duration::from_secs(60));
        assert_eq!(c.storage, StorageKind::Sqlite);
        assert_eq!(c.jobs.retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn file_then_flags() {
        let c = with_file("[retention]\nmax_messages = 5\n").unwrap();
        assert_eq!(c.retention.max_messages, 5);
        assert_eq!(c.retention.max_age, Duration::from_secs(7 * 86_400));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[retention]\nmax_messages = 5\n").unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path),
            retention_messages: Some(9),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.retention.max_messages, 9);
    }

    #[test]
    fn errors_name_the_key() {
        let e = with_file("[retention]\nmax_age = \"forever\"\n").unwrap_err();
        assert!(e.0.contains("retention.max_age"), "{e}");
        let e = with_file("[limits]\nmax_mesage_bytes = 5\n").unwrap_err();
        assert!(e.0.contains("max_mesage_bytes"), "{e}");
        let e = with_file("listen = 5\n").unwrap_err();
        assert!(e.0.contains("listen"), "{e}");
        let e = with_file("storage = \"disk\"\n").unwrap_err();
        assert!(e.0.contains("storage"), "{e}");
    }

    #[test]
    fn jwt_settings() {
        let e =
            with_file("[auth]\njwt_secret = \"only-31-bytes-of-secret-0123456\"\n").unwrap_err();
        assert!(e.0.starts_with("auth.jwt_secret:"), "{e}");
        let c = with_file("[auth]\njwt_secret = \"exactly-32-bytes-of-secret-01234\"\n").unwrap();
        assert!(c.auth.jwt_secret.is_some());
        assert_eq!(c.auth.jwt_checks, crate::auth::JwtChecks::default());
        let c = with_file(
            "[auth]\njwt_audience = \"plexus\"\njwt_issuer = \"https://id.example\"\njwt_max_lifetime = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(
            c.auth.jwt_checks,
            crate::auth::JwtChecks {
                audience: Some("plexus".into()),
                issuer: Some("https://id.example".into()),
                max_lifetime: Some(Duration::from_secs(3600)),
            }
        );
        for (bad, key) in [
            ("jwt_max_lifetime = \"forever\"", "auth.jwt_max_lifetime"),
            ("jwt_max_lifetime = \"0s\"", "auth.jwt_max_lifetime"),
            ("jwt_max_lifetime = \"500ms\"", "auth.jwt_max_lifetime"),
            ("jwt_audience = \" plexus\"", "auth.jwt_audience"),
            ("jwt_issuer = \"a\\nb\"", "auth.jwt_issuer"),
        ] {
            let e = with_file(&format!("[auth]\n{bad}\n")).unwrap_err();
            assert!(e.0.starts_with(key), "{bad}: {e}");
        }
        let from_flag =
            |args: &[&str]| jwt_secret_on_command_line(args.iter().map(std::ffi::OsString::from));
        assert!(from_flag(&["plexus", "serve", "--jwt-secret", "x"]));
        assert!(from_flag(&["plexus", "serve", "--jwt-secret=x"]));
        assert!(!from_flag(&[
            "plexus",
            "serve",
            "--jwt-public-key",
            "k.pem"
        ]));
    }

    #[test]
    fn sidecar_settings() {
        let c = SidecarConfig::load(&SidecarArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7540");
        assert_eq!(c.hub, "http://127.0.0.1:7539");
        assert_eq!(c.forward_wait, Duration::from_secs(2));
        assert_eq!(c.spool_max_bytes, 1 << 30);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[sidecar]\nforward_wait = \"250ms\"\nhub = \"http://h:1/\"\n",
        )
        .unwrap();
        let c = SidecarConfig::load(&SidecarArgs {
            config: Some(path.clone()),
            spool_max_bytes: Some(5),
            ..SidecarArgs::default()
        })
        .unwrap();
        assert_eq!(c.forward_wait, Duration::from_millis(250));
        assert_eq!(c.hub, "http://h:1");
        assert_eq!(c.spool_max_bytes, 5);
        std::fs::write(&path, "[sidecar]\nhub = \"ftp://h\"\n").unwrap();
        let e = SidecarConfig::load(&SidecarArgs {
            config: Some(path.clone()),
            ..SidecarArgs::default()
        })
        .unwrap_err();
        assert!(e.0.starts_with("sidecar.hub"), "{e}");
        std::fs::write(&path, "[sidecar]\nspool_max_byte = 1\n").unwrap();
        let e = SidecarConfig::load(&SidecarArgs {
            config: Some(path),
            ..SidecarArgs::default()
        })
        .unwrap_err();
        assert!(e.0.contains("spool_max_byte"), "{e}");
        let c = SidecarConfig::load(&SidecarArgs {
            token: Some("s3cret-token".into()),
            ..SidecarArgs::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("s3cret-token"));
    }
}
