//! Manage and observe: topic listing and info, deleting a topic, health and readiness.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::kit::{Server, assert_time, gaps, messages, next, seqs};

const INFO_FIELDS: [&str; 7] = [
    "topic",
    "first_seq",
    "last_seq",
    "messages",
    "bytes",
    "subscribers",
    "last_publish",
];

fn assert_info_fields(info: &Value) {
    for field in INFO_FIELDS {
        assert!(
            info.get(field).is_some(),
            "topic info lacks `{field}`: {info}"
        );
    }
}

#[tokio::test]
async fn topic_info_describes_the_topic() {
    let server = Server::start(&[]).await;
    let first = server.publish("orders", "abc").await;
    server.publish("orders", "de").await;
    server.publish("orders", vec![0xffu8, 0x00]).await;

    let info = server.topic_info("orders").await;
    assert_info_fields(&info);
    assert_eq!(info["topic"], json!("orders"));
    assert_eq!(info["first_seq"], json!(1), "{info}");
    assert_eq!(info["last_seq"], json!(3), "{info}");
    assert_eq!(info["messages"], json!(3), "{info}");
    assert_eq!(
        info["bytes"],
        json!(7),
        "payload bytes retained: 3 + 2 + 2: {info}"
    );
    assert_eq!(info["subscribers"], json!(0), "{info}");
    assert_time(&info["last_publish"]);
    assert!(
        info["last_publish"].as_str() >= first["time"].as_str(),
        "last_publish is not before the first publish: {info}"
    );
}

#[tokio::test]
async fn topic_list_has_every_topic() {
    let server = Server::start(&[]).await;
    assert!(
        server.topics().await.is_empty(),
        "a fresh hub has no topics"
    );
    server.publish_n("alpha", 2, "x").await;
    server.publish("beta.gamma", "hello").await;

    let list = server.topics().await;
    let names: Vec<&str> = list.iter().map(|t| t["topic"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["alpha", "beta.gamma"], "{list:?}");
    for info in &list {
        assert_info_fields(info);
    }
    assert_eq!(list[0]["last_seq"], json!(2));
    assert_eq!(list[0]["messages"], json!(2));
    assert_eq!(list[1]["bytes"], json!(5));
    assert_eq!(
        list[0],
        server.topic_info("alpha").await,
        "list and info agree"
    );
}

#[tokio::test]
async fn delete_topic_drops_messages_and_keeps_the_counter() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 5, "m").await;
    let resp = server
        .client()
        .delete(server.url("/v1/topics/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "DELETE answers 204");

    let info = server.topic_info("t").await;
    assert_eq!(info["messages"], json!(0), "{info}");
    assert_eq!(info["bytes"], json!(0), "{info}");
    assert_eq!(info["last_seq"], json!(5), "the counter survives: {info}");
    assert_eq!(
        info["first_seq"],
        json!(6),
        "nothing retained: first_seq = last_seq + 1: {info}"
    );

    let page = server.read("t", "since=0").await;
    assert_eq!(
        gaps(&page),
        vec![json!({"topic": "t", "from": 1, "to": 5, "reason": "deleted"})],
        "a reader from the start learns what was deleted: {page}"
    );
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(next(&page), "5", "next moves past the gap");

    let page = server.read("t", "since=2").await;
    assert_eq!(
        gaps(&page),
        vec![json!({"topic": "t", "from": 3, "to": 5, "reason": "deleted"})],
        "an old cursor gets the rest of the range: {page}"
    );

    let page = server.read("t", "since=all").await;
    assert!(
        gaps(&page).is_empty(),
        "since=all never reports a gap: {page}"
    );
    assert!(messages(&page).is_empty());

    assert_eq!(
        server.publish("t", "after").await["seq"],
        json!(6),
        "seqs are never reused"
    );
    let page = server.read("t", "since=0").await;
    assert_eq!(
        gaps(&page),
        vec![json!({"topic": "t", "from": 1, "to": 5, "reason": "deleted"})],
        "{page}"
    );
    assert_eq!(
        seqs(&page),
        vec![6],
        "the gap comes before the message that follows"
    );
    let page = server.read("t", "since=all").await;
    assert_eq!(seqs(&page), vec![6]);
    assert!(gaps(&page).is_empty());
}

#[tokio::test]
async fn delete_is_durable_across_a_restart() {
    let mut server = Server::start_durable(&[]).await;
    server.publish_n("t", 3, "m").await;
    let resp = server
        .client()
        .delete(server.url("/v1/topics/t"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    server.restart().await;
    assert!(
        messages(&server.read("t", "since=all").await).is_empty(),
        "deleted stays deleted"
    );
    assert_eq!(
        server.publish("t", "x").await["seq"],
        json!(4),
        "the counter survives a restart"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let server = Server::start(&[]).await;
    for path in ["/healthz", "/readyz"] {
        let resp = server.get(path, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    }
}
