//! Hold mode (`plexus sidecar --app`): a GRIP backend written in the test (an axum app that
//! checks `Grip-Sig`) behind a real sidecar and a real hub. Pass-through, malformed
//! instructions (502 problem+json, the header named in the log, no hang), response holds
//! (timeout → the app's response; a publish answers; `prev-id` as a cursor answers at once)
//! and stream holds (initial body, then published messages as SSE frames, keep-alives);
//! stock backends written with PyPI `gripcontrol` and npm `@fanoutio/serve-grip`; next-link
//! recovery of a gap in a publish chain; the same client script through Debian's Pushpin
//! and through the sidecar, byte for byte.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use reqwest::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::time::{Instant, timeout};

use crate::kit::cli::plexus;
use crate::kit::{STARTUP_TIMEOUT, Server, expect_problem, free_port, install_crypto_provider};

const KEY: &str = "grip-test-key";

/// The GRIP backend: each path answers with one set of instructions; requests whose
/// `Grip-Sig` does not verify under [`KEY`] are counted.
async fn backend() -> (String, Arc<AtomicUsize>) {
    let unsigned = Arc::new(AtomicUsize::new(0));
    let counted = unsigned.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let counted = counted.clone();
        async move {
            let sig = req
                .headers()
                .get("grip-sig")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_issuer(&["plexus"]);
            let ok = jsonwebtoken::decode::<serde_json::Value>(
                sig,
                &jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes()),
                &validation,
            )
            .is_ok();
            if !ok {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            answer(&path, &query)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the backend");
    let addr = listener.local_addr().expect("the backend's address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), unsigned)
}

fn with(headers: &[(&'static str, &str)], status: u16, body: &'static str) -> Response {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(*k, HeaderValue::from_str(v).expect("a header value"));
    }
    let status = axum::http::StatusCode::from_u16(status).expect("a status");
    (status, map, body).into_response()
}

fn answer(path: &str, query: &str) -> Response {
    let topic = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("topic="))
        .unwrap_or("t")
        .to_owned();
    let prev = query.split('&').find_map(|kv| kv.strip_prefix("prev="));
    let channel = match prev {
        Some(p) => format!("{topic}; prev-id={p}"),
        None => topic.clone(),
    };
    match path {
        "/plain" => with(
            &[("content-type", "text/plain"), ("x-app", "1")],
            201,
            "plain body\n",
        ),
        "/poll" => with(
            &[
                ("content-type", "text/plain"),
                ("grip-hold", "response"),
                ("grip-channel", &channel),
                ("grip-timeout", "5"),
            ],
            200,
            "timed out\n",
        ),
        "/stream" => with(
            &[
                ("content-type", "text/event-stream"),
                ("grip-hold", "stream"),
                ("grip-channel", &format!("other, {channel}")),
                ("grip-keep-alive", ":ka\\n\\n; format=cstring; timeout=1"),
            ],
            200,
            "event: hello\ndata: initial\n\n",
        ),
        "/native-poll" => with(
            &[
                ("content-type", "text/plain"),
                (
                    "plexus-hold",
                    &format!(
                        "long-poll; topic={topic}; since={}; timeout=5",
                        prev.unwrap_or("0")
                    ),
                ),
            ],
            200,
            "nothing yet\n",
        ),
        "/native-stream" => with(
            &[
                ("content-type", "text/event-stream"),
                (
                    "plexus-hold",
                    &format!("stream; topic={topic}; since={}", prev.unwrap_or("0")),
                ),
            ],
            200,
            "",
        ),
        "/status" => with(
            &[("grip-status", "418 Teapot"), ("grip-x", "y")],
            200,
            "tea",
        ),
        "/bad-mode" => with(&[("grip-hold", "poll"), ("grip-channel", "t")], 200, ""),
        "/no-channel" => with(&[("grip-hold", "stream")], 200, ""),
        "/bad-timeout" => with(
            &[
                ("grip-hold", "response"),
                ("grip-channel", "t"),
                ("grip-timeout", "soon"),
            ],
            200,
            "",
        ),
        "/bad-keep-alive" => with(
            &[
                ("grip-hold", "stream"),
                ("grip-channel", "t"),
                ("grip-keep-alive", "x; format=hex"),
            ],
            200,
            "",
        ),
        "/bad-json" => with(
            &[("content-type", "application/grip-instruct")],
            200,
            "{\"hold\":",
        ),
        _ => with(&[], 404, "no such page"),
    }
}

struct Sidecar {
    _dir: tempfile::TempDir,
    port: u16,
    _child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Sidecar {
    async fn start(hub: &str, app: &str) -> Sidecar {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("a spool directory");
        let port = free_port();
        let mut child = plexus()
            .arg("sidecar")
            .args(["--hub", hub, "--app", app, "--grip-key", KEY])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--spool-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn plexus sidecar");
        let stderr: Arc<Mutex<String>> = Arc::default();
        let log = stderr.clone();
        let mut err = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .expect("the listening line in time")
            .expect("read stdout");
        assert_eq!(line, Some(format!("listening on http://127.0.0.1:{port}")));
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Sidecar {
            _dir: dir,
            port,
            _child: child,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

fn no_grip_headers(headers: &reqwest::header::HeaderMap) {
    for name in headers.keys() {
        assert!(
            !name.as_str().starts_with("grip-"),
            "{name} reached the client"
        );
    }
}

#[tokio::test]
async fn responses_without_instructions_pass_through_and_requests_are_signed() {
    let hub = Server::start(&[]).await;
    let (app, unsigned) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    let r = c
        .get(sidecar.url("/plain?x=1"))
        .send()
        .await
        .expect("GET /plain");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-app"], "1");
    assert_eq!(r.text().await.expect("a body"), "plain body\n");
    let r = c
        .get(sidecar.url("/missing"))
        .send()
        .await
        .expect("GET /missing");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.expect("a body"), "no such page");
    // Grip-Status without a hold: the status changes, every Grip-* header goes.
    let r = c
        .get(sidecar.url("/status"))
        .send()
        .await
        .expect("GET /status");
    assert_eq!(r.status(), 418);
    no_grip_headers(r.headers());
    assert_eq!(
        unsigned.load(Ordering::Relaxed),
        0,
        "every request carried a valid Grip-Sig"
    );
    // The sidecar's own routes are not proxied.
    let r = c
        .get(sidecar.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(r.status(), 200);
    assert_eq!(unsigned.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn malformed_instructions_are_a_502_naming_the_header() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    for (path, header) in [
        ("/bad-mode", "Grip-Hold"),
        ("/no-channel", "Grip-Channel"),
        ("/bad-timeout", "Grip-Timeout"),
        ("/bad-keep-alive", "Grip-Keep-Alive"),
        ("/bad-json", "application/grip-instruct"),
    ] {
        let r = timeout(Duration::from_secs(10), c.get(sidecar.url(path)).send())
            .await
            .expect("no hang")
            .expect("an answer");
        no_grip_headers(r.headers());
        let problem = expect_problem(r, 502, path).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(header), "{path}: {problem}");
        // The log arrives through a pipe: wait for the line.
        let named = format!("\"{header}\"");
        let logged = timeout(Duration::from_secs(10), async {
            while !sidecar
                .stderr()
                .lines()
                .any(|l| l.contains("malformed GRIP instruction") && l.contains(&named))
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            logged.is_ok(),
            "{path}: the log names {header}:\n{}",
            sidecar.stderr()
        );
    }
}

#[tokio::test]
async fn a_response_hold_answers_with_a_publish_or_at_once_from_prev_id_or_at_its_timeout() {
    let hub = Server::start(&[]).await;
    let (app, unsigned) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    // Held: the first message published after the hold answers it, with its seq.
    let held = tokio::spawn({
        let (c, url) = (c.clone(), sidecar.url("/poll?topic=lp"));
        async move { c.get(url).send().await }
    });
    // Published until the hold sees one (the hold may start after the first publish).
    let mut sent = 0;
    let r = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.publish("lp", format!("m{sent}")).await;
        sent += 1;
        if held.is_finished() || sent > 50 {
            break held.await.expect("joined").expect("an answer");
        }
    };
    assert_eq!(r.status(), 200);
    no_grip_headers(r.headers());
    let seq: u64 = r.headers()["plexus-seq"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a seq");
    let body = r.text().await.expect("a body");
    assert_eq!(body, format!("m{}", seq - 1));
    // prev-id a seq of the topic: the next message answers at once. Message i of this topic
    // is `m{i-1}` up to `sent`, then `after`.
    hub.publish("lp", "after").await;
    let started = Instant::now();
    let r = c
        .get(sidecar.url(&format!("/poll?topic=lp&prev={seq}")))
        .send()
        .await
        .expect("GET");
    let took = started.elapsed();
    let next = r.headers().get("plexus-seq").cloned();
    let text = r.text().await.expect("a body");
    assert!(
        took < Duration::from_secs(4),
        "answered at once, not after {took:?}: {next:?} {text:?}"
    );
    assert_eq!(next.expect("a seq"), (seq + 1).to_string().as_str());
    let expected = if seq < sent {
        format!("m{seq}")
    } else {
        "after".to_owned()
    };
    assert_eq!(text, expected);
    // Nothing published: Grip-Timeout 5 gives the app's own response.
    let started = Instant::now();
    let r = c
        .get(sidecar.url("/poll?topic=quiet"))
        .send()
        .await
        .expect("GET");
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "held for the timeout"
    );
    assert_eq!(r.status(), 200);
    no_grip_headers(r.headers());
    assert_eq!(r.text().await.expect("a body"), "timed out\n");
    assert_eq!(unsigned.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_stream_hold_sends_the_initial_body_then_replays_from_prev_id_and_follows() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    for i in 1..=3 {
        hub.publish("st", format!("old{i}")).await;
    }
    let r = client()
        .get(sidecar.url("/stream?topic=st&prev=1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    no_grip_headers(r.headers());
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut wait_for = async |got: &mut String, needle: &str| {
        timeout(Duration::from_secs(20), async {
            while !got.contains(needle) {
                let chunk = body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("a chunk");
                got.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; got {got:?}"));
    };
    wait_for(&mut got, "\"data\":\"old3\"}\n\n").await;
    hub.publish("st", "new4").await;
    wait_for(&mut got, "\"data\":\"new4\"}\n\n").await;
    wait_for(&mut got, ":ka\n\n").await;
    let initial = got.find("data: initial").expect("the initial body");
    let old2 = got.find("id: 2\n").expect("replayed from prev-id");
    let old3 = got.find("id: 3\n").expect("in order");
    let new4 = got.find("id: 4\n").expect("then live");
    assert!(initial < old2 && old2 < old3 && old3 < new4, "{got}");
    assert!(!got.contains("old1"), "prev-id 1 was already seen: {got}");
}

#[tokio::test]
async fn epcp_publishes_complete_response_holds_feed_streams_and_store_each_id_once() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    let epcp = |body: serde_json::Value| {
        let (c, url) = (c.clone(), sidecar.url("/publish/"));
        async move {
            c.post(url)
                .json(&body)
                .send()
                .await
                .expect("POST /publish/")
        }
    };
    // Bad items: 400 problem+json, nothing stored.
    for bad in [
        serde_json::json!({"items": []}),
        serde_json::json!({"items": [{"formats": {"http-stream": {"content": "x"}}}]}),
        serde_json::json!({"items": [{"channel": "ep", "formats": {}}]}),
        serde_json::json!({"items": [{"channel": "ep", "formats": {"http-stream": {"action": "hint"}}}]}),
        serde_json::json!({"items": [{"channel": "a..b", "formats": {"http-stream": {"content": "x"}}}]}),
    ] {
        expect_problem(epcp(bad.clone()).await, 400, &bad.to_string()).await;
    }
    assert!(hub.read_all("ep").await.is_empty(), "nothing stored");
    // Two response holds on one channel: one http-response item completes both.
    let holds: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), sidecar.url("/poll?topic=ep&prev=0"));
            tokio::spawn(async move { c.get(url).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let item = serde_json::json!({"items": [{"channel": "ep", "id": "item-1", "formats": {
        "http-response": {"code": 202, "headers": {"x-item": "1"}, "body": "published body"}}}]});
    let r = epcp(item.clone()).await;
    assert_eq!(r.status(), 200);
    // The same id again (another app replica): stored once.
    assert_eq!(epcp(item).await.status(), 200);
    for hold in holds {
        let r = timeout(Duration::from_secs(20), hold)
            .await
            .expect("completed by the publish")
            .expect("joined")
            .expect("an answer");
        assert_eq!(r.status(), 202);
        no_grip_headers(r.headers());
        assert_eq!(r.headers()["x-item"], "1");
        assert_eq!(r.headers()["plexus-seq"], "1");
        assert_eq!(r.text().await.expect("a body"), "published body");
    }
    crate::kit::eventually("the spool to drain", || async {
        (hub.read_all("ep").await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.read_all("ep").await.len(), 1, "one id, one message");
    // A stream hold gets http-stream content in order, and `close` ends it.
    let r = c
        .get(sidecar.url("/stream?topic=ep2"))
        .send()
        .await
        .expect("GET");
    let mut body = r.bytes_stream();
    let mut got = String::new();
    timeout(Duration::from_secs(5), async {
        while !got.contains("initial") {
            let chunk = body.next().await.expect("open").expect("a chunk");
            got.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the initial body");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let items = serde_json::json!({"items": [
        {"channel": "ep2", "formats": {"http-stream": {"content": "one\n"}}},
        {"channel": "ep2", "formats": {"http-stream": {"content": "two\n"}}},
        {"channel": "ep2", "formats": {"http-stream": {"action": "close"}}}]});
    assert_eq!(epcp(items).await.status(), 200);
    timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            got.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
        }
    })
    .await
    .expect("the stream ends at close");
    let content: String = got.replace(":ka\n\n", "");
    assert!(content.ends_with("one\ntwo\n"), "{got:?}");
}

#[tokio::test]
async fn the_hubs_own_publish_route_takes_epcp_items_and_held_clients_get_them() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    let bad = c
        .post(hub.url("/publish/"))
        .body(r#"{"items":[{"channel":"hp"}]}"#)
        .send()
        .await
        .expect("POST /publish/");
    expect_problem(bad, 400, "an item without a format").await;
    assert!(hub.read_all("hp").await.is_empty(), "nothing stored");
    let held = tokio::spawn({
        let (c, url) = (c.clone(), sidecar.url("/poll?topic=hp"));
        async move { c.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = c
        .post(hub.url("/publish/"))
        .body(r#"{"items":[{"channel":"hp","id":"h1","formats":{"http-response":{"code":200,"body":"from the hub"}}}]}"#)
        .send()
        .await
        .expect("POST /publish/");
    assert_eq!(r.status(), 200);
    let stored = hub.read_all("hp").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["event"], "grip");
    let r = timeout(Duration::from_secs(20), held)
        .await
        .expect("completed by the publish")
        .expect("joined")
        .expect("an answer");
    assert_eq!(r.headers()["plexus-seq"], "1");
    assert_eq!(r.text().await.expect("a body"), "from the hub");
}

/// The Python of the venv `scripts/test` makes with the pinned `gripcontrol`.
fn grip_python() -> std::path::PathBuf {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/grip-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs it (python3 -m venv target/grip-venv && \
         target/grip-venv/bin/pip install gripcontrol==4.4.0)",
        python.display()
    );
    python
}

#[tokio::test]
async fn a_stock_gripcontrol_backend_works_behind_the_sidecar() {
    let hub = Server::start(&[]).await;
    let port = free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/backends/gripcontrol_app.py");
    let _backend = tokio::process::Command::new(grip_python())
        .arg(&script)
        .args([&port.to_string(), KEY])
        .kill_on_drop(true)
        .spawn()
        .expect("start the gripcontrol backend");
    let app = format!("http://127.0.0.1:{port}");
    let c = client();
    timeout(Duration::from_secs(20), async {
        while c.get(format!("{app}/ready")).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the backend listens");
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let publish = |kind: &'static str, data: &'static str| {
        let (c, app, control) = (c.clone(), app.clone(), sidecar.url(""));
        async move {
            let r = c
                .post(format!("{app}/pub"))
                .json(&serde_json::json!({"control": control, "kind": kind, "data": data}))
                .send()
                .await
                .expect("ask the backend to publish");
            assert_eq!(r.status(), 204, "the backend published through gripcontrol");
        }
    };
    // A stream hold: the initial body, then each http-stream item in order.
    let r = c
        .get(sidecar.url("/stream"))
        .send()
        .await
        .expect("GET /stream");
    assert_eq!(
        r.status(),
        200,
        "the backend accepted the sidecar's Grip-Sig"
    );
    no_grip_headers(r.headers());
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut until = async |got: &mut String, needle: &str| {
        timeout(Duration::from_secs(20), async {
            while !got.contains(needle) {
                let chunk = body.next().await.expect("open").expect("a chunk");
                got.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; got {got:?}"));
    };
    until(&mut got, "start\n").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    publish("stream", "one\n").await;
    publish("stream", "two\n").await;
    until(&mut got, "two\n").await;
    assert_eq!(got, "start\none\ntwo\n");
    // A response hold: an http-response publish completes it.
    let held = tokio::spawn({
        let (c, url) = (c.clone(), sidecar.url("/poll"));
        async move { c.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    publish("response", "published\n").await;
    let r = timeout(Duration::from_secs(20), held)
        .await
        .expect("completed by the publish")
        .expect("joined")
        .expect("an answer");
    no_grip_headers(r.headers());
    assert_eq!(r.text().await.expect("a body"), "published\n");
    // Grip-Timeout 5 and nothing published: the backend's own response.
    let started = Instant::now();
    let r = c.get(sidecar.url("/poll")).send().await.expect("GET /poll");
    assert!(started.elapsed() >= Duration::from_millis(4500));
    assert_eq!(r.text().await.expect("a body"), "timeout\n");
}

#[tokio::test]
async fn plexus_hold_aliases_take_the_same_path() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    hub.publish("na", "first").await;
    hub.publish("na", "second").await;
    // since=0: the topic's first message, at once.
    let r = c
        .get(sidecar.url("/native-poll?topic=na"))
        .send()
        .await
        .expect("GET");
    no_grip_headers(r.headers());
    assert!(r.headers().get("plexus-hold").is_none());
    assert_eq!(r.headers()["plexus-seq"], "1");
    assert_eq!(r.text().await.expect("a body"), "first");
    let r = c
        .get(sidecar.url("/native-poll?topic=na&prev=1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["plexus-seq"], "2");
    assert_eq!(r.text().await.expect("a body"), "second");
    // A stream from since=1: the hub's own SSE frames, from seq 2.
    let r = c
        .get(sidecar.url("/native-stream?topic=na&prev=1"))
        .send()
        .await
        .expect("GET");
    let mut body = r.bytes_stream();
    let mut got = String::new();
    timeout(Duration::from_secs(20), async {
        while !got.contains("\"data\":\"second\"") {
            let chunk = body.next().await.expect("open").expect("a chunk");
            got.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the replay in time; got {got:?}"));
    assert!(got.starts_with("id: 2\n"), "{got:?}");
    assert!(!got.contains("first"), "{got:?}");
}

/// Where `scripts/test` installs the pinned npm `@fanoutio/serve-grip` (its `node_modules`).
fn serve_grip_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/serve-grip");
    assert!(
        dir.join("node_modules/@fanoutio/serve-grip").exists(),
        "{} is missing: scripts/test installs it (npm install @fanoutio/serve-grip@2.0.0 there)",
        dir.display()
    );
    dir
}

/// Starts `tests/it/backends/serve_grip_app.mjs` on `port`, publishing through `control`.
/// The script is an ES module fed on stdin from the install directory, so its imports resolve
/// against the pinned `node_modules` there.
fn serve_grip_backend(port: u16, control: &str) -> Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/backends/serve_grip_app.mjs");
    let source = std::fs::File::open(&script).expect("the serve-grip backend's script");
    tokio::process::Command::new("node")
        .args(["--input-type=module", "-", &port.to_string(), KEY, control])
        .current_dir(serve_grip_dir())
        .stdin(source)
        .kill_on_drop(true)
        .spawn()
        .expect("start the serve-grip backend (node)")
}

#[tokio::test]
async fn a_stock_serve_grip_backend_works_behind_the_sidecar() {
    let hub = Server::start(&[]).await;
    let port = free_port();
    let app = format!("http://127.0.0.1:{port}");
    let c = client();
    // The sidecar's port is known before the backend starts: the backend publishes there.
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let _backend = serve_grip_backend(port, &sidecar.url("/"));
    let direct = timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(r) = c.get(format!("{app}/stream")).send().await {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the backend listens");
    // Without a proxy's signature serve-grip refuses: the 200s below are the sidecar's Grip-Sig.
    assert_eq!(direct.status(), 501, "serve-grip requires a GRIP proxy");
    let publish = |kind: &'static str, data: &'static str| {
        let (c, app) = (c.clone(), app.clone());
        async move {
            let r = c
                .post(format!("{app}/pub"))
                .json(&serde_json::json!({"kind": kind, "data": data}))
                .send()
                .await
                .expect("ask the backend to publish");
            assert_eq!(r.status(), 204, "the backend published through serve-grip");
        }
    };
    // A stream hold: the initial body, each http-stream item in order, keep-alives when idle.
    let r = c
        .get(sidecar.url("/stream"))
        .send()
        .await
        .expect("GET /stream");
    assert_eq!(
        r.status(),
        200,
        "serve-grip accepted the sidecar's Grip-Sig"
    );
    no_grip_headers(r.headers());
    assert_eq!(r.headers()["content-type"], "text/plain");
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut until = async |got: &mut String, needle: &str| {
        timeout(Duration::from_secs(20), async {
            while !got.contains(needle) {
                let chunk = body.next().await.expect("open").expect("a chunk");
                got.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; got {got:?}"));
    };
    until(&mut got, "start\n").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    publish("stream", "one\n").await;
    publish("stream", "two\n").await;
    until(&mut got, "two\n").await;
    until(&mut got, "two\nka\n").await;
    assert_eq!(got.replace("ka\n", ""), "start\none\ntwo\n", "{got:?}");
    // A response hold: an http-response publish completes every held request.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), sidecar.url("/poll"));
            tokio::spawn(async move { c.get(url).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    publish("response", "published\n").await;
    for hold in held {
        let r = timeout(Duration::from_secs(20), hold)
            .await
            .expect("completed by the publish")
            .expect("joined")
            .expect("an answer");
        assert_eq!(r.status(), 200);
        no_grip_headers(r.headers());
        assert_eq!(r.text().await.expect("a body"), "published\n");
    }
    // Grip-Timeout 5 and nothing published: the backend's own response.
    let started = Instant::now();
    let r = c.get(sidecar.url("/poll")).send().await.expect("GET /poll");
    assert!(started.elapsed() >= Duration::from_millis(4500));
    assert_eq!(r.status(), 200);
    no_grip_headers(r.headers());
    assert_eq!(r.text().await.expect("a body"), "timeout\n");
}

/// A backend that keeps its own list of items (`m1`, `m2`, …) and serves a stream of them
/// with a next link: `/chain` holds from its last item, `/chain/next` answers what came after
/// the `Grip-Last` id it is given. Every `Grip-Last` it receives is recorded.
async fn chain_backend(items: Arc<Mutex<Vec<String>>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = asked.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (items, seen) = (items.clone(), seen.clone());
        async move {
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_issuer(&["plexus"]);
            let sig = req
                .headers()
                .get("grip-sig")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let key = jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes());
            if jsonwebtoken::decode::<serde_json::Value>(sig, &key, &validation).is_err() {
                return with(&[], 403, "not signed by the proxy\n");
            }
            let items = items.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let from = match req.headers().get("grip-last").and_then(|v| v.to_str().ok()) {
                Some(last) => {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(last.to_owned());
                    let id = last.split("last-id=").nth(1).unwrap_or_default();
                    items.iter().position(|i| i == id).map_or(0, |p| p + 1)
                }
                None => 0,
            };
            let body: String = items[from..].iter().map(|i| format!("{i}\n")).collect();
            let channel = match items.last() {
                Some(last) => format!("chain; prev-id={last}"),
                None => "chain".to_owned(),
            };
            let mut map = HeaderMap::new();
            for (k, v) in [
                ("content-type", "text/plain".to_owned()),
                ("grip-hold", "stream".to_owned()),
                ("grip-channel", channel),
                ("grip-link", "</chain/next>; rel=next".to_owned()),
            ] {
                map.append(k, HeaderValue::from_str(&v).expect("a header value"));
            }
            (map, body).into_response()
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the backend");
    let addr = listener.local_addr().expect("the backend's address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), asked)
}

#[tokio::test]
async fn a_gap_in_a_publish_chain_is_filled_from_the_next_link_with_grip_last() {
    let hub = Server::start(&[]).await;
    let items: Arc<Mutex<Vec<String>>> = Arc::default();
    let (app, asked) = chain_backend(items.clone()).await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    // The app stores an item, then publishes it with its predecessor's id as prev-id; `false`
    // stores it only (its publish is lost).
    let add = |id: &str, publish: bool| {
        let (c, url, items) = (c.clone(), sidecar.url("/publish/"), items.clone());
        let id = id.to_owned();
        async move {
            let prev = {
                let mut items = items.lock().unwrap_or_else(|e| e.into_inner());
                let prev = items.last().cloned();
                items.push(id.clone());
                prev
            };
            if publish {
                let item = serde_json::json!({"items": [{"channel": "chain", "id": id,
                    "prev-id": prev, "formats": {"http-stream": {"content": format!("{id}\n")}}}]});
                let r = c
                    .post(url)
                    .json(&item)
                    .send()
                    .await
                    .expect("POST /publish/");
                assert_eq!(r.status(), 200);
            }
        }
    };
    add("m1", true).await;
    add("m2", true).await;
    let r = c.get(sidecar.url("/chain")).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    no_grip_headers(r.headers());
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut until = async |got: &mut String, needle: &str| {
        timeout(Duration::from_secs(20), async {
            while !got.ends_with(needle) {
                let chunk = body.next().await.expect("open").expect("a chunk");
                got.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; got {got:?}"));
    };
    until(&mut got, "m2\n").await;
    add("m3", true).await;
    // m4's publish is lost: m5 names it as prev-id, which the stream has not seen.
    add("m4", false).await;
    add("m5", true).await;
    add("m6", true).await;
    until(&mut got, "m6\n").await;
    assert_eq!(got, "m1\nm2\nm3\nm4\nm5\nm6\n", "no gap, nothing twice");
    let asked = asked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(!asked.is_empty(), "the next link was fetched");
    assert!(
        asked.iter().all(|l| l.starts_with("chain; last-id=m")),
        "{asked:?}"
    );
}

/// Debian's Pushpin (`scripts/test` installs it), run by a test with its own config in a
/// temporary directory: its runner starts condure, zurl, the proxy and the handler, all on
/// loopback ports or sockets of its own, routing every request to `app_port`. It signs
/// requests as the sidecar does (`iss` plexus, [`KEY`]), so one backend verifies both.
struct Pushpin {
    _dir: tempfile::TempDir,
    pid: u32,
    _child: Child,
    http: u16,
    control: u16,
}

impl Pushpin {
    async fn start(app_port: u16) -> Pushpin {
        let dir = tempfile::tempdir().expect("a directory for pushpin");
        let run = dir.path().join("run");
        let logs = dir.path().join("log");
        for d in [&run, &logs] {
            std::fs::create_dir_all(d).expect("pushpin's directories");
        }
        let [http, control, push, sub, command] = [(); 5].map(|_| free_port());
        let config = format!(
            "[global]\ninclude={{libdir}}/internal.conf\nrundir={run}\nipc_prefix=pp-\n\
             [runner]\nservices=condure,zurl,pushpin-proxy,pushpin-handler\n\
             http_port=127.0.0.1:{http}\nlogdir={logs}\nlog_level=2\n\
             condure_bin=condure\nzurl_bin=zurl\n\
             [proxy]\nroutesfile=routes\nsig_iss=plexus\nsig_key={KEY}\nupdates_check=off\n\
             zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in\n\
             zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream\n\
             zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out\n\
             [handler]\npush_in_spec=tcp://127.0.0.1:{push}\n\
             push_in_sub_specs=tcp://127.0.0.1:{sub}\npush_in_http_addr=127.0.0.1\n\
             push_in_http_port={control}\ncommand_spec=tcp://127.0.0.1:{command}\n\
             stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats\n",
            run = run.display(),
            logs = logs.display(),
        );
        let file = dir.path().join("pushpin.conf");
        std::fs::write(&file, config).expect("write pushpin.conf");
        std::fs::write(
            dir.path().join("routes"),
            format!("* 127.0.0.1:{app_port}\n"),
        )
        .expect("write pushpin's routes");
        assert!(
            std::process::Command::new("pushpin")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "pushpin is missing: scripts/test installs it (apt-get install pushpin)"
        );
        // Its own process group: the runner's helpers are ended with it.
        let child = tokio::process::Command::new("pushpin")
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start pushpin");
        let pid = child.id().expect("pushpin's pid");
        Pushpin {
            _dir: dir,
            pid,
            _child: child,
            http,
            control,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
}

impl Drop for Pushpin {
    fn drop(&mut self) {
        // SIGTERM to the group: the runner stops its helpers; none is left behind.
        let group = format!("-{}", self.pid);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        for _ in 0..100 {
            let alive = std::process::Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
    }
}

/// One client script against a GRIP proxy at `base` in front of the serve-grip backend at
/// `app`: what the client saw, a line per request (status, content type, the app's header,
/// body bytes), for comparing two proxies. The backend counts the holds it answered; a
/// publish waits until the proxy holds the request, then 1.5 s more: Pushpin may ask the
/// backend again within a second of a channel's first subscription and drop publishes then.
async fn grip_script(c: &Client, base: &str, app: &str) -> Vec<String> {
    let holds = || async {
        let r = c
            .get(format!("{app}/holds"))
            .send()
            .await
            .expect("GET /holds");
        r.text()
            .await
            .expect("a count")
            .parse::<u64>()
            .expect("a number")
    };
    let held = |before: u64| async move {
        timeout(Duration::from_secs(20), async {
            while holds().await <= before {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the proxy asked the backend");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    let publish = |kind: &'static str, data: &'static str| async move {
        let r = c
            .post(format!("{app}/pub"))
            .json(&serde_json::json!({"kind": kind, "data": data}))
            .send()
            .await
            .expect("ask the backend to publish");
        assert_eq!(r.status(), 204, "the backend published");
    };
    let head = |r: &reqwest::Response| {
        no_grip_headers(r.headers());
        let header = |n: &str| {
            r.headers()
                .get(n)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        format!(
            "{} {:?} {:?}",
            r.status().as_u16(),
            header("content-type"),
            header("x-app")
        )
    };
    let whole = |r: reqwest::Response| async move {
        let head = head(&r);
        let body = r.bytes().await.expect("a body");
        format!("{head} {:?}", String::from_utf8_lossy(&body))
    };
    let mut seen = Vec::new();
    // No instruction: passed through.
    let r = c
        .get(format!("{base}/hello"))
        .send()
        .await
        .expect("GET /hello");
    seen.push(format!("pass-through: {}", whole(r).await));
    // A stream hold: initial body, two items in order, then `close` ends it.
    let before = holds().await;
    let r = c
        .get(format!("{base}/feed"))
        .send()
        .await
        .expect("GET /feed");
    seen.push(format!("stream head: {}", head(&r)));
    let mut stream = r.bytes_stream();
    let mut body = Vec::new();
    while !body.ends_with(b"start\n") {
        let chunk = timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the initial body")
            .expect("open")
            .expect("a chunk");
        body.extend_from_slice(&chunk);
    }
    held(before).await;
    publish("stream", "one\n").await;
    publish("stream", "two\n").await;
    publish("close", "").await;
    timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.expect("a chunk"));
        }
    })
    .await
    .expect("the stream ends at close");
    seen.push(format!("stream body: {:?}", String::from_utf8_lossy(&body)));
    // A response hold completed by a publish.
    let before = holds().await;
    let waiting = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/poll"));
        async move { c.get(url).send().await }
    });
    held(before).await;
    publish("response", "published\n").await;
    let r = timeout(Duration::from_secs(20), waiting)
        .await
        .expect("completed by the publish")
        .expect("joined")
        .expect("an answer");
    seen.push(format!("published response: {}", whole(r).await));
    // A response hold that times out: the backend's own response.
    let r = c
        .get(format!("{base}/poll"))
        .send()
        .await
        .expect("GET /poll");
    seen.push(format!("timed-out response: {}", whole(r).await));
    seen
}

#[tokio::test]
async fn the_same_backend_and_client_script_give_the_same_bytes_through_pushpin_and_the_sidecar() {
    let hub = Server::start(&[]).await;
    let c = client();
    let (sidecar_app, pushpin_app) = (free_port(), free_port());
    let pushpin = Pushpin::start(pushpin_app).await;
    let sidecar = Sidecar::start(hub.base(), &format!("http://127.0.0.1:{sidecar_app}")).await;
    let _backends = [
        serve_grip_backend(sidecar_app, &sidecar.url("/")),
        serve_grip_backend(
            pushpin_app,
            &format!("http://127.0.0.1:{}/", pushpin.control),
        ),
    ];
    // Both proxies answer once the backend behind them does.
    timeout(Duration::from_secs(30), async {
        for url in [sidecar.url("/hello"), pushpin.url("/hello")] {
            while !c.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await
    .expect("pushpin, the sidecar and their backends start");
    let (pushpin_base, sidecar_base) = (pushpin.url(""), sidecar.url(""));
    let pushpin_backend = format!("http://127.0.0.1:{pushpin_app}");
    let sidecar_backend = format!("http://127.0.0.1:{sidecar_app}");
    let (through_pushpin, through_sidecar) = tokio::join!(
        grip_script(&c, &pushpin_base, &pushpin_backend),
        grip_script(&c, &sidecar_base, &sidecar_backend),
    );
    // What Pushpin does is the reference; the sidecar must match it line for line.
    assert_eq!(
        through_pushpin,
        [
            "pass-through: 200 None Some(\"1\") \"hello\\n\"",
            "stream head: 200 Some(\"text/plain\") None",
            "stream body: \"start\\none\\ntwo\\n\"",
            "published response: 200 Some(\"text/plain\") None \"published\\n\"",
            "timed-out response: 200 Some(\"text/plain\") None \"timeout\\n\"",
        ],
        "pushpin's transcript"
    );
    assert_eq!(through_sidecar, through_pushpin);
}

/// Every response hold on a channel answers at once when a message comes; the reads behind
/// them must not then be opened and cancelled in a burst, which the hub's HTTP/2 guard
/// against rapid resets answers by closing the sidecar's one upstream connection (seen as
/// every other hold's read failing, and a second's delay, in `plexus bench hold`).
#[tokio::test]
async fn many_response_holds_answered_together_keep_the_upstream_connection() {
    let hub = Server::start(&[]).await;
    let (app, _) = backend().await;
    let sidecar = Sidecar::start(hub.base(), &app).await;
    let c = client();
    hub.publish("burst", "m1").await;
    let clients: Vec<_> = (0..60)
        .map(|_| {
            let (c, sidecar) = (c.clone(), sidecar.url("/poll?topic=burst&prev="));
            tokio::spawn(async move {
                let mut last = 1u64;
                let mut got = Vec::new();
                while last < 4 {
                    let r = c
                        .get(format!("{sidecar}{last}"))
                        .send()
                        .await
                        .expect("a held request");
                    if let Some(seq) = r.headers().get("plexus-seq") {
                        last = seq.to_str().expect("ascii").parse().expect("a seq");
                        got.push(r.text().await.expect("a body"));
                    }
                }
                got
            })
        })
        .collect();
    for i in 2..=4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        hub.publish("burst", format!("m{i}")).await;
    }
    for client in clients {
        let got = timeout(Duration::from_secs(30), client)
            .await
            .expect("every message in time")
            .expect("joined");
        assert_eq!(got, ["m2", "m3", "m4"]);
    }
    let log = sidecar.stderr();
    assert!(
        !log.contains("a hold's read failed"),
        "the upstream connection failed under the holds:\n{log}"
    );
}

/// `plexus bench hold` runs end to end on a small load and finds nothing lost or doubled,
/// through hold mode and through the hub's own long poll.
#[tokio::test]
async fn the_hold_bench_loses_nothing_on_a_small_load() {
    let out = plexus()
        .args(["bench", "hold", "--clients", "20", "--seconds", "2"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = timeout(Duration::from_secs(120), out)
        .await
        .expect("the bench ends")
        .expect("run plexus bench hold");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.contains("delivered")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        assert!(row.contains("delivered     40  lost 0  twice 0"), "{text}");
    }
}
