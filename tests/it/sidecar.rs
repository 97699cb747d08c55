//! `plexus sidecar` as a child process between real clients and a real hub: readiness with
//! the hub down, publishes through the spool (201 from the hub, 202 spooled), exactly-once
//! forwarding across a hub crash, a sidecar crash and lost responses, the spool's bound, and
//! reads, jobs and bad input answered as the hub answers them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::{Instant, timeout};

use crate::kit::cli::plexus;
use crate::kit::{
    STARTUP_TIMEOUT, Server, eventually, expect_problem, free_port, install_crypto_provider,
    into_json, metric, payload,
};

/// A `plexus sidecar` child process on a fixed loopback port (kept across restarts) with its
/// own spool directory.
struct Sidecar {
    dir: tempfile::TempDir,
    hub: String,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    client: Client,
}

impl Sidecar {
    async fn start(hub: &str, args: &[&str]) -> Sidecar {
        install_crypto_provider();
        let mut sidecar = Sidecar {
            dir: tempfile::tempdir().expect("a spool directory"),
            hub: hub.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            port: free_port(),
            child: None,
            stderr: Arc::default(),
            client: Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_idle_timeout(Duration::from_millis(300))
                .build()
                .expect("an HTTP client"),
        };
        sidecar.spawn().await;
        sidecar
    }

    async fn spawn(&mut self) {
        let mut cmd = plexus();
        cmd.arg("sidecar")
            .args(["--hub", &self.hub])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--spool-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn plexus sidecar");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let log = self.stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
                if log.len() > 256 * 1024 {
                    let cut = log.len() - 64 * 1024;
                    let cut = (cut..log.len())
                        .find(|i| log.is_char_boundary(*i))
                        .unwrap_or(0);
                    log.drain(..cut);
                }
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .expect("the sidecar prints its listening line in time")
            .expect("read the sidecar's stdout");
        assert_eq!(
            line.as_deref(),
            Some(format!("listening on http://127.0.0.1:{}", self.port).as_str()),
            "sidecar stderr:\n{}",
            self.stderr()
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL the sidecar");
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn publish(&self, topic: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url(&format!("/v1/topics/{topic}/messages")))
            .body(body)
            .send()
            .await
            .expect("publish through the sidecar");
        let (status, _, v) = into_json(resp).await;
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        into_json(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    async fn status(&self) -> Value {
        let (status, _, v) = self.get("/v1/sidecar").await;
        assert_eq!(status, StatusCode::OK, "GET /v1/sidecar: {v}");
        v
    }

    /// Waits until the spool is empty (everything forwarded).
    async fn drained(&self) {
        eventually("the spool to drain", || async {
            let s = self.status().await;
            (s["spool"]["messages"] == json!(0)).then_some(())
        })
        .await;
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- plexus sidecar stderr (tail) ----\n{}", self.stderr());
        }
    }
}

/// A hub on a fixed port, so a restarted one is found at the same address.
async fn hub() -> (Server, String) {
    let port = free_port();
    let server = Server::start_durable(&["--listen", &format!("127.0.0.1:{port}")]).await;
    let base = server.base().to_owned();
    (server, base)
}

/// The payloads stored on `topic`, in seq order, read from the hub itself.
async fn stored(hub: &Server, topic: &str) -> Vec<String> {
    hub.read_all(topic)
        .await
        .iter()
        .map(|e| String::from_utf8(payload(e)).expect("UTF-8 payloads"))
        .collect()
}

#[tokio::test]
async fn ready_at_once_with_the_hub_down_and_publishes_are_spooled() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let sidecar = Sidecar::start(&nowhere, &["--forward-wait", "1s"]).await;
    let (status, _, v) = sidecar.get("/readyz").await;
    // Readiness waits for nothing but the spool (a generous bound, not a benchmark).
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!((status, v), (StatusCode::OK, json!({"status": "ready"})));
    let (status, _, _) = sidecar.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = sidecar.publish("orders", "first").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["topic"], "orders");
    assert_eq!(body["spooled"], true);
    let key = body["key"].as_str().expect("a key");
    let s = sidecar.status().await;
    assert!(
        key.starts_with(s["id"].as_str().expect("an id")),
        "{key} {s}"
    );
    assert_eq!(s["hub"], "unreachable");
    assert_eq!(s["spool"]["messages"], 1);
    assert_eq!(s["spool"]["bytes"], 5);
    assert!(s["spool"]["oldest"].is_string(), "{s}");

    // Reads need the hub: 503 + Retry-After within forward_wait, never a hang.
    let resp = sidecar
        .client
        .get(sidecar.url("/v1/topics/orders/messages?wait=30"))
        .send()
        .await
        .expect("a poll");
    assert_eq!(resp.headers()["retry-after"], "1");
    let p = expect_problem(resp, 503, "a poll with the hub down").await;
    assert_eq!(p["type"], "urn:plexus:problem:unavailable");

    let text = sidecar
        .client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        metric(&text, "plexus_sidecar_spool_messages"),
        Some(1),
        "{text}"
    );
    assert_eq!(metric(&text, "plexus_sidecar_hub_up"), Some(0), "{text}");
}

