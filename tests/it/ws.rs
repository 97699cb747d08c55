//! The multiplexed WebSocket (docs/API.md, "WebSocket"): subscribe / unsubscribe / publish and
//! their `ok` answers, topics at connect, several topics on one socket, echo of own
//! publishes, error frames for bad input (the socket lives on), and the forms of `since` in
//! a `subscribe` (resume across a restart is the delivery matrix's, `matrix.rs`).
//!
//! "No more messages for a topic" is shown without waiting on a timer: after the event that
//! must have no effect, a message on another topic is published, and it must be the next
//! frame.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::kit::clients::Ws;
use crate::kit::{Server, b64_encode};

/// `(topic, seq)` of message frames, asserting each is one.
fn topic_seqs(frames: &[Value]) -> Vec<(String, u64)> {
    frames
        .iter()
        .map(|f| {
            assert_eq!(f["op"], json!("message"), "expected a message frame: {f}");
            (
                f["topic"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no topic in {f}"))
                    .to_string(),
                f["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {f}")),
            )
        })
        .collect()
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    topic_seqs(frames).into_iter().map(|(_, s)| s).collect()
}

fn ts(topic: &str, seq: u64) -> (String, u64) {
    (topic.to_string(), seq)
}

#[tokio::test]
async fn ws_subscribe_publish_unsubscribe_answer_ok_with_ids() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "old").await;
    let mut ws = Ws::connect(&server, "").await;
    let mut early = Vec::new();

    let ok = ws
        .ok(json!({"op":"subscribe","id":1,"topic":"a"}), &mut early)
        .await;
    assert_eq!(ok["id"], json!(1), "{ok}");
    assert_eq!(ok["topic"], json!("a"), "{ok}");
    assert_eq!(
        ok["next"],
        json!("2"),
        "default since=now starts after the head: {ok}"
    );

    let ok = ws
        .ok(
            json!({"op":"publish","id":2,"topic":"a","data":"hi","event":"greet"}),
            &mut early,
        )
        .await;
    assert_eq!(ok["id"], json!(2), "{ok}");
    assert_eq!(ok["topic"], json!("a"), "{ok}");
    assert_eq!(ok["seq"], json!(3), "{ok}");
    crate::kit::assert_time(&ok["time"]);

    // A socket subscribed to a topic receives its own publishes.
    let mut frames = early;
    if frames.is_empty() {
        frames = ws.events(1).await;
    }
    assert_eq!(frames.len(), 1, "{frames:?}");
    let m = &frames[0];
    assert_eq!(
        (m["op"].clone(), m["topic"].clone(), m["seq"].clone()),
        (json!("message"), json!("a"), json!(3)),
        "{m}"
    );
    assert_eq!(m["data"], json!("hi"), "{m}");
    assert_eq!(m["event"], json!("greet"), "{m}");
    assert_eq!(m["time"], ok["time"], "{m} vs {ok}");

    // Binary payloads go as data_base64 both ways.
    let mut others = Vec::new();
    let ok = ws
        .ok(
            json!({"op":"publish","id":"bin","topic":"a","data_base64":b64_encode(&[0xff, 0, 1])}),
            &mut others,
        )
        .await;
    assert_eq!(ok["id"], json!("bin"), "string ids are echoed: {ok}");
    let mut got = others;
    if got.is_empty() {
        got = ws.events(1).await;
    }
    assert_eq!(got[0]["data_base64"], json!("/wAB"), "{got:?}");

    let mut others = Vec::new();
    let ok = ws
        .ok(json!({"op":"unsubscribe","id":3,"topic":"a"}), &mut others)
        .await;
    assert_eq!(ok["id"], json!(3), "{ok}");
    assert_eq!(ok["topic"], json!("a"), "{ok}");
    assert!(others.is_empty(), "{others:?}");
}

