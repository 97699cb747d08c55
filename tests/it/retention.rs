//! Retention by count and by age, and the `expired` gaps a reader gets for what it removed.
//!
//! Retention takes effect within 5 s; the tests poll the topic info up to a 30 s deadline and
//! then assert the end state, never how long it took.

use serde_json::{Value, json};

use crate::kit::{Server, eventually, gaps, messages, next, seqs};

/// Waits until `GET /v1/topics/{topic}` shows at most `max` messages; that info.
async fn until_at_most(server: &Server, topic: &str, max: u64) -> Value {
    eventually(
        &format!("{topic} to hold at most {max} messages"),
        || async {
            let info = server.topic_info(topic).await;
            (info["messages"].as_u64().is_some_and(|n| n <= max)).then_some(info)
        },
    )
    .await
}

#[tokio::test]
async fn retention_by_count_expires_the_oldest() {
    let server = Server::start(&["--retention-messages", "5"]).await;
    server.publish_n("t", 20, "m").await;
    let info = until_at_most(&server, "t", 5).await;
    assert_eq!(info["last_seq"], json!(20), "{info}");

    let page = server.read("t", "since=0").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "one expired gap: {page}");
    assert_eq!(g[0]["topic"], json!("t"));
    assert_eq!(g[0]["from"], json!(1), "{page}");
    assert_eq!(g[0]["reason"], json!("expired"), "{page}");
    let to = g[0]["to"].as_u64().expect("gap `to` is a seq");
    assert!(
        (15..20).contains(&to),
        "at most 5 retained, so the gap ends at 15..19: {page}"
    );
    let expected: Vec<u64> = (to + 1..=20).collect();
    assert_eq!(
        seqs(&page),
        expected,
        "the messages after the gap, with no hole"
    );
    assert_eq!(
        info["first_seq"],
        json!(to + 1),
        "info agrees with the gap: {info}"
    );
    assert_eq!(info["messages"], json!(20 - to), "{info}");

    let page = server.read("t", "since=all").await;
    assert!(
        gaps(&page).is_empty(),
        "since=all never reports a gap: {page}"
    );
    assert_eq!(seqs(&page), expected);

    let page = server.read("t", &format!("since={to}")).await;
    assert!(
        gaps(&page).is_empty(),
        "a cursor at the gap's end sees no gap: {page}"
    );
    assert_eq!(seqs(&page), expected);
}

#[tokio::test]
async fn retention_by_count_keeps_the_counter() {
    let server = Server::start(&["--retention-messages", "5"]).await;
    server.publish_n("t", 20, "m").await;
    until_at_most(&server, "t", 5).await;
    assert_eq!(server.publish("t", "more").await["seq"], json!(21));
}

#[tokio::test]
async fn retention_by_age_expires_everything_old() {
    let server = Server::start(&["--retention-age", "1s"]).await;
    server.publish_n("t", 3, "m").await;
    let info = until_at_most(&server, "t", 0).await;
    assert_eq!(info["last_seq"], json!(3), "{info}");
    assert_eq!(
        info["first_seq"],
        json!(4),
        "nothing retained: first_seq = last_seq + 1"
    );
    assert_eq!(info["bytes"], json!(0), "{info}");

    let page = server.read("t", "since=0").await;
    assert_eq!(
        gaps(&page),
        vec![json!({"topic": "t", "from": 1, "to": 3, "reason": "expired"})],
        "{page}"
    );
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(next(&page), "3");

    let page = server.read("t", "since=all").await;
    assert!(gaps(&page).is_empty(), "{page}");
    assert!(messages(&page).is_empty(), "{page}");

    assert_eq!(
        server.publish("t", "new").await["seq"],
        json!(4),
        "seqs are never reused"
    );
}

#[tokio::test]
async fn expired_gap_on_a_multi_topic_read() {
    let server = Server::start(&["--retention-messages", "2"]).await;
    server.publish_n("a", 6, "a").await;
    server.publish("b", "b1").await;
    until_at_most(&server, "a", 2).await;
    let page = server.read("a,b", "since=a:0,b:0").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "only a lost messages: {page}");
    assert_eq!(g[0]["topic"], json!("a"));
    assert_eq!(g[0]["from"], json!(1));
    assert_eq!(g[0]["reason"], json!("expired"));
    let to = g[0]["to"].as_u64().unwrap();
    let a: Vec<u64> = messages(&page)
        .iter()
        .filter(|m| m["topic"] == json!("a"))
        .map(crate::kit::seq)
        .collect();
    assert_eq!(a, (to + 1..=6).collect::<Vec<u64>>(), "{page}");
}

#[tokio::test]
async fn cursor_beyond_the_head_restarts_at_the_oldest_retained() {
    let server = Server::start(&["--retention-messages", "5"]).await;
    server.publish_n("t", 10, "m").await;
    let info = until_at_most(&server, "t", 5).await;
    let first = info["first_seq"].as_u64().expect("first_seq");
    let page = server.read("t", "since=999").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "{page}");
    assert_eq!(g[0]["topic"], json!("t"));
    assert_eq!(g[0]["reason"], json!("reset"), "{page}");
    assert_eq!(seqs(&page), (first..=10).collect::<Vec<u64>>(), "{page}");
}