#[tokio::test]
async fn publishes_reads_and_jobs_through_the_sidecar_answer_as_the_hub() {
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &[]).await;
    let (status, body) = sidecar.publish("orders", "one").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["seq"], 1);
    assert!(body["time"].is_string());

    let resp = sidecar
        .client
        .post(sidecar.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(json!([{"topic": "orders", "data": "two"}, {"topic": "audit", "data_base64": "/w==", "event": "x"}]).to_string())
        .send()
        .await
        .expect("batch");
    let (status, _, v) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["results"][0]["seq"], 2);
    assert_eq!(v["results"][1]["topic"], "audit");

    // A client's own key is kept: a replay is stored once.
    for _ in 0..2 {
        let resp = sidecar
            .client
            .post(sidecar.url("/v1/topics/orders/messages"))
            .header("idempotency-key", "order-3")
            .body("three")
            .send()
            .await
            .expect("publish");
        let (status, _, v) = into_json(resp).await;
        assert_eq!((status, v["seq"].clone()), (StatusCode::CREATED, json!(3)));
    }
    assert_eq!(stored(&hub, "orders").await, ["one", "two", "three"]);

    // Reads are the hub's own answers, byte for byte.
    for path in [
        "/v1/topics/orders/messages?since=1",
        "/v1/topics/orders,audit/messages",
        "/v1/topics/orders",
        "/v1/topics",
    ] {
        let via_sidecar = sidecar.get(path).await;
        let direct = hub.get_json(path).await;
        assert_eq!(via_sidecar.0, direct.0, "{path}");
        let mut a = via_sidecar.2;
        let mut b = direct.2;
        // Only the live subscriber counts may differ between two reads.
        for v in [&mut a, &mut b] {
            if let Some(o) = v.as_object_mut() {
                o.remove("subscribers");
            }
            if let Some(list) = v["topics"].as_array_mut() {
                for t in list {
                    t.as_object_mut().map(|o| o.remove("subscribers"));
                }
            }
        }
        assert_eq!(a, b, "{path}");
    }

    // A long poll through the sidecar wakes when a message is published on the hub. It asks
    // for 30 s and must answer within 10 (a generous bound on the 1 s the contract gives), so
    // an answer at the wait's end, a timer rather than a wake, fails; the hub's gauge shows
    // the poll is held by the hub, which the publish wakes.
    let poll = sidecar
        .client
        .get(sidecar.url("/v1/topics/late/messages?since=all&wait=30"))
        .send();
    let poll = tokio::spawn(poll);
    eventually("the long poll to wait on the hub", || async {
        let text = hub.metrics().await;
        (metric(&text, "plexus_long_polls_waiting") >= Some(1)).then_some(())
    })
    .await;
    let woke = Instant::now();
    let _ = hub.publish("late", "wake").await;
    let (status, _, v) = into_json(poll.await.expect("poll task").expect("poll")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["messages"][0]["data"], "wake");
    assert!(woke.elapsed() < Duration::from_secs(10), "a generous bound");

    // Jobs: submit, claim, complete, status, all through the sidecar.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/queues/thumbs/jobs"))
        .body("img-1")
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let (_, _, job) = into_json(resp).await;
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/queues/thumbs/claim?wait=5"))
        .send()
        .await
        .expect("claim");
    let (status, _, claimed) = into_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["id"], job["id"]);
    let lease = claimed["lease"].as_str().expect("a lease");
    let resp = sidecar
        .client
        .post(sidecar.url(&format!(
            "/v1/jobs/{}/complete?lease={lease}",
            job["id"].as_str().expect("id")
        )))
        .body("done")
        .send()
        .await
        .expect("complete");
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _, v) = sidecar.get(&location).await;
    assert_eq!(
        (status, v["state"].clone()),
        (StatusCode::OK, json!("succeeded"))
    );
    // A problem of the hub comes back as the hub wrote it.
    let resp = sidecar
        .client
        .get(sidecar.url("/v1/jobs/00000000000000000000000000000000"))
        .send()
        .await
        .expect("status");
    let p = expect_problem(resp, 404, "an unknown job through the sidecar").await;
    assert_eq!(p["type"], "urn:plexus:problem:not-found");
}

/// A request: method, path, headers, body.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, String);