#[tokio::test]
async fn ws_subscribe_at_connect_to_two_topics_since_all() {
    let server = Server::start(&[]).await;
    server.publish_n("a", 2, "a").await;
    server.publish("b", "b1").await;
    let mut ws = Ws::connect(&server, "?topic=a,b&since=all").await;
    let mut oks = Vec::new();
    let mut msgs = Vec::new();
    while oks.len() < 2 || msgs.len() < 3 {
        let f = ws.recv().await;
        match f["op"].as_str() {
            Some("ok") => oks.push(f),
            Some("message") => msgs.push(f),
            _ => panic!("unexpected {f} (oks {oks:?}, messages {msgs:?})"),
        }
    }
    let mut ok_topics: Vec<_> = oks
        .iter()
        .map(|o| o["topic"].as_str().expect("topic").to_string())
        .collect();
    ok_topics.sort();
    assert_eq!(ok_topics, vec!["a", "b"], "{oks:?}");
    for o in &oks {
        assert_eq!(
            o["next"],
            json!("0"),
            "since=all starts before the first: {o}"
        );
    }
    let got = topic_seqs(&msgs);
    let per = |t: &str| -> Vec<u64> {
        got.iter()
            .filter(|(x, _)| x == t)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(per("a"), vec![1, 2], "{got:?}");
    assert_eq!(per("b"), vec![1], "{got:?}");

    // Both topics keep flowing live on the one socket.
    server.publish("b", "b2").await;
    server.publish("a", "a3").await;
    assert_eq!(
        topic_seqs(&ws.events(2).await),
        vec![ts("b", 2), ts("a", 3)]
    );
}

#[tokio::test]
async fn ws_after_unsubscribe_no_more_messages_for_that_topic() {
    let server = Server::start(&[]).await;
    let mut ws = Ws::connect(&server, "").await;
    let mut others = Vec::new();
    ws.ok(json!({"op":"subscribe","id":1,"topic":"a"}), &mut others)
        .await;
    ws.ok(json!({"op":"subscribe","id":2,"topic":"b"}), &mut others)
        .await;
    server.publish("a", "a1").await;
    server.publish("b", "b1").await;
    assert_eq!(
        topic_seqs(&ws.events(2).await),
        vec![ts("a", 1), ts("b", 1)]
    );

    ws.ok(json!({"op":"unsubscribe","id":3,"topic":"a"}), &mut others)
        .await;
    assert!(others.is_empty(), "{others:?}");
    server.publish("a", "a2").await;
    // Its own publish to an unsubscribed topic is not echoed either.
    ws.ok(
        json!({"op":"publish","id":4,"topic":"a","data":"a3"}),
        &mut others,
    )
    .await;
    server.publish("b", "b2").await;
    let mut got = others;
    got.extend(ws.events(1).await);
    assert_eq!(
        topic_seqs(&got),
        vec![ts("b", 2)],
        "only the still-subscribed topic"
    );

    // Subscribing again works, from a cursor.
    let mut others = Vec::new();
    let ok = ws
        .ok(
            json!({"op":"subscribe","id":5,"topic":"a","since":1}),
            &mut others,
        )
        .await;
    assert_eq!(ok["next"], json!("1"), "{ok}");
    others.extend(ws.events(2 - others.len()).await);
    assert_eq!(topic_seqs(&others), vec![ts("a", 2), ts("a", 3)]);
}

/// Sends `frame` and expects an error frame with `status` (and `id` when the frame had one).
async fn expect_error(ws: &mut Ws, frame: WsMessage, id: Option<Value>, status: u16, what: &str) {
    ws.send_raw(frame).await;
    let got = ws.recv().await;
    assert_eq!(got["op"], json!("error"), "{what}: {got}");
    assert_eq!(got["status"], json!(status), "{what}: {got}");
    assert!(
        got["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: a detail: {got}"
    );
    if let Some(id) = id {
        assert_eq!(
            got["id"], id,
            "{what}: the error names the frame's id: {got}"
        );
    }
}

#[tokio::test]
async fn ws_bad_frames_get_error_frames_and_the_socket_lives_on() {
    let server = Server::start(&["--max-message-bytes", "1000"]).await;
    let mut ws = Ws::connect(&server, "").await;
    let text = |v: Value| WsMessage::text(v.to_string());
    let cases: Vec<(&str, WsMessage, Option<Value>, u16)> = vec![
        ("invalid JSON", WsMessage::text("{not json"), None, 400),
        ("a JSON array", WsMessage::text("[1,2]"), None, 400),
        (
            "unknown op",
            text(json!({"op":"dance","id":1,"topic":"a"})),
            Some(json!(1)),
            400,
        ),
        (
            "bad topic",
            text(json!({"op":"subscribe","id":2,"topic":"no spaces"})),
            Some(json!(2)),
            400,
        ),
        (
            "missing topic",
            text(json!({"op":"subscribe","id":3})),
            Some(json!(3)),
            400,
        ),
        (
            "bad since",
            text(json!({"op":"subscribe","id":4,"topic":"a","since":"later"})),
            Some(json!(4)),
            400,
        ),
        (
            "bad slow",
            text(json!({"op":"subscribe","id":5,"topic":"a","slow":"maybe"})),
            Some(json!(5)),
            400,
        ),
        (
            "oversize payload",
            text(json!({"op":"publish","id":6,"topic":"a","data":"x".repeat(1001)})),
            Some(json!(6)),
            413,
        ),
        (
            "oversize frame",
            text(json!({"op":"publish","id":7,"topic":"a","data":"y".repeat(8000)})),
            None,
            413,
        ),
        (
            "binary frame",
            WsMessage::binary(br#"{"op":"subscribe","id":8,"topic":"a"}"#.to_vec()),
            None,
            400,
        ),
        (
            "reserved topic publish",
            text(json!({"op":"publish","id":9,"topic":"_x","data":"no"})),
            Some(json!(9)),
            403,
        ),
        (
            "publish without data",
            text(json!({"op":"publish","id":10,"topic":"a"})),
            Some(json!(10)),
            400,
        ),
    ];
    for (what, frame, id, status) in cases {
        expect_error(&mut ws, frame, id, status, what).await;
    }
    // Nothing was stored by the bad frames.
    let (status, _, _) = server.get_json("/v1/topics/a").await;
    assert_eq!(status.as_u16(), 404, "no bad frame created topic a");

    // The same socket still subscribes, publishes and receives.
    let mut others = Vec::new();
    ws.ok(
        json!({"op":"subscribe","id":20,"topic":"a","since":"all"}),
        &mut others,
    )
    .await;
    let ok = ws
        .ok(
            json!({"op":"publish","id":21,"topic":"a","data":"x".repeat(1000)}),
            &mut others,
        )
        .await;
    assert_eq!(ok["seq"], json!(1), "a payload at the limit is fine: {ok}");
    server.publish("a", "from http").await;
    others.extend(ws.events(2 - others.len()).await);
    assert_eq!(seqs(&others), vec![1, 2]);
    assert_eq!(others[1]["data"], json!("from http"));
}

#[tokio::test]
async fn ws_resume_with_since_is_exact() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 5, "m").await;
    let mut ws = Ws::connect(&server, "").await;
    let mut got = Vec::new();
    ws.ok(
        json!({"op":"subscribe","id":1,"topic":"t","since":"all"}),
        &mut got,
    )
    .await;
    while got.len() < 3 {
        got.extend(ws.events(1).await);
    }
    got.truncate(3);
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    drop(ws);

    server.publish_n("t", 4, "n").await;
    for since in [json!("3"), json!(3)] {
        let mut ws = Ws::connect(&server, "").await;
        let mut rest = Vec::new();
        let ok = ws
            .ok(
                json!({"op":"subscribe","id":1,"topic":"t","since":since}),
                &mut rest,
            )
            .await;
        assert_eq!(ok["next"], json!("3"), "{ok}");
        rest.extend(ws.events(6 - rest.len()).await);
        assert_eq!(seqs(&rest), vec![4, 5, 6, 7, 8, 9], "since {since}");
    }
    // Exactly the rest: a new message is the very next frame.
    let mut ws = Ws::connect(&server, "?topic=t&since=3").await;
    let first = ws.recv().await;
    assert_eq!(first["op"], json!("ok"), "{first}");
    assert_eq!(seqs(&ws.events(6).await), vec![4, 5, 6, 7, 8, 9]);
    server.publish("t", "sentinel").await;
    assert_eq!(seqs(&ws.events(1).await), vec![10]);
}

/// Message frames are written as the hub encoded them, once for every socket, beside the
/// answers tungstenite writes: a payload of each length a frame's head can state (7, 16 and
/// 64 bits) reaches two sockets whole and in order, with the answers to their own frames
/// between them.
#[tokio::test]
async fn ws_messages_of_every_frame_length_arrive_whole_beside_answers() {
    let server = Server::start(&[]).await;
    let bodies = ["x".repeat(10), "y".repeat(300), "z".repeat(100_000)];
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut ws = Ws::connect(&server, "").await;
        let mut early = Vec::new();
        ws.ok(json!({"op":"subscribe","id":1,"topic":"big"}), &mut early)
            .await;
        assert!(early.is_empty(), "{early:?}");
        sockets.push(ws);
    }
    // The first socket's messages, read while it waits for its answers.
    let mut first = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        server.publish("big", body.clone()).await;
        // An answer of tungstenite's on the same socket, between message frames.
        let ok = sockets[0]
            .ok(
                json!({"op":"subscribe","id":10 + i,"topic":format!("other{i}")}),
                &mut first,
            )
            .await;
        assert_eq!(ok["id"], json!(10 + i), "{ok}");
    }
    let missing = bodies.len() - first.len();
    first.extend(sockets[0].events(missing).await);
    let second = sockets[1].events(bodies.len()).await;
    for (n, got) in [first, second].iter().enumerate() {
        assert_eq!(seqs(got), [1, 2, 3], "socket {n}");
        for (frame, body) in got.iter().zip(&bodies) {
            assert_eq!(frame["data"].as_str(), Some(body.as_str()), "socket {n}");
        }
    }
}
