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

// Issue 13, item 4: idle job claimers. Each waiting `claim?wait=…` looked in the store again
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
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    metric(&text, "plexus_store_commit_ops_sum").unwrap_or(0)
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

// Issue 13, item 7: a job's state and its `_jobs.{id}` event were two commits. After `kill -9`
// mid-work, 5 of 6 runs left a job whose stored state and last event disagreed, so a client
// following the job could wait forever for its final event. They are now one commit.

/// Workers claim and complete jobs until a request fails (the server is killed under them).
async fn work_until_killed(
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
    const JOBS: usize = 1_500;
    let mut server = Server::start_on(crate::kit::Engine::Sqlite, &[]).await;
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

// Issue 13, item 9: finished jobs and their `_jobs.{id}` topics were never deleted (50,000
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
