//! Long polls: `wait=` and `Prefer: wait=` block until a message comes or the wait ends.
//!
//! No test measures time. A waiting poll is started in a task; the test then waits until the
//! server reports a subscriber on the topic (`GET /v1/topics/{topic}`), so the publish happens
//! while the poll is parked. Whatever the order turns out to be, the poll must answer with the
//! published message: an early empty answer is a failure.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::kit::{Server, eventually, into_json, messages, next, parse_cursor, seqs};

/// Starts `GET path` with `headers` in a task.
fn spawn_get(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> JoinHandle<(StatusCode, Value)> {
    let mut req = server.client().get(server.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::spawn(async move {
        let resp = req.send().await.expect("send long poll");
        let (status, _, value) = into_json(resp).await;
        (status, value)
    })
}

/// Waits until `topic` reports at least one subscriber (the parked poll).
async fn until_subscribed(server: &Server, topic: &str) {
    eventually(&format!("a subscriber on {topic}"), || async {
        let info = server.topic_info(topic).await;
        (info["subscribers"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn long_poll_answers_with_a_message_published_while_it_waits() {
    let server = Server::start(&[]).await;
    server.publish("t", "old").await;
    let poll = spawn_get(&server, "/v1/topics/t/messages?since=1&wait=30", &[]);
    until_subscribed(&server, "t").await;
    server.publish("t", "new").await;

    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        seqs(&page),
        vec![2],
        "the poll answers with the new message: {page}"
    );
    assert_eq!(messages(&page)[0]["data"], json!("new"));
    assert_eq!(next(&page), "2");
}

#[tokio::test]
async fn long_poll_with_since_now_gets_the_next_message() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 3, "m").await;
    let poll = spawn_get(&server, "/v1/topics/t/messages?since=now&wait=30", &[]);
    until_subscribed(&server, "t").await;
    server.publish("t", "m4").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(seqs(&page), vec![4], "{page}");
}

#[tokio::test]
async fn long_poll_on_a_topic_that_does_not_exist_yet() {
    let server = Server::start(&[]).await;
    let poll = spawn_get(&server, "/v1/topics/fresh/messages?since=all&wait=30", &[]);
    // The topic does not exist yet, so there is no subscriber count to watch; give the poll a
    // chance to be sent first. Either order must yield the message.
    tokio::task::yield_now().await;
    server.publish("fresh", "first").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(seqs(&page), vec![1], "{page}");
}

#[tokio::test]
async fn long_poll_times_out_with_an_empty_list() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 2, "m").await;
    let page = server.read("t", "since=2&wait=1").await;
    assert!(
        messages(&page).is_empty(),
        "nothing new: empty at the timeout: {page}"
    );
    assert_eq!(next(&page), "2");
}

#[tokio::test]
async fn prefer_wait_header_long_polls() {
    let server = Server::start(&[]).await;
    server.publish("t", "old").await;
    let poll = spawn_get(
        &server,
        "/v1/topics/t/messages?since=1",
        &[("Prefer", "wait=30")],
    );
    until_subscribed(&server, "t").await;
    server.publish("t", "new").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        seqs(&page),
        vec![2],
        "Prefer: wait=30 waits like ?wait=30: {page}"
    );
}

#[tokio::test]
async fn prefer_wait_header_times_out_with_an_empty_list() {
    let server = Server::start(&[]).await;
    server.publish("t", "old").await;
    let resp = server
        .get("/v1/topics/t/messages?since=1", &[("Prefer", "wait=1")])
        .await;
    let (status, _, page) = into_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(next(&page), "1");
}

#[tokio::test]
async fn long_poll_on_several_topics_wakes_on_any() {
    let server = Server::start(&[]).await;
    server.publish("a", "a1").await;
    server.publish("b", "b1").await;
    let poll = spawn_get(
        &server,
        "/v1/topics/a,b/messages?since=a:1,b:1&wait=30",
        &[],
    );
    until_subscribed(&server, "b").await;
    server.publish("b", "b2").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    let msgs = messages(&page);
    assert_eq!(msgs.len(), 1, "{page}");
    assert_eq!(
        (msgs[0]["topic"].clone(), msgs[0]["seq"].clone()),
        (json!("b"), json!(2))
    );
    let cur = parse_cursor(&next(&page));
    assert_eq!(cur.get("a"), Some(&1));
    assert_eq!(cur.get("b"), Some(&2));
}

#[tokio::test]
async fn many_long_polls_all_get_the_message() {
    let server = Server::start(&[]).await;
    server.publish("t", "old").await;
    let polls: Vec<_> = (0..5)
        .map(|_| spawn_get(&server, "/v1/topics/t/messages?since=1&wait=30", &[]))
        .collect();
    eventually("5 subscribers on t", || async {
        let info = server.topic_info("t").await;
        (info["subscribers"].as_u64().unwrap_or(0) >= 5).then_some(())
    })
    .await;
    server.publish("t", "new").await;
    for poll in polls {
        let (status, page) = poll.await.expect("poll task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seqs(&page), vec![2], "every waiting poll is woken: {page}");
    }
}

#[tokio::test]
async fn subscriber_count_returns_to_zero_after_a_poll() {
    let server = Server::start(&[]).await;
    server.publish("t", "old").await;
    let poll = spawn_get(&server, "/v1/topics/t/messages?since=1&wait=30", &[]);
    until_subscribed(&server, "t").await;
    server.publish("t", "new").await;
    poll.await.expect("poll task");
    eventually("subscribers back to 0", || async {
        (server.topic_info("t").await["subscribers"] == json!(0)).then_some(())
    })
    .await;
}
