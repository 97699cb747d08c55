//! Plexus integration tests: one binary, a real `plexus serve` per test on port 0, real
//! HTTP clients and the real CLI. See `harness.rs` for how a server is started and observed.

mod clients;
mod harness;
mod redis;

mod admin;
mod auth;
mod batch;
mod cli;
mod cluster;
mod contract;
mod cors;
mod crash;
mod engines;
mod errors;
mod fanout;
mod follow;
mod hostile;
mod http2;
mod jobs;
mod jobs_cli;
mod jobs_workers;
mod limits;
mod longpoll;
mod metrics;
mod migration;
mod ndjson;
mod openapi;
mod publish;
mod read;
mod retention;
mod shutdown;
mod slow;
mod sse;
mod tls;
mod ws;