#[tokio::test]
async fn bad_input_gets_the_hubs_status_and_type_and_is_never_spooled() {
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &["--max-message-bytes", "1048576"]).await;
    let big = "x".repeat(1048577);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/v1/topics/bad..topic/messages".into(),
            vec![],
            "x".into(),
        ),
        (
            "POST",
            "/v1/topics/_jobs.x/messages".into(),
            vec![],
            "x".into(),
        ),
        (
            "POST",
            "/v1/topics/ok/messages".into(),
            vec![("plexus-event", "no spaces")],
            "x".into(),
        ),
        (
            "POST",
            "/v1/topics/ok/messages".into(),
            vec![("idempotency-key", "a b")],
            "x".into(),
        ),
        ("POST", "/v1/topics/ok/messages".into(), vec![], big),
        (
            "POST",
            "/v1/publish".into(),
            vec![("content-type", "application/json")],
            "{}".into(),
        ),
        ("POST", "/v1/publish".into(), vec![], "[]".into()),
        (
            "POST",
            "/v1/publish".into(),
            vec![],
            r#"[{"topic":"ok","data":"a","data_base64":"YQ=="}]"#.into(),
        ),
        (
            "POST",
            "/v1/publish".into(),
            vec![],
            r#"[{"topic":"ok","data":"a","extra":1}]"#.into(),
        ),
        (
            "POST",
            "/v1/publish".into(),
            vec![],
            r#"[{"topic":"a b","data":"a"}]"#.into(),
        ),
        (
            "POST",
            "/v1/publish".into(),
            vec![],
            r#"[{"topic":"_x","data":"a"}]"#.into(),
        ),
        (
            "POST",
            "/v1/publish".into(),
            vec![],
            r#"[{"topic":"ok","data_base64":"%%%"}]"#.into(),
        ),
        (
            "GET",
            "/v1/topics/ok/messages?since=yesterday".into(),
            vec![],
            String::new(),
        ),
        (
            "GET",
            "/v1/topics/a,b/messages?since=4".into(),
            vec![],
            String::new(),
        ),
    ];
    for (method, path, headers, body) in cases {
        let send = |base: String| {
            let mut req = sidecar
                .client
                .request(method.parse().expect("a method"), format!("{base}{path}"))
                .body(body.clone());
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            req.send()
        };
        let direct = send(hub.base().to_owned()).await.expect("to the hub");
        let status = direct.status().as_u16();
        assert!(status >= 400, "{method} {path}: the hub accepted it");
        let from_hub = expect_problem(direct, status, &format!("hub {method} {path}")).await;
        let via = send(sidecar.url("")).await.expect("to the sidecar");
        let from_sidecar = expect_problem(via, status, &format!("sidecar {method} {path}")).await;
        assert_eq!(from_sidecar["type"], from_hub["type"], "{method} {path}");
    }
    let s = sidecar.status().await;
    assert_eq!(s["spool"]["messages"], 0, "nothing was spooled: {s}");
    assert_eq!(s["forwarded"], 0, "nothing was forwarded: {s}");
    assert_eq!(hub.topics().await, Vec::<Value>::new());
}

/// 8 publishers × 1,250 messages to 4 topics; the hub is SIGKILLed after 2,000 answers and
/// started again later. Every publish is answered 201 or 202; the hub ends with each message
/// once, and each publisher's messages in its order on its topic.
#[tokio::test]
async fn hub_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 1250;
    let (mut hub, base) = hub().await;
    let sidecar = Arc::new(Sidecar::start(&base, &["--forward-wait", "500ms"]).await);
    let answered = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..TASKS)
        .map(|k| {
            let sidecar = sidecar.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut codes = BTreeMap::new();
                for i in 0..PER_TASK {
                    let (status, v) = sidecar
                        .publish(&format!("t{}", k % 4), format!("p{k}:{i}"))
                        .await;
                    assert!(
                        status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
                        "p{k}:{i}: {status} {v}"
                    );
                    *codes.entry(status.as_u16()).or_insert(0) += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                codes
            })
        })
        .collect();
    eventually("2,000 publishes answered", || async {
        (answered.load(Ordering::Relaxed) >= 2000).then_some(())
    })
    .await;
    hub.sigkill().await;
    let at_kill = answered.load(Ordering::Relaxed);
    eventually(
        "2,000 more publishes answered with the hub down",
        || async {
            let n = answered.load(Ordering::Relaxed);
            (n >= (at_kill + 2000).min(TASKS * PER_TASK)).then_some(())
        },
    )
    .await;
    hub.start_again().await;
    let mut codes = BTreeMap::new();
    for p in publishers {
        for (code, n) in p.await.expect("a publisher") {
            *codes.entry(code).or_insert(0) += n;
        }
    }
    assert!(
        codes.contains_key(&202),
        "some publishes were spooled: {codes:?}"
    );
    assert!(
        codes.contains_key(&201),
        "some were answered by the hub: {codes:?}"
    );
    sidecar.drained().await;
    let mut all = BTreeSet::new();
    let mut total = 0;
    for t in 0..4 {
        let mut last: BTreeMap<usize, usize> = BTreeMap::new();
        for p in stored(&hub, &format!("t{t}")).await {
            total += 1;
            let (k, i) = p[1..].split_once(':').expect("p<k>:<i>");
            let (k, i): (usize, usize) = (k.parse().expect("k"), i.parse().expect("i"));
            assert_eq!(k % 4, t, "{p} on its topic");
            if let Some(prev) = last.insert(k, i) {
                assert!(i > prev, "publisher {k}: {i} after {prev} on t{t}");
            }
            assert!(all.insert(p.clone()), "{p} stored twice");
        }
    }
    assert_eq!(total, TASKS * PER_TASK, "exactly every message, once");
}

