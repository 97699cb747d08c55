//! Server-Sent Events (docs/API.md, "Streams"): framing, `raw=1`, keepalives, multi-topic ids,
//! gaps, `since` defaults, bad parameters, `Last-Event-ID` over `since`. Delivery itself —
//! order, resume, catch-up, gaps, restarts — is the delivery matrix's (`matrix.rs`).
//!
//! The stream is read over a raw socket (`clients::Sse`). A stream's subscription exists once
//! its response head has arrived, so a test publishes only after `Sse::open` returns.

use serde_json::json;

use crate::kit::clients::{Frame, Sse};
use crate::kit::{Server, eventually, expect_problem, parse_cursor};

/// The envelopes of message frames, asserting each `id:` is the single-topic cursor (the seq).
fn single_topic_seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            assert!(!f.is_gap(), "expected a message frame, got {f:?}");
            let env = f.json();
            let seq = env["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("no seq in {env}"));
            assert_eq!(
                f.id(),
                seq.to_string(),
                "single topic: id is the seq: {f:?}"
            );
            seq
        })
        .collect()
}

/// `(topic, seq)` of message frames.
fn topic_seqs(frames: &[Frame]) -> Vec<(String, u64)> {
    frames
        .iter()
        .map(|f| {
            assert!(!f.is_gap(), "expected a message frame, got {f:?}");
            let env = f.json();
            (
                env["topic"].as_str().expect("topic").to_string(),
                env["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

#[tokio::test]
async fn sse_frames_messages_with_id_event_and_envelope() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 2, "old").await;
    // Default since for streams is `now`: the two old messages are not sent.
    let mut sse = Sse::open(&server, "/v1/topics/t/sse", &[]).await;
    server
        .publish_with("t", "made", &[("Plexus-Event", "created")])
        .await;
    server.publish("t", "plain").await;
    let frames = sse.events(2).await;
    assert_eq!(frames[0].id(), "3", "{frames:?}");
    assert_eq!(frames[0].event.as_deref(), Some("created"), "{frames:?}");
    let env = frames[0].json();
    assert_eq!(env["topic"], json!("t"), "{env}");
    assert_eq!(env["seq"], json!(3), "{env}");
    assert_eq!(env["event"], json!("created"), "{env}");
    assert_eq!(env["data"], json!("made"), "{env}");
    crate::kit::assert_time(&env["time"]);
    assert_eq!(frames[1].id(), "4", "{frames:?}");
    assert_eq!(
        frames[1].event.as_deref(),
        Some("message"),
        "no event: `message`: {frames:?}"
    );
    assert_eq!(frames[1].json()["data"], json!("plain"));
}

/// `since=now` is the default: a stream gets only what comes next. (Replay of history and
/// its seam with live messages are the matrix's `catch_up`.)
#[tokio::test]
async fn sse_default_since_is_now() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 4, "m").await;
    let mut now = Sse::open(&server, "/v1/topics/t/sse?since=now", &[]).await;
    let mut default = Sse::open(&server, "/v1/topics/t/sse", &[]).await;
    server.publish("t", "m5").await;
    assert_eq!(single_topic_seqs(&now.events(1).await), vec![5]);
    assert_eq!(single_topic_seqs(&default.events(1).await), vec![5]);
}

#[tokio::test]
async fn sse_raw_sends_the_payload_as_data_lines() {
    let server = Server::start(&[]).await;
    server
        .publish_with("t", "hello", &[("Plexus-Event", "greet")])
        .await;
    server.publish("t", "line one\nline two").await;
    let mut sse = Sse::open(&server, "/v1/topics/t/sse?since=all&raw=1", &[]).await;
    let frames = sse.events(2).await;
    assert_eq!(frames[0].id(), "1", "{frames:?}");
    assert_eq!(frames[0].event.as_deref(), Some("greet"), "{frames:?}");
    assert_eq!(frames[0].data.as_deref(), Some("hello"), "{frames:?}");
    assert_eq!(frames[1].id(), "2", "{frames:?}");
    assert_eq!(frames[1].event.as_deref(), Some("message"), "{frames:?}");
    assert_eq!(
        frames[1].data.as_deref(),
        Some("line one\nline two"),
        "a multi-line payload is several data lines: {frames:?}"
    );
}

#[tokio::test]
async fn sse_sends_keepalive_comments_when_idle() {
    let server = Server::start(&["--keepalive", "1s"]).await;
    server.publish("t", "m1").await;
    let mut sse = Sse::open(&server, "/v1/topics/t/sse", &[]).await;
    for _ in 0..2 {
        let frame = sse.next_frame().await.expect("the idle stream stays open");
        assert_eq!(
            frame.comments,
            vec!["keepalive".to_string()],
            "an idle stream sends `: keepalive`: {frame:?}"
        );
        assert!(frame.id.is_none() && frame.data.is_none(), "{frame:?}");
    }
    // The stream still delivers after keepalives.
    server.publish("t", "m2").await;
    let frames = sse.events(1).await;
    assert_eq!(single_topic_seqs(&frames), vec![2]);
}

#[tokio::test]
async fn sse_multi_topic_ids_name_every_topic() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "a").await;
    server.publish("b", "b1").await;
    // `c` does not exist yet; it must still be named in every id.
    let mut sse = Sse::open(&server, "/v1/topics/a,b,c/sse", &[]).await;
    server.publish("a", "a3").await;
    server.publish("b", "b2").await;
    server.publish("c", "c1").await;
    let frames = sse.events(3).await;
    assert_eq!(
        topic_seqs(&frames),
        vec![("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]
    );
    let ids: Vec<_> = frames.iter().map(|f| parse_cursor(f.id())).collect();
    let want = |a: u64, b: u64, c: u64| {
        [("a", a), ("b", b), ("c", c)]
            .into_iter()
            .map(|(t, s)| (t.to_string(), s))
            .collect()
    };
    assert_eq!(ids[0], want(3, 1, 0), "{frames:?}");
    assert_eq!(ids[1], want(3, 2, 0), "{frames:?}");
    assert_eq!(ids[2], want(3, 2, 1), "{frames:?}");
}

#[tokio::test]
async fn sse_starts_with_an_expired_gap_below_retention() {
    let server = Server::start(&["--retention-messages", "5"]).await;
    server.publish_n("t", 20, "m").await;
    eventually("t to hold at most 5 messages", || async {
        let info = server.topic_info("t").await;
        (info["messages"].as_u64().is_some_and(|n| n <= 5)).then_some(())
    })
    .await;
    for raw in ["", "&raw=1"] {
        let path = format!("/v1/topics/t/sse?since=0{raw}");
        let mut sse = Sse::open(&server, &path, &[]).await;
        let gap = sse.next_event().await.expect("a gap frame");
        assert!(gap.is_gap(), "{path}: the first frame is a gap: {gap:?}");
        let body = gap.json();
        assert_eq!(body["topic"], json!("t"), "{path}: {gap:?}");
        assert_eq!(body["from"], json!(1), "{path}: {gap:?}");
        assert_eq!(body["reason"], json!("expired"), "{path}: {gap:?}");
        let to = body["to"].as_u64().expect("gap `to` is a seq");
        assert!((15..20).contains(&to), "{path}: {gap:?}");
        assert_eq!(
            gap.id(),
            to.to_string(),
            "{path}: a gap's id is the cursor after it"
        );
        let n = (20 - to) as usize;
        let frames = sse.events(n).await;
        let ids: Vec<u64> = frames
            .iter()
            .map(|f| f.id().parse().expect("numeric id"))
            .collect();
        assert_eq!(ids, (to + 1..=20).collect::<Vec<_>>(), "{path}");
        if raw.is_empty() {
            assert_eq!(single_topic_seqs(&frames), ids);
        } else {
            let data: Vec<_> = frames.iter().map(|f| f.data.clone()).collect();
            let want: Vec<_> = ids.iter().map(|i| Some(format!("m{i}"))).collect();
            assert_eq!(data, want, "{path}: raw payloads");
        }
        // Resuming from the gap's id does not report the gap again.
        let mut again =
            Sse::open(&server, "/v1/topics/t/sse", &[("Last-Event-ID", gap.id())]).await;
        let first = again.next_event().await.expect("a frame");
        assert!(!first.is_gap(), "{path}: no second gap: {first:?}");
        assert_eq!(first.id(), (to + 1).to_string());
    }

    // since=all never reports a gap.
    let mut sse = Sse::open(&server, "/v1/topics/t/sse?since=all", &[]).await;
    let first = sse.next_event().await.expect("a frame");
    assert!(!first.is_gap(), "since=all: {first:?}");
}

#[tokio::test]
async fn sse_bad_parameters_are_400_before_the_stream() {
    let server = Server::start(&[]).await;
    server.publish("t", "m1").await;
    for (path, headers) in [
        ("/v1/topics/t/sse?since=yesterday-ish", vec![]),
        ("/v1/topics/t/sse?since=-1", vec![]),
        ("/v1/topics/a,b/sse?since=3", vec![]),
        ("/v1/topics/t/sse?slow=fast", vec![]),
        ("/v1/topics/t/sse?slow=", vec![]),
        ("/v1/topics/t/sse?raw=2", vec![]),
        ("/v1/topics/t/sse", vec![("Last-Event-ID", "not-a-cursor")]),
        ("/v1/topics/bad..topic/sse", vec![]),
    ] {
        let resp = server.get(path, &headers).await;
        expect_problem(resp, 400, &format!("GET {path} {headers:?}")).await;
    }
}

/// `Last-Event-ID` wins over `since`. (Exact resume, single- and multi-topic, over every
/// transport and engine: the matrix's `resume` and `multi_topic`.)
#[tokio::test]
async fn sse_last_event_id_wins_over_since() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 5, "m").await;
    let mut sse = Sse::open(
        &server,
        "/v1/topics/t/sse?since=all",
        &[("Last-Event-ID", "3")],
    )
    .await;
    assert_eq!(single_topic_seqs(&sse.events(2).await), vec![4, 5]);
}

/// A stream's head: the three headers every stream has, and a request id only when the client
/// sent one (a made-up one would double the header map an idle stream keeps; docs/API.md).
/// Every other response carries an id, made when the client sent none.
#[tokio::test]
async fn a_stream_echoes_only_a_request_id_its_client_sent() {
    let server = Server::start(&[]).await;
    for path in ["/v1/topics/t/sse", "/v1/topics/t/stream"] {
        let resp = server.get(path, &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        let headers = resp.headers();
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-accel-buffering"], "no", "{path}");
        assert!(headers.get("x-request-id").is_none(), "{path}: {headers:?}");
        let resp = server.get(path, &[("x-request-id", "trace-7")]).await;
        assert_eq!(resp.headers()["x-request-id"], "trace-7", "{path}");
    }
    let resp = server.get("/v1/topics", &[]).await;
    assert_eq!(resp.status(), 200);
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!made.is_empty(), "a made id on a plain response");
}
