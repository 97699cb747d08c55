//! Regression tests: one test per bug that was found and fixed, named after what went wrong,
//! each with a comment saying what the bug was and which contract it broke (docs/API.md).
//! A bug's test lives here rather than in its feature's module, so that what once broke
//! reads as one list. Tests here use the kit like any other module (`crate::kit`).

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::kit::clients::{READ_TIMEOUT, Sse};
use crate::kit::{Server, eventually, expect_problem, into_json, messages, metric};

/// A client's Close frame is answered with a Close frame echoing its code before the server
/// ends the TCP connection (RFC 6455 §5.5.1); without it browsers report 1006,
/// `wasClean = false`. Checked on the wire, with a client that is nothing but a TCP socket:
/// a WebSocket library would answer for itself.
#[tokio::test]
async fn websocket_close_from_the_client_is_answered_with_a_close_frame() {
    let server = Server::start(&[]).await;
    for code in [1000u16, 4001] {
        let (socket, after_head) = raw_ws_upgrade(&server).await;
        let frames = timeout(
            READ_TIMEOUT,
            close_and_read_to_eof(socket, after_head, code),
        )
        .await
        .unwrap_or_else(|_| panic!("close {code}: EOF within the deadline"));
        let close = frames
            .iter()
            .find(|(first, _)| *first == 0x88)
            .unwrap_or_else(|| panic!("close {code}: no Close frame before EOF: {frames:?}"));
        assert!(
            close.1.len() >= 2,
            "close {code}: the Close frame carries a code: {frames:?}"
        );
        let echoed = u16::from_be_bytes([close.1[0], close.1[1]]);
        assert_eq!(echoed, code, "the close code is echoed: {frames:?}");
    }
}

/// Opens `/v1/ws` by hand over a plain TCP socket; the socket after the `101` head, and the
/// bytes read past the head.
async fn raw_ws_upgrade(server: &Server) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    );
    socket
        .write_all(request.as_bytes())
        .await
        .expect("write the upgrade request");
    let mut read = Vec::new();
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0u8; 1024];
        let n = timeout(READ_TIMEOUT, socket.read(&mut buf))
            .await
            .expect("the upgrade answer within the deadline")
            .expect("read the upgrade answer");
        assert!(n > 0, "EOF before the upgrade answer: {read:?}");
        read.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&read[..head_end]);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade is accepted: {head}"
    );
    // RFC 6455 §1.3's example key and its accept value.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    (socket, read.split_off(head_end))
}

/// Sends a masked Close frame with `code`, then reads until EOF; the frames that came, as
/// (first byte, payload): a final Close frame is 0x88.
async fn close_and_read_to_eof(
    mut socket: tokio::net::TcpStream,
    mut read: Vec<u8>,
    code: u16,
) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let [hi, lo] = code.to_be_bytes();
    let close = [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        hi ^ mask[0],
        lo ^ mask[1],
    ];
    socket
        .write_all(&close)
        .await
        .expect("write the Close frame");
    loop {
        let mut buf = [0u8; 1024];
        match socket.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) => panic!("close {code}: the connection failed instead of ending: {e}"),
        }
    }
    // Server frames are unmasked; ours are short, so a 7-bit or 16-bit length.
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= read.len() {
        let first = read[at];
        let (len, header) = match read[at + 1] & 0x7f {
            126 if at + 4 <= read.len() => (
                usize::from(u16::from_be_bytes([read[at + 2], read[at + 3]])),
                4,
            ),
            126 | 127 => panic!("close {code}: an unexpected frame length: {read:?}"),
            len => (usize::from(len), 2),
        };
        let payload = read
            .get(at + header..at + header + len)
            .unwrap_or_else(|| panic!("close {code}: a frame cut short: {read:?}"));
        frames.push((first, payload.to_vec()));
        at += header + len;
    }
    assert_eq!(at, read.len(), "close {code}: whole frames only: {read:?}");
    frames
}

/// An SSE stream ended by a shutdown tells the client when to come back: its last frame is
/// `retry: N` with N from 1,000 to 5,000 ms, random per stream, so a fleet of clients does not
/// reconnect at once.
#[tokio::test]
async fn sse_stream_ends_with_a_jittered_retry_at_shutdown() {
    let mut server = Server::start(&[]).await;
    server.publish("leaving", "one").await;
    let mut sse = Sse::open(&server, "/v1/topics/leaving/sse?since=all", &[]).await;
    sse.next_event().await.expect("the retained event");

    let status = server.sigterm().await;
    assert!(status.success(), "plexus serve exits 0 after SIGTERM");

    let mut frames = Vec::new();
    while let Some(frame) = sse.next_frame().await {
        frames.push(frame);
    }
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("nothing was sent between SIGTERM and EOF"));
    assert!(
        last.id.is_none() && last.data.is_none(),
        "the retry frame stands alone: {frames:?}"
    );
    let retry: u64 = last
        .retry
        .as_deref()
        .unwrap_or_else(|| panic!("the stream does not end with `retry:`: {frames:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("`retry:` is not a number of ms ({e}): {frames:?}"));
    assert!(
        (1000..=5000).contains(&retry),
        "retry: {retry} is outside 1000..=5000"
    );
}

/// `POST /v1/publish` with a JSON content type takes a JSON array only: an object (or NDJSON)
/// is `400` and stores nothing. NDJSON is for `application/x-ndjson` and for no content type.
#[tokio::test]
async fn batch_with_a_json_content_type_must_be_an_array() {
    let server = Server::start(&[]).await;
    server.publish("b", "existing").await;
    let object = json!({"topic": "b", "data": "one"}).to_string();
    let two_lines = format!("{object}\n{object}\n");
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
    ] {
        for (what, body) in [("an object", &object), ("NDJSON", &two_lines)] {
            let before = server.snapshot(&["b"]).await;
            let resp = server.batch_raw(body.clone(), content_type).await;
            expect_problem(resp, 400, &format!("{what} as {content_type}")).await;
            assert_eq!(
                server.snapshot(&["b"]).await,
                before,
                "{what} as {content_type} stores nothing"
            );
        }
        let array = format!("[{object}]");
        let (status, _, value) = into_json(server.batch_raw(array, content_type).await).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "an array as {content_type}: {value}"
        );
    }

    // NDJSON as application/x-ndjson, and with no content type at all.
    let (status, _, value) = into_json(
        server
            .batch_raw(two_lines.clone(), "application/x-ndjson")
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "NDJSON as x-ndjson: {value}");
    let resp = server
        .client()
        .post(server.url("/v1/publish"))
        .body(two_lines)
        .send()
        .await
        .expect("send an NDJSON batch with no content type");
    let (status, _, value) = into_json(resp).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "NDJSON with no content type: {value}"
    );
    assert_eq!(
        messages(&server.read("b", "since=all").await).len(),
        1 + 3 + 2 + 2,
        "the existing message, three arrays of one, two NDJSON batches of two"
    );
}

