//! What the store engines themselves do, once per engine through HTTP: paging, multi-topic
//! cursors, idempotent publishes, delete and retention. How messages reach a subscriber over
//! each transport is the delivery matrix's (`matrix.rs`); the store's own behaviour suite
//! runs per engine in the library's unit tests (`src/store/conformance.rs`).

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{Engine, Server, eventually, gaps, into_json, messages, next, parse_cursor, seqs};

/// Publish, page, resume a multi-topic cursor, replay an idempotent publish, delete.
async fn delivery(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("a", 25, "m").await;

    let mut since = "all".to_string();
    let mut got = Vec::new();
    for _ in 0..3 {
        let page = server.read("a", &format!("since={since}&limit=10")).await;
        got.extend(seqs(&page));
        since = next(&page);
    }
    assert_eq!(got, (1..=25).collect::<Vec<u64>>(), "{engine:?}: paging");

    let page = server.read("a,b", "since=all&limit=1000").await;
    let cursor = next(&page);
    assert_eq!(
        parse_cursor(&cursor).get("b"),
        Some(&0),
        "{engine:?}: {cursor}"
    );
    server.publish("b", "b1").await;
    let page = server
        .read("a,b", &format!("since={}", crate::kit::enc(&cursor)))
        .await;
    let m = messages(&page);
    assert_eq!(m.len(), 1, "{engine:?}: only the new message: {page}");
    assert_eq!(
        (m[0]["topic"].clone(), m[0]["seq"].clone()),
        (json!("b"), json!(1))
    );

    let key = [("Idempotency-Key", "k")];
    let (_, _, first) = into_json(server.publish_with("a", "once", &key).await).await;
    let (status, headers, again) = into_json(server.publish_with("a", "once", &key).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, first, "{engine:?}: replay answers the first result");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().expect("header is ASCII")),
        Some("true")
    );
    assert_eq!(first["seq"], json!(26));

    let resp = server
        .client()
        .delete(server.url("/v1/topics/a"))
        .send()
        .await
        .expect("send DELETE");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let page = server.read("a", "since=20").await;
    assert_eq!(
        gaps(&page),
        vec![json!({"topic": "a", "from": 21, "to": 26, "reason": "deleted"})],
        "{engine:?}: {page}"
    );
    assert_eq!(
        server.publish("a", "after").await["seq"],
        json!(27),
        "{engine:?}"
    );
}

/// Retention by count leaves an `expired` gap followed by the retained tail.
async fn retention(engine: Engine) {
    let server = Server::start_on(engine, &["--retention-messages", "5"]).await;
    server.publish_n("t", 20, "m").await;
    eventually("retention to apply", || async {
        let info = server.topic_info("t").await;
        info["messages"]
            .as_u64()
            .is_some_and(|n| n <= 5)
            .then_some(())
    })
    .await;
    let page = server.read("t", "since=0").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "{engine:?}: {page}");
    assert_eq!(g[0]["reason"], json!("expired"));
    assert_eq!(g[0]["from"], json!(1));
    let to = g[0]["to"].as_u64().expect("gap `to` is a seq");
    assert_eq!(
        seqs(&page),
        (to + 1..=20).collect::<Vec<u64>>(),
        "{engine:?}: {page}"
    );
    assert!(gaps(&server.read("t", "since=all").await).is_empty());
}

#[tokio::test]
async fn sqlite_delivery() {
    delivery(Engine::Sqlite).await;
}

#[tokio::test]
async fn sqlite_retention() {
    retention(Engine::Sqlite).await;
}

#[tokio::test]
async fn memory_delivery() {
    delivery(Engine::Memory).await;
}

#[tokio::test]
async fn memory_retention() {
    retention(Engine::Memory).await;
}

#[tokio::test]
async fn redis_delivery() {
    delivery(Engine::Redis).await;
}

#[tokio::test]
async fn redis_retention() {
    retention(Engine::Redis).await;
}
