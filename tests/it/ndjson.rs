//! NDJSON streams (docs/API.md, "Streams"): one envelope a line, gap and keepalive lines, bad
//! parameters. Delivery itself — order, resume, catch-up, gaps, restarts — is the delivery
//! matrix's (`matrix.rs`).

use serde_json::{Value, json};

use crate::kit::clients::Ndjson;
use crate::kit::{Server, eventually, expect_problem};

/// `(topic, seq)` of envelope lines, asserting none is a gap or control line.
fn topic_seqs(lines: &[Value]) -> Vec<(String, u64)> {
    lines
        .iter()
        .map(|l| {
            assert!(
                l.get("event")
                    .is_none_or(|e| e != "gap" && e != "disconnect"),
                "expected an envelope, got {l}"
            );
            (
                l["topic"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no topic in {l}"))
                    .to_string(),
                l["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {l}")),
            )
        })
        .collect()
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    topic_seqs(lines).into_iter().map(|(_, s)| s).collect()
}

#[tokio::test]
async fn ndjson_sends_one_envelope_a_line_from_now() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 2, "old").await;
    let mut stream = Ndjson::open(&server, "/v1/topics/t/stream").await;
    server
        .publish_with("t", "made", &[("Plexus-Event", "created")])
        .await;
    server.publish_with("t", vec![0xffu8, 0x00], &[]).await;
    let lines = stream.events(2).await;
    assert_eq!(seqs(&lines), vec![3, 4], "default since is now: {lines:?}");
    assert_eq!(lines[0]["event"], json!("created"), "{lines:?}");
    assert_eq!(lines[0]["data"], json!("made"), "{lines:?}");
    crate::kit::assert_time(&lines[0]["time"]);
    assert_eq!(lines[1]["data_base64"], json!("/wA="), "{lines:?}");
    assert!(lines[1].get("data").is_none(), "{lines:?}");

    let mut all = Ndjson::open(&server, "/v1/topics/t/stream?since=all").await;
    assert_eq!(seqs(&all.events(4).await), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn ndjson_sends_keepalive_lines_when_idle() {
    let server = Server::start(&["--keepalive", "1s"]).await;
    server.publish("t", "m1").await;
    let mut stream = Ndjson::open(&server, "/v1/topics/t/stream").await;
    for _ in 0..2 {
        let line = stream
            .next_line()
            .await
            .expect("the idle stream stays open");
        assert_eq!(line, json!({"event": "keepalive"}));
    }
    server.publish("t", "m2").await;
    assert_eq!(seqs(&stream.events(1).await), vec![2]);
}

#[tokio::test]
async fn ndjson_starts_with_an_expired_gap_line() {
    let server = Server::start(&["--retention-messages", "5"]).await;
    server.publish_n("t", 20, "m").await;
    eventually("t to hold at most 5 messages", || async {
        let info = server.topic_info("t").await;
        (info["messages"].as_u64().is_some_and(|n| n <= 5)).then_some(())
    })
    .await;
    let mut stream = Ndjson::open(&server, "/v1/topics/t/stream?since=2").await;
    let gap = stream.next_event().await.expect("a gap line");
    assert_eq!(gap["event"], json!("gap"), "{gap}");
    assert_eq!(gap["topic"], json!("t"), "{gap}");
    assert_eq!(gap["from"], json!(3), "{gap}");
    assert_eq!(gap["reason"], json!("expired"), "{gap}");
    let to = gap["to"].as_u64().expect("gap `to`");
    assert!((15..20).contains(&to), "{gap}");
    let n = (20 - to) as usize;
    assert_eq!(
        seqs(&stream.events(n).await),
        (to + 1..=20).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn ndjson_bad_parameters_are_400() {
    let server = Server::start(&[]).await;
    for path in [
        "/v1/topics/t/stream?since=soon",
        "/v1/topics/t/stream?slow=sometimes",
        "/v1/topics/a,b/stream?since=7",
    ] {
        expect_problem(server.get(path, &[]).await, 400, path).await;
    }
}

// Exact resume with `since`, single- and multi-topic, is the matrix's `resume` and
// `multi_topic` (every transport, every engine).
