//! `POST /v1/topics/{topic}/messages`: seqs, envelopes, payload encodings, idempotency.

use reqwest::StatusCode;
use serde_json::json;

use crate::kit::{Server, assert_time, b64_encode, expect_problem, into_json, messages, payload};

#[tokio::test]
async fn publish_answers_201_with_seq_1_2_3_on_a_fresh_topic() {
    let server = Server::start(&[]).await;
    for expected in 1..=3u64 {
        let resp = server
            .publish_with("orders", format!("m{expected}"), &[])
            .await;
        let (status, _, result) = into_json(resp).await;
        assert_eq!(status, StatusCode::CREATED, "publish #{expected}: {result}");
        assert_eq!(
            result["topic"],
            json!("orders"),
            "result names the topic: {result}"
        );
        assert_eq!(
            result["seq"],
            json!(expected),
            "seqs count 1, 2, 3: {result}"
        );
        assert_time(&result["time"]);
    }
}

#[tokio::test]
async fn seqs_are_per_topic() {
    let server = Server::start(&[]).await;
    assert_eq!(server.publish("a", "x").await["seq"], json!(1));
    assert_eq!(
        server.publish("b", "x").await["seq"],
        json!(1),
        "b has its own counter"
    );
    assert_eq!(server.publish("a", "x").await["seq"], json!(2));
}

#[tokio::test]
async fn dotted_and_200_byte_topic_names_are_accepted() {
    let server = Server::start(&[]).await;
    let long = format!("{}.{}", "a".repeat(100), "B_-9".repeat(24) + "zzz");
    assert_eq!(long.len(), 200);
    for topic in ["chat.room-1", "user.42.alerts", "A_b-C", long.as_str()] {
        let result = server.publish(topic, "hi").await;
        assert_eq!(result["topic"], json!(topic));
        assert_eq!(result["seq"], json!(1), "first message on {topic}");
    }
}

#[tokio::test]
async fn envelope_matches_the_publish_result() {
    let server = Server::start(&[]).await;
    let result = server.publish("orders", "hello world").await;
    let page = server.read("orders", "since=all").await;
    let msgs = messages(&page);
    assert_eq!(msgs.len(), 1, "one message stored: {page}");
    let env = &msgs[0];
    assert_eq!(env["topic"], json!("orders"));
    assert_eq!(env["seq"], result["seq"]);
    assert_eq!(
        env["time"], result["time"],
        "the envelope's time is the one acknowledged"
    );
    assert_time(&env["time"]);
    assert_eq!(env["data"], json!("hello world"));
    assert!(
        env.get("data_base64").is_none(),
        "UTF-8 payload has no data_base64: {env}"
    );
    assert!(
        env.get("event").is_none(),
        "no Plexus-Event header, so no `event`: {env}"
    );
}

#[tokio::test]
async fn plexus_event_header_becomes_event() {
    let server = Server::start(&[]).await;
    let resp = server
        .publish_with("orders", "{}", &[("Plexus-Event", "order.created")])
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let msgs = messages(&server.read("orders", "since=all").await);
    assert_eq!(
        msgs[0]["event"],
        json!("order.created"),
        "envelope: {}",
        msgs[0]
    );
}

#[tokio::test]
async fn json_payload_stays_a_string() {
    let server = Server::start(&[]).await;
    let body = r#"{"id":7,"items":["a","b"]}"#;
    let resp = server
        .publish_with("orders", body, &[("content-type", "application/json")])
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let msgs = messages(&server.read("orders", "since=all").await);
    assert_eq!(
        msgs[0]["data"],
        json!(body),
        "payload is the body verbatim, as a string"
    );
}

#[tokio::test]
async fn empty_body_is_an_empty_string() {
    let server = Server::start(&[]).await;
    server.publish("pings", "").await;
    let msgs = messages(&server.read("pings", "since=all").await);
    assert_eq!(msgs[0]["data"], json!(""), "envelope: {}", msgs[0]);
}

