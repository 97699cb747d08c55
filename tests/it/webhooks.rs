//! Webhooks (docs/API.md §11): a receiver written here (axum on a loopback port) gets each
//! message POSTed, in order through failures, signed so that the PyPI and npm
//! `standardwebhooks` libraries verify it (also during a rotation); 410 disables; dead letters
//! move on; `Retry-After` holds the next attempt back; a hub killed mid-delivery resends;
//! replay keeps the ids; loopback receivers are refused by default (no connection) and
//! reached once allowed; a 302 is a failure whose `Location` is never requested; bad input
//! changes nothing; an https receiver trusted through `webhooks.ca_file` is delivered in order,
//! signed, and one whose certificate is not trusted fails each attempt naming TLS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::kit::{Server, expect_problem, into_json};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: HashMap<String, String>,
    body: Bytes,
    at: Instant,
}

impl Hit {
    fn id(&self) -> &str {
        self.headers.get("webhook-id").map_or("", |s| s.as_str())
    }
    fn seq(&self) -> u64 {
        self.headers
            .get("plexus-seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

type Behaviour = Arc<dyn Fn(&Hit, usize) -> (u16, Vec<(&'static str, String)>) + Send + Sync>;

#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    connections: Arc<AtomicUsize>,
    changed: Arc<tokio::sync::Notify>,
    port: u16,
}

impl Receiver {
    /// A receiver on `bind` (`127.0.0.1:0`, `[::1]:0`) answering with `behaviour(hit, n)`,
    /// `n` counting requests from 0.
    async fn start(bind: &str, behaviour: Behaviour) -> Receiver {
        Receiver::start_holding(bind, behaviour, None).await
    }

    /// [`Receiver::start`], but the first request for seq `hold` is never answered (the hub
    /// is caught mid-delivery).
    async fn start_holding(bind: &str, behaviour: Behaviour, hold: Option<u64>) -> Receiver {
        use axum::serve::ListenerExt;
        let hold = Arc::new(Mutex::new(hold));
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let rx = Receiver {
            hits: Arc::default(),
            connections: Arc::default(),
            changed: Arc::default(),
            port,
        };
        let app = rx.app(behaviour, hold);
        let conns = rx.connections.clone();
        let listener = listener.tap_io(move |_| {
            conns.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        rx
    }

    /// A receiver on 127.0.0.1 speaking https only, with the certificate `cert` (ALPN `h2`
    /// and `http/1.1`); `connections` counts TCP connections, handshakes that fail included.
    async fn start_tls(
        cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
        behaviour: Behaviour,
    ) -> Receiver {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("receiver certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let rx = Receiver {
            hits: Arc::default(),
            connections: Arc::default(),
            changed: Arc::default(),
            port,
        };
        let app = rx.app(behaviour, Arc::default());
        let conns = rx.connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
                });
            }
        });
        rx
    }

    /// The receiver's one route: records each request, then answers `behaviour(hit, n)`.
    fn app(&self, behaviour: Behaviour, hold: Arc<Mutex<Option<u64>>>) -> axum::Router {
        let state = self.clone();
        axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            let behaviour = behaviour.clone();
            let hold = hold.clone();
            async move {
                let hit = Hit {
                    path: uri.path().to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into()))
                        .collect(),
                    body,
                    at: Instant::now(),
                };
                let n = {
                    let mut hits = state.hits.lock().expect("hits");
                    hits.push(hit.clone());
                    hits.len() - 1
                };
                state.changed.notify_waiters();
                let held = {
                    let mut hold = hold.lock().expect("hold");
                    let hit_it = *hold == Some(hit.seq());
                    if hit_it {
                        *hold = None;
                    }
                    hit_it
                };
                if held {
                    std::future::pending::<()>().await;
                }
                let (status, extra) = behaviour(&hit, n);
                let mut resp: Response = (
                    StatusCode::from_u16(status).expect("status"),
                    "receiver says hi",
                )
                    .into_response();
                for (k, v) in extra {
                    resp.headers_mut()
                        .insert(k, v.parse().expect("header value"));
                }
                resp
            }
        })
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }

    /// Waits (up to 60 s) until `done(hits)`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.changed.notified();
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "receiver: {what} did not happen; got {} requests",
                    hits.len()
                );
            }
        }
    }
}

