//! The server harness: a real `plexus serve` on port 0 with its own data directory, and a
//! few helpers that speak the HTTP API (docs/API.md) with a real client.
//!
//! Every test starts its own server, so tests never see each other's topics and can run in
//! parallel. Nothing here waits on a timer to let something happen: the startup waits for the
//! `listening on` line, and `eventually` polls observable state up to a generous deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Child;
use tokio::time::{Instant, sleep, timeout};

/// How long a server may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `eventually` waits for asynchronous effects (retention, subscribers) to show.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// A guard against a hung request, far above any wait a test asks the server for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of the server's stderr is kept for failure messages.
const STDERR_KEEP: usize = 64 * 1024;

/// A `plexus serve` child process bound to 127.0.0.1 on an ephemeral port (or on the
/// `--listen` address given in its arguments).
pub struct Server {
    /// Kept for the life of the server so that `restart` finds the same data.
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    /// `http://ADDR` or `https://ADDR`, as the `listening on` line said.
    base: String,
    stderr: Arc<Mutex<String>>,
    /// Every stdout line of the current process, the `listening on` line included.
    stdout: Arc<Mutex<Vec<String>>>,
    /// One client per server: reqwest's pool lives on the runtime that opened the
    /// connection, and every `#[tokio::test]` has its own runtime.
    client: Client,
    /// The private Redis of a server on the redis engine (see [`Server::start_on`]).
    _redis: Option<super::redis::RedisServer>,
}

/// A store engine, named by a test that runs on a particular one (the delivery matrix, the
/// engine-specific tests) instead of the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Memory,
    /// Each server gets a private `redis-server`, stopped with it.
    Redis,
}

impl Engine {
    /// The engine of a test that names none: `PLEXUS_TEST_ENGINE` (`sqlite`, the default;
    /// `memory`; `redis`). `scripts/test` leaves it unset and runs the suite once; a developer
    /// sets it to run the whole suite on one engine.
    pub fn from_env() -> Engine {
        match std::env::var("PLEXUS_TEST_ENGINE").as_deref() {
            Err(_) | Ok("" | "sqlite") => Engine::Sqlite,
            Ok("memory") => Engine::Memory,
            Ok("redis") => Engine::Redis,
            Ok(other) => panic!("PLEXUS_TEST_ENGINE={other:?}: expected sqlite, memory or redis"),
        }
    }
}

/// A config file holding `toml`, removed when the answer is dropped: pass it to
/// `Server::start(&["--config", …])`.
pub fn config_file(toml: &str) -> tempfile::TempPath {
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("create a config file");
    std::fs::write(file.path(), toml).expect("write the config");
    file.into_temp_path()
}

/// The text of `path`, to pass as an argument.
pub fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

