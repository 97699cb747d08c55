//! Plexus: a self-hosted communication hub over one durable topic log.
//!
//! # Layout
//! From the bottom up; each layer names only those below it (`scripts/check-layers` keeps the
//! arrows one way and the files of each folder free of import cycles).
//! - [`model`]: topics, messages, seqs, cursors, `since`, gaps, receipts, topic info, store
//!   errors — pure types, parsed at the edge.
//! - [`wire`]: encodings made once per message (the JSON envelope, base64, SSE/NDJSON/WebSocket
//!   frames) and every control frame (WebSocket `ok`/`error`/close, disconnect notices).
//! - [`store`]: the traits `Log` (messages), `JobStore` (jobs) and `Follow` (the commit feed)
//!   and their engines (`memory`, `sqlite/`, `redis/`), opened as one [`store::Engine`]; the only
//!   place that knows storage. The sqlite schema is versioned with forward migrations.
//! - [`feed`]: a broadcast whose waiting readers leave their wakers in one array (the hub's
//!   per-topic live feed, and the fan-out baseline's).
//! - [`hub`]: per-topic heads, broadcasts and wake-ups, cursor resolution and gaps; knows no
//!   HTTP, no SQL.
//! - [`jobs`]: job states, leases, retries with backoff; events on `_jobs.{id}`.
//! - [`consumers`]: durable consumers — positions, leases, acks, redelivery, dead letters on
//!   `_dead.{name}` and lag figures, kept in the store by compare-and-set.
//! - [`webhooks`]: durable consumers whose reader is the hub's HTTP sender: signed, ordered,
//!   retried POSTs, dead letters on `_webhooks.{id}.dead`, the SSRF guard.
//! - [`auth`]: credentials (static tokens, JWT) into principals with topic-pattern rules.
//! - [`observe`]: the Prometheus recorder behind every `metrics::counter!` of the layers.
//! - [`tls`]: certificates (files or self-signed) into a rustls config with ALPN h2/http1.1.
//! - [`server`]: the accept loop serving HTTP/1.1 and HTTP/2 on one port, graceful drain.
//! - [`http`]: the HTTP and WebSocket API: shared pieces at the bottom (`state`, `extract`,
//!   `schema`, `error` — the one error → problem+json mapping, `streaming`), one file per
//!   feature above them with its own routes, `openapi` on top.
//! - [`config`]: file < environment < flags, validated into a [`config::Config`].
//! - [`app`]: builds the application once (config → store → hub → jobs → router) and runs it
//!   on a bound listener; used by `serve`, the lab, the tests.
//! - [`lab`]: load generators and baselines, and the pattern lab (`POST /v1/lab/runs`,
//!   `plexus lab`); they reach the hub through `plexus-client` (the store benchmark and the
//!   bare-handler baseline are the named exceptions).
//! - [`sidecar`]: `plexus sidecar`, the hub's API on loopback beside an application: a
//!   durable spool of publishes forwarded in order with idempotency keys, everything else
//!   proxied; it reaches the hub through `plexus-client` only, over one HTTP/2 connection
//!   (another only when one carries the hub's limit of streams).
//! - [`cli`]: the `plexus` subcommands, thin over [`app`] and [`lab`].
//!
//! `docs/API.md` is the contract as built; `docs/ARCHITECTURE.md` follows one message through.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod feed;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod lab;
pub mod model;
pub mod observe;
pub mod server;
pub mod sidecar;
pub mod stop;
pub mod store;
pub mod tls;
pub mod webhooks;
pub mod wire;