fn ok() -> Behaviour {
    Arc::new(|_, _| (200, vec![]))
}

/// The seqs of the hits after deduplication by `webhook-id`, in arrival order.
fn dedup_seqs(hits: &[Hit]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.id().to_string()))
        .map(Hit::seq)
        .collect()
}

const ALLOW_LOOPBACK: &str = "127.0.0.0/8,::1/128";

async fn create(server: &Server, body: Value) -> reqwest::Response {
    server
        .client()
        .post(server.url("/v1/webhooks"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/webhooks")
}

async fn create_ok(server: &Server, body: Value) -> Value {
    let (status, _, value) = into_json(create(server, body).await).await;
    assert_eq!(status, StatusCode::CREATED, "create webhook: {value}");
    value
}

async fn act(server: &Server, id: &str, action: &str, body: Option<Value>) -> Value {
    let mut req = server
        .client()
        .post(server.url(&format!("/v1/webhooks/{id}/{action}")));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, _, value) = into_json(req.send().await.expect("POST action")).await;
    assert_eq!(status, StatusCode::OK, "{action}: {value}");
    value
}

/// Every message of a topic (`_webhooks.{id}.attempts` and the like), as JSON payloads.
async fn own(server: &Server, topic: &str) -> Vec<Value> {
    server.read_all(topic).await.iter().map(payload).collect()
}

/// The JSON a message of the hub's own topics carries (its `data` is the JSON text).
fn payload(m: &Value) -> Value {
    match &m["data"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

#[tokio::test]
async fn retries_keep_order_and_the_id() {
    let rx = Receiver::start(
        "127.0.0.1:0",
        Arc::new(|_, n| if n < 3 { (500, vec![]) } else { (200, vec![]) }),
    )
    .await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-retry",
        "50ms,50ms,50ms,50ms",
    ])
    .await;
    server.publish_n("orders", 50, "o").await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/hook", rx.port), "topics": ["orders"], "since": "all"}),
    )
    .await;
    assert!(
        hook["secret"].as_str().unwrap_or("").starts_with("whsec_"),
        "{hook}"
    );
    assert_eq!(hook["state"], "active");
    let hits = rx
        .wait_for("50 distinct deliveries", |h| dedup_seqs(h).len() >= 50)
        .await;
    assert_eq!(dedup_seqs(&hits), (1..=50).collect::<Vec<u64>>());
    // The first four requests were the same message: one id, four timestamps' worth.
    let first: Vec<&str> = hits[..4].iter().map(Hit::id).collect();
    assert!(first.iter().all(|id| *id == first[0]), "{first:?}");
    assert!(!first[0].contains('.'), "{}", first[0]);
    assert_eq!(hits[0].headers["plexus-topic"], "orders");
    let body: Value = serde_json::from_slice(&hits[0].body).expect("envelope JSON");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["topic"], "orders");
    // Attempts are logged: three failures then a success for seq 1.
    let id = hook["id"].as_str().expect("id");
    let attempts = own(&server, &format!("_webhooks.{id}.attempts")).await;
    let seq1: Vec<&Value> = attempts.iter().filter(|a| a["seq"] == 1).collect();
    assert_eq!(seq1.len(), 4, "{attempts:?}");
    assert_eq!(seq1[0]["status"], 500);
    assert_eq!(seq1[0]["response"], "receiver says hi");
    assert_eq!(seq1[3]["status"], 200);
    let (status, _, shown) = server.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown only at creation: {shown}"
    );
    assert_eq!(shown["lag"]["orders"]["delivered"], 50, "{shown}");
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let server = Server::start(&[]).await;
    let cases = [
        (json!({"url": "not a url", "topics": ["t"]}), "bad-webhook"),
        (
            json!({"url": "ftp://example.com/x", "topics": ["t"]}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["bad topic!"]}),
            "bad-topic",
        ),
        (
            json!({"url": "http://example.com/x", "topics": []}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["t"], "secret": "nope"}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["t"], "secret": "whsec_AAAA"}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["t"], "since": "yesterday-ish"}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["t"], "rate": -1}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://example.com/x", "topics": ["t"], "colour": "red"}),
            "bad-webhook",
        ),
        (
            json!({"url": "http://127.0.0.1:9/x", "topics": ["t"]}),
            "address-not-allowed",
        ),
        (
            json!({"url": "http://[::1]:9/x", "topics": ["t"]}),
            "address-not-allowed",
        ),
        (
            json!({"url": "http://[::ffff:127.0.0.1]:9/x", "topics": ["t"]}),
            "address-not-allowed",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "topics": ["t"]}),
            "address-not-allowed",
        ),
    ];
    for (body, kind) in cases {
        let problem =
            expect_problem(create(&server, body.clone()).await, 400, &body.to_string()).await;
        assert_eq!(
            problem["type"],
            format!("urn:plexus:problem:{kind}"),
            "{body}"
        );
    }
    for path in ["/v1/webhooks/0123456789abcdef01234567", "/v1/webhooks/nope"] {
        let resp = server
            .client()
            .get(server.url(path))
            .send()
            .await
            .expect("GET");
        expect_problem(resp, 404, path).await;
        let resp = server
            .client()
            .delete(server.url(path))
            .send()
            .await
            .expect("DELETE");
        expect_problem(resp, 404, path).await;
        let resp = server
            .client()
            .post(server.url(&format!("{path}/pause")))
            .send()
            .await
            .expect("POST");
        expect_problem(resp, 404, path).await;
    }
    let (_, _, list) = server.get_json("/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "nothing was stored");
    let (_, _, consumers) = server.get_json("/v1/consumers").await;
    assert_eq!(consumers["consumers"], json!([]), "no consumer was made");
    // An unknown action on a real webhook.
    let hook = create_ok(
        &server,
        json!({"url": "http://example.invalid/x", "topics": ["t"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    let resp = server
        .client()
        .post(server.url(&format!("/v1/webhooks/{id}/explode")))
        .send()
        .await
        .expect("POST");
    expect_problem(resp, 404, "unknown action").await;
    let resp = server
        .client()
        .post(server.url(&format!("/v1/webhooks/{id}/replay")))
        .json(&json!({"since": "never"}))
        .send()
        .await
        .expect("POST");
    expect_problem(resp, 400, "bad since").await;
}

#[tokio::test]
async fn loopback_is_refused_by_default_and_reached_once_allowed() {
    let v4 = Receiver::start("127.0.0.1:0", ok()).await;
    let v6 = Receiver::start("[::1]:0", ok()).await;
    let server = Server::start(&[]).await;
    // IP literals are refused at creation; a name is refused at each attempt.
    for url in [
        format!("http://127.0.0.1:{}/x", v4.port),
        format!("http://[::1]:{}/x", v6.port),
        format!("http://[::ffff:127.0.0.1]:{}/x", v4.port),
    ] {
        expect_problem(
            create(&server, json!({"url": url, "topics": ["t"]})).await,
            400,
            &url,
        )
        .await;
    }
    let hook = create_ok(
        &server,
        json!({"url": format!("http://localhost:{}/x", v4.port), "topics": ["t"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id").to_string();
    server.publish("t", "hello").await;
    let attempts_topic = format!("_webhooks.{id}.attempts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempts = loop {
        let page = server.read(&attempts_topic, "since=all&wait=5").await;
        let got = crate::kit::messages(&page).to_vec();
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(
        payload(&attempts[0])["error"],
        "address not allowed",
        "{attempts:?}"
    );
    assert_eq!(v4.connections.load(Ordering::SeqCst), 0);
    assert_eq!(v6.connections.load(Ordering::SeqCst), 0);

    // Allowed: every form reaches its receiver.
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    for (url, rx) in [
        (format!("http://127.0.0.1:{}/a", v4.port), &v4),
        (format!("http://[::1]:{}/b", v6.port), &v6),
        (format!("http://localhost:{}/c", v4.port), &v4),
        (format!("http://[::ffff:127.0.0.1]:{}/d", v4.port), &v4),
    ] {
        let path = url.rsplit('/').next().expect("path").to_string();
        create_ok(
            &server,
            json!({"url": url, "topics": [format!("p{path}")], "since": "all"}),
        )
        .await;
        server.publish(&format!("p{path}"), "x").await;
        let want = format!("/{path}");
        rx.wait_for(&url, |h| h.iter().any(|h| h.path == want))
            .await;
    }
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_never_followed() {
    let rx = Receiver::start(
        "127.0.0.1:0",
        Arc::new(|hit: &Hit, _| {
            if hit.path == "/hook" {
                (302, vec![("location", "/elsewhere".to_string())])
            } else {
                (200, vec![])
            }
        }),
    )
    .await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-retry",
        "50ms,50ms",
    ])
    .await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/hook", rx.port), "topics": ["r"], "since": "all"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    server.publish("r", "one").await;
    // Three attempts (one and two retries), then the dead letter.
    let dead_topic = format!("_webhooks.{id}.dead");
    let page = server.read(&dead_topic, "since=all&wait=30").await;
    let dead = crate::kit::messages(&page);
    assert_eq!(dead.len(), 1, "{page}");
    let hits = rx.hits();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(
        hits.iter().all(|h| h.path == "/hook"),
        "Location was followed: {hits:?}"
    );
}

#[tokio::test]
async fn dead_letters_then_moves_on() {
    let rx = Receiver::start(
        "127.0.0.1:0",
        Arc::new(|hit: &Hit, _| {
            if hit.seq() == 1 {
                (500, vec![])
            } else {
                (204, vec![])
            }
        }),
    )
    .await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-retry",
        "1s,1s",
    ])
    .await;
    server.publish_n("d", 2, "m").await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["d"], "since": "all"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    let hits = rx
        .wait_for("seq 2", |h| h.iter().any(|h| h.seq() == 2))
        .await;
    assert_eq!(hits.iter().filter(|h| h.seq() == 1).count(), 3);
    let dead = own(&server, &format!("_webhooks.{id}.dead")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["seq"], 1);
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["webhook_id"], hits[0].id());
}

#[tokio::test]
async fn gone_disables_with_an_event() {
    let rx = Receiver::start("127.0.0.1:0", Arc::new(|_, _| (410, vec![]))).await;
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["g"], "since": "all"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    server.publish("g", "x").await;
    let page = server
        .read(&format!("_webhooks.{id}.events"), "since=all&wait=30")
        .await;
    let events = crate::kit::messages(&page);
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(payload(&events[0])["event"], "disabled");
    let (_, _, shown) = server.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["state"], "disabled", "{shown}");
    assert_eq!(rx.hits().len(), 1);
}

/// A receiver that keeps failing for `webhooks.disable_after` disables its webhook, with an
/// event naming the key, before the retry schedule runs out.
#[tokio::test]
async fn failing_for_disable_after_disables_with_an_event() {
    let rx = Receiver::start("127.0.0.1:0", Arc::new(|_, _| (500, vec![]))).await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-retry",
        "200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms",
        "--webhooks-disable-after",
        "1s",
    ])
    .await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["fa"], "since": "all"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    server.publish("fa", "x").await;
    let page = server
        .read(&format!("_webhooks.{id}.events"), "since=all&wait=30")
        .await;
    let events = crate::kit::messages(&page);
    assert_eq!(events.len(), 1, "{page}");
    let event = payload(&events[0]);
    assert_eq!(event["event"], "disabled", "{event}");
    assert!(event.to_string().contains("disable_after"), "{event}");
    let (_, _, shown) = server.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["state"], "disabled", "{shown}");
    let attempts = rx.hits().len();
    assert!(attempts >= 2, "it retried before giving up: {attempts}");
    assert!(
        attempts < 21,
        "it stopped before the schedule ran out: {attempts}"
    );
    assert!(
        own(&server, &format!("_webhooks.{id}.dead"))
            .await
            .is_empty(),
        "a disabled webhook dead-letters nothing"
    );
}

/// `rate` caps one webhook's deliveries per second: 6 messages at 2/s cannot all arrive in
/// under 2 s (a lower bound only; a slow machine only makes it later), and all arrive in order.
#[tokio::test]
async fn rate_caps_deliveries_per_second() {
    let rx = Receiver::start("127.0.0.1:0", Arc::new(|_, _| (204, vec![]))).await;
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    server.publish_n("rt", 6, "m").await;
    let started = Instant::now();
    create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["rt"], "since": "all", "rate": 2}),
    )
    .await;
    let hits = rx.wait_for("6 deliveries", |h| h.len() >= 6).await;
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "6 deliveries at 2/s took {:?}",
        started.elapsed()
    );
    let seqs: Vec<u64> = hits.iter().map(|h| h.seq()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn retry_after_holds_the_next_attempt_back() {
    let rx = Receiver::start(
        "127.0.0.1:0",
        Arc::new(|_, n| {
            if n == 0 {
                (429, vec![("retry-after", "2".to_string())])
            } else {
                (200, vec![])
            }
        }),
    )
    .await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-retry",
        "10ms",
    ])
    .await;
    create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["ra"], "since": "all"}),
    )
    .await;
    server.publish("ra", "x").await;
    let hits = rx.wait_for("two requests", |h| h.len() >= 2).await;
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
}

