//! The lab: measurements of the hub, each next to a baseline measured in the same run
//! (docs/BENCHMARKS.md records them), and the pattern lab (docs/API.md, "The pattern lab"):
//! [`patterns`] is its engine, [`runs`] serves it inside the hub (`POST /v1/lab/runs`),
//! [`outside`] runs it as `plexus lab`, [`report`] draws its table and chart.
//!
//! A load generator speaks to the hub only through `plexus-client`, as any application
//! would; it starts a hub in this process with [`crate::app`] or as a child `plexus serve`.
//! Two kinds of file are exceptions, on purpose:
//! - the baselines are not hub clients: [`raw`] is the raw TCP loop and [`raw_poll`] the raw
//!   long poll (tokio only), and
//!   `publish.rs` serves a bare axum handler on the same accept loop as the hub;
//! - [`store`] measures the store itself, so it is the one file here that names an engine.

pub mod check;
pub mod claims;
pub mod consumers;
pub mod fanout;
pub mod hold;
pub mod http2;
pub mod jobs;
pub mod outside;
pub mod patterns;
pub mod publish;
pub mod raw;
pub mod raw_poll;
pub mod replication;
pub mod report;
pub mod runs;
pub mod sidecar;
pub mod store;
pub mod webhooks;

use std::fmt;
use std::path::PathBuf;

use tokio::net::TcpListener;

use crate::app::{App, AppError, Running};
use crate::config::{Config, ConfigError, ServeArgs};