async fn open_http1(server: &Server) -> Option<u64> {
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(&text, r#"plexus_connections_open{protocol="http1"}"#)
}

/// `plexus_connections_open` counts every open TCP connection, by protocol, upgraded WebSocket
/// connections included: hyper is done with those, the socket is not.
#[tokio::test]
async fn connection_gauge_counts_upgraded_websockets() {
    let server = Server::start(&[]).await;
    let before = open_http1(&server)
        .await
        .expect("an http1 series in /metrics (the scraping connection is one)");
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let url = format!("ws://{}/v1/ws", server.addr());
        let (ws, _) = timeout(READ_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("handshake within the deadline")
            .expect("WebSocket handshake");
        sockets.push(ws);
    }
    eventually("three WebSocket connections are counted open", || async {
        (open_http1(&server).await? >= before + 3).then_some(())
    })
    .await;
    for mut ws in sockets {
        ws.close(None).await.expect("close the WebSocket");
    }
    eventually("the WebSocket connections are counted closed", || async {
        (open_http1(&server).await? <= before).then_some(())
    })
    .await;

    // HTTP/2 by prior knowledge counts as h2c, from the connection's first request on.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    let text = h2c
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics over h2c")
        .text()
        .await
        .expect("the metrics text");
    assert!(
        metric(&text, r#"plexus_connections_open{protocol="h2c"}"#).is_some_and(|n| n >= 1),
        "the h2c connection is counted: {text}"
    );
}

/// `plexus_connections_open{protocol=…}` of one scrape: every series, by label.
async fn open_series(client: &reqwest::Client, url: &str) -> Option<Vec<(String, u64)>> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let series = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("plexus_connections_open{protocol=\"")?;
            let (label, value) = rest.split_once("\"} ")?;
            Some((label.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    Some(series)
}

/// The series of `plexus_connections_open` add up to every open TCP connection. A connection
/// was counted only once its protocol was known, so one that had sent nothing (cleartext
/// before its first byte, or after a first `P` that may begin the HTTP/2 preface; TLS in its
/// handshake) was in no series. Such connections are `pending` now.
#[tokio::test]
async fn connection_gauge_counts_connections_that_have_sent_nothing() {
    crate::kit::install_crypto_provider();
    for tls in [false, true] {
        let server = if tls {
            Server::start(&["--tls-self-signed"]).await
        } else {
            Server::start(&[]).await
        };
        let (client, url) = if tls {
            let pem_path = server.data_dir().join("tls").join("self-signed.pem");
            let pem = std::fs::read(&pem_path)
                .unwrap_or_else(|e| panic!("read {}: {e}", pem_path.display()));
            let cert = reqwest::Certificate::from_pem(&pem).expect("the written PEM");
            let client = reqwest::Client::builder()
                .add_root_certificate(cert)
                .build()
                .expect("a TLS client");
            let url = format!("https://localhost:{}/metrics", server.port());
            (client, url)
        } else {
            (reqwest::Client::new(), server.url("/metrics"))
        };
        // Four connections that say nothing (in cleartext, one says only `P`). Each scrape's
        // own connection is open too: the series add up to at least five, whatever earlier
        // connections of the harness are still open.
        let mut quiet = Vec::new();
        for i in 0..4 {
            let mut socket = tokio::net::TcpStream::connect(server.addr())
                .await
                .expect("connect");
            if !tls && i == 0 {
                tokio::io::AsyncWriteExt::write_all(&mut socket, b"P")
                    .await
                    .expect("write P");
            }
            quiet.push(socket);
        }
        let label = if tls { "TLS" } else { "cleartext" };
        eventually(
            &format!("{label}: the quiet connections are counted"),
            || async {
                let series = open_series(&client, &url).await?;
                let sum: u64 = series.iter().map(|(_, n)| n).sum();
                let pending = series.iter().find(|(l, _)| l == "pending")?.1;
                (sum >= 5 && pending >= 4).then_some(())
            },
        )
        .await;
        drop(quiet);
        eventually(
            &format!("{label}: the quiet connections are counted closed"),
            || async {
                let series = open_series(&client, &url).await?;
                (series.iter().find(|(l, _)| l == "pending")?.1 == 0).then_some(())
            },
        )
        .await;
    }
}

/// What the document declares about credentials matches the server's mode: nothing with
/// `--auth open`; bearer and the `access_token` query parameter with `--auth required`, and
/// none on the paths anyone may call.
#[tokio::test]
async fn openapi_declares_security_only_when_auth_is_required() {
    let open = Server::start(&[]).await;
    let (status, _, doc) = open.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc.get("security").is_none_or(|s| s == &json!([])),
        "open: no document-wide security: {}",
        doc["security"]
    );
    assert!(
        doc["components"].get("securitySchemes").is_none(),
        "open: no security schemes: {}",
        doc["components"]["securitySchemes"]
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            assert!(
                op.get("security").is_none_or(|s| s == &json!([])),
                "open: {method} {path} declares security {}",
                op["security"]
            );
        }
    }

    let required = Server::start(&[
        "--auth",
        "required",
        "--jwt-secret",
        "regression-secret-of-at-least-32-bytes",
    ])
    .await;
    let (status, _, doc) = required.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc["security"],
        json!([{"bearerAuth": []}, {"accessToken": []}]),
        "required: bearer or access_token"
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["accessToken"]["type"], "apiKey");
    assert_eq!(schemes["accessToken"]["in"], "query");
    assert_eq!(schemes["accessToken"]["name"], "access_token");
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            doc["paths"][path]["get"]["security"],
            json!([]),
            "required: {path} needs no credentials"
        );
    }
    let unauthorized: &Value = &doc["paths"]["/v1/topics"]["get"]["responses"]["401"];
    assert!(unauthorized.is_object(), "required: 401 is documented");
}

/// The bounds the document gives are the server's, found by schemathesis as schema-valid
/// requests refused: `lease=5e-324` (a positive number, but no duration); and `limit` above the
/// 32-bit integer the document declared, which the server accepted though the document forbade
/// it. The fix for `limit` is the document's: the server parses it as a `u64` and clamps it to
/// 1,000, as it always did, and the document says so (1 to `u64::MAX`); a server refusing what
/// it used to clamp would break clients (docs/API.md §2.2).
#[tokio::test]
async fn openapi_bounds_are_the_servers_own() {
    let server = Server::start(&[]).await;
    let (_, _, doc) = server.get_json("/openapi.json").await;
    let param = |path: &str, method: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
            .clone()
    };
    let lease = param("/v1/queues/{queue}/claim", "post", "lease");
    assert_eq!(lease["minimum"], json!(0.001), "{lease}");
    let claim = |lease: &'static str| {
        let url = server.url(&format!("/v1/queues/q/claim?lease={lease}"));
        let client = server.client().clone();
        async move { client.post(url).send().await.expect("claim") }
    };
    expect_problem(claim("5e-324").await, 400, "lease=5e-324").await;
    expect_problem(claim("0.0009").await, 400, "lease=0.0009").await;
    assert_eq!(claim("0.001").await.status(), StatusCode::NO_CONTENT);

    let limit = param("/v1/topics/{topics}/messages", "get", "limit");
    assert_eq!(
        (&limit["type"], &limit["format"]),
        (&json!("integer"), &json!("uint64")),
        "{limit}"
    );
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(u64::MAX)),
        "{limit}"
    );
    server.publish_n("l", 3, "m").await;
    for accepted in ["1", "1000", "1001", "2147483648", "18446744073709551615"] {
        let page = server
            .read("l", &format!("since=all&limit={accepted}"))
            .await;
        let want = if accepted == "1" { 1 } else { 3 };
        assert_eq!(messages(&page).len(), want, "limit={accepted}: {page}");
    }
    for refused in ["0", "-1", "18446744073709551616", "1.5", "many", ""] {
        let resp = server
            .get(&format!("/v1/topics/l/messages?limit={refused}"), &[])
            .await;
        expect_problem(resp, 400, &format!("limit={refused}")).await;
    }

    let since = param("/v1/topics/{topics}/messages", "get", "since");
    assert!(
        since["pattern"].is_string(),
        "since has a pattern (an empty since is not one): {since}"
    );
    let resp = server.get("/v1/topics/l/messages?since=", &[]).await;
    expect_problem(resp, 400, "since=").await;
}

/// Over TLS the gauge's series are `tls-h2` and `tls-http1`, as ALPN (and then the first
/// request) decided.
#[tokio::test]
async fn connection_gauge_labels_tls_connections_by_protocol() {
    crate::kit::install_crypto_provider();
    let server = Server::start(&["--tls-self-signed"]).await;
    let pem_path = server.data_dir().join("tls").join("self-signed.pem");
    let pem =
        std::fs::read(&pem_path).unwrap_or_else(|e| panic!("read {}: {e}", pem_path.display()));
    let url = format!("https://localhost:{}/metrics", server.port());
    for (http1, series) in [(false, "tls-h2"), (true, "tls-http1")] {
        let cert = reqwest::Certificate::from_pem(&pem).expect("the written PEM is a certificate");
        let mut builder = reqwest::Client::builder().add_root_certificate(cert);
        if http1 {
            builder = builder.http1_only();
        }
        let client = builder.build().expect("a TLS client");
        let text = client
            .get(&url)
            .send()
            .await
            .expect("GET /metrics over TLS")
            .text()
            .await
            .expect("the metrics text");
        let name = format!("plexus_connections_open{{protocol=\"{series}\"}}");
        assert!(
            metric(&text, &name).is_some_and(|n| n >= 1),
            "this {series} connection is counted: {text}"
        );
    }
}

// Hardening: wildcards reached the hub's reserved topics. `subscribe = [">"]` (or
// `*.>`) read `_queues.{q}` and `_jobs.{id}`, and so every queue's job payloads, with no
// `jobs` right; `GET /v1/topics` listed every job id; an admin could delete them. A wildcard
// no longer stands for a first token starting with `_`; reading `_jobs.{id}` or
// `_queues.{q}` takes a `subscribe` rule that names it and `jobs` on the queue (docs/API.md,
// "Authentication").