#[tokio::test]
async fn replay_resends_with_the_same_ids() {
    let rx = Receiver::start("127.0.0.1:0", ok()).await;
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    server.publish_n("rp", 5, "m").await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["rp"], "since": "all"}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    let first = rx.wait_for("5 deliveries", |h| h.len() >= 5).await;
    act(&server, id, "replay", Some(json!({"since": "2"}))).await;
    let all = rx.wait_for("3 more", |h| h.len() >= 8).await;
    let again: Vec<&str> = all[5..].iter().map(Hit::id).collect();
    let before: Vec<&str> = first[2..5].iter().map(Hit::id).collect();
    assert_eq!(again, before);
    assert_eq!(
        all[5..].iter().map(Hit::seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
}

#[tokio::test]
async fn pause_resume_delete() {
    let rx = Receiver::start("127.0.0.1:0", ok()).await;
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["pr"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    assert_eq!(act(&server, id, "pause", None).await["state"], "paused");
    server.publish("pr", "held").await;
    assert_eq!(act(&server, id, "resume", None).await["state"], "active");
    rx.wait_for("the held message", |h| h.len() == 1).await;
    let (_, _, list) = server.get_json("/v1/webhooks").await;
    assert_eq!(list["webhooks"].as_array().map(Vec::len), Some(1));
    let resp = server
        .client()
        .delete(server.url(&format!("/v1/webhooks/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = server.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, consumers) = server.get_json("/v1/consumers").await;
    assert_eq!(consumers["consumers"], json!([]));
}

#[tokio::test]
async fn a_hub_killed_mid_delivery_resends_and_order_holds() {
    // Seq 10's first request is never answered: the hub is killed while it waits.
    let rx = Receiver::start_holding("127.0.0.1:0", ok(), Some(10)).await;
    let mut server = Server::start_durable(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["k"], "since": "all"}),
    )
    .await;
    server.publish_n("k", 20, "m").await;
    rx.wait_for("seq 10 in flight", |h| h.iter().any(|h| h.seq() == 10))
        .await;
    server.sigkill().await;
    server.restart().await;
    server.publish_n("k", 10, "n").await;
    let hits = rx
        .wait_for("30 distinct deliveries", |h| dedup_seqs(h).len() >= 30)
        .await;
    assert_eq!(dedup_seqs(&hits), (1..=30).collect::<Vec<u64>>());
    assert_eq!(
        hits.iter().filter(|h| h.seq() == 10).count(),
        2,
        "seq 10 sent again"
    );
    // Nothing after seq 10 went out before the hub died.
    let first_10 = hits.iter().position(|h| h.seq() == 10).unwrap_or(0);
    assert_eq!(hits[first_10 + 1].seq(), 10);
}

/// Two nodes on one Redis: the node that delivers is killed mid-delivery; the other takes
/// over once its hold runs out, and nothing is lost or reordered.
#[tokio::test]
async fn cluster_takeover_on_one_redis() {
    let redis = crate::kit::redis::RedisServer::start().await;
    let url = redis.url();
    let rx = Receiver::start_holding("127.0.0.1:0", ok(), Some(10)).await;
    let args = [
        "--storage",
        &url,
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
    ];
    let mut a = Server::start(&args).await;
    // B runs before the webhook exists: it learns of it from the store.
    let b = Server::start(&args).await;
    create_ok(
        &a,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["c"], "since": "all"}),
    )
    .await;
    a.publish_n("c", 20, "m").await;
    // Whichever node holds the webhook delivers up to the held seq 10; the other waits.
    rx.wait_for("seq 10 in flight", |h| h.iter().any(|h| h.seq() == 10))
        .await;
    a.sigkill().await;
    b.publish_n("c", 10, "n").await;
    let hits = rx
        .wait_for("30 distinct deliveries", |h| dedup_seqs(h).len() >= 30)
        .await;
    assert_eq!(dedup_seqs(&hits), (1..=30).collect::<Vec<u64>>());
    // Every seq went out once, but 10 (twice: A's, lost, and B's).
    let mut counts = std::collections::BTreeMap::new();
    for h in &hits {
        *counts.entry(h.seq()).or_insert(0) += 1;
    }
    assert!(
        counts
            .iter()
            .all(|(s, n)| *n == if *s == 10 { 2 } else { 1 }),
        "{counts:?}"
    );
}

/// The secret of the Standard Webhooks specification's example.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn case(hit: &Hit, secret: &str, valid: bool) -> Value {
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    json!(hit.headers.get(*k).cloned().unwrap_or_default()),
                )
            })
            .collect();
    json!({
        "secret": secret,
        "body": String::from_utf8_lossy(&hit.body),
        "headers": headers,
        "valid": valid,
    })
}