impl Server {
    /// A batch upload that declares `declared` bytes, sends its head and stalls: while it
    /// is open, the hub holds twice the declared length of its read budget.
    pub async fn stalled_batch(&self, declared: usize) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let head = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {declared}\r\n\r\n[{{\"topic\":\"held\",\"data\":\"",
            self.addr()
        );
        let mut stalled = tokio::net::TcpStream::connect(self.addr())
            .await
            .expect("connect");
        stalled.write_all(head.as_bytes()).await.expect("write");
        stalled
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// Starts `plexus serve --listen 127.0.0.1:0 --data-dir <tempdir>` plus `args` on the
    /// default engine ([`Engine::from_env`]) unless `args` name a `--storage`; an `--listen`
    /// in `args` replaces the ephemeral port (so a restart keeps the port).
    pub async fn start(args: &[&str]) -> Server {
        // The default engine is the binary's default (sqlite), so no flag is added for it: a
        // test that configures storage through a config file keeps it.
        match Engine::from_env() {
            Engine::Sqlite => Server::start_inner(args, None).await,
            _ if args.contains(&"--storage") => Server::start_inner(args, None).await,
            engine => Server::start_on(engine, args).await,
        }
    }

    /// [`Server::start`] on `engine`, whatever the environment says.
    pub async fn start_on(engine: Engine, args: &[&str]) -> Server {
        let mut with = args.to_vec();
        match engine {
            Engine::Sqlite => {
                with.extend(["--storage", "sqlite"]);
                Server::start_inner(&with, None).await
            }
            Engine::Memory => {
                with.extend(["--storage", "memory"]);
                Server::start_inner(&with, None).await
            }
            Engine::Redis => {
                let redis = super::redis::RedisServer::start().await;
                let url = redis.url();
                with.extend(["--storage", &url]);
                Server::start_inner(&with, Some(redis)).await
            }
        }
    }

    /// [`Server::start`] for a test whose store must outlive the process (it restarts the
    /// server and expects the data back) or live outside its memory (it measures the hub's
    /// memory): on the default engine, unless that is `memory`, where it is `sqlite`.
    pub async fn start_durable(args: &[&str]) -> Server {
        if !args.contains(&"--storage") && Engine::from_env() == Engine::Memory {
            return Server::start_on(Engine::Sqlite, args).await;
        }
        Server::start(args).await
    }

    async fn start_inner(args: &[&str], redis: Option<super::redis::RedisServer>) -> Server {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        // Idle connections are dropped well before the shortest header timeout the tests
        // give the server (1 s), which also closes idle keep-alives: reusing one just as the
        // server closes it would fail the request (a race of every keep-alive client).
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(std::time::Duration::from_millis(300))
            .build()
            .expect("build the HTTP client");
        let mut server = Server {
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            base: String::new(),
            stderr: Arc::default(),
            stdout: Arc::default(),
            client,
            _redis: redis,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = super::cli::plexus();
        cmd.arg("serve");
        if !self.args.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the plexus binary");

        let log = Arc::new(Mutex::new(String::new()));
        self.stderr = log.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_done = tokio::spawn(drain_into(stderr, log.clone()));

        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let out_log = Arc::new(Mutex::new(Vec::new()));
        self.stdout = out_log.clone();
        let found = timeout(STARTUP_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                push_line(&out_log, &line);
                for scheme in ["http", "https"] {
                    if let Some(addr) = line.strip_prefix(&format!("listening on {scheme}://")) {
                        return Some(format!("{scheme}://{}", addr.trim()));
                    }
                }
                seen.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(base)) => {
                self.base = base;
                // Keep reading (and recording) so that a chatty server never blocks on a
                // full pipe and later lines can be checked.
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        push_line(&out_log, &line);
                    }
                });
                self.child = Some(child);
            }
            Ok(None) => {
                let status = child.wait().await;
                let _ = timeout(Duration::from_secs(5), stderr_done).await;
                panic!(
                    "plexus serve {:?} ended ({status:?}) without printing `listening on http(s)://…`;\n\
                     stdout was {seen:?}\nstderr:\n{}",
                    self.args,
                    self.stderr()
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                let _ = timeout(Duration::from_secs(5), stderr_done).await;
                panic!(
                    "plexus serve {:?} printed no `listening on http(s)://…` within {STARTUP_TIMEOUT:?};\n\
                     stdout was {seen:?}\nstderr:\n{}",
                    self.args,
                    self.stderr()
                );
            }
        }
    }