/// The `[auth]` section for the reserved-topic tests: one static token per rule set.
fn reserved_topic_config() -> String {
    let mut out = String::from("[auth]\nmode = \"required\"\n");
    for (token, rules) in [
        (
            "sub-everything",
            r#"publish = [">"]
subscribe = [">"]"#,
        ),
        ("star-rest-reader", r#"subscribe = ["*.>", "*"]"#),
        (
            "follows-queue-a",
            r#"subscribe = ["_jobs.>", "_queues.>"]
jobs = ["queueA"]"#,
        ),
        (
            "follows-queue-b",
            r#"subscribe = ["_jobs.>", "_queues.>"]
jobs = ["queueB"]"#,
        ),
        ("works-queue-b", r#"jobs = ["queueB"]"#),
        (
            "root-admin",
            r#"publish = [">"]
subscribe = [">"]
jobs = [">"]
admin = true"#,
        ),
    ] {
        out.push_str(&format!(
            "\n[[auth.tokens]]\ntoken = \"{token}\"\n{rules}\n"
        ));
    }
    out
}

async fn reserved_topic_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a config directory");
    let path = dir.path().join("plexus.toml");
    std::fs::write(&path, reserved_topic_config()).expect("write the config");
    let server = Server::start(&["--config", path.to_str().expect("a UTF-8 path")]).await;
    (server, dir)
}

async fn as_token(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: &str,
    token: &str,
) -> reqwest::Response {
    server
        .client()
        .request(method.clone(), server.url(path))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The names `token` sees in `GET /v1/topics`.
async fn listed_for(server: &Server, token: &str) -> Vec<String> {
    let resp = as_token(server, reqwest::Method::GET, "/v1/topics", "", token).await;
    let (status, _, body) = into_json(resp).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/topics as {token}: {body}");
    body["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("no topics in {body}"))
        .iter()
        .map(|t| t["topic"].as_str().expect("a topic name").to_string())
        .collect()
}

/// A WebSocket handshake with `access_token` and `query` (`&`-joined, may be empty).
async fn ws_as(
    server: &Server,
    token: &str,
    query: &str,
) -> Result<crate::kit::clients::Ws, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/v1/ws?access_token={token}{query}", server.addr());
    let request = url.into_client_request().expect("a WebSocket request");
    crate::kit::clients::Ws::handshake(request).await
}

#[tokio::test]
async fn wildcards_do_not_read_reserved_topics_and_job_topics_need_the_jobs_right() {
    use reqwest::Method;
    let (server, _dir) = reserved_topic_server().await;
    let resp = as_token(
        &server,
        Method::POST,
        "/v1/queues/queueB/jobs",
        "SECRET-PAYLOAD-OF-B",
        "root-admin",
    )
    .await;
    let (status, _, job) = into_json(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "submit to queueB: {job}");
    let id = crate::jobs::id(&job);
    let job_topic = format!("_jobs.{id}");
    let resp = as_token(
        &server,
        Method::POST,
        "/v1/queues/queueA/jobs",
        "a",
        "root-admin",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "submit to queueA");
    let resp = as_token(
        &server,
        Method::POST,
        "/v1/topics/orders.eu/messages",
        "o",
        "root-admin",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "publish to orders.eu");
    let unknown_job = "_jobs.0123456789abcdef0123456789abcdef";

    // Long poll and short poll, SSE and NDJSON: 403 for every reserved topic a wildcard would
    // have reached, or that the credential's queues do not cover.
    let refused = [
        ("sub-everything", "_queues.queueB"),
        ("sub-everything", job_topic.as_str()),
        ("sub-everything", "_queues.queueB,orders.eu"),
        ("star-rest-reader", "_queues.queueB"),
        ("star-rest-reader", job_topic.as_str()),
        ("follows-queue-a", "_queues.queueB"),
        ("follows-queue-a", job_topic.as_str()),
        ("follows-queue-b", unknown_job),
        ("works-queue-b", job_topic.as_str()),
        ("works-queue-b", "_queues.queueB"),
    ];
    for (token, topics) in refused {
        for path in [
            format!("/v1/topics/{topics}/messages?since=all"),
            format!("/v1/topics/{topics}/messages?since=all&wait=1"),
            format!("/v1/topics/{topics}/sse?since=all"),
            format!("/v1/topics/{topics}/stream?since=all"),
        ] {
            let resp = as_token(&server, Method::GET, &path, "", token).await;
            let problem = expect_problem(resp, 403, &format!("GET {path} as {token}")).await;
            assert!(!problem.to_string().contains("SECRET-PAYLOAD"), "{problem}");
        }
        let resp = as_token(
            &server,
            Method::GET,
            &format!("/v1/topics/{topics}"),
            "",
            token,
        )
        .await;
        if !topics.contains(',') {
            expect_problem(resp, 403, &format!("GET /v1/topics/{topics} as {token}")).await;
        }
        match ws_as(&server, token, &format!("&topic={topics}&since=all")).await {
            Ok(_) => panic!("WS ?topic={topics} as {token}: the upgrade succeeded"),
            Err((status, body)) => assert_eq!(status, 403, "WS ?topic={topics} as {token}: {body}"),
        }
    }
    for (token, topic) in refused.iter().filter(|(_, t)| !t.contains(',')) {
        let mut ws = ws_as(&server, token, "").await.expect("a WebSocket");
        let mut early = Vec::new();
        let answer = ws
            .call(
                json!({"op":"subscribe","id":1,"topic":topic,"since":"all"}),
                &mut early,
            )
            .await;
        assert_eq!(
            (answer["op"].clone(), answer["status"].clone()),
            (json!("error"), json!(403)),
            "WS subscribe {topic} as {token}: {answer}"
        );
        assert!(early.is_empty(), "nothing delivered: {early:?}");
    }
    // The wildcard still reads every ordinary topic.
    let page = into_json(
        as_token(
            &server,
            Method::GET,
            "/v1/topics/orders.eu/messages?since=all",
            "",
            "sub-everything",
        )
        .await,
    )
    .await;
    assert_eq!(page.0, StatusCode::OK, "{}", page.2);
    assert_eq!(messages(&page.2).len(), 1, "{}", page.2);

    // A credential naming the reserved topics, with `jobs` on the queue, reads them on every
    // transport.
    let page = into_json(
        as_token(
            &server,
            Method::GET,
            &format!("/v1/topics/{job_topic},_queues.queueB/messages?since=all"),
            "",
            "follows-queue-b",
        )
        .await,
    )
    .await;
    assert_eq!(page.0, StatusCode::OK, "{}", page.2);
    assert_eq!(messages(&page.2).len(), 2, "queued on both: {}", page.2);
    let mut sse = Sse::open(
        &server,
        &format!("/v1/topics/{job_topic}/sse?since=all"),
        &[("authorization", "Bearer follows-queue-b")],
    )
    .await;
    let queued = sse.events(1).await;
    assert_eq!(queued[0].json()["event"], json!("queued"), "{queued:?}");
    let mut ws = ws_as(&server, "follows-queue-b", "")
        .await
        .expect("a WebSocket");
    let mut early = Vec::new();
    ws.ok(
        json!({"op":"subscribe","id":1,"topic":"_queues.queueB","since":"all"}),
        &mut early,
    )
    .await;
    let got = if early.is_empty() {
        ws.events(1).await
    } else {
        early
    };
    assert_eq!(got[0]["topic"], json!("_queues.queueB"), "{got:?}");
    let resp = as_token(
        &server,
        Method::GET,
        "/v1/topics/_queues.queueA/messages",
        "",
        "follows-queue-a",
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "follows-queue-a reads _queues.queueA"
    );

    // The topic list shows a reserved topic only to a credential that may read it.
    let everything = listed_for(&server, "sub-everything").await;
    assert!(
        everything.iter().all(|t| !t.starts_with('_'))
            && everything.contains(&"orders.eu".to_string()),
        "{everything:?}"
    );
    let a = listed_for(&server, "follows-queue-a").await;
    assert!(
        !a.contains(&job_topic)
            && !a.contains(&"_queues.queueB".to_string())
            && a.contains(&"_queues.queueA".to_string()),
        "{a:?}"
    );
    let b = listed_for(&server, "follows-queue-b").await;
    assert!(
        b.contains(&job_topic)
            && b.contains(&"_queues.queueB".to_string())
            && !b.contains(&"_queues.queueA".to_string()),
        "{b:?}"
    );
    assert!(
        listed_for(&server, "root-admin").await.contains(&job_topic),
        "an admin lists every topic"
    );

    // An admin may not delete the hub's topics: 403, and the events stay.
    for topic in [job_topic.as_str(), "_queues.queueB"] {
        let resp = as_token(
            &server,
            Method::DELETE,
            &format!("/v1/topics/{topic}"),
            "",
            "root-admin",
        )
        .await;
        let problem = expect_problem(resp, 403, &format!("DELETE {topic}")).await;
        assert_eq!(
            problem["type"],
            json!("urn:plexus:problem:reserved-topic"),
            "{problem}"
        );
    }
    let page = into_json(
        as_token(
            &server,
            Method::GET,
            &format!("/v1/topics/{job_topic}/messages?since=all"),
            "",
            "follows-queue-b",
        )
        .await,
    )
    .await;
    assert_eq!(
        messages(&page.2).len(),
        1,
        "the job's event is still there: {}",
        page.2
    );
}

// Hardening (JWT settings): an HS256 secret of any length was accepted (a short
// one can be guessed offline from one token); there was no way to require an audience or an
// issuer, nor to bound a token's lifetime; and a secret given as `--jwt-secret` showed in the
// process list without a word (docs/API.md, "Authentication"; docs/CONFIG.md).

const JWT_TEST_SECRET: &str = "a-regression-hs256-secret-of-32+b";

fn hs256_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_TEST_SECRET.as_bytes()),
    )
    .expect("encode a JWT")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

#[tokio::test]
async fn a_jwt_secret_shorter_than_32_bytes_stops_the_hub_at_start() {
    use crate::kit::cli::{plexus, run, run_to_failure};
    let dir = tempfile::tempdir().expect("a data directory");
    let data = dir.path().to_str().expect("a UTF-8 path");
    for short in ["s3cret", "0123456789abcdef0123456789abcde"] {
        let out = run_to_failure(
            plexus().args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--auth",
                "required",
                "--jwt-secret",
                short,
            ]),
            &format!("serve with a {}-byte secret", short.len()),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("auth.jwt_secret") && stderr.contains("32 bytes"),
            "the message names the key and the bound: {stderr}"
        );
        assert!(
            !stderr.contains(short),
            "the secret is not echoed: {stderr}"
        );
    }
    run(
        plexus()
            .args(["serve", "--check-config", "--auth", "required"])
            .env("PLEXUS_JWT_SECRET", JWT_TEST_SECRET),
        "a 32-byte secret is accepted",
    )
    .await;
}

