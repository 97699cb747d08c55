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

// ---- Issue 13 item 3 (review finding 4): stalled bodies and clients that stop reading ----

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

// ---- Issue 13 item 11 (review finding 11): behind a reverse proxy ----

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

// ---- Issue 13 item 12 (review finding 12): an open hub on loopback and web pages ----

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