    /// Kills the server with SIGKILL: no shutdown code runs, as in a crash.
    pub async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL the server");
        }
    }

    /// SIGKILL, then a new server on the same data directory: on a new port, unless the
    /// arguments name a `--listen` address (see [`free_port`]), which the new one binds again.
    pub async fn restart(&mut self) {
        self.sigkill().await;
        self.spawn().await;
    }

    /// Sends SIGTERM (a graceful shutdown) and waits for the process to exit.
    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let pid = child.id().expect("a running child has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        child.wait().await.expect("wait for the server to exit")
    }

    /// Starts the server again on the same data directory after it exited.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn().await;
    }

    /// The server's process id (to observe it from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("the server is running")
    }

    /// `127.0.0.1:PORT` of the running server, for raw TCP clients.
    pub fn addr(&self) -> &str {
        self.base
            .strip_prefix("http://")
            .or_else(|| self.base.strip_prefix("https://"))
            .expect("the base URL starts with http:// or https://")
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        let (_, port) = self
            .addr()
            .rsplit_once(':')
            .expect("the address is ip:port");
        port.parse().expect("the port is a number")
    }

    /// The server's data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every line the current server process printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `plexus_connections_accepted_total` of `GET /metrics`, asked with `client` (whose
    /// connection, if new, is counted in the answer: the counter moves at accept).
    pub async fn connections_accepted(&self, client: &Client) -> u64 {
        let resp = client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("send GET /metrics");
        assert_eq!(resp.status(), StatusCode::OK, "GET /metrics");
        let text = resp.text().await.expect("read the /metrics body");
        metric(&text, "plexus_connections_accepted_total")
            .unwrap_or_else(|| panic!("no plexus_connections_accepted_total in /metrics:\n{text}"))
    }

    /// `http://127.0.0.1:PORT` (or `https://…`) of the running server.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `POST /v1/topics/{topic}/messages` with extra headers; the raw response.
    pub async fn publish_with(
        &self,
        topic: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .client
            .post(self.url(&format!("/v1/topics/{topic}/messages")))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("send publish")
    }

    /// Publishes and asserts `201`; the result `{"topic","seq","time"}`.
    pub async fn publish(&self, topic: &str, body: impl Into<reqwest::Body>) -> Value {
        let resp = self.publish_with(topic, body, &[]).await;
        let (status, _, value) = into_json(resp).await;
        assert_eq!(status, StatusCode::CREATED, "publish to {topic}: {value}");
        value
    }

    /// Publishes `n` messages `"{prefix}{i}"` (i from 1) one by one; their results.
    pub async fn publish_n(&self, topic: &str, n: usize, prefix: &str) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for i in 1..=n {
            out.push(self.publish(topic, format!("{prefix}{i}")).await);
        }
        out
    }

    /// `POST /v1/publish` with the given body and content type; the raw response.
    pub async fn batch_raw(&self, body: String, content_type: &str) -> Response {
        self.client
            .post(self.url("/v1/publish"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send batch publish")
    }

    /// A JSON-array batch that must succeed; its `results`.
    pub async fn batch(&self, items: &[Value]) -> Vec<Value> {
        let body = Value::Array(items.to_vec()).to_string();
        let (status, _, value) = into_json(self.batch_raw(body, "application/json").await).await;
        assert_eq!(status, StatusCode::CREATED, "batch publish: {value}");
        value["results"]
            .as_array()
            .unwrap_or_else(|| panic!("batch answer has no `results` array: {value}"))
            .clone()
    }

    /// Publishes `n` messages `"{prefix}{i}"` to one topic in batches of at most 1,000.
    pub async fn batch_n(&self, topic: &str, n: usize, prefix: &str) {
        let items: Vec<Value> = (1..=n)
            .map(|i| json!({"topic": topic, "data": format!("{prefix}{i}")}))
            .collect();
        for chunk in items.chunks(1000) {
            let results = self.batch(chunk).await;
            assert_eq!(results.len(), chunk.len(), "one result per batch item");
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self.client.get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("send GET")
    }

    /// `GET path`; status, headers and the body as JSON (`Null` when empty).
    pub async fn get_json(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        into_json(self.get(path, &[]).await).await
    }

    /// `GET /v1/topics/{topics}/messages?{query}`, asserting `200`; the poll answer.
    pub async fn read(&self, topics: &str, query: &str) -> Value {
        let path = format!("/v1/topics/{topics}/messages?{query}");
        let (status, _, value) = self.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {value}");
        assert!(
            value["messages"].is_array(),
            "GET {path}: no `messages` array in {value}"
        );
        assert!(
            value["next"].is_string(),
            "GET {path}: `next` is not a string in {value}"
        );
        value
    }

    /// Every retained message of `topics`, from `since=all`, following `next` page by page.
    pub async fn read_all(&self, topics: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = "all".to_string();
        loop {
            let page = self
                .read(topics, &format!("since={}&limit=1000", enc(&since)))
                .await;
            let msgs = messages(&page);
            if msgs.is_empty() {
                return out;
            }
            out.extend(msgs.iter().cloned());
            let next = next(&page);
            assert_ne!(
                next, since,
                "`next` must move forward after a non-empty page"
            );
            since = next;
        }
    }

    /// `GET /v1/topics/{topic}`, asserting `200`.
    pub async fn topic_info(&self, topic: &str) -> Value {
        let (status, _, value) = self.get_json(&format!("/v1/topics/{topic}")).await;
        assert_eq!(status, StatusCode::OK, "GET /v1/topics/{topic}: {value}");
        value
    }

    /// `GET /v1/topics`, asserting `200`; the list, sorted by name.
    pub async fn topics(&self) -> Vec<Value> {
        let (status, _, value) = self.get_json("/v1/topics").await;
        assert_eq!(status, StatusCode::OK, "GET /v1/topics: {value}");
        let mut list = value["topics"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /v1/topics: no `topics` array in {value}"))
            .clone();
        list.sort_by(|a, b| a["topic"].as_str().cmp(&b["topic"].as_str()));
        list
    }

    /// What a client can see of the stored state: the topic list and every message of
    /// `topics`. Invalid input must leave it unchanged.
    pub async fn snapshot(&self, topics: &[&str]) -> Value {
        let mut contents = serde_json::Map::new();
        for t in topics {
            contents.insert(t.to_string(), Value::Array(self.read_all(t).await));
        }
        json!({"topics": self.topics().await, "messages": contents})
    }

    /// The tail of what the server wrote to stderr.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed startup already panicked with the stderr; otherwise show it with the failure.
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "---- plexus serve {:?} stderr (tail) ----\n{}",
                self.args,
                self.stderr()
            );
        }
    }
}