/// 5,000 messages spooled with the hub down, the sidecar SIGKILLed and started again, then the
/// hub started: all 5,000 arrive, in order, none twice, under the same sidecar id.
#[tokio::test]
async fn sidecar_killed_with_a_backlog_forwards_it_after_a_restart() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut sidecar = Sidecar::start(&base, &[]).await;
    let id = sidecar.status().await["id"].clone();
    for i in 0..1000 {
        let (status, v) = sidecar.publish("backlog", format!("m{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    }
    for chunk in 0..8 {
        let items: Vec<Value> = (0..500)
            .map(|j| json!({"topic": "backlog", "data": format!("m{}", 1000 + chunk * 500 + j)}))
            .collect();
        let resp = sidecar
            .client
            .post(sidecar.url("/v1/publish"))
            .json(&items)
            .send()
            .await
            .expect("batch");
        let (status, _, v) = into_json(resp).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["results"][499]["spooled"], true);
    }
    assert_eq!(sidecar.status().await["spool"]["messages"], 5000);
    sidecar.sigkill().await;
    sidecar.spawn().await;
    assert_eq!(
        sidecar.status().await["id"],
        id,
        "the id is kept in the spool"
    );
    assert_eq!(sidecar.status().await["spool"]["messages"], 5000);
    let hub = Server::start_durable(&["--listen", &format!("127.0.0.1:{port}")]).await;
    sidecar.drained().await;
    let expected: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    assert_eq!(stored(&hub, "backlog").await, expected);
}

/// A TCP proxy between the sidecar and the hub that lets every 7th forwarded batch reach the
/// hub, swallows the hub's answer to it, and then cuts the connection.
async fn fault_proxy(hub_addr: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    let forwards = Arc::new(AtomicUsize::new(0));
    let cuts = Arc::new(AtomicUsize::new(0));
    let cuts_out = cuts.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(&hub_addr).await else {
                continue;
            };
            let (forwards, cuts) = (forwards.clone(), cuts.clone());
            tokio::spawn(async move {
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                let cut = Arc::new(AtomicBool::new(false));
                let cut_in = cut.clone();
                let requests = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = down_r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // A forwarded batch is plain JSON in an h2c DATA frame.
                        if find(&buf[..n], b"\"idempotency_key\"")
                            && (forwards.fetch_add(1, Ordering::SeqCst) + 1) % 7 == 0
                        {
                            cut_in.store(true, Ordering::SeqCst);
                        }
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = up_r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if cut.load(Ordering::SeqCst) {
                        if find(&buf[..n], b"\"results\"") {
                            // The hub has answered (and so committed): lose the answer.
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        continue;
                    }
                    if down_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                requests.abort();
            });
        }
    });
    (format!("http://{addr}"), cuts_out)
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn lost_responses_are_forwarded_again_and_stored_once() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 250;
    let (hub, _) = hub().await;
    let (via_proxy, cuts) = fault_proxy(hub.addr().to_owned()).await;
    let sidecar = Arc::new(Sidecar::start(&via_proxy, &[]).await);
    let publishers: Vec<_> = (0..TASKS)
        .map(|k| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let (status, v) = sidecar.publish("cut", format!("p{k}:{i}")).await;
                    assert!(
                        status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
                        "{status} {v}"
                    );
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("a publisher");
    }
    sidecar.drained().await;
    assert!(
        cuts.load(Ordering::SeqCst) >= 3,
        "the proxy cut answers: {}",
        cuts.load(Ordering::SeqCst)
    );
    let got = stored(&hub, "cut").await;
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "no message stored twice");
    assert_eq!(got.len(), TASKS * PER_TASK, "every message stored");
    let text = sidecar
        .client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&text, "plexus_sidecar_forward_retries_total").unwrap_or(0) >= 3,
        "{text}"
    );
}

#[tokio::test]
async fn a_full_spool_refuses_with_503_and_keeps_what_it_acknowledged() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let sidecar = Sidecar::start(&base, &["--spool-max-bytes", "1000"]).await;
    let mut accepted = Vec::new();
    let refusal = loop {
        let body = format!("{:0>100}", accepted.len());
        let resp = sidecar
            .client
            .post(sidecar.url("/v1/topics/full/messages"))
            .body(body.clone())
            .send()
            .await
            .expect("publish");
        if resp.status() == StatusCode::ACCEPTED {
            accepted.push(body);
            assert!(
                accepted.len() <= 10,
                "1,000 bytes hold ten 100-byte messages"
            );
            continue;
        }
        break resp;
    };
    assert_eq!(accepted.len(), 10);
    assert_eq!(refusal.headers()["retry-after"], "1");
    let p = expect_problem(refusal, 503, "a publish to a full spool").await;
    assert_eq!(p["type"], "urn:plexus:problem:spool-full");
    // A batch that does not fit is refused whole.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/publish"))
        .json(&json!([{"topic": "full", "data": "x"}]))
        .send()
        .await
        .expect("batch");
    expect_problem(resp, 503, "a batch to a full spool").await;
    assert_eq!(sidecar.status().await["spool"]["bytes"], 1000);

    let hub = Server::start_durable(&["--listen", &format!("127.0.0.1:{port}")]).await;
    sidecar.drained().await;
    assert_eq!(stored(&hub, "full").await, accepted);
    let (status, v) = sidecar.publish("full", "room again").await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::ACCEPTED,
        "{status} {v}"
    );
}

