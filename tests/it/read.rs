//! `GET /v1/topics/{topics}/messages` without `wait`: every form of `since`, paging with
//! `limit` and `next`, several topics at once, and the reset of a cursor beyond the head.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::kit::{
    Server, enc, expect_problem, gaps, messages, next, parse_cursor, payload, seq, seqs,
};

/// A server with `topic` holding "m1".."m3".
async fn three(topic: &str) -> Server {
    let server = Server::start(&[]).await;
    server.publish_n(topic, 3, "m").await;
    server
}

#[tokio::test]
async fn since_all_returns_everything_in_order() {
    let server = three("t").await;
    let page = server.read("t", "since=all").await;
    assert_eq!(seqs(&page), vec![1, 2, 3], "{page}");
    let data: Vec<Vec<u8>> = messages(&page).iter().map(payload).collect();
    assert_eq!(data, vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    assert_eq!(next(&page), "3", "next is the last seq delivered");
    assert!(
        gaps(&page).is_empty(),
        "since=all never reports a gap: {page}"
    );
}

#[tokio::test]
async fn default_since_for_a_poll_is_all() {
    let server = three("t").await;
    let page = server.read("t", "").await;
    assert_eq!(seqs(&page), vec![1, 2, 3], "{page}");
}

#[tokio::test]
async fn since_a_seq_returns_what_follows_it() {
    let server = three("t").await;
    let page = server.read("t", "since=1").await;
    assert_eq!(seqs(&page), vec![2, 3], "{page}");
    assert_eq!(next(&page), "3");
    let page = server.read("t", "since=3").await;
    assert!(seqs(&page).is_empty(), "nothing after the head: {page}");
    assert_eq!(next(&page), "3", "next stays put when nothing is delivered");
    assert!(gaps(&page).is_empty());
}

#[tokio::test]
async fn since_0_reads_from_the_start_without_a_gap() {
    let server = three("t").await;
    let page = server.read("t", "since=0").await;
    assert_eq!(seqs(&page), vec![1, 2, 3], "{page}");
    assert!(gaps(&page).is_empty(), "nothing is missing: {page}");
}

#[tokio::test]
async fn since_now_is_empty_with_next_at_the_head() {
    let server = three("t").await;
    let page = server.read("t", "since=now").await;
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(next(&page), "3", "next is the head");
    server.publish("t", "m4").await;
    let page = server.read("t", &format!("since={}", next(&page))).await;
    assert_eq!(
        seqs(&page),
        vec![4],
        "resuming from `now` gets only what came after"
    );
}

#[tokio::test]
async fn since_an_rfc3339_time_starts_at_the_first_message_at_or_after_it() {
    let server = Server::start(&[]).await;
    let mut all = server.publish_n("t", 3, "m").await;
    let pivot = all[1]["time"].as_str().unwrap().to_string();
    all.extend(server.publish_n("t", 2, "n").await);
    // Times have millisecond resolution, so neighbours may share the pivot's time; the
    // expected set is computed from the acknowledged times, which sort as strings.
    let expected: Vec<u64> = all
        .iter()
        .filter(|r| r["time"].as_str().unwrap() >= pivot.as_str())
        .map(seq)
        .collect();
    assert!(
        expected.contains(&2),
        "the pivot message itself is included"
    );
    let page = server.read("t", &format!("since={}", enc(&pivot))).await;
    assert_eq!(seqs(&page), expected, "since={pivot}: {page}");
    assert!(
        gaps(&page).is_empty(),
        "a time is not a cursor: no gap: {page}"
    );
}

#[tokio::test]
async fn since_far_past_and_future_times() {
    let server = three("t").await;
    let page = server
        .read("t", &format!("since={}", enc("1970-01-01T00:00:00Z")))
        .await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    let page = server
        .read("t", &format!("since={}", enc("2999-01-01T00:00:00.000Z")))
        .await;
    assert!(
        messages(&page).is_empty(),
        "nothing at or after 2999: {page}"
    );
    assert_eq!(
        next(&page),
        "3",
        "a reader past every message stands at the head"
    );
    // A numeric offset is RFC 3339 too.
    let page = server
        .read("t", &format!("since={}", enc("1970-01-01T01:00:00+01:00")))
        .await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
}

#[tokio::test]
async fn since_a_duration_reads_that_long_ago() {
    let server = three("t").await;
    for d in ["10m", "1h", "1d", "3600s"] {
        let page = server.read("t", &format!("since={d}")).await;
        assert_eq!(seqs(&page), vec![1, 2, 3], "since={d}: {page}");
    }
}

#[tokio::test]
async fn limit_and_next_page_through_a_topic() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 25, "m").await;
    let mut since = "all".to_string();
    let mut got = Vec::new();
    for expected_len in [10, 10, 5] {
        let page = server.read("t", &format!("since={since}&limit=10")).await;
        assert_eq!(
            messages(&page).len(),
            expected_len,
            "page after {since}: {page}"
        );
        got.extend(seqs(&page));
        since = next(&page);
    }
    assert_eq!(
        got,
        (1..=25).collect::<Vec<u64>>(),
        "every message once, in order"
    );
    assert_eq!(since, "25");
    let page = server.read("t", &format!("since={since}&limit=10")).await;
    assert!(
        messages(&page).is_empty(),
        "nothing after the last page: {page}"
    );
    assert_eq!(next(&page), since, "an empty page keeps the same `next`");
}