#[tokio::test]
async fn jwt_audience_issuer_and_max_lifetime_are_enforced() {
    let server = Server::start(&[
        "--auth",
        "required",
        "--jwt-secret",
        JWT_TEST_SECRET,
        "--jwt-audience",
        "plexus-tests",
        "--jwt-issuer",
        "https://id.example",
        "--jwt-max-lifetime",
        "1h",
    ])
    .await;
    let now = unix_now();
    let good = json!({"aud":"plexus-tests","iss":"https://id.example","exp":now + 600,
                      "plexus":{"subscribe":["t"]}});
    let read = |token: String| {
        let server = &server;
        async move {
            server
                .client()
                .get(server.url("/v1/topics/t/messages?since=all"))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET /v1/topics/t/messages")
        }
    };
    assert_eq!(read(hs256_token(&good)).await.status(), StatusCode::OK);
    let mut long_with_iat = good.clone();
    long_with_iat["iat"] = json!(now - 60);
    long_with_iat["exp"] = json!(now - 60 + 3600);
    assert_eq!(
        read(hs256_token(&long_with_iat)).await.status(),
        StatusCode::OK,
        "exp - iat = the maximum is accepted"
    );
    let mut cases = Vec::new();
    for (what, field, value) in [
        ("a foreign aud", "aud", json!("someone-else")),
        ("no aud", "aud", Value::Null),
        ("a foreign iss", "iss", json!("https://evil.example")),
        ("no iss", "iss", Value::Null),
        ("exp - now over 1h", "exp", json!(now + 3700)),
        ("exp - iat over 1h", "iat", json!(now - 3600)),
        ("a ten-year token", "exp", json!(now + 10 * 365 * 86_400)),
    ] {
        let mut claims = good.clone();
        if value.is_null() {
            claims.as_object_mut().expect("an object").remove(field);
        } else {
            claims[field] = value;
        }
        cases.push((what, claims));
    }
    for (what, claims) in cases {
        let resp = read(hs256_token(&claims)).await;
        expect_problem(resp, 401, &format!("a JWT with {what}: {claims}")).await;
    }
    // The secret came as a flag: the hub warns where it shows and what to use instead.
    eventually("the --jwt-secret warning on stderr", || async {
        let log = server.stderr();
        (log.contains("--jwt-secret") && log.contains("PLEXUS_JWT_SECRET")).then_some(())
    })
    .await;
}

// ---- Hardening: stalled bodies and clients that stop reading ----

/// A request body that stalls after a complete head was never cut: the connection and the
/// handler's task were held forever. Now it fails with `408` problem+json at
/// `limits.body_timeout`, the connection is closed, nothing is stored, and the hub serves on.
#[tokio::test]
async fn a_request_body_that_stalls_is_cut_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--body-timeout", "1s"]).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/topics/stalled/messages HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\n\
         Content-Length: 1000\r\n\r\nonly a few bytes",
        server.addr()
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    timeout(READ_TIMEOUT, socket.read_to_end(&mut answer))
        .await
        .expect("the hub answers and closes the connection within the deadline")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(
        answer.contains("urn:plexus:problem:request-timeout"),
        "{answer}"
    );
    let page = server.read("stalled", "since=all").await;
    assert!(messages(&page).is_empty(), "nothing was stored: {page}");
}

/// `plexus_streams_open{transport=…}` of the server's `/metrics`.
async fn streams_open(server: &Server, transport: &str) -> u64 {
    let text = server
        .get("/metrics", &[])
        .await
        .text()
        .await
        .expect("the metrics text");
    metric(
        &text,
        &format!("plexus_streams_open{{transport=\"{transport}\"}}"),
    )
    .unwrap_or(0)
}

/// Publishes `n` messages of 64 KiB to `topic`: enough, with a small client receive buffer,
/// to fill every buffer between the hub and a client that stopped reading.
async fn flood(server: &Server, topic: &str, n: usize) {
    let payload = "x".repeat(64 * 1024);
    for _ in 0..n {
        server.publish(topic, payload.clone()).await;
    }
}

/// Reads a socket to its end (the hub closed it), whatever it was cut in.
async fn read_to_eof(mut socket: tokio::net::TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = timeout(READ_TIMEOUT, socket.read(&mut buf))
            .await
            .expect("the closed connection reaches its end within the deadline")
            .unwrap_or(0);
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The seqs of the messages read before a cut, and then the rest read by the cursor after
/// the last: every one of `1..=n` exactly once.
async fn resume_exactly(server: &Server, topic: &str, before: Vec<u64>, n: u64) {
    let last = before.last().copied().unwrap_or(0);
    assert!(last < n, "the stream was cut before its end: {last} of {n}");
    let mut all = before;
    let mut cursor = last.to_string();
    loop {
        let page = server
            .read(topic, &format!("since={cursor}&limit=1000"))
            .await;
        let got = crate::kit::seqs(&page);
        if got.is_empty() {
            break;
        }
        all.extend(got);
        cursor = crate::kit::next(&page);
    }
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
}

/// An SSE client that stopped reading while messages flowed was never closed. Now the
/// connection is closed once it has taken no byte for `limits.write_timeout`; the events it
/// got whole end at a cursor, and a read from that cursor gets the rest exactly once.
#[tokio::test]
async fn an_sse_client_that_stops_reading_is_closed_and_resumes_by_its_cursor() {
    use crate::kit::clients::{Dial, RawResponse};
    let server = Server::start(&["--write-timeout", "1s"]).await;
    let dial = Dial {
        recv_buffer: Some(4096),
    };
    let path = "/v1/topics/flood/sse?since=all";
    let socket = RawResponse::send(&server, path, &[], dial).await;
    eventually("the SSE stream is open", || async {
        (streams_open(&server, "sse").await == 1).then_some(())
    })
    .await;
    let n = 256;
    flood(&server, "flood", n).await;
    eventually("the stalled SSE stream is closed", || async {
        (streams_open(&server, "sse").await == 0).then_some(())
    })
    .await;
    let raw = read_to_eof(socket, Vec::new()).await;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", &raw[..head_end]);
    // Whole chunks only (the cut may end inside one); each chunk is one SSE frame.
    let mut ids = Vec::new();
    let mut rest = &raw[head_end..];
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .expect("a chunk size line");
        let start = eol + 2;
        if size == 0 || rest.len() < start + size + 2 {
            break;
        }
        let frame = String::from_utf8_lossy(&rest[start..start + size]);
        if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id:")) {
            ids.push(id.trim().parse::<u64>().expect("a numeric id"));
        }
        rest = &rest[start + size + 2..];
    }
    resume_exactly(&server, "flood", ids, n as u64).await;
}

/// A WebSocket client that stopped reading while messages flowed was still open at 141 s:
/// the silence check sat in the same `select!` as the blocked send. Now the socket is closed
/// once it has taken no byte for `limits.write_timeout`, and the frames it got whole end at a
/// cursor from which a read gets the rest exactly once.
#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_closed_and_resumes_by_its_cursor() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--write-timeout", "1s"]).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut socket = socket
        .connect(server.addr().parse().expect("ip:port"))
        .await
        .expect("connect");
    let request = format!(
        "GET /v1/ws?topic=flood&since=all HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = timeout(READ_TIMEOUT, socket.read(&mut buf))
            .await
            .expect("the upgrade answer within the deadline")
            .expect("read");
        assert!(n > 0, "EOF before the upgrade answer");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let n = 256;
    flood(&server, "flood", n).await;
    eventually("the stalled WebSocket is closed", || async {
        (streams_open(&server, "ws").await == 0).then_some(())
    })
    .await;
    let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let after = head.split_off(head_end);
    let raw = read_to_eof(socket, after).await;
    // Whole frames only (the cut may end inside one).
    let mut seqs = Vec::new();
    let mut rest = &raw[..];
    while rest.len() >= 2 {
        let (len, at) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => break,
            short => (short as usize, 2),
        };
        if rest.len() < at + len {
            break;
        }
        if rest[0] == 0x81 {
            let frame: Value = serde_json::from_slice(&rest[at..at + len]).expect("JSON frames");
            if frame["op"] == "message" {
                seqs.push(frame["seq"].as_u64().expect("a seq"));
            }
        }
        rest = &rest[at + len..];
    }
    resume_exactly(&server, "flood", seqs, n as u64).await;
}

// ---- Hardening: behind a reverse proxy ----

/// `GET /v1/topics` with one forwarding header; its status.
async fn status_with(server: &Server, header: (&str, &str)) -> u16 {
    server.get("/v1/topics", &[header]).await.status().as_u16()
}

/// Behind nginx every client shared the proxy's address: one rate bucket (four clients with
/// four `X-Forwarded-For` values got 200 200 200 429) and one connection budget. For a peer in
/// `limits.trusted_proxies` the client is now the rightmost forwarded address that is not a
/// trusted proxy, `Forwarded` before `X-Forwarded-For`; an IPv6 client counts by its /64.
#[tokio::test]
async fn a_trusted_proxy_forwards_each_client_its_own_rate_bucket() {
    let server = Server::start(&[
        "--rate",
        "1",
        "--burst",
        "1",
        "--trusted-proxies",
        "127.0.0.1/32",
    ])
    .await;
    for client in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        assert_eq!(
            status_with(&server, ("x-forwarded-for", client)).await,
            200,
            "{client}"
        );
    }
    let resp = server
        .get("/v1/topics", &[("x-forwarded-for", "198.51.100.1")])
        .await;
    expect_problem(resp, 429, "the same client again").await;
    // The rightmost hop that is not a trusted proxy; a client cannot pick it by prepending.
    assert_eq!(
        status_with(&server, ("x-forwarded-for", "198.51.100.5, 127.0.0.1")).await,
        200
    );
    assert_eq!(
        status_with(&server, ("x-forwarded-for", "203.0.113.77, 198.51.100.5")).await,
        429,
        "the spoofed left hop is not the client"
    );
    // Forwarded (RFC 7239) wins over X-Forwarded-For.
    assert_eq!(
        status_with(
            &server,
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=http")
        )
        .await,
        200
    );
    assert_eq!(
        status_with(&server, ("forwarded", "for=\"[2001:db8::2]\"")).await,
        429,
        "the same /64"
    );
    assert_eq!(
        status_with(&server, ("forwarded", "for=\"[2001:db8:0:1::1]\"")).await,
        200,
        "another /64"
    );
}

