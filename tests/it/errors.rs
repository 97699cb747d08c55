//! Every error of the HTTP API (docs/API.md) that a request can meet: its status, an
//! `application/problem+json` body, and stored data left unchanged.

use reqwest::{Method, Response};
use serde_json::json;

use crate::kit::{Server, expect_problem};

/// A server holding a few messages on `a` and `b`, the topics every check looks at.
async fn seeded(args: &[&str]) -> Server {
    let server = Server::start(args).await;
    server.publish_n("a", 3, "a").await;
    server.publish_n("b", 2, "b").await;
    server
}

/// Sends `method path` with `body` and `headers`, expects the problem, and checks that the
/// visible state of `a` and `b` did not change.
async fn check(
    server: &Server,
    method: Method,
    path: &str,
    body: &'static [u8],
    headers: &[(&str, &str)],
    status: u16,
) {
    let before = server.snapshot(&["a", "b"]).await;
    let mut req = server
        .client()
        .request(method.clone(), server.url(path))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp: Response = req.send().await.expect("send request");
    expect_problem(resp, status, &format!("{method} {path}")).await;
    assert_eq!(
        server.snapshot(&["a", "b"]).await,
        before,
        "{method} {path} (a {status}) changed stored state"
    );
}

#[tokio::test]
async fn bad_topic_names_are_400() {
    let server = seeded(&[]).await;
    let too_long = "x".repeat(201);
    let names = [
        "a%20b",
        "a..b",
        ".a",
        "a.",
        "a$b",
        "a%2Fb",
        "gr%C3%BC%C3%9Fe",
        "a*",
        "a%3Ab",
        too_long.as_str(),
    ];
    for name in names {
        let publish = format!("/v1/topics/{name}/messages");
        check(&server, Method::POST, &publish, b"x", &[], 400).await;
        check(&server, Method::GET, &publish, b"", &[], 400).await;
    }
    // One bad name in a list spoils the whole read.
    check(
        &server,
        Method::GET,
        "/v1/topics/a,b..c/messages",
        b"",
        &[],
        400,
    )
    .await;
    check(
        &server,
        Method::GET,
        "/v1/topics/a,,b/messages",
        b"",
        &[],
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_since_is_400() {
    let server = seeded(&[]).await;
    for since in [
        "yesterday",
        "ALL",
        "-5",
        "10%20m",
        "10x",
        "a:",
        "a:-1",
        "2026-13-45T00:00:00Z",
        "1.5",
    ] {
        let path = format!("/v1/topics/a/messages?since={since}");
        check(&server, Method::GET, &path, b"", &[], 400).await;
    }
    check(
        &server,
        Method::GET,
        "/v1/topics/a,b/messages?since=2",
        b"",
        &[],
        400,
    )
    .await;
}

#[tokio::test]
async fn bad_limit_is_400() {
    let server = seeded(&[]).await;
    for limit in ["0", "-1", "abc", "1.5", "99999999999999999999999"] {
        let path = format!("/v1/topics/a/messages?limit={limit}");
        check(&server, Method::GET, &path, b"", &[], 400).await;
    }
}

#[tokio::test]
async fn bad_wait_is_400() {
    let server = seeded(&[]).await;
    for wait in ["-1", "abc", "forever"] {
        let path = format!("/v1/topics/a/messages?wait={wait}");
        check(&server, Method::GET, &path, b"", &[], 400).await;
    }
}

#[tokio::test]
async fn bad_event_name_is_400() {
    let server = seeded(&[]).await;
    let too_long = "e".repeat(65);
    for event in ["has space", "semi;colon", too_long.as_str()] {
        check(
            &server,
            Method::POST,
            "/v1/topics/a/messages",
            b"x",
            &[("Plexus-Event", event)],
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn publishing_to_a_reserved_topic_is_403() {
    let server = seeded(&[]).await;
    for topic in ["_x", "_jobs.42", "_"] {
        let path = format!("/v1/topics/{topic}/messages");
        check(&server, Method::POST, &path, b"x", &[], 403).await;
    }
    // Reading a reserved topic is allowed.
    let page = server.read("_x", "since=all").await;
    assert_eq!(page["messages"], json!([]), "nothing was stored on _x");
}

#[tokio::test]
async fn body_over_max_message_bytes_is_413() {
    let server = seeded(&["--max-message-bytes", "100"]).await;
    static BIG: [u8; 101] = [b'x'; 101];
    check(
        &server,
        Method::POST,
        "/v1/topics/a/messages",
        &BIG,
        &[],
        413,
    )
    .await;
    check(
        &server,
        Method::POST,
        "/v1/topics/new/messages",
        &BIG,
        &[],
        413,
    )
    .await;
    let result = server.publish("a", vec![b'y'; 100]).await;
    assert_eq!(
        result["seq"],
        json!(4),
        "exactly max-message-bytes is accepted"
    );
}

#[tokio::test]
async fn idempotency_conflict_is_409() {
    let server = seeded(&[]).await;
    let key = [("Idempotency-Key", "once")];
    let resp = server.publish_with("a", "first", &key).await;
    assert_eq!(resp.status(), 201);
    check(
        &server,
        Method::POST,
        "/v1/topics/a/messages",
        b"second",
        &key,
        409,
    )
    .await;
}

#[tokio::test]
async fn unknown_topic_is_404() {
    let server = seeded(&[]).await;
    check(&server, Method::GET, "/v1/topics/nope", b"", &[], 404).await;
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let server = seeded(&[]).await;
    for path in [
        "/v1/nothing",
        "/nope",
        "/v1/topics/a/messages/1/extra",
        "/v2/topics/a/messages",
    ] {
        check(&server, Method::GET, path, b"", &[], 404).await;
    }
    check(&server, Method::POST, "/v1/nothing", b"x", &[], 404).await;
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let server = seeded(&[]).await;
    check(
        &server,
        Method::PUT,
        "/v1/topics/a/messages",
        b"x",
        &[],
        405,
    )
    .await;
    check(
        &server,
        Method::DELETE,
        "/v1/topics/a/messages",
        b"",
        &[],
        405,
    )
    .await;
    check(
        &server,
        Method::PATCH,
        "/v1/topics/a/messages",
        b"x",
        &[],
        405,
    )
    .await;
    check(&server, Method::GET, "/v1/publish", b"", &[], 405).await;
    check(&server, Method::PUT, "/v1/publish", b"[]", &[], 405).await;
    check(&server, Method::POST, "/v1/topics", b"x", &[], 405).await;
    check(&server, Method::POST, "/v1/topics/a", b"x", &[], 405).await;
}