#[tokio::test]
async fn a_local_token_is_required_when_set_and_never_sent_upstream() {
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &["--local-token", "local-s3cret"]).await;
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/topics/a/messages"))
        .body("x")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    expect_problem(resp, 401, "no local token").await;
    let (status, _, _) = sidecar.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "the open paths stay open");
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/topics/a/messages"))
        .bearer_auth("local-s3cret")
        .body("x")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = sidecar
        .client
        .get(sidecar.url("/v1/topics/a/messages?access_token=local-s3cret"))
        .send()
        .await
        .expect("read");
    let (status, _, v) = into_json(resp).await;
    assert_eq!(
        (status, v["messages"][0]["data"].clone()),
        (StatusCode::OK, json!("x"))
    );
    assert_eq!(stored(&hub, "a").await, ["x"]);
}

/// A local stream read through the sidecar with reqwest: SSE events as `(id, envelope or gap)`,
/// or NDJSON lines, skipping keepalives.
struct LocalStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    sse: bool,
}

impl LocalStream {
    async fn open(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)]) -> LocalStream {
        let mut req = sidecar.client.get(sidecar.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("open a stream");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let sse = path.contains("/sse");
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(
            ct,
            if sse {
                "text/event-stream"
            } else {
                "application/x-ndjson"
            }
        );
        LocalStream {
            resp,
            buf: Vec::new(),
            sse,
        }
    }

    /// The next message or gap: `(id, json)` (`id` empty for NDJSON).
    async fn next(&mut self) -> (String, Value) {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        loop {
            if let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let block: Vec<u8> = self.buf.drain(..i + sep.len()).collect();
                let text = String::from_utf8(block).expect("UTF-8 frames");
                if self.sse {
                    let mut id = String::new();
                    let mut data = None;
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(v).expect("a JSON data line"));
                        }
                    }
                    if let Some(data) = data {
                        return (id, data);
                    }
                } else {
                    let v: Value = serde_json::from_str(text.trim()).expect("a JSON line");
                    if v["event"] != "keepalive" {
                        return (String::new(), v);
                    }
                }
                continue;
            }
            let chunk = timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("a frame within 30 s")
                .expect("read the stream")
                .expect("the stream goes on");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// The value of `name{protocol="h2c"}`-style labelled samples, summed.