#[tokio::test]
async fn non_utf8_body_comes_back_as_padded_base64() {
    let server = Server::start(&[]).await;
    let bodies: [&[u8]; 3] = [b"\xff", b"\x00\xff\xfe\x80", b"\xc3\x28\x01"];
    for body in bodies {
        server.publish("bin", body.to_vec()).await;
    }
    let msgs = messages(&server.read("bin", "since=all").await);
    assert_eq!(msgs.len(), 3);
    for (env, body) in msgs.iter().zip(bodies) {
        assert!(
            env.get("data").is_none(),
            "non-UTF-8 payload has no `data`: {env}"
        );
        assert_eq!(
            env["data_base64"],
            json!(b64_encode(body)),
            "standard base64 with padding of {body:?}"
        );
        assert_eq!(payload(env), body);
    }
}

#[tokio::test]
async fn multibyte_utf8_is_data() {
    let server = Server::start(&[]).await;
    server.publish("intl", "grüße, 世界 🎉").await;
    let msgs = messages(&server.read("intl", "since=all").await);
    assert_eq!(msgs[0]["data"], json!("grüße, 世界 🎉"));
}

#[tokio::test]
async fn idempotency_key_replays_the_first_result() {
    let server = Server::start(&[]).await;
    server.publish("orders", "before").await;
    let key = [("Idempotency-Key", "order-1001")];

    let (s1, h1, first) = into_json(server.publish_with("orders", "payload", &key).await).await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    assert!(
        h1.get("idempotent-replayed").is_none_or(|v| v != "true"),
        "a first publish is not a replay"
    );
    let (s2, h2, second) = into_json(server.publish_with("orders", "payload", &key).await).await;
    assert_eq!(s2, StatusCode::CREATED, "a replay answers 201: {second}");
    assert_eq!(
        h2.get("idempotent-replayed").map(|v| v.to_str().unwrap()),
        Some("true"),
        "replay carries Idempotent-Replayed: true"
    );
    assert_eq!(second, first, "a replay answers with the first result");
    assert_eq!(first["seq"], json!(2));

    let msgs = messages(&server.read("orders", "since=all").await);
    assert_eq!(msgs.len(), 2, "the replay stored nothing: {msgs:?}");
    assert_eq!(
        server.publish("orders", "after").await["seq"],
        json!(3),
        "no seq was used up"
    );
}

#[tokio::test]
async fn idempotency_key_with_another_body_is_409() {
    let server = Server::start(&[]).await;
    let key = [("Idempotency-Key", "k1")];
    let resp = server.publish_with("orders", "one", &key).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let before = server.snapshot(&["orders"]).await;

    let resp = server.publish_with("orders", "two", &key).await;
    expect_problem(resp, 409, "same Idempotency-Key, other body").await;
    assert_eq!(
        server.snapshot(&["orders"]).await,
        before,
        "a 409 stores nothing"
    );
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_topic() {
    let server = Server::start(&[]).await;
    let key = [("Idempotency-Key", "shared")];
    let (_, _, a) = into_json(server.publish_with("a", "x", &key).await).await;
    server.publish("b", "first").await;
    let (status, headers, b) = into_json(server.publish_with("b", "x", &key).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        headers
            .get("idempotent-replayed")
            .is_none_or(|v| v != "true")
    );
    assert_eq!(b["topic"], json!("b"));
    assert_eq!(
        b["seq"],
        json!(2),
        "a new message on b, not a replay of {a}"
    );
    assert_eq!(messages(&server.read("b", "since=all").await).len(), 2);
}

#[tokio::test]
async fn idempotency_key_survives_a_restart() {
    let mut server = Server::start_durable(&[]).await;
    let key = [("Idempotency-Key", "durable")];
    let (_, _, first) = into_json(server.publish_with("orders", "p", &key).await).await;
    server.restart().await;
    let (status, headers, second) = into_json(server.publish_with("orders", "p", &key).await).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "keys are durable"
    );
    assert_eq!(second["seq"], first["seq"]);
    assert_eq!(messages(&server.read("orders", "since=all").await).len(), 1);
}