/// Installs rustls' ring provider for the process: reqwest is built with
/// `rustls-no-provider` and panics when it builds a client without one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use super::redis::free_port;

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(char::is_whitespace)?;
        if key != name {
            return None;
        }
        let value: f64 = value.trim().parse().ok()?;
        Some(value as u64)
    })
}

fn push_line(log: &Mutex<Vec<String>>, line: &str) {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(line.to_string());
}

async fn drain_into(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
        if log.len() > 2 * STDERR_KEEP {
            let mut cut = log.len() - STDERR_KEEP;
            while !log.is_char_boundary(cut) {
                cut += 1;
            }
            log.drain(..cut);
        }
    }
}

/// Status, headers and JSON body (`Null` for an empty body; panics on a non-JSON body).
pub async fn into_json(resp: Response) -> (StatusCode, HeaderMap, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("read response body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"))
    };
    (status, headers, value)
}

/// Asserts an RFC 9457 problem with `status`; returns its body.
pub async fn expect_problem(resp: Response, status: u16, what: &str) -> Value {
    let got = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = resp.text().await.expect("read problem body");
    assert_eq!(
        got.as_u16(),
        status,
        "{what}: expected {status}, got {got}: {text}"
    );
    assert!(
        ct.starts_with("application/problem+json"),
        "{what}: Content-Type is {ct:?}, expected application/problem+json; body {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: problem body is not JSON ({e}): {text}"));
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].is_string(),
            "{what}: problem has no string `{field}`: {body}"
        );
    }
    assert_eq!(
        body["status"],
        json!(status),
        "{what}: problem `status` field: {body}"
    );
    body
}

/// Polls `check` until it gives `Some`, at most `DEADLINE`; panics naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// The `messages` of a poll answer.
pub fn messages(page: &Value) -> Vec<Value> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no `messages` array in {page}"))
        .clone()
}

/// The seqs of a poll answer's messages, in order.
pub fn seqs(page: &Value) -> Vec<u64> {
    messages(page).iter().map(seq).collect()
}

pub fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric `seq` in {v}"))
}

/// The `gaps` of a poll answer; a missing field means none.
pub fn gaps(page: &Value) -> Vec<Value> {
    match page.get("gaps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(g)) => g.clone(),
        Some(other) => panic!("`gaps` is not an array: {other}"),
    }
}

pub fn next(page: &Value) -> String {
    page["next"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `next` in {page}"))
        .to_string()
}

/// A multi-topic cursor `a:1,b:2` as a map.
pub fn parse_cursor(cursor: &str) -> BTreeMap<String, u64> {
    cursor
        .split(',')
        .map(|part| {
            let (topic, seq) = part
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("cursor part {part:?} of {cursor:?} is not topic:seq"));
            let seq = seq
                .parse()
                .unwrap_or_else(|_| panic!("cursor part {part:?} of {cursor:?} has a bad seq"));
            (topic.to_string(), seq)
        })
        .collect()
}

/// The payload of an envelope: `data` as bytes, or `data_base64` decoded. Exactly one of the
/// two must be there.
pub fn payload(env: &Value) -> Vec<u8> {
    match (env.get("data"), env.get("data_base64")) {
        (Some(Value::String(s)), None) => s.as_bytes().to_vec(),
        (None, Some(Value::String(b))) => {
            b64_decode(b).unwrap_or_else(|| panic!("`data_base64` is not valid base64: {env}"))
        }
        _ => panic!("envelope must have exactly one of string `data` / `data_base64`: {env}"),
    }
}

/// Asserts an RFC 3339 UTC time with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn assert_time(t: &Value) {
    let s = t
        .as_str()
        .unwrap_or_else(|| panic!("time is not a string: {t}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    let ok = b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z';
    assert!(
        ok,
        "{s:?} is not RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
    );
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64; `None` if it is not exactly that.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (ci, chunk) in b.chunks(4).enumerate() {
        let last = ci == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            let v = B64.iter().position(|&x| x == c)? as u32;
            n = n << 6 | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[test]
fn base64_round_trips() {
    for (raw, text) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"\xff\x00\xfe", "/wD+"),
    ] {
        assert_eq!(b64_encode(raw), text);
        assert_eq!(b64_decode(text).as_deref(), Some(raw));
    }
    assert_eq!(b64_decode("Zg="), None);
    assert_eq!(b64_decode("Z!=="), None);
}