fn labelled(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// 100 SSE and 100 NDJSON subscribers over 10 topics through the sidecar share one upstream
/// subscription per topic, all on one connection to the hub; each gets every message in
/// order (catch-up from its cursor, then live), a `Last-Event-ID` resume is exact, and the
/// upstream subscriptions close after the last local subscriber leaves.
#[tokio::test]
async fn local_subscribers_share_one_upstream_subscription_per_topic() {
    const TOPICS: usize = 10;
    const BEFORE: u64 = 5;
    const AFTER: u64 = 20;
    let (hub, base) = hub().await;
    let sidecar = Arc::new(Sidecar::start(&base, &[]).await);
    for t in 0..TOPICS {
        for i in 1..=BEFORE {
            hub.publish(&format!("s{t}"), format!("s{t}-{i}")).await;
        }
    }
    let mut streams = Vec::new();
    for n in 0..200 {
        let t = n % TOPICS;
        let (path, from) = if n < 100 {
            (format!("/v1/topics/s{t}/sse?since=0"), 1)
        } else {
            (format!("/v1/topics/s{t}/stream?since=2"), 3)
        };
        streams.push((t, from, LocalStream::open(&sidecar, &path, &[]).await));
    }
    // One more SSE client resumes by Last-Event-ID, as a browser does.
    let resumed = LocalStream::open(
        &sidecar,
        "/v1/topics/s0/sse?since=now",
        &[("last-event-id", "3")],
    )
    .await;
    streams.push((0, 4, resumed));

    let publishers: Vec<_> = (0..TOPICS)
        .map(|t| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                for i in BEFORE + 1..=BEFORE + AFTER {
                    let (status, v) = sidecar.publish(&format!("s{t}"), format!("s{t}-{i}")).await;
                    assert!(status.is_success(), "{v}");
                }
            })
        })
        .collect();
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(t, from, mut s)| {
            tokio::spawn(async move {
                for want in from..=BEFORE + AFTER {
                    let (id, v) = s.next().await;
                    assert_eq!(v["seq"], json!(want), "s{t}: {v}");
                    assert_eq!(v["data"], json!(format!("s{t}-{want}")));
                    if s.sse {
                        assert_eq!(id, want.to_string(), "the SSE id is the hub's seq");
                    }
                }
                s
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("a publisher");
    }
    let mut open = Vec::new();
    for r in readers {
        open.push(r.await.expect("a reader"));
    }
    let text = hub.metrics().await;
    assert_eq!(
        labelled(&text, "plexus_connections_open{protocol=\"h2c\"}"),
        1,
        "one HTTP/2 connection from the sidecar:\n{text}"
    );
    for t in 0..TOPICS {
        let info = hub.topic_info(&format!("s{t}")).await;
        assert_eq!(
            info["subscribers"], 1,
            "one upstream subscription for s{t}: {info}"
        );
    }
    let s = sidecar.status().await;
    assert_eq!(s["upstream"]["subscriptions"], TOPICS, "{s}");
    assert_eq!(s["local_streams"], 201, "{s}");

    drop(open);
    eventually("the upstream subscriptions to close", || async {
        let mut total = 0;
        for t in 0..TOPICS {
            total += hub.topic_info(&format!("s{t}")).await["subscribers"]
                .as_u64()
                .unwrap_or(99);
        }
        (total == 0).then_some(())
    })
    .await;
    assert_eq!(sidecar.status().await["upstream"]["subscriptions"], 0);
}

/// The hub is SIGKILLed under 20 local subscribers and restarted; 200 messages published
/// through the sidecar during the outage are spooled, forwarded after the restart, and every
/// subscriber gets everything published before, during and after, once and in order.
#[tokio::test]
async fn shared_subscriptions_survive_a_hub_restart() {
    let (mut hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &[]).await;
    let mut streams = Vec::new();
    for n in 0..20 {
        let path = if n % 2 == 0 {
            "/v1/topics/r/sse?since=0"
        } else {
            "/v1/topics/r/stream?since=0"
        };
        streams.push(LocalStream::open(&sidecar, path, &[]).await);
    }
    for i in 1..=50 {
        let (status, v) = sidecar.publish("r", format!("r-{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    hub.sigkill().await;
    for i in 51..=250 {
        let (status, v) = sidecar.publish("r", format!("r-{i}")).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "spooled during the outage: {v}"
        );
    }
    hub.start_again().await;
    for i in 251..=300 {
        let (status, v) = sidecar.publish("r", format!("r-{i}")).await;
        assert!(status.is_success(), "{v}");
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for want in 1..=300u64 {
                    let (_, v) = s.next().await;
                    assert_eq!(v["seq"], json!(want), "{v}");
                    assert_eq!(v["data"], json!(format!("r-{want}")));
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("a subscriber got all 300 in order");
    }
    assert_eq!(hub.topic_info("r").await["subscribers"], 1);
}

/// A hub with `auth.mode = required`: the sidecar sends its own token, so local clients need
/// none; what the token may not do is refused with the hub's own status and problem type
/// (a publish is forwarded and refused, and leaves the spool; a stream is forwarded as is).
#[tokio::test]
async fn the_sidecar_uses_its_hub_token_and_passes_the_hubs_refusals_on() {
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        "[auth]\nmode = \"required\"\n[[auth.tokens]]\ntoken = \"sidecar-token-1\"\npublish = [\"orders.>\"]\nsubscribe = [\"orders.>\"]\n",
    )
    .expect("write the hub config");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hub = Server::start_durable(&[
        "--listen",
        &listen,
        "--config",
        config.to_str().expect("a path"),
    ])
    .await;
    let sidecar = Sidecar::start(hub.base(), &["--token", "sidecar-token-1"]).await;
    let (status, v) = sidecar.publish("orders.eu", "allowed").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    let resp = sidecar
        .client
        .post(sidecar.url("/v1/topics/payroll/messages"))
        .body("not allowed")
        .send()
        .await
        .expect("publish");
    let p = expect_problem(resp, 403, "a publish outside the sidecar's rights").await;
    assert_eq!(p["type"], "urn:plexus:problem:forbidden");
    sidecar.drained().await;
    let text = sidecar
        .client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(&text, "plexus_sidecar_refused_total"),
        Some(1),
        "{text}"
    );

    let resp = sidecar
        .client
        .get(sidecar.url("/v1/topics/payroll/sse"))
        .send()
        .await
        .expect("stream");
    let p = expect_problem(resp, 403, "a stream outside the sidecar's rights").await;
    assert_eq!(p["type"], "urn:plexus:problem:forbidden");
    let mut s = LocalStream::open(&sidecar, "/v1/topics/orders.eu/sse?since=0", &[]).await;
    let (id, v) = s.next().await;
    assert_eq!((id.as_str(), v["data"].clone()), ("1", json!("allowed")));
}

/// 100 WebSocket clients over 10 topics through the sidecar: subscriptions from the shared
/// feeds (one upstream subscription per topic, one connection to the hub), publishes through
/// the spool answered with the hub's seq, every message to every subscriber in order.
#[tokio::test]
async fn websocket_clients_share_the_upstream_subscriptions_and_publish_through_the_spool() {
    use tokio_tungstenite::tungstenite::Message as Ws;
    const TOPICS: usize = 10;
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &[]).await;
    for t in 0..TOPICS {
        hub.publish(&format!("w{t}"), format!("w{t}-1")).await;
    }
    let mut sockets = Vec::new();
    for n in 0..100 {
        let t = n % TOPICS;
        let url = format!("ws://127.0.0.1:{}/v1/ws?topic=w{t}&since=0", sidecar.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("a WebSocket");
        let ok = ws.next().await.expect("a frame").expect("a text frame");
        let ok: Value = serde_json::from_str(ok.to_text().expect("text")).expect("JSON");
        assert_eq!(
            ok,
            json!({"op": "ok", "topic": format!("w{t}"), "next": "0"})
        );
        sockets.push((t, ws));
    }
    // Publishes over HTTP, then over the first socket of each topic.
    for (t, (_, ws)) in sockets.iter_mut().enumerate().take(TOPICS) {
        let (status, v) = sidecar.publish(&format!("w{t}"), format!("w{t}-2")).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let frame =
            json!({"op": "publish", "id": t, "topic": format!("w{t}"), "data": format!("w{t}-3")});
        ws.send(Ws::text(frame.to_string()))
            .await
            .expect("send a publish");
    }
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(t, mut ws)| {
            tokio::spawn(async move {
                let mut want = 1;
                while want <= 3 {
                    let frame = timeout(Duration::from_secs(30), ws.next())
                        .await
                        .expect("a frame in time")
                        .expect("the socket is open")
                        .expect("a frame");
                    let v: Value =
                        serde_json::from_str(frame.to_text().expect("text")).expect("JSON");
                    if v["op"] == "ok" {
                        assert_eq!(v["seq"], 3, "the publish's ok carries the hub's seq: {v}");
                        continue;
                    }
                    assert_eq!(v["op"], "message", "{v}");
                    assert_eq!(v["seq"], want, "w{t}: {v}");
                    assert_eq!(v["data"], format!("w{t}-{want}"));
                    want += 1;
                }
                ws
            })
        })
        .collect();
    let mut open = Vec::new();
    for r in readers {
        open.push(r.await.expect("a reader"));
    }
    let text = hub.metrics().await;
    assert_eq!(
        labelled(&text, "plexus_connections_open{protocol=\"h2c\"}"),
        1,
        "{text}"
    );
    for t in 0..TOPICS {
        assert_eq!(hub.topic_info(&format!("w{t}")).await["subscribers"], 1);
    }
    // A bad frame gets an error frame; the socket lives on.
    let ws = &mut open[0];
    ws.send(Ws::text(
        "{\"op\":\"subscribe\",\"id\":7,\"topic\":\"a b\"}",
    ))
    .await
    .expect("send");
    let v: Value = serde_json::from_str(
        ws.next()
            .await
            .expect("a frame")
            .expect("ok")
            .to_text()
            .expect("text"),
    )
    .expect("JSON");
    assert_eq!(
        (v["op"].clone(), v["id"].clone(), v["status"].clone()),
        (json!("error"), json!(7), json!(400))
    );
    drop(open);
    eventually("the upstream subscriptions to close", || async {
        (sidecar.status().await["upstream"]["subscriptions"] == 0).then_some(())
    })
    .await;
}

/// SIGTERM ends open streams (SSE with a `retry:` frame) and the sidecar exits 0; what it
/// holds (its lock included) opens again at once. `--check-config` prints the configuration with the
/// tokens redacted.
#[tokio::test]
async fn sigterm_ends_streams_and_exits_cleanly_and_the_spool_opens_again() {
    let (hub, base) = hub().await;
    let mut sidecar = Sidecar::start(&base, &["--token", "hub-s3cret-token"]).await;
    let mut stream = LocalStream::open(&sidecar, "/v1/topics/t/sse", &[]).await;
    let (status, _) = sidecar.publish("t", "one").await;
    assert_eq!(status, StatusCode::CREATED);
    let (id, _) = stream.next().await;
    assert_eq!(id, "1");
    let mut child = sidecar.child.take().expect("running");
    let pid = child.id().expect("a pid");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let mut rest = Vec::new();
    while let Ok(Some(chunk)) = timeout(Duration::from_secs(30), stream.resp.chunk())
        .await
        .expect("the stream ends in time")
    {
        rest.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&rest).starts_with("retry: "),
        "{rest:?}"
    );
    let exit = timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the sidecar exits in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    sidecar.spawn().await;
    assert_eq!(
        sidecar.status().await["spool"]["messages"],
        0,
        "a fresh process on the same spool"
    );
    drop(hub);

    let out = crate::kit::cli::run(
        plexus().args([
            "sidecar",
            "--check-config",
            "--token",
            "hub-s3cret-token",
            "--hub",
            "https://hub:1",
        ]),
        "sidecar --check-config",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("https://hub:1") && text.contains("<redacted>"),
        "{text}"
    );
    assert!(!text.contains("hub-s3cret-token"), "{text}");
    let out = crate::kit::cli::run_to_failure(
        plexus().args(["sidecar", "--forward-wait", "soon"]),
        "a bad forward wait",
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("sidecar.forward_wait"));
}

