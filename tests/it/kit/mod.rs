//! The test kit: everything a test module needs to drive a real hub, each written once.
//!
//! - `server`: a real `plexus serve` on port 0 with its own data directory, on the engine a
//!   test names ([`Server::start_on`]) or on the default one ([`Server::start`]), and the
//!   helpers that speak the HTTP API with a real client (re-exported here).
//! - [`redis`]: a private `redis-server` per test (or a replica of one), and a real 3-master
//!   Redis Cluster (with replicas when asked); nodes can be paused, resumed and killed.
//! - [`clients`]: raw-socket SSE and NDJSON clients, an SSE client over HTTP/2, a
//!   WebSocket client for `/v1/ws`, and helpers for `plexus-client` subscriptions.
//! - [`browser`]: a Node script under tests/browser/ driving Debian's Chromium
//!   (playwright-core), with its JSON result.
//! - [`cli`]: runs the `plexus` binary itself (`pub`, `sub`, `jobs`, a failing `serve`)
//!   and `curl`.

pub mod browser;
pub mod cli;
pub mod clients;
pub mod redis;
mod server;

pub use server::*;
