//! Long polls at scale: a waiting poll of one topic is answered from the message the hub just
//! broadcast, not from a store read per poller (docs/API.md §2.2 and §6,
//! `plexus_long_poll_answers_total`), and that fast path never loses or reorders a message:
//! a batch that outruns the broadcast, a `limit` smaller than the batch, and many pollers at
//! once all end with every seq exactly once.

use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::kit::{Server, eventually, into_json, metric, next, seqs};

/// Starts `GET path` in a task on the server's client.
fn spawn_get(server: &Server, path: &str) -> JoinHandle<(StatusCode, Value)> {
    let req = server.client().get(server.url(path));
    tokio::spawn(async move {
        let resp = req.send().await.expect("send long poll");
        let (status, _, value) = into_json(resp).await;
        (status, value)
    })
}

/// Waits until `n` long polls are parked (their first read found nothing).
async fn until_waiting(server: &Server, n: u64) {
    eventually(&format!("{n} long polls waiting"), || async {
        let text = server.metrics().await;
        (metric(&text, "plexus_long_polls_waiting")? >= n).then_some(())
    })
    .await;
}

async fn answers(server: &Server, source: &str) -> u64 {
    let text = server.metrics().await;
    metric(
        &text,
        &format!("plexus_long_poll_answers_total{{source=\"{source}\"}}"),
    )
    .unwrap_or(0)
}

/// Short polls from `cursor` until the topic's head, appending the seqs to `got`.
async fn read_rest(server: &Server, topic: &str, mut cursor: String, got: &mut Vec<u64>) {
    loop {
        let page = server
            .read(topic, &format!("since={cursor}&limit=1000"))
            .await;
        let page_seqs = seqs(&page);
        if page_seqs.is_empty() {
            return;
        }
        got.extend(page_seqs);
        cursor = next(&page);
    }
}

#[tokio::test]
async fn many_waiting_polls_are_answered_from_the_broadcast_not_the_store() {
    let server = Server::start(&[]).await;
    server.publish("wide", "old").await;
    let polls: Vec<_> = (0..40)
        .map(|_| spawn_get(&server, "/v1/topics/wide/messages?since=1&wait=30"))
        .collect();
    until_waiting(&server, 40).await;
    let (live_before, store_before) = (
        answers(&server, "live").await,
        answers(&server, "store").await,
    );
    server.publish("wide", "new").await;
    for poll in polls {
        let (status, page) = poll.await.expect("poll task");
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(seqs(&page), vec![2], "{page}");
        assert_eq!(page["messages"][0]["data"], "new", "{page}");
        assert_eq!(next(&page), "2", "{page}");
    }
    assert_eq!(
        answers(&server, "live").await - live_before,
        40,
        "each parked poll is answered from the broadcast message"
    );
    assert_eq!(
        answers(&server, "store").await,
        store_before,
        "no parked poll went back to the store"
    );
}

#[tokio::test]
async fn a_batch_that_outruns_the_broadcast_reaches_a_waiting_poll_whole() {
    let server = Server::start(&[]).await;
    server.publish("burst", "zero").await;
    let poll = spawn_get(
        &server,
        "/v1/topics/burst/messages?since=1&wait=30&limit=1000",
    );
    until_waiting(&server, 1).await;
    // More than the live broadcast holds (256), in one commit.
    server.batch_n("burst", 600, "m").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut got = seqs(&page);
    assert_eq!(got.first(), Some(&2), "the answer starts after the cursor");
    assert_eq!(got.last().map(|s| s.to_string()), Some(next(&page)));
    read_rest(&server, "burst", next(&page), &mut got).await;
    assert_eq!(
        got,
        (2..=601).collect::<Vec<u64>>(),
        "every seq once, in order"
    );
}

#[tokio::test]
async fn a_poll_answered_from_the_broadcast_keeps_to_its_limit() {
    let server = Server::start(&[]).await;
    let poll = spawn_get(
        &server,
        "/v1/topics/small/messages?since=now&wait=30&limit=2",
    );
    until_waiting(&server, 1).await;
    server.batch_n("small", 5, "m").await;
    let (status, page) = poll.await.expect("poll task");
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut got = seqs(&page);
    assert!(
        (1..=2).contains(&got.len()),
        "at most `limit` messages: {page}"
    );
    assert_eq!(got[0], 1, "{page}");
    read_rest(&server, "small", next(&page), &mut got).await;
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn pollers_that_repoll_at_once_lose_nothing_across_many_messages() {
    let server = Server::start(&[]).await;
    server.publish("steady", "0").await;
    // Each poller re-polls with its `next` at once, as the bench's pollers do.
    let pollers: Vec<JoinHandle<Vec<u64>>> = (0..20)
        .map(|_| {
            let client = server.client().clone();
            let base = server.url("/v1/topics/steady/messages");
            tokio::spawn(async move {
                let mut cursor = "1".to_owned();
                let mut got = Vec::new();
                while got.len() < 30 {
                    let resp = client
                        .get(format!("{base}?since={cursor}&wait=30"))
                        .send()
                        .await
                        .expect("poll");
                    let (status, _, page) = into_json(resp).await;
                    assert_eq!(status, StatusCode::OK, "{page}");
                    got.extend(seqs(&page));
                    cursor = next(&page);
                }
                got
            })
        })
        .collect();
    until_waiting(&server, 20).await;
    for i in 1..=30 {
        server.publish("steady", format!("m{i}")).await;
    }
    for poller in pollers {
        let got = poller.await.expect("poller");
        assert_eq!(
            got,
            (2..=31).collect::<Vec<u64>>(),
            "every seq once, in order"
        );
    }
}