#[tokio::test]
async fn default_limit_is_100() {
    let server = Server::start(&[]).await;
    server.batch_n("t", 150, "m").await;
    let page = server.read("t", "since=all").await;
    assert_eq!(messages(&page).len(), 100, "default limit");
    assert_eq!(next(&page), "100");
}

#[tokio::test]
async fn limit_above_1000_is_clamped_not_an_error() {
    let server = Server::start(&[]).await;
    server.batch_n("t", 1005, "m").await;
    let page = server.read("t", "since=all&limit=5000").await;
    assert_eq!(messages(&page).len(), 1000, "limit is clamped to 1000");
    assert_eq!(next(&page), "1000");
    let page = server.read("t", "since=1000&limit=5000").await;
    assert_eq!(seqs(&page), vec![1001, 1002, 1003, 1004, 1005]);
}

#[tokio::test]
async fn unpublished_topic_reads_empty() {
    let server = Server::start(&[]).await;
    let page = server.read("never.published", "since=all").await;
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(next(&page), "0", "nothing delivered: the position is 0");
}

/// Groups a page's messages by topic: topic → seqs in the order delivered.
fn by_topic(page: &Value) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in messages(page) {
        out.entry(
            m["topic"]
                .as_str()
                .expect("envelope has a topic")
                .to_string(),
        )
        .or_default()
        .push(seq(&m));
    }
    out
}

fn map(pairs: &[(&str, Vec<u64>)]) -> BTreeMap<String, Vec<u64>> {
    pairs
        .iter()
        .map(|(t, s)| (t.to_string(), s.clone()))
        .collect()
}

fn cursor(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(t, s)| (t.to_string(), *s)).collect()
}

#[tokio::test]
async fn several_topics_in_one_read() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "a").await;
    server.publish_n("b", 3, "b").await;
    let page = server.read("a,b", "since=all").await;
    assert_eq!(
        by_topic(&page),
        map(&[("a", vec![1, 2]), ("b", vec![1, 2, 3])]),
        "{page}"
    );
    assert_eq!(parse_cursor(&next(&page)), cursor(&[("a", 2), ("b", 3)]));
}

#[tokio::test]
async fn multi_topic_cursor_names_every_topic_and_resumes_exactly() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "a").await;
    let page = server.read("a,b", "since=all").await;
    assert_eq!(by_topic(&page), map(&[("a", vec![1, 2])]), "{page}");
    let cur = next(&page);
    assert_eq!(
        parse_cursor(&cur),
        cursor(&[("a", 2), ("b", 0)]),
        "next names every topic, also b with nothing delivered: {cur:?}"
    );

    server.publish("a", "a3").await;
    server.publish_n("b", 2, "b").await;
    let page = server.read("a,b", &format!("since={}", enc(&cur))).await;
    assert_eq!(
        by_topic(&page),
        map(&[("a", vec![3]), ("b", vec![1, 2])]),
        "exactly the new messages: {page}"
    );
    assert_eq!(parse_cursor(&next(&page)), cursor(&[("a", 3), ("b", 2)]));
    assert!(gaps(&page).is_empty());
}

#[tokio::test]
async fn multi_topic_since_now() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "a").await;
    let page = server.read("a,b", "since=now").await;
    assert!(messages(&page).is_empty(), "{page}");
    assert_eq!(parse_cursor(&next(&page)), cursor(&[("a", 2), ("b", 0)]));
}

#[tokio::test]
async fn multi_topic_paging_delivers_each_message_once() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 7, "a").await;
    server.publish_n("b", 6, "b").await;
    let mut since = "all".to_string();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..20 {
        let page = server
            .read("a,b", &format!("since={}&limit=4", enc(&since)))
            .await;
        assert!(
            messages(&page).len() <= 4,
            "limit holds across topics: {page}"
        );
        if messages(&page).is_empty() {
            break;
        }
        for (t, s) in by_topic(&page) {
            got.entry(t).or_default().extend(s);
        }
        since = next(&page);
    }
    assert_eq!(
        got,
        map(&[("a", (1..=7).collect()), ("b", (1..=6).collect())])
    );
}

#[tokio::test]
async fn cursor_leaving_a_topic_out_reads_it_from_the_default() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 3, "a").await;
    server.publish_n("b", 2, "b").await;
    let page = server.read("a,b", "since=a:2").await;
    assert_eq!(
        by_topic(&page),
        map(&[("a", vec![3]), ("b", vec![1, 2])]),
        "b is read from the poll default (all): {page}"
    );
}

#[tokio::test]
async fn bare_number_with_several_topics_is_400() {
    let server = Server::start(&[]).await;
    server.publish("a", "x").await;
    let before = server.snapshot(&["a"]).await;
    let resp = server.get("/v1/topics/a,b/messages?since=1", &[]).await;
    expect_problem(resp, 400, "since=1 with topics a,b").await;
    assert_eq!(server.snapshot(&["a"]).await, before);
}

#[tokio::test]
async fn cursor_beyond_the_head_resets_to_the_oldest_retained() {
    let server = three("t").await;
    let page = server.read("t", "since=999").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "one reset gap: {page}");
    assert_eq!(g[0]["topic"], json!("t"));
    assert_eq!(g[0]["reason"], json!("reset"), "{page}");
    assert_eq!(
        seqs(&page),
        vec![1, 2, 3],
        "reading restarts at the oldest retained"
    );
    assert_eq!(next(&page), "3");
}