/// A forwarding header from a peer that is not a trusted proxy is ignored: it cannot buy a
/// client a fresh bucket.
#[tokio::test]
async fn a_forwarding_header_from_an_untrusted_peer_is_ignored() {
    let server = Server::start(&["--rate", "1", "--burst", "1"]).await;
    assert_eq!(
        status_with(&server, ("x-forwarded-for", "198.51.100.1")).await,
        200
    );
    let resp = server
        .get("/v1/topics", &[("x-forwarded-for", "198.51.100.2")])
        .await;
    expect_problem(resp, 429, "another XFF from the same peer").await;
}

/// The per-address connection limit does not apply to a trusted proxy's own address: with
/// one connection per client, a second connection from the proxy is served.
#[tokio::test]
async fn the_connection_limit_does_not_apply_to_a_trusted_proxy() {
    let server = Server::start(&[
        "--max-connections-per-client",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let mut sse = Sse::open(&server, "/v1/topics/p/sse?since=all", &[]).await;
    server.publish("p", "one").await;
    let first = timeout(READ_TIMEOUT, sse.next_event())
        .await
        .expect("an event within the deadline")
        .expect("the stream is open");
    assert_eq!(first.id(), "1");
}

// ---- Hardening: an open hub on loopback and web pages ----

/// A cross-site "simple" request (text/plain, a foreign `Origin`, a rebinding `Host`)
/// published to an open hub on loopback, and a WebSocket from a foreign origin subscribed and
/// published. Now, in open mode (or with no CORS configured), a non-loopback `Host` is `403`
/// on a loopback listener, and so is a foreign `Origin` on a state-changing request or a
/// WebSocket upgrade; nothing is stored. Requests without `Origin` (curl) and from the hub's
/// own origin are served, and reads from a foreign origin too (the browser cannot read them
/// without CORS headers).
#[tokio::test]
async fn an_open_hub_on_loopback_refuses_foreign_hosts_and_origins() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::start(&[]).await;
    let url = server.url("/v1/topics/web/messages");
    let post = |headers: Vec<(&'static str, String)>| {
        let mut req = server
            .client()
            .post(&url)
            .header("content-type", "text/plain")
            .body("rm -rf ~");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let rebinding = format!("evil.example:{}", server.port());
    let resp = post(vec![("host", rebinding.clone())]).await.expect("send");
    expect_problem(resp, 403, "a rebinding Host").await;
    let resp = server.get("/v1/topics", &[("host", &rebinding)]).await;
    expect_problem(resp, 403, "a rebinding Host on a read").await;
    let resp = post(vec![("origin", "https://evil.example".into())])
        .await
        .expect("send");
    expect_problem(resp, 403, "a foreign origin").await;
    let resp = post(vec![("origin", "null".into())]).await.expect("send");
    expect_problem(resp, 403, "an opaque origin").await;
    let page = server.read("web", "since=all").await;
    assert!(messages(&page).is_empty(), "nothing was stored: {page}");

    let resp = post(vec![]).await.expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED, "no Origin: curl");
    let own = format!("http://{}", server.addr());
    let resp = post(vec![("origin", own.clone())]).await.expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED, "the hub's own origin");
    let resp = post(vec![("host", format!("localhost:{}", server.port()))])
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED, "localhost is loopback");
    let resp = server
        .get(
            "/v1/topics/web/messages?since=all",
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "a read changes nothing");

    let ws_url = format!("ws://{}/v1/ws", server.addr());
    let mut foreign = ws_url.as_str().into_client_request().expect("a request");
    foreign.headers_mut().insert(
        "origin",
        "https://evil.example".parse().expect("a header value"),
    );
    match crate::kit::clients::Ws::handshake(foreign).await {
        Err((status, _)) => assert_eq!(status, 403, "a WebSocket from a foreign origin"),
        Ok(_) => panic!("a WebSocket from a foreign origin was accepted"),
    }
    let mut same = ws_url.as_str().into_client_request().expect("a request");
    same.headers_mut()
        .insert("origin", own.parse().expect("a header value"));
    assert!(
        crate::kit::clients::Ws::handshake(same).await.is_ok(),
        "a WebSocket from the hub's own origin"
    );
}

// ---------------------------------------------------------------------------------------------
// Hardening: a data directory shared by two
// hubs, a malformed database, `Expect: 100-continue` over the route's limit.

/// A second hub on a data directory that a running hub uses exits at start, non-zero, with a
/// message naming the directory and the first hub; the first hub keeps serving. Before the fix
/// it started, and every publish of either hub could fail on the other's rows (finding 10).
#[tokio::test]
async fn a_second_hub_on_the_same_data_directory_refuses_to_start() {
    let server = Server::start_on(crate::kit::Engine::Sqlite, &[]).await;
    let mut second = crate::kit::cli::plexus();
    second
        .args(["serve", "--storage", "sqlite", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(server.data_dir());
    let out = crate::kit::cli::run_to_failure(&mut second, "a second plexus serve").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another plexus")
            && stderr.contains(&server.data_dir().display().to_string())
            && stderr.contains(&format!("process {}", server.pid())),
        "the message names the directory and the first hub: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the second hub never listened"
    );
    let published = server.publish("still-mine", "x").await;
    assert_eq!(
        published["seq"], 1,
        "the first hub still serves: {published}"
    );
}

/// A malformed database stops `plexus serve` at start, with a message naming the file. Before
/// the fix the hub started on it: `/readyz` said 200 while every read failed and publishes kept
/// writing into the broken file (finding 13).
#[tokio::test]
async fn serve_refuses_to_start_on_a_malformed_database() {
    let mut server = Server::start_on(crate::kit::Engine::Sqlite, &[]).await;
    server.batch_n("bulk", 3000, &"x".repeat(500)).await;
    assert!(server.sigterm().await.success());
    let db = server.data_dir().join("plexus.db");
    {
        // Everything into the main file, so the pages overwritten below are the ones read.
        let conn = rusqlite::Connection::open(&db).expect("open the database");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
    }
    let mut bytes = std::fs::read(&db).expect("read the database");
    let page = 4096;
    let middle = bytes.len() / page / 2 * page;
    assert!(bytes.len() > 16 * page, "a database of many pages");
    bytes[middle..middle + 8 * page].fill(0x55);
    std::fs::write(&db, &bytes).expect("write the corrupted database");
    let checked: String = rusqlite::Connection::open(&db)
        .expect("open the corrupted database")
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    assert_ne!(checked, "ok", "the copy is corrupted");

    let mut again = crate::kit::cli::plexus();
    again
        .args(["serve", "--storage", "sqlite", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(server.data_dir());
    let out = crate::kit::cli::run_to_failure(&mut again, "plexus serve on a malformed db").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("malformed") && stderr.contains(&db.display().to_string()),
        "the message names the malformed database: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

/// `Expect: 100-continue` with a `Content-Length` over the route's limit is answered `413` at
/// once, before any body is sent; before the fix the server sent `100 Continue` and waited for
/// the 99 MB it had already refused (finding 14). Checked with a raw socket that sends only the
/// head and reads the answer.
#[tokio::test]
async fn expect_continue_over_the_limit_is_refused_before_the_body() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&[]).await;
    for path in [
        "/v1/topics/expect/messages",
        "/v1/publish",
        "/v1/queues/expect/jobs",
    ] {
        let mut socket = tokio::net::TcpStream::connect(server.addr())
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 99999999\r\nExpect: 100-continue\r\n\r\n",
            server.addr()
        );
        socket
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        let answer = crate::kit::clients::RawResponse::read_head(socket, path).await;
        assert_eq!(answer.status, 413, "{path}: refused before the body");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
    }
    let (status, _, _) = server.get_json("/v1/topics/expect").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
}

// ---------------------------------------------------------------------------------------------
// Hardening: idempotency fingerprints are SHA-256, not FNV-1a 64.

/// A key's stored fingerprint is the SHA-256 of the body (32 bytes), for a message and for a
/// job, so a second body that collides with the first cannot replay as it (FNV-1a 64, before,
/// could be collided on purpose). Replays and conflicts answer as before. Keys stored by a
/// release before (an integer FNV-1a 64 in the same column) still match their body: see
/// `migration.rs`, which replays the fixture's keys.
#[tokio::test]
async fn idempotency_fingerprints_are_sha256() {
    let server = Server::start_on(crate::kit::Engine::Sqlite, &[]).await;
    let key = [("Idempotency-Key", "k-1")];
    let first = server.publish_with("fp", "body-1", &key).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let replay = server.publish_with("fp", "body-1", &key).await;
    assert!(replay.headers().get("idempotent-replayed").is_some());
    let other = server.publish_with("fp", "body-2", &key).await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let submit = |body: &'static str| {
        server
            .client()
            .post(server.url("/v1/queues/fpq/jobs"))
            .header("Idempotency-Key", "j-1")
            .body(body)
            .send()
    };
    assert_eq!(
        submit("job-1").await.expect("submit").status(),
        StatusCode::ACCEPTED
    );
    let replay = submit("job-1").await.expect("submit again");
    assert!(replay.headers().get("idempotent-replayed").is_some());
    assert_eq!(
        submit("job-2").await.expect("submit another").status(),
        StatusCode::CONFLICT
    );

    let sha = |parts: &[&[u8]]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            ctx.update(part);
        }
        ctx.finish().as_ref().to_vec()
    };
    let db = rusqlite::Connection::open(server.data_dir().join("plexus.db")).expect("open");
    let message_fp: Vec<u8> = db
        .query_row(
            "SELECT fingerprint FROM idempotency WHERE key = 'k-1'",
            [],
            |r| r.get(0),
        )
        .expect("the message key's fingerprint is a blob");
    // No event, the separator, the body.
    assert_eq!(message_fp, sha(&[b"", &[0xff], b"body-1"]));
    let job_fp: Vec<u8> = db
        .query_row(
            "SELECT fingerprint FROM jobs WHERE idem_key = 'j-1'",
            [],
            |r| r.get(0),
        )
        .expect("the job key's fingerprint is a blob");
    assert_eq!(job_fp, sha(&[b"job-1"]));
}