#[tokio::test]
async fn a_repeated_key_through_the_sidecar_is_answered_as_a_replay() {
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &[]).await;
    let keyed = |key: &'static str, body: &'static str| {
        sidecar
            .client
            .post(sidecar.url("/v1/topics/orders/messages"))
            .header("idempotency-key", key)
            .body(body)
            .send()
    };

    let (status, headers, first) = into_json(keyed("order-1", "one").await.expect("publish")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(
        headers.get("idempotent-replayed").is_none(),
        "a first publish is not a replay"
    );
    let (status, headers, again) = into_json(keyed("order-1", "one").await.expect("publish")).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the hub replayed the forward"
    );
    assert_eq!(
        again, first,
        "the first answer, with nothing added to the body"
    );

    // A batch through the sidecar marks the replayed item only.
    let resp = sidecar
        .client
        .post(sidecar.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(
            json!([
                {"topic": "orders", "data": "one", "idempotency_key": "order-1"},
                {"topic": "orders", "data": "two", "idempotency_key": "order-2"},
            ])
            .to_string(),
        )
        .send()
        .await
        .expect("batch");
    let (status, _, v) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["results"][0]["replayed"], json!(true), "{v}");
    assert_eq!(v["results"][0]["seq"], first["seq"], "{v}");
    assert!(v["results"][1].get("replayed").is_none(), "{v}");
    assert_eq!(stored(&hub, "orders").await, ["one", "two"]);
}