#[tokio::test]
async fn signatures_verify_with_the_reference_libraries_also_during_rotation() {
    let rx = Receiver::start("127.0.0.1:0", ok()).await;
    let server = Server::start(&["--webhooks-allow-networks", ALLOW_LOOPBACK]).await;
    let hook = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["s"], "secret": SPEC_SECRET}),
    )
    .await;
    let fresh = create_ok(
        &server,
        json!({"url": format!("http://127.0.0.1:{}/", rx.port), "topics": ["s2"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    server.publish("s", json!({"n": 1}).to_string()).await;
    server.publish("s2", "not json but the envelope is").await;
    rx.wait_for("two deliveries", |h| h.len() >= 2).await;
    let rotated = act(&server, id, "rotate-secret", None).await;
    let new_secret = rotated["secret"].as_str().expect("new secret").to_string();
    assert_ne!(new_secret, SPEC_SECRET);
    server.publish("s", json!({"n": 2}).to_string()).await;
    let hits = rx.wait_for("three deliveries", |h| h.len() >= 3).await;
    let by_topic = |t: &str| -> Vec<&Hit> {
        hits.iter()
            .filter(|h| h.headers["plexus-topic"] == t)
            .collect()
    };
    let (s, s2) = (by_topic("s"), by_topic("s2"));
    let fresh_secret = fresh["secret"].as_str().expect("secret");
    assert_eq!(
        s[1].headers["webhook-signature"].split(' ').count(),
        2,
        "two signatures during rotation"
    );
    let cases = json!([
        case(s[0], SPEC_SECRET, true),
        case(s[0], &new_secret, false),
        case(s2[0], fresh_secret, true),
        case(s2[0], SPEC_SECRET, false),
        case(s[1], SPEC_SECRET, true),
        case(s[1], &new_secret, true),
        case(s[1], fresh_secret, false),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cases.json");
    std::fs::write(&file, cases.to_string()).expect("write cases");
    let out = tokio::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/webhook-verifiers"),
    )
    .arg(&file)
    .output()
    .await
    .expect("run scripts/webhook-verifiers");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("python standardwebhooks: 7 cases, 0 wrong"),
        "{text}"
    );
    assert!(
        text.contains("npm standardwebhooks: 7 cases, 0 wrong"),
        "{text}"
    );
}

/// Creating, showing and managing a webhook need `subscribe` on its topics; listing shows
/// every webhook to an admin and to others only those whose topics they may read.
#[tokio::test]
async fn rights() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plexus.toml");
    std::fs::write(
        &file,
        "[auth]\nmode = \"required\"\n\
         [[auth.tokens]]\ntoken = \"root-token-1\"\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = true\n\
         [[auth.tokens]]\ntoken = \"only-a-token\"\nsubscribe = [\"a\"]\n",
    )
    .expect("write config");
    let server = Server::start(&["--config", file.to_str().expect("UTF-8")]).await;
    let call = |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = server
            .client()
            .request(method, server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let ab = json!({"url": "http://example.invalid/x", "topics": ["a", "b"]});
    let r = call(
        Method::POST,
        "/v1/webhooks",
        "only-a-token",
        Some(ab.clone()),
    )
    .await
    .expect("POST");
    expect_problem(r, 403, "create without subscribe on b").await;
    let (status, _, made) = into_json(
        call(Method::POST, "/v1/webhooks", "root-token-1", Some(ab))
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id");
    let (status, _, mine) = into_json(
        call(
            Method::POST,
            "/v1/webhooks",
            "only-a-token",
            Some(json!({"url": "http://example.invalid/y", "topics": ["a"]})),
        )
        .await
        .expect("POST"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    for (method, path) in [
        (Method::GET, format!("/v1/webhooks/{id}")),
        (Method::POST, format!("/v1/webhooks/{id}/pause")),
        (Method::POST, format!("/v1/webhooks/{id}/rotate-secret")),
        (Method::DELETE, format!("/v1/webhooks/{id}")),
    ] {
        let r = call(method, &path, "only-a-token", None)
            .await
            .expect("call");
        expect_problem(r, 403, &path).await;
    }
    let listed = |token: &'static str| {
        let call = &call;
        async move {
            let r = call(Method::GET, "/v1/webhooks", token, None)
                .await
                .expect("GET");
            let (_, _, v) = into_json(r).await;
            v["webhooks"]
                .as_array()
                .map(|a| a.iter().map(|w| w["id"].clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        }
    };
    assert_eq!(listed("root-token-1").await.len(), 2);
    assert_eq!(listed("only-a-token").await, vec![mine["id"].clone()]);
    // The secret was not rotated by the refused call: the webhook is as made.
    let (_, _, shown) = into_json(
        call(
            Method::GET,
            &format!("/v1/webhooks/{id}"),
            "root-token-1",
            None,
        )
        .await
        .expect("GET"),
    )
    .await;
    assert_eq!(shown["state"], "active");
}

/// A certificate for `localhost` and `127.0.0.1`, and a file holding it as PEM.
fn receiver_cert(
    dir: &std::path::Path,
    name: &str,
) -> (rcgen::CertifiedKey<rcgen::KeyPair>, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen");
    let file = dir.join(name);
    std::fs::write(&file, cert.cert.pem()).expect("write PEM");
    (cert, file.to_str().expect("UTF-8").to_owned())
}

/// An https receiver trusted through `webhooks.ca_file` gets every message, in order, signed,
/// whether the URL names the host (SNI and name check on `localhost`, the address the guard
/// vetted connected to) or is an IP literal.
#[tokio::test]
async fn https_receivers_are_delivered_in_order_and_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, pem) = receiver_cert(dir.path(), "receiver.pem");
    let rx = Receiver::start_tls(&cert, ok()).await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-ca-file",
        &pem,
    ])
    .await;
    server.publish_n("secure", 20, "s").await;
    server.publish_n("secure-ip", 20, "i").await;
    for (topic, host) in [("secure", "localhost"), ("secure-ip", "127.0.0.1")] {
        create_ok(
            &server,
            json!({"url": format!("https://{host}:{}/hook", rx.port), "topics": [topic],
                   "since": "all", "secret": SPEC_SECRET}),
        )
        .await;
    }
    let key = plexus::webhooks::sign::key_of(SPEC_SECRET).expect("key");
    let hits = rx
        .wait_for("20 deliveries of each topic", |h| {
            h.iter()
                .filter(|h| h.headers["plexus-topic"] == "secure")
                .count()
                >= 20
                && h.iter()
                    .filter(|h| h.headers["plexus-topic"] == "secure-ip")
                    .count()
                    >= 20
        })
        .await;
    for topic in ["secure", "secure-ip"] {
        let mine: Vec<Hit> = hits
            .iter()
            .filter(|h| h.headers["plexus-topic"] == topic)
            .cloned()
            .collect();
        assert_eq!(dedup_seqs(&mine), (1..=20).collect::<Vec<u64>>(), "{topic}");
        for hit in &mine {
            // The signing itself is checked against the reference libraries over http
            // (signatures_verify_with_…); here: what arrived over TLS is what was signed.
            let ts: i64 = hit.headers["webhook-timestamp"].parse().expect("timestamp");
            let want = plexus::webhooks::sign::signature(&key, hit.id(), ts, &hit.body);
            assert!(
                hit.headers["webhook-signature"]
                    .split(' ')
                    .any(|s| s == want),
                "{topic} seq {}: {:?} is not {want}",
                hit.seq(),
                hit.headers["webhook-signature"]
            );
            let body: Value = serde_json::from_slice(&hit.body).expect("envelope JSON");
            assert_eq!(body["seq"], hit.seq());
        }
    }
}

/// A receiver whose certificate nobody trusts (not in `webhooks.ca_file`, not a system root)
/// is connected to, and each attempt fails naming TLS; after the retries it is dead-lettered
/// and no request ever reached it.
#[tokio::test]
async fn an_untrusted_certificate_fails_each_attempt_naming_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, trusted) = receiver_cert(dir.path(), "trusted.pem");
    let (untrusted, _) = receiver_cert(dir.path(), "untrusted.pem");
    let rx = Receiver::start_tls(&untrusted, ok()).await;
    let server = Server::start(&[
        "--webhooks-allow-networks",
        ALLOW_LOOPBACK,
        "--webhooks-ca-file",
        &trusted,
        "--webhooks-retry",
        "50ms,50ms",
    ])
    .await;
    let hook = create_ok(
        &server,
        json!({"url": format!("https://localhost:{}/hook", rx.port), "topics": ["t"]}),
    )
    .await;
    let id = hook["id"].as_str().expect("id");
    server.publish("t", "hello").await;
    let dead_topic = format!("_webhooks.{id}.dead");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = server.read(&dead_topic, "since=all&wait=5").await;
        if !crate::kit::messages(&page).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
    }
    let attempts = own(&server, &format!("_webhooks.{id}.attempts")).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for a in &attempts {
        let error = a["error"].as_str().unwrap_or("");
        assert!(
            error.starts_with("tls: ") && error.contains("certificate"),
            "{a}"
        );
    }
    assert!(rx.connections.load(Ordering::SeqCst) >= 3);
    assert!(rx.hits().is_empty(), "a request got through");
}