/// Why a measurement could not be made. Each message is one line for the user.
#[derive(Debug)]
pub enum LabError {
    /// The arguments ask for something that cannot be measured.
    Usage(String),
    Config(ConfigError),
    /// The hub under test could not be built or started.
    App(AppError),
    /// The hub under test refused a request or could not be reached.
    Hub(plexus_client::Error),
    /// A local resource (a directory, a socket, a child process, a tool) failed.
    Io(String),
    /// The run went wrong on the way (too few subscribers, a failed publish…).
    Run(String),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Usage(m) | LabError::Io(m) | LabError::Run(m) => f.write_str(m),
            LabError::Config(e) => write!(f, "{e}"),
            LabError::App(e) => write!(f, "{e}"),
            LabError::Hub(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LabError {}

impl From<ConfigError> for LabError {
    fn from(e: ConfigError) -> Self {
        LabError::Config(e)
    }
}

impl From<AppError> for LabError {
    fn from(e: AppError) -> Self {
        LabError::App(e)
    }
}

impl From<plexus_client::Error> for LabError {
    fn from(e: plexus_client::Error) -> Self {
        LabError::Hub(e)
    }
}

/// A fresh directory of this process for a run's data.
fn temp_dir(name: &str) -> Result<PathBuf, LabError> {
    let dir = std::env::temp_dir().join(format!("plexus-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::Io(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The configuration of a hub under test: the defaults plus `args`, without a rate limit
/// (the load generator is one client address) and without connection limits, as the
/// baselines have none.
fn hub_config(args: ServeArgs) -> Result<Config, LabError> {
    let mut config = Config::load(&ServeArgs {
        rate: Some(0.0),
        ..args
    })?;
    config.max_connections = usize::MAX;
    config.max_connections_per_client = usize::MAX;
    config.shutdown_grace = std::time::Duration::from_secs(1);
    Ok(config)
}

/// Binds a fresh loopback port.
async fn loopback() -> Result<TcpListener, LabError> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LabError::Io(format!("cannot bind: {e}")))
}

/// Starts a hub in this process on a fresh loopback port; [`Running::stop`] drains it and
/// closes its store.
async fn spawn_hub(config: &Config) -> Result<Running, LabError> {
    let app = App::build(config).await?;
    Ok(app.spawn(loopback().await?)?)
}

/// Binds `listen` and prints `listening on http://ADDR` (what `fanout`'s `spawn_server` waits
/// for), for the baselines run as child processes.
async fn announce(listen: &str) -> Result<TcpListener, LabError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::Io(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?;
    println!("listening on http://{addr}");
    Ok(listener)
}

/// The `Content-Length` of a request head already lowercased by the hand-written servers and
/// clients here; 0 when absent.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use plexus_client::{Client, PublishOptions, Transport};

    use super::*;

    fn ok<T, E: fmt::Display>(what: &str, r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Reads `socket` until `needle` appeared `n` times.
    async fn read_until(
        socket: &mut plexus_client::RawSocket,
        needle: &[u8],
        n: usize,
    ) -> BytesMut {
        let mut buf = BytesMut::new();
        while buf.windows(needle.len()).filter(|w| *w == needle).count() < n {
            assert!(ok("read", socket.read(&mut buf).await) > 0, "ended early");
        }
        buf
    }

    /// A hub on the memory store in this process, with one message on `topic` already.
    async fn memory_hub(name: &str, topic: &str) -> (PathBuf, Running, Client) {
        let dir = ok("dir", temp_dir(name));
        let config = ok(
            "config",
            hub_config(ServeArgs {
                data_dir: Some(dir.clone()),
                storage: Some("memory".into()),
                ..ServeArgs::default()
            }),
        );
        let hub = ok("hub", spawn_hub(&config).await);
        let client = ok("client", Client::new(hub.url()));
        ok(
            "warm-up",
            client.publish(topic, "0", &PublishOptions::default()).await,
        );
        (dir, hub, client)
    }

    #[tokio::test]
    async fn the_load_generators_subscriptions_see_every_message_of_an_in_process_hub() {
        let (dir, hub, client) = memory_hub("lab-test", "t").await;
        let mut sse = ok(
            "sse",
            client.subscribe_socket("t", None, Transport::Sse).await,
        );
        let mut ws = ok(
            "ws",
            client
                .subscribe_socket("t", Some("now"), Transport::WebSocket)
                .await,
        );
        let mut bytes = ok(
            "bytes",
            client.subscribe_bytes("t", None, Transport::Sse).await,
        );
        // The WebSocket confirms its subscription before anything is published.
        read_until(&mut ws, b"\"op\":\"ok\"", 1).await;
        assert_eq!(ok("info", client.topic("t").await).subscribers, 3);
        for i in 1..=3 {
            ok(
                "publish",
                client
                    .publish("t", format!("m{i}"), &PublishOptions::default())
                    .await,
            );
        }
        read_until(&mut sse, b"\"data\":\"m", 3).await;
        read_until(&mut ws, b"\"data\":\"m", 3).await;
        let mut body = Vec::new();
        while body.windows(9).filter(|w| *w == b"\"data\":\"m").count() < 3 {
            let chunk = bytes.next().await.expect("the stream goes on");
            body.extend_from_slice(&ok("chunk", chunk));
        }
        hub.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Polls `server` through a raw poller: the first answer from `since=now` waits for a
    /// publish, the next from its cursor comes at once with the second message.
    async fn poll_twice(base: &str) {
        let client = ok("client", Client::new(base));
        let mut poller = ok("poller", client.poll_socket("bench").await);
        let wait = std::time::Duration::from_secs(30);
        let (first, _) = tokio::join!(poller.poll("now", wait), async {
            // Published once the poll is held, or before it: either way it is after `now`
            // only when the poll came first, so wait for the server to hold it.
            loop {
                let info = ok("info", client.topic("bench").await);
                if info.subscribers >= 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            ok(
                "publish",
                client
                    .publish("bench", "one", &PublishOptions::default())
                    .await,
            );
            ok(
                "publish",
                client
                    .publish("bench", "two", &PublishOptions::default())
                    .await,
            );
        });
        let first = ok("first poll", first);
        let text = String::from_utf8_lossy(&first).into_owned();
        assert!(text.contains("\"data\":\"one\""), "{text}");
        let next: serde_json::Value = ok("json", serde_json::from_slice(&first));
        let cursor = next["next"].as_str().unwrap_or_default().to_owned();
        if !text.contains("\"data\":\"two\"") {
            let second = ok("second poll", poller.poll(&cursor, wait).await);
            let second = String::from_utf8_lossy(&second).into_owned();
            assert!(second.contains("\"data\":\"two\""), "{second}");
            assert!(!second.contains("\"data\":\"one\""), "{second}");
        }
    }

    #[tokio::test]
    async fn the_raw_poller_reads_the_hub_and_the_raw_long_poll_alike() {
        // The topic exists, so its subscriber count can be read.
        let (dir, hub, _client) = memory_hub("lab-poll-test", "bench").await;
        poll_twice(hub.url()).await;
        hub.stop().await;
        let _ = std::fs::remove_dir_all(&dir);

        let listener = ok("bind", loopback().await);
        let addr = ok("addr", listener.local_addr());
        let server = tokio::spawn(raw_poll::serve_on(listener));
        poll_twice(&format!("http://{addr}")).await;
        server.abort();
    }

    #[tokio::test]
    async fn the_raw_loop_answers_the_hubs_client_as_the_hub_would() {
        let listener = ok("bind", loopback().await);
        let addr = ok("addr", listener.local_addr());
        let server = tokio::spawn(raw::serve_on(listener));
        let client = ok("client", Client::new(&format!("http://{addr}")));
        let mut sse = ok(
            "sse",
            client.subscribe_socket("bench", None, Transport::Sse).await,
        );
        read_until(&mut sse, b"retry: 2000", 1).await;
        let receipt = ok(
            "publish",
            client
                .publish("bench", "hello", &PublishOptions::default())
                .await,
        );
        assert_eq!(receipt.seq, 1);
        read_until(&mut sse, b"\"data\":\"hello\"", 1).await;
        server.abort();
    }
}
