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

// Issue 13, finding 5: wildcards reached the hub's reserved topics. `subscribe = [">"]` (or
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

// Issue 13, finding 15 (JWT settings): an HS256 secret of any length was accepted (a short
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
