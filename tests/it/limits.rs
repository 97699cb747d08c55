//! Limits (docs/API.md, "Limits"): the request rate per client address (429 with `Retry-After`; the
//! health paths exempt), the request-head timeout (a slow or silent client is cut while others
//! are served), connections per client address and in all (refused at accept, counted in
//! `plexus_connections_refused_total`), and the message size (413 on every way in).
//!
//! Several client addresses on one machine: the loopback network answers on all of
//! 127.0.0.0/8, so a socket bound to 127.0.0.2 is another client to the hub.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::kit::clients::{READ_TIMEOUT, Ws};
use crate::kit::{DEADLINE, Server, eventually, expect_problem, metric};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to the server from the client address `127.0.0.{from}`.
async fn dial(server: &Server, from: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("create a TCP socket");
    socket
        .bind(SocketAddr::new(loopback(from), 0))
        .expect("bind a loopback client address");
    let addr = server
        .addr()
        .parse()
        .expect("the server address is ip:port");
    timeout(READ_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect to the server")
}

/// An HTTP client whose connections come from `127.0.0.{from}`.
fn client_from(from: u8) -> Client {
    Client::builder()
        .local_address(loopback(from))
        .timeout(READ_TIMEOUT)
        .build()
        .expect("build an HTTP client")
}

/// Sends `GET /healthz` on a kept-alive connection; the response's first bytes, or `None` if
/// the server closed the connection without answering.
async fn healthz_on(stream: &mut TcpStream) -> Option<String> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: plexus\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    match timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
        Err(_) => panic!("no answer nor close within {READ_TIMEOUT:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// A connection that must be served: `GET /healthz` answers 200 on it.
async fn served(stream: &mut TcpStream, what: &str) {
    let answer = healthz_on(stream).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{what}: expected a 200 answer, got {answer:?}"
    );
}

/// Reads until the server closes `stream` (EOF or a reset), at most `DEADLINE`; what it sent
/// before closing. Panics if the connection is still open at the deadline.
async fn until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let closed = timeout(DEADLINE, async {
        let mut buf = vec![0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the connection is still open after {DEADLINE:?} (received {:?})",
        String::from_utf8_lossy(&got)
    );
    got
}

/// `plexus_connections_refused_total`, asked with `client`.
async fn refused_total(server: &Server, client: &Client) -> u64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("send GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    metric(&text, "plexus_connections_refused_total")
        .unwrap_or_else(|| panic!("no plexus_connections_refused_total in /metrics:\n{text}"))
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let server = Server::start(&["--rate", "1", "--burst", "2"]).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let resp = server.get("/v1/topics", &[]).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(resp);
        }
    }
    assert_eq!(
        &statuses[..2],
        &[200, 200],
        "the burst is served: {statuses:?}"
    );
    let resp =
        limited.unwrap_or_else(|| panic!("8 quick requests were never limited: {statuses:?}"));
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("Retry-After is ASCII").to_string());
    let seconds: Option<u64> = retry_after.as_deref().and_then(|v| v.parse().ok());
    assert!(
        seconds.is_some_and(|s| s >= 1),
        "a 429 carries Retry-After in whole seconds (≥ 1), got {retry_after:?}"
    );
    expect_problem(resp, 429, "a request over the rate").await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );

    // The health paths are exempt, even for a client over its rate.
    for path in ["/healthz", "/readyz", "/metrics", "/healthz", "/metrics"] {
        let resp = server.get(path, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {path} while limited");
    }
    // Another client address has its own bucket.
    let other = client_from(2);
    let resp = other
        .get(server.url("/v1/topics"))
        .send()
        .await
        .expect("send GET /v1/topics from 127.0.0.2");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "another client is not limited"
    );

    // The bucket refills: the limited client is served again.
    eventually("the limited client to be served again", || async {
        let resp = server.get("/v1/topics", &[]).await;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn header_timeout_cuts_a_half_request_line_while_others_are_served() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut stalled = dial(&server, 1).await;
    stalled
        .write_all(b"GET /v1/top")
        .await
        .expect("write half a request line");

    // Meanwhile, other clients (even from the same address) are served.
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /healthz meanwhile");
    let published = server.publish("t", "hello").await;
    assert_eq!(published["seq"], json!(1), "{published}");
    let mut other = dial(&server, 2).await;
    served(&mut other, "another client meanwhile").await;

    let got = until_closed(&mut stalled, "a client stalled in its request line").await;
    // Whatever it sent before closing (nothing, or a 408), it is not a success.
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 400"),
        "a stalled client gets no answer but a 408/400 and a close: {text:?}"
    );
    // The server is fine afterwards.
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /healthz afterwards");
}

#[tokio::test]
async fn header_timeout_cuts_a_head_without_its_final_blank_line() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut stalled = dial(&server, 1).await;
    stalled
        .write_all(b"GET /v1/topics HTTP/1.1\r\nHost: plexus\r\n")
        .await
        .expect("write a head without its blank line");
    let resp = server.get("/v1/topics", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /v1/topics meanwhile");
    let got = until_closed(&mut stalled, "a client stalled in its headers").await;
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "an incomplete head is never answered 200"
    );
}

