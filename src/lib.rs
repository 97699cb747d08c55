//! Plexus: a self-hosted communication hub over one durable topic log.
//!
//! # Layout
//! - [`model`]: topics, messages, seqs, cursors, `since`, gaps — pure types, parsed at the edge.
//! - [`store`]: the message log, job store and commit-feed traits and their engines (`memory`,
//!   `sqlite`, `redis`), opened as one `Engine`; the only place that knows storage.
//! - [`hub`]: per-topic heads and wake-ups, cursor resolution and gaps; knows no HTTP, no SQL.
//! - [`jobs`]: job states, leases, retries with backoff; events on `_jobs.{id}`.
//! - [`wire`]: encodings of messages (the JSON envelope, base64).
//! - [`http`]: the HTTP API, one file per feature; `http/error.rs` maps every error to problem+json.
//! - [`observe`]: the Prometheus recorder behind every `metrics::counter!` of the layers.
//! - [`server`]: the accept loop serving HTTP/1.1 and HTTP/2 on one port, graceful drain.
//! - [`tls`]: certificates (files or self-signed) into a rustls config with ALPN h2/http1.1.
//! - [`config`]: file < environment < flags, validated into a [`config::Config`].
//! - [`auth`]: credentials (static tokens, JWT) into principals with topic-pattern rules.
//! - [`cli`]: the `plexus` subcommands.
//!
//! Layers point one way: `http` → `hub` → `store`, and all of them use `model`.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod lab;
pub mod model;
pub mod observe;
pub mod server;
pub mod store;
pub mod tls;
pub mod wire;