// ---- Hardening: quadratic cursor parse ----------------------------------------------

/// The server's CPU time so far (user + system, `/proc/<pid>/stat`), in clock ticks.
fn server_cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid()))
        .expect("read /proc/<pid>/stat");
    // The command name, field 2, is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')').expect("a stat line names its command") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let tick = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    tick(11) + tick(12)
}

/// A `subscribe` frame whose `since` named 138,000 distinct pairs was parsed with a linear
/// search per pair: ~20 s of a runtime worker, before the rule check, while `/healthz` waited.
/// A cursor of more pairs than `limits.max_topics` is now refused before anything else is done
/// with them; the frame costs the server well under 100 ms of CPU (a generous bound: the
/// decode of the 1.3 MB frame is linear), and the hub answers meanwhile.
#[tokio::test]
async fn a_cursor_with_138000_pairs_is_refused_cheaply() {
    let server = Server::start(&[]).await;
    let mut ws = crate::kit::clients::Ws::connect(&server, "").await;
    let since = (0..138_000)
        .map(|i| format!("t{i}:1"))
        .collect::<Vec<_>>()
        .join(",");
    let frame = json!({"op": "subscribe", "id": 1, "topic": "a", "since": since});
    // The ticks are 10 ms on Linux; measure after the socket is open and idle.
    let ticks_per_sec = 100;
    let before = server_cpu_ticks(&server);
    ws.send(frame).await;
    let health = server.get("/healthz", &[]).await;
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "/healthz answers meanwhile"
    );
    let answer = ws.recv().await;
    let spent_ms = (server_cpu_ticks(&server) - before) * 1000 / ticks_per_sec;
    assert_eq!(answer["op"], "error", "{answer}");
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["status"], 400, "{answer}");
    let detail = answer["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("138000 pairs, at most 64"), "{detail}");
    assert!(spent_ms < 100, "the frame cost {spent_ms} ms of server CPU");
    // The socket lives on.
    let ok = ws
        .ok(
            json!({"op": "subscribe", "id": 2, "topic": "a"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(ok["topic"], "a", "{ok}");
}

// ---- Hardening: WebSocket frames bypass the rate limit -------------------------------

/// With `--rate 5`, 2,000 publish frames on one socket all succeeded: frames were never
/// charged to the address's bucket. Every frame now costs a token, as a request does; a frame
/// over the limit gets an `error` frame with status 429, nothing is stored for it, and the
/// socket lives on.
#[tokio::test]
async fn websocket_frames_are_charged_to_the_rate_limit() {
    let server = Server::start(&["--rate", "5", "--burst", "5"]).await;
    let mut ws = crate::kit::clients::Ws::connect(&server, "").await;
    let sent = 40;
    let (mut ok, mut limited) = (0, 0);
    for id in 0..sent {
        let kind = ["publish", "subscribe", "unsubscribe"][id % 3];
        let frame = json!({"op": kind, "id": id, "topic": "r", "data": "x"});
        let frame = if kind == "publish" {
            frame
        } else {
            json!({"op": kind, "id": id, "topic": "r"})
        };
        let answer = ws.call(frame, &mut Vec::new()).await;
        match answer["op"].as_str() {
            Some("ok") => ok += 1,
            _ => {
                assert_eq!(answer["status"], 429, "{answer}");
                assert_eq!(answer["id"], id, "{answer}");
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "{ok} of {sent} frames ok, none limited");
    assert!(ok < sent / 2, "{ok} of {sent} frames ok at 5/s");
    // The socket lives on: once the bucket refills, a frame is served again.
    let mut served = false;
    for id in 100..140 {
        let frame = json!({"op": "publish", "id": id, "topic": "r", "data": "later"});
        if ws.call(frame, &mut Vec::new()).await["op"] == "ok" {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(served, "a frame is served again after the bucket refills");
}

// ---- Hardening: a WebSocket subscription dies silently on a store error -----

/// A WebSocket subscription whose store read failed went quiet: no frame, no more messages
/// for that topic, the topic still held by the socket. It now ends with an `error` frame that
/// names the topic, status 503 and the generic detail HTTP gives (never the store's own
/// message), and is dropped, so a subscribe with the client's cursor resumes it. Made real on
/// the redis engine by stopping its redis-server between the subscribe's answer (a `since=all`
/// needs no read) and its first catch-up read.
#[tokio::test]
async fn a_websocket_subscription_whose_store_read_fails_says_so() {
    let mut redis = crate::kit::redis::RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])
    .await;
    let server = Server::start(&["--storage", &redis.url()]).await;
    server.publish_n("c0", 1, "before").await;
    let mut ws = crate::kit::clients::Ws::connect(&server, "").await;
    redis.kill();

    let mut others = Vec::new();
    let ok = ws
        .ok(
            json!({"op": "subscribe", "id": 1, "topic": "c0", "since": "all"}),
            &mut others,
        )
        .await;
    assert_eq!(ok["next"], "0", "{ok}");
    let ended = match others.pop() {
        Some(frame) => frame,
        None => ws.recv().await,
    };
    assert_eq!(ended["op"], "error", "{ended}");
    assert_eq!(ended["status"], 503, "{ended}");
    assert_eq!(ended["topic"], "c0", "{ended}");
    let detail = ended["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("retry shortly"),
        "the generic detail: {detail}"
    );
    assert!(!detail.to_lowercase().contains("redis"), "{detail}");

    // A frame that reaches the store while it is down gets the same generic detail.
    let refused = ws
        .call(
            json!({"op": "publish", "id": 2, "topic": "c0", "data": "while down"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(refused["status"], 503, "{refused}");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("retry shortly"), "{detail}");
    assert!(!detail.to_lowercase().contains("redis"), "{detail}");

    // The store is back: subscribing again with the cursor resumes the topic.
    redis.start_again().await;
    let resumed = eventually("a subscribe with the cursor is served again", || async {
        let mut ws = crate::kit::clients::Ws::connect(&server, "").await;
        let mut others = Vec::new();
        let answer = ws
            .call(
                json!({"op": "subscribe", "id": 3, "topic": "c0", "since": "0"}),
                &mut others,
            )
            .await;
        if answer["op"] != "ok" {
            return None;
        }
        let first = match others.into_iter().next() {
            Some(frame) => frame,
            None => ws.recv().await,
        };
        (first["op"] == "message").then_some(first)
    })
    .await;
    assert_eq!(resumed["data"], "before1", "{resumed}");
}

// Hardening: idle job claimers. Each waiting `claim?wait=…` looked in the store again
// every second, a write transaction in the single writer: 4,000 idle claims took 138 % CPU and
// the publish median from 1.9 to 65 ms. A claim now waits on its queue's notifier (a submit,
// the queue topic of a shared store) or the next `run_at` only.

/// The server's CPU time so far (user + system), in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid()))
        .expect("read /proc/<pid>/stat");
    // The fields after the command name (which may hold spaces) close with ')'.
    let after = stat.rsplit_once(')').expect("a stat line").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

async fn commit_ops(server: &Server) -> u64 {
    metric(&server.metrics().await, "plexus_store_commit_ops_sum").unwrap_or(0)
}

#[tokio::test]
async fn idle_claims_cost_no_store_writes_and_still_wake() {
    use crate::jobs::{act_raw, claim, id, lease, submit};
    const CLAIMS: usize = 300;
    let server = Server::start_on(crate::kit::Engine::Sqlite, &["--jobs-backoff", "1s"]).await;
    let client = server.client().clone();
    let before = commit_ops(&server).await;
    let waiting: Vec<_> = (0..CLAIMS)
        .map(|i| {
            let request = client
                .post(server.url(&format!("/v1/queues/idle{}/claim?wait=60", i % 30)))
                .send();
            tokio::spawn(request)
        })
        .collect();
    // Every claim has looked in the store once (one claim each) and waits.
    eventually("every claim has looked once", || async {
        (commit_ops(&server).await >= before + CLAIMS as u64).then_some(())
    })
    .await;
    let ops = commit_ops(&server).await;
    let ticks = cpu_ticks(&server);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let idle_ops = commit_ops(&server).await - ops;
    let idle_ticks = cpu_ticks(&server) - ticks;
    // Before: one write per claim per second, ~900 here. A few are allowed for the metrics
    // reads' neighbours; none of them is a claim's.
    assert!(
        idle_ops < 30,
        "{CLAIMS} idle claims made {idle_ops} store writes in 3 s"
    );
    // 3 s at 100 ticks/s: 300 ticks is a whole core; a generous bound of a fifth of one.
    assert!(
        idle_ticks < 60,
        "{CLAIMS} idle claims used {idle_ticks} ticks of CPU in 3 s"
    );

    // A job submitted meanwhile wakes one of its queue's claims, which answers with it.
    let (idle7, others): (Vec<_>, Vec<_>) = waiting
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 30 == 7);
    others.into_iter().for_each(|(_, request)| request.abort());
    let job = submit(&server, "idle7", "wake").await;
    let idle7: Vec<_> = idle7.into_iter().map(|(_, request)| request).collect();
    let (first_done, _, rest) = timeout(
        std::time::Duration::from_secs(20),
        futures_util::future::select_all(idle7),
    )
    .await
    .expect("a claim of idle7 answers once a job is submitted");
    rest.into_iter().for_each(|request| request.abort());
    let resp = first_done
        .expect("the claim task")
        .expect("the claim request");
    let (status, _, claimed) = into_json(resp).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the woken claim got the job: {claimed}"
    );
    assert_eq!(claimed["id"], json!(id(&job)));

    // A retried job (due after its backoff) wakes a claim that waits while it is delayed.
    let queued = submit(&server, "retry.q", "again").await;
    let first = claim(&server, "retry.q", "60").await;
    assert_eq!(id(&first), id(&queued));
    let waiter = {
        let request = client
            .post(server.url("/v1/queues/retry.q/claim?wait=30"))
            .send();
        tokio::spawn(request)
    };
    let resp = act_raw(&server, &id(&first), "fail", Some(&lease(&first)), "boom").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = timeout(std::time::Duration::from_secs(20), waiter)
        .await
        .expect("the waiting claim answers once the retry is due")
        .expect("the claim task")
        .expect("the claim request");
    let (status, _, again) = into_json(resp).await;
    assert_eq!(status, StatusCode::OK, "the retry is claimed: {again}");
    assert_eq!(again["id"], json!(id(&queued)));
    assert_eq!(again["attempts"], json!(2));
}

// Hardening: a job's state and its `_jobs.{id}` event were two commits. After `kill -9`
// mid-work, 5 of 6 runs left a job whose stored state and last event disagreed, so a client
// following the job could wait forever for its final event. They are now one commit.

/// Workers claim and complete jobs until a request fails (the server is killed under them).
pub(crate) async fn work_until_killed(
    client: reqwest::Client,
    base: String,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok(resp) = client
            .post(format!("{base}/v1/queues/crash.q/claim?wait=0&lease=60"))
            .send()
            .await
        else {
            return;
        };
        if resp.status() != StatusCode::OK {
            return;
        }
        let Ok(job) = resp.json::<Value>().await else {
            return;
        };
        let (Some(id), Some(lease)) = (job["id"].as_str(), job["lease"].as_str()) else {
            return;
        };
        let completed = client
            .post(format!(
                "{base}/v1/jobs/{id}/complete?lease={}",
                crate::kit::enc(lease)
            ))
            .body("ok")
            .send()
            .await;
        if completed.is_err() {
            return;
        }
        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_job_and_its_last_event_agree_after_sigkill() {
    jobs_and_their_last_events_agree_after_sigkill(crate::kit::Engine::Sqlite).await;
}

/// Submits jobs, kills the hub with SIGKILL while 16 workers claim and complete them, starts
/// it again and checks every job's stored state against its last `_jobs.{id}` event.
pub(crate) async fn jobs_and_their_last_events_agree_after_sigkill(engine: crate::kit::Engine) {
    const JOBS: usize = 1_500;
    let mut server = Server::start_on(engine, &[]).await;
    let mut ids = Vec::with_capacity(JOBS);
    for chunk in 0..JOBS / 50 {
        let submits =
            (0..50).map(|i| crate::jobs::submit(&server, "crash.q", format!("{chunk}-{i}")));
        for job in futures_util::future::join_all(submits).await {
            ids.push(crate::jobs::id(&job));
        }
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let client = server.client().clone();
            tokio::spawn(work_until_killed(
                client,
                server.base().to_string(),
                done.clone(),
            ))
        })
        .collect();
    // Killed mid-work: some jobs done, the rest queued or running.
    eventually("the workers have completed some jobs", || async {
        (done.load(std::sync::atomic::Ordering::SeqCst) >= 300).then_some(())
    })
    .await;
    server.sigkill().await;
    for worker in workers {
        let _ = worker.await;
    }
    server.restart().await;
    for id in &ids {
        let (status, _, job) = server.get_json(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "job {id} survives: {job}");
        let events = crate::jobs::events(&server, id).await;
        let last = events
            .last()
            .unwrap_or_else(|| panic!("job {id} has no event: {job}"));
        assert_eq!(
            last["event"],
            job["state"],
            "job {id}: its last event is its stored state ({} events)",
            events.len()
        );
    }
}

// Hardening: finished jobs and their `_jobs.{id}` topics were never deleted (50,000
// jobs and 50,001 topic rows stayed after their messages expired). `jobs.retention` (7 d by
// default) now deletes a finished job and its topic that long after it finished.

#[tokio::test]
async fn finished_jobs_and_their_topics_go_after_the_jobs_retention() {
    use crate::jobs::{claim, complete, id, submit};
    let server = Server::start(&["--jobs-retention", "1s"]).await;
    let done = submit(&server, "ret.q", "finished").await;
    let claimed = claim(&server, "ret.q", "60").await;
    complete(&server, &claimed, "ok").await;
    let waiting = submit(&server, "ret.q", "still queued").await;
    let done_id = id(&done);
    eventually("the finished job is deleted", || async {
        let (status, _, _) = server.get_json(&format!("/v1/jobs/{done_id}")).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (status, _, body) = server
        .get_json(&format!("/v1/topics/_jobs.{done_id}"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "its topic went with it: {body}"
    );
    // A job not finished is kept, whatever its age.
    let (status, _, job) = server.get_json(&format!("/v1/jobs/{}", id(&waiting))).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], json!("queued"));
}

// Hardening: memory amplification. A read or subscription has one byte budget shared by
// its topics (only the topic being delivered holds a catch-up page), and the hub one global
// budget for those pages: when it is spent, new reads get 503 `busy` with Retry-After.

/// The server's peak resident memory so far (`VmHWM` of `/proc/<pid>/status`), in bytes.
fn peak_rss_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc/<pid>/status");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in kB");
    kb * 1024
}

/// Publishes `n` payloads of `size` bytes to `topic` in one batch; each names its seq.
async fn publish_sized(server: &Server, topic: &str, n: usize, size: usize) {
    let items: Vec<Value> = (1..=n)
        .map(|i| {
            let mut data = format!("{i:06}:");
            data.push_str(&"x".repeat(size - data.len()));
            json!({"topic": topic, "data": data})
        })
        .collect();
    assert_eq!(server.batch(&items).await.len(), n);
}

/// Reads `count` messages from a stream over several topics, checking that each topic's come
/// once, in seq order, with their own payloads and no gap.
async fn read_exactly(
    sse: &mut Sse,
    count: usize,
    what: &str,
) -> std::collections::BTreeMap<String, u64> {
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    for got in 0..count {
        let frame = sse
            .next_event()
            .await
            .unwrap_or_else(|| panic!("{what}: the stream ended after {got} messages"));
        assert!(!frame.is_gap(), "{what}: no gap expected: {frame:?}");
        let env = frame.json();
        let topic = env["topic"].as_str().expect("topic").to_owned();
        let seq = env["seq"].as_u64().expect("seq");
        let data = env["data"].as_str().expect("data");
        assert_eq!(
            data[..6].parse::<u64>().ok(),
            Some(seq),
            "{what}: payload of {topic}:{seq}"
        );
        let prev = last.insert(topic.clone(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "{what}: {topic} goes {prev} → {seq}");
    }
    last
}

/// 8 SSE clients over 32 topics of 1 MiB each (8 × 32 MiB of backlog to deliver) that stall,
/// then read: each gets every message exactly once, and the hub's peak memory grows by a
/// fraction of that backlog (before the fix, each stream loaded every topic's page at once).
#[tokio::test]
async fn stalled_streams_over_many_topics_hold_one_page_each() {
    const TOPICS: usize = 32;
    const PER_TOPIC: usize = 4;
    const SIZE: usize = 256 << 10;
    const CLIENTS: usize = 8;
    // The clients read slowly on purpose; on a loaded machine one may wait longer than the
    // default write timeout for its turn, which is not what this test is about.
    let server = Server::start_durable(&["--write-timeout", "600s"]).await;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("amp{i}")).collect();
    for name in &names {
        publish_sized(&server, name, PER_TOPIC, SIZE).await;
    }
    let before = peak_rss_bytes(&server);
    let path = format!("/v1/topics/{}/sse?since=all", names.join(","));
    let stall = crate::kit::clients::Dial {
        recv_buffer: Some(4096),
    };
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        streams.push(Sse::open_with(&server, &path, &[], stall).await);
    }
    for (i, sse) in streams.iter_mut().enumerate() {
        let last = read_exactly(sse, TOPICS * PER_TOPIC, &format!("client {i}")).await;
        assert_eq!(last.len(), TOPICS, "client {i} got every topic");
        assert!(last.values().all(|&seq| seq == PER_TOPIC as u64));
    }
    let growth = peak_rss_bytes(&server).saturating_sub(before);
    let backlog = (CLIENTS * TOPICS * PER_TOPIC * SIZE) as u64;
    eprintln!("peak RSS grew by {growth} bytes for {backlog} bytes delivered to stalled clients");
    assert!(
        growth < backlog / 3,
        "peak RSS grew by {growth} bytes while stalled streams owed {backlog} bytes: each must \
         hold one page, not every topic's"
    );
}

/// With the global budget spent by a stalled stream's page, a new poll or stream gets 503
/// `busy` with Retry-After, nothing breaks, and once the page is delivered reads work again.
#[tokio::test]
async fn a_spent_read_budget_answers_503_busy() {
    const SIZE: usize = 512 << 10;
    let config = crate::kit::config_file(
        "[limits]\nmax_read_bytes = 8388608\nread_budget_bytes = 8388608\n",
    );
    let server = Server::start(&["--config", crate::kit::path_arg(&config)]).await;
    publish_sized(&server, "big", 16, SIZE).await;
    let stall = crate::kit::clients::Dial {
        recv_buffer: Some(4096),
    };
    let mut stalled = Sse::open_with(&server, "/v1/topics/big/sse?since=all", &[], stall).await;
    let resp = eventually("a poll is refused while the budget is spent", || async {
        let resp = server.get("/v1/topics/big/messages?since=all", &[]).await;
        (resp.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(resp)
    })
    .await;
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let problem = expect_problem(resp, 503, "a poll over the budget").await;
    assert_eq!(problem["type"], "urn:plexus:problem:busy");
    let sse = server.get("/v1/topics/big/sse?since=all", &[]).await;
    expect_problem(sse, 503, "a stream over the budget").await;
    // The stalled stream still gets everything, once; then the budget is free again.
    read_exactly(&mut stalled, 16, "the stalled stream").await;
    let page = eventually("polls are served again", || async {
        let (status, _, body) = server
            .get_json("/v1/topics/big/messages?since=all&limit=2")
            .await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(messages(&page).len(), 2, "{page}");
}

// Hardening (topic list): `GET /v1/topics` answered every topic in one body, to any
// caller, after loading them all. It is now paginated (`limit`, `after`, `next`) and filtered
// by the caller's rights page by page.

/// The names of a topic-list page, and its `next`.
fn topic_page(page: &Value) -> (Vec<String>, Option<String>) {
    let names = page["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("no `topics` array in {page}"))
        .iter()
        .map(|t| t["topic"].as_str().expect("a topic name").to_owned())
        .collect();
    (names, page["next"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn the_topic_list_is_paginated() {
    let server = Server::start(&[]).await;
    for i in 0..5 {
        server.publish(&format!("t{i}"), "x").await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/topics?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, _, page) = server.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let (names, next) = topic_page(&page);
        assert!(names.len() <= 2, "{path}: {page}");
        seen.extend(names);
        pages += 1;
        match next {
            Some(next) => path = format!("/v1/topics?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(pages, 3);
    for bad in [
        "/v1/topics?limit=0",
        "/v1/topics?limit=x",
        "/v1/topics?after=a..b",
    ] {
        expect_problem(server.get(bad, &[]).await, 400, bad).await;
    }
}

#[tokio::test]
async fn the_topic_list_pages_only_what_the_caller_may_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        "[auth]\nmode = \"required\"\n\
         [[auth.tokens]]\ntoken = \"writer-123\"\npublish = [\">\"]\n\
         [[auth.tokens]]\ntoken = \"reader-123\"\nsubscribe = [\"pub.>\"]\n",
    )
    .expect("write the config");
    let server = Server::start(&["--config", file.to_str().expect("UTF-8 path")]).await;
    for topic in ["a0", "a1", "pub.x", "pub.y", "z9"] {
        let resp = server
            .publish_with(topic, "x", &[("authorization", "Bearer writer-123")])
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "publish to {topic}");
    }
    let get = |path: &'static str| {
        let server = &server;
        async move {
            let resp = server
                .get(path, &[("authorization", "Bearer reader-123")])
                .await;
            let (status, _, page) = into_json(resp).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            topic_page(&page)
        }
    };
    assert_eq!(
        get("/v1/topics?limit=1").await,
        (vec!["pub.x".to_owned()], Some("pub.x".to_owned()))
    );
    assert_eq!(
        get("/v1/topics?limit=1&after=pub.x").await,
        (vec!["pub.y".to_owned()], None)
    );
    assert_eq!(get("/v1/topics").await.0, ["pub.x", "pub.y"]);
}

/// One poll over 32 topics of 4 MiB each (512 KiB messages) loads its 8 MiB answer and about a
/// share per topic, not 4 MiB per topic (before: peak RSS grew by more than the 128 MiB stored);
/// the answer is full, in time order, and its cursor resumes exactly.
#[tokio::test]
async fn a_poll_over_many_topics_loads_one_budget() {
    const TOPICS: usize = 32;
    const PER_TOPIC: usize = 8;
    const SIZE: usize = 512 << 10;
    let server = Server::start_durable(&[]).await;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("amp{i}")).collect();
    for name in &names {
        publish_sized(&server, name, PER_TOPIC, SIZE).await;
    }
    let before = peak_rss_bytes(&server);
    let path = format!(
        "/v1/topics/{}/messages?since=all&limit=1000",
        names.join(",")
    );
    let (status, _, page) = server.get_json(&path).await;
    assert_eq!(status, StatusCode::OK);
    let growth = peak_rss_bytes(&server).saturating_sub(before);
    let got = messages(&page);
    assert_eq!(got.len(), 16, "8 MiB of 512 KiB messages");
    let times: Vec<&str> = got
        .iter()
        .map(|m| m["time"].as_str().expect("time"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in time order: {times:?}"
    );
    let stored = (TOPICS * PER_TOPIC * SIZE) as u64;
    eprintln!("one poll: peak RSS grew by {growth} bytes; {stored} bytes stored");
    assert!(
        growth < stored * 3 / 4,
        "one poll grew peak RSS by {growth} bytes over {stored} bytes stored: a read loads one \
         budget, shared by its topics"
    );
    // The cursor resumes exactly: the rest comes once, with nothing skipped.
    let mut total = got.len();
    let mut next = page["next"].as_str().expect("next").to_owned();
    loop {
        let (status, _, page) = server
            .get_json(&format!(
                "/v1/topics/{}/messages?since={next}&limit=1000",
                names.join(",")
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        let got = messages(&page).len();
        if got == 0 {
            break;
        }
        total += got;
        next = page["next"].as_str().expect("next").to_owned();
    }
    assert_eq!(total, TOPICS * PER_TOPIC);
}

// ---- Hardening: batch decoding shares the read budget ----

/// A batch publish's body and its decode were not charged to `limits.read_budget_bytes`: any
/// number of batches could be decoded at once. Now a batch holds twice its declared length
/// from the budget while it is read and stored; with the budget held by a stalled batch, a
/// new batch gets 503 `busy` with Retry-After and nothing is stored, and once the stalled one
/// goes away batches work again.
#[tokio::test]
async fn a_batch_publish_is_charged_to_the_read_budget() {
    let config =
        crate::kit::config_file("[limits]\nmax_read_bytes = 65536\nread_budget_bytes = 1048576\n");
    let server = Server::start(&["--config", crate::kit::path_arg(&config)]).await;
    let stall = || server.stalled_batch(600_000);
    let mut stalled = stall().await;
    let probe = json!([{"topic": "probe", "data": "x"}]).to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = server.batch_raw(probe.clone(), "application/json").await;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a batch is never refused while the budget is held"
        );
        // The stalled batch takes the whole budget, so it is itself refused (`503`, an
        // answer on its socket) when anything else held a byte of it at that moment (a
        // read in flight): stall again.
        let mut buf = [0u8; 512];
        match stalled.try_read(&mut buf) {
            Ok(_) => stalled = stall().await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => stalled = stall().await,
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let item = json!([{"topic": "refused", "data": "x"}]).to_string();
    let resp = server.batch_raw(item.clone(), "application/json").await;
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let problem = expect_problem(resp, 503, "a batch over the budget").await;
    assert_eq!(problem["type"], "urn:plexus:problem:busy");
    drop(stalled);
    let page = eventually("reads work once the budget is back", || async {
        let resp = server
            .get("/v1/topics/refused/messages?since=all", &[])
            .await;
        if resp.status() != StatusCode::OK {
            return None;
        }
        Some(resp.json::<Value>().await.expect("a page"))
    })
    .await;
    assert!(messages(&page).is_empty(), "nothing was stored: {page}");
    let resp = eventually("a batch is stored once the budget is back", || async {
        let resp = server.batch_raw(item.clone(), "application/json").await;
        (resp.status() == StatusCode::CREATED).then_some(resp)
    })
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        messages(&server.read("refused", "since=all").await).len(),
        1
    );
}