/// A WebSocket subscriber that stops reading, through the sidecar, with `slow=latest` or
/// `slow=disconnect`: the hub's policies (docs/API.md §2.3) applied when it falls out of the
/// shared feed's live buffer. `latest` skips ahead with a `skipped` gap and nothing else
/// missing; `disconnect` sends every message in order up to a `disconnect` frame.
#[tokio::test]
async fn websocket_slow_policies_latest_and_disconnect_work_through_the_sidecar() {
    use tokio_tungstenite::tungstenite::Message as Ws;
    const N: u64 = 8000;
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &[]).await;
    for policy in ["latest", "disconnect"] {
        let topic = format!("slow-{policy}");
        hub.publish(&topic, "first").await;
        // A small receive buffer, so a client that stops reading is behind within a few MB.
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        let stream = socket
            .connect(
                format!("127.0.0.1:{}", sidecar.port)
                    .parse()
                    .expect("an address"),
            )
            .await
            .expect("connect to the sidecar");
        let url = format!("ws://127.0.0.1:{}/v1/ws", sidecar.port);
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("a WebSocket");
        let frame = json!({"op": "subscribe", "id": 1, "topic": topic, "slow": policy});
        ws.send(Ws::text(frame.to_string()))
            .await
            .expect("subscribe");
        let ok = ws.next().await.expect("a frame").expect("a text frame");
        let ok: Value = serde_json::from_str(ok.to_text().expect("text")).expect("JSON");
        assert_eq!(
            ok,
            json!({"op": "ok", "id": 1, "topic": topic, "next": "1"})
        );
        // Not read while 8,000 messages of 2 KiB go out (16 MB: more than the socket buffers).
        let pad = "x".repeat(2048);
        hub.batch_n(&topic, N as usize, &format!("{pad}-")).await;
        let mut expected = 2u64;
        let (mut skipped, mut disconnected) = (0, false);
        timeout(Duration::from_secs(60), async {
            while expected <= N + 1 && !disconnected {
                let frame = ws.next().await.expect("open").expect("a frame");
                let v: Value = serde_json::from_str(frame.to_text().expect("text")).expect("JSON");
                match v["op"].as_str() {
                    Some("message") => {
                        assert_eq!(v["seq"], expected, "{policy}: in order, nothing missing");
                        expected += 1;
                    }
                    Some("gap") => {
                        assert_eq!(policy, "latest", "{v}");
                        assert_eq!(v["reason"], "skipped", "{v}");
                        assert_eq!(v["from"], expected, "{v}");
                        expected = v["to"].as_u64().expect("to") + 1;
                        skipped += 1;
                    }
                    Some("disconnect") => {
                        assert_eq!(policy, "disconnect", "{v}");
                        assert_eq!(
                            v,
                            json!({"op": "disconnect", "topic": topic, "reason": "slow consumer"})
                        );
                        disconnected = true;
                    }
                    _ => panic!("{policy}: unexpected frame {v}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{policy}: the frames in time; at seq {expected}"));
        match policy {
            "latest" => {
                assert!(skipped >= 1, "the slow subscriber skipped ahead");
                assert_eq!(expected, N + 2, "and reached the newest message");
            }
            _ => assert!(disconnected && expected <= N, "disconnected before the end"),
        }
    }
}

/// When one upstream connection carries `sidecar.upstream_max_streams` streams (the hub's
/// concurrent-stream limit; 3 here), the next one opens a second connection instead of
/// waiting for a free stream: 5 forwarded streams make 2 connections on the hub, every stream
/// gets its messages, and the status counts the connections in use.
#[tokio::test]
async fn a_second_upstream_connection_opens_when_the_first_is_full() {
    let (hub, base) = hub().await;
    let sidecar = Sidecar::start(&base, &["--upstream-max-streams", "3"]).await;
    // Two topics each: forwarded as they are (not shared), one upstream stream each.
    let mut streams = Vec::new();
    for i in 0..5 {
        streams
            .push(LocalStream::open(&sidecar, &format!("/v1/topics/up{i},other/sse"), &[]).await);
    }
    for i in 0..5 {
        hub.publish(&format!("up{i}"), format!("m{i}")).await;
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let (_, v) = stream.next().await;
        assert_eq!(v["topic"], format!("up{i}"), "{v}");
        assert_eq!(v["data"], format!("m{i}"), "{v}");
    }
    let text = hub.metrics().await;
    assert_eq!(
        labelled(&text, "plexus_connections_open{protocol=\"h2c\"}"),
        2,
        "5 streams at 3 a connection: two connections from the sidecar"
    );
    assert_eq!(sidecar.status().await["upstream"]["connections"], 2);
    let metrics = sidecar
        .client
        .get(sidecar.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("a body");
    assert!(
        metrics.contains("\nplexus_sidecar_upstream_connections 2\n"),
        "{metrics}"
    );
    drop(streams);
    timeout(Duration::from_secs(20), async {
        while sidecar.status().await["upstream"]["connections"] != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("back to one connection in use once the streams end");
}