#[tokio::test]
async fn header_timeout_cuts_a_client_that_trickles_its_head() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut slow = dial(&server, 1).await;
    slow.write_all(b"GET /v1/topics HTTP/1.1\r\nX-Slow: ")
        .await
        .expect("write the start of a head");
    // One byte every 100 ms: always busy, never done. The server must cut it anyway.
    let trickle = timeout(DEADLINE, async {
        loop {
            if slow.write_all(b"a").await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            if let Ok(Ok(0) | Err(_)) =
                timeout(Duration::from_millis(100), slow.read(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(
        trickle.is_ok(),
        "a client trickling its head one byte at a time was not cut within {DEADLINE:?}"
    );
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /healthz afterwards");
}

#[tokio::test]
async fn header_timeout_cuts_a_client_that_sends_nothing() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut silent = dial(&server, 1).await;
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /healthz meanwhile");
    until_closed(&mut silent, "a client that never sends a byte").await;
}

#[tokio::test]
async fn header_timeout_cuts_an_h2c_client_that_sends_only_the_preface() {
    let server = Server::start(&["--header-timeout", "1s"]).await;
    let mut stalled = dial(&server, 1).await;
    stalled
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write the HTTP/2 preface");
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET /healthz meanwhile");
    until_closed(
        &mut stalled,
        "an h2c client that sent the preface and nothing else (no SETTINGS, no request)",
    )
    .await;
}

#[tokio::test]
async fn connections_over_the_per_client_limit_are_closed_at_accept() {
    let server = Server::start(&[
        "--max-connections-per-client",
        "3",
        "--header-timeout",
        "60s",
    ])
    .await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut stream = dial(&server, 1).await;
        served(&mut stream, &format!("connection {} of 3", i + 1)).await;
        held.push(stream);
    }
    let mut extra = dial(&server, 1).await;
    let answer = healthz_on(&mut extra).await;
    assert_eq!(
        answer, None,
        "a 4th connection from one address is closed without an answer"
    );
    // The held connections still work, and another address is not limited by this one.
    served(&mut held[0], "a held connection after the refusal").await;
    let mut elsewhere = dial(&server, 2).await;
    served(&mut elsewhere, "a connection from 127.0.0.2").await;
    let refused = refused_total(&server, &client_from(2)).await;
    assert!(refused >= 1, "plexus_connections_refused_total = {refused}");

    // A freed slot can be taken again.
    drop(held.pop());
    eventually("a new connection after one closed", || async {
        let mut stream = dial(&server, 1).await;
        let answer = healthz_on(&mut stream).await;
        answer.filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_total_limit_are_closed_at_accept() {
    let server = Server::start(&["--max-connections", "3", "--header-timeout", "60s"]).await;
    let mut held = Vec::new();
    for from in [1, 1, 2] {
        let mut stream = dial(&server, from).await;
        served(&mut stream, &format!("a connection from 127.0.0.{from}")).await;
        held.push(stream);
    }
    let mut extra = dial(&server, 3).await;
    assert_eq!(
        healthz_on(&mut extra).await,
        None,
        "a 4th connection (from a new address) is closed without an answer"
    );
    served(&mut held[2], "a held connection after the refusal").await;

    drop(held.pop());
    let refused = eventually(
        "a slot for /metrics after one connection closed",
        || async {
            let client = client_from(4);
            let resp = client.get(server.url("/metrics")).send().await.ok()?;
            let text = resp.text().await.ok()?;
            metric(&text, "plexus_connections_refused_total")
        },
    )
    .await;
    assert!(refused >= 1, "plexus_connections_refused_total = {refused}");
}

#[tokio::test]
async fn messages_over_max_message_bytes_are_413_everywhere() {
    let server = Server::start(&["--max-message-bytes", "16"]).await;
    let fits = "x".repeat(16);
    let over = "x".repeat(17);
    server.publish("t", fits.clone()).await;
    let resp = server.publish_with("t", over.clone(), &[]).await;
    expect_problem(resp, 413, "a publish of 17 bytes over a 16-byte limit").await;
    let batch = json!([{"topic":"t","data":"ok"},{"topic":"t","data":over}]).to_string();
    let resp = server.batch_raw(batch, "application/json").await;
    expect_problem(resp, 413, "a batch with one item over the limit").await;
    let resp = crate::jobs::submit_raw(&server, "q", "", over.clone(), &[]).await;
    expect_problem(resp, 413, "a job payload over the limit").await;
    // Far over the limit: refused once the limit is passed, without waiting for the rest
    // of a 4 MiB body (only 1 KiB of it is ever sent).
    let mut stream = dial(&server, 1).await;
    let mut request =
        b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: plexus\r\nContent-Length: 4194304\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&[b'y'; 1024]);
    stream
        .write_all(&request)
        .await
        .expect("write the start of a 4 MiB publish");
    let mut buf = vec![0u8; 4096];
    let n = timeout(READ_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("an answer before the rest of the body is sent")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a 4 MiB publish announced by Content-Length: {answer:?}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer:?}"
    );

    let mut ws = Ws::connect(&server, "").await;
    let mut early = Vec::new();
    let answer = ws
        .call(
            json!({"op":"publish","id":1,"topic":"t","data":over}),
            &mut early,
        )
        .await;
    assert_eq!(
        (answer["op"].clone(), answer["status"].clone()),
        (json!("error"), json!(413)),
        "a WS publish over the limit: {answer}"
    );
    let stored: Vec<_> = server
        .read_all("t")
        .await
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        stored,
        [json!(fits)],
        "only the message that fits is stored"
    );
    // The hub is not bothered by any of it.
    let resp = server.get("/healthz", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
