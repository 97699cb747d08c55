//! Plexus integration tests: one binary, a real `plexus serve` per test on port 0, real
//! clients (raw sockets, reqwest, WebSocket, `plexus-client`, the CLI).
//!
//! Each test runs on one engine: the one it names, or the default (sqlite;
//! `PLEXUS_TEST_ENGINE=memory|redis` runs the whole suite on another). Only `matrix`
//! and the engine-specific modules (`engines`, `cluster`, `crash`) start several engines.

// The test kit: server harness, Redis fixture and cluster, CLI runner, stream clients.
mod kit;

// Delivery over every transport × engine: live, resume, multi-topic, catch-up, gaps, restart.
mod matrix;
// Bugs that were fixed, one test each.
mod regression;

// Topic listing and info, DELETE of a topic, health and readiness.
mod admin;
// `auth.mode = "required"`: 401/403/allowed for every operation on every transport.
mod auth;
// The browser harness: Debian's Chromium, driven by playwright-core, opens a page of the hub.
mod browser;
// `POST /v1/publish`: JSON array and NDJSON batches, all or nothing.
mod batch;
// `plexus pub` and `plexus sub` against a running hub.
mod cli;
// Several nodes on one Redis or Redis Cluster: any node serves, a cursor moves between them.
mod cluster;
// docs/API.md's tables of problem types and metrics match the code.
mod contract;
// Durable consumers on sqlite and redis: positions, leases, acks, dead letters, lag, two nodes.
mod consumers;
// CORS headers for configured origins, none otherwise.
mod cors;
// Every acknowledged message survives SIGKILL, on each durable engine.
mod crash;
// Publish, page, idempotency and delete once per store engine.
mod engines;
// Every error status with a problem+json body, stored data unchanged.
mod errors;
// A thousand SSE subscribers on one topic each get every message in order.
mod fanout;
// `plexus_client::Client::follow` across server restarts.
mod follow;
// Hardening: a job and its last event agree after SIGKILL on Redis; the cap on topics.
mod hardening;
// Malformed requests by the hundred; the hub stays healthy and its data exact.
mod hostile;
// h2c on the HTTP/1.1 port: curl, reqwest, the client, many streams on one connection.
mod http2;
// Jobs over HTTP: lifecycle, `Prefer: wait`, idempotent submits, events, errors.
mod jobs;
// `plexus jobs submit | status | work` against a running hub.
mod jobs_cli;
// Jobs from the workers' side: lost workers, retries, competing workers, SIGKILL.
mod jobs_workers;
// The pattern lab: its runs over HTTP, the figures it measures, `plexus lab`.
mod lab;
// Rate, request-head timeout, connection and size limits.
mod limits;
// Long-poll specifics: `wait=`, `Prefer: wait=`, timeouts, subscriber counts.
mod longpoll;
// Long polls at scale: answered from the broadcast, nothing lost or reordered.
mod longpoll_scale;
// `/metrics`: each family moves when its event happens.
mod metrics;
// A SQLite database of the first, unversioned schema opens, migrates and reads back whole.
mod migration;
// NDJSON specifics: framing, keepalive and gap lines, bad parameters.
mod ndjson;
// `GET /openapi.json` covers every route.
mod openapi;
// `plexus bench … --check`: the verdict against the targets, on tiny runs.
mod perf;
// `POST /v1/topics/{topic}/messages`: seqs, envelopes, encodings, idempotency.
mod publish;
// Short-poll specifics: every form of `since`, paging with `limit` and `next`.
mod read;
// `durability = "replicated"` on Redis: no replica, a replica attached, a 3+3 cluster failover.
mod replication;
// Retention by count and by age, and the `expired` gaps it leaves.
mod retention;
// Graceful shutdown: open streams end cleanly and resume after a restart.
mod shutdown;
// Slow consumers: `catchup`, `latest` and `disconnect` policies, bounded memory.
mod slow;
// Hold mode: `plexus sidecar --app` as a GRIP proxy in front of a backend.
mod grip;
// `plexus sidecar` between clients and a hub: spool, exactly-once forwarding, proxied reads.
mod sidecar;
// SSE specifics: framing, `raw=1`, keepalives, gaps, bad parameters, `Last-Event-ID`.
mod sse;
// TLS: a self-signed certificate clients can trust, ALPN h2, bad key files.
mod tls;
// Webhooks: ordered signed deliveries, retries, dead letters, the SSRF guard, replay.
mod webhooks;
// WebSocket specifics: subscribe/unsubscribe/publish frames, error frames, `since` forms.
mod ws;
// The dashboard at `/`: CSP, ETag, `/v1/me`, the WebSocket's `auth` frame, and Chromium checks.
mod dashboard;
