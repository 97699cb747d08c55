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

    let required =
        Server::start(&["--auth", "required", "--jwt-secret", "regression-secret"]).await;
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

// Issue 13, item 2: memory amplification. A read or subscription has one byte budget shared by
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
    let server = Server::start_durable(&[]).await;
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
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("budget.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_read_bytes = 8388608\nread_budget_bytes = 8388608\n",
    )
    .expect("write the config");
    let server = Server::start(&["--config", file.to_str().expect("UTF-8 path")]).await;
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

// Issue 13, item 9 (topic list): `GET /v1/topics` answered every topic in one body, to any
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
