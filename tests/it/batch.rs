//! `POST /v1/publish`: JSON array and NDJSON batches, all or nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::kit::{Server, assert_time, expect_problem, into_json, messages, payload};

#[tokio::test]
async fn json_array_batch_answers_results_in_order() {
    let server = Server::start(&[]).await;
    server.publish("a", "existing").await;
    let results = server
        .batch(&[
            json!({"topic": "a", "data": "one"}),
            json!({"topic": "b", "data": "two", "event": "greeting"}),
            json!({"topic": "a", "data_base64": "aGVsbG8="}),
            json!({"topic": "b", "data_base64": "//79"}),
        ])
        .await;
    let got: Vec<(Value, Value)> = results
        .iter()
        .map(|r| (r["topic"].clone(), r["seq"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("a"), json!(2)),
            (json!("b"), json!(1)),
            (json!("a"), json!(3)),
            (json!("b"), json!(2)),
        ],
        "one result per item, in order: {results:?}"
    );
    for r in &results {
        assert_time(&r["time"]);
    }

    let a = messages(&server.read("a", "since=all").await);
    assert_eq!(a[1]["data"], json!("one"));
    assert_eq!(
        a[2]["data"],
        json!("hello"),
        "data_base64 that decodes to UTF-8 reads as data"
    );
    let b = messages(&server.read("b", "since=all").await);
    assert_eq!(b[0]["data"], json!("two"));
    assert_eq!(b[0]["event"], json!("greeting"), "the item's event is kept");
    assert_eq!(payload(&b[1]), vec![0xff, 0xfe, 0xfd]);
    assert_eq!(b[1]["data_base64"], json!("//79"));
}

#[tokio::test]
async fn ndjson_batch() {
    let server = Server::start(&[]).await;
    let body = [
        json!({"topic": "logs", "data": "line 1"}),
        json!({"topic": "logs", "data": "line 2", "event": "warn"}),
        json!({"topic": "metrics", "data": "cpu=3"}),
    ]
    .iter()
    .map(|v| v.to_string() + "\n")
    .collect::<String>();
    let (status, _, value) = into_json(server.batch_raw(body, "application/x-ndjson").await).await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let results = value["results"].as_array().expect("results array").clone();
    assert_eq!(results.len(), 3, "{value}");
    assert_eq!(results[1]["seq"], json!(2));
    assert_eq!(results[2]["topic"], json!("metrics"));
    assert_eq!(results[2]["seq"], json!(1));

    let logs = messages(&server.read("logs", "since=all").await);
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[1]["data"], json!("line 2"));
    assert_eq!(logs[1]["event"], json!("warn"));
}

#[tokio::test]
async fn batch_with_one_bad_item_stores_nothing() {
    let server = Server::start(&[]).await;
    server.publish("a", "existing").await;
    server.publish("b", "existing").await;
    let good = json!({"topic": "a", "data": "fine"});
    let cases: Vec<(&str, Value, u16)> = vec![
        (
            "bad topic name",
            json!({"topic": "no spaces", "data": "x"}),
            400,
        ),
        ("empty topic name", json!({"topic": "", "data": "x"}), 400),
        (
            "both data and data_base64",
            json!({"topic": "b", "data": "x", "data_base64": "eA=="}),
            400,
        ),
        ("neither data nor data_base64", json!({"topic": "b"}), 400),
        (
            "invalid base64",
            json!({"topic": "b", "data_base64": "not base64!"}),
            400,
        ),
        (
            "bad event name",
            json!({"topic": "b", "data": "x", "event": "no spaces"}),
            400,
        ),
        ("reserved topic", json!({"topic": "_x", "data": "x"}), 403),
        (
            "reserved job topic",
            json!({"topic": "_jobs.1", "data": "x"}),
            403,
        ),
    ];
    for (what, bad, status) in cases {
        let before = server.snapshot(&["a", "b"]).await;
        let body = json!([good, bad, {"topic": "b", "data": "fine too"}]).to_string();
        let resp = server.batch_raw(body, "application/json").await;
        expect_problem(resp, status, &format!("batch with {what}")).await;
        assert_eq!(
            server.snapshot(&["a", "b"]).await,
            before,
            "a batch with {what} must store nothing"
        );
    }
    assert_eq!(
        server.publish("a", "next").await["seq"],
        json!(2),
        "no seq was used up"
    );
}

#[tokio::test]
async fn malformed_batch_bodies_are_400() {
    let server = Server::start(&[]).await;
    server.publish("a", "existing").await;
    // A lone JSON object is not listed: as NDJSON it is a one-item batch, as application/json
    // a 400 (regression.rs, `batch_with_a_json_content_type_must_be_an_array`).
    let cases = [
        ("not JSON", "this is not json", "application/json"),
        (
            "a truncated JSON array",
            r#"[{"topic":"a","data":"x"}"#,
            "application/json",
        ),
        (
            "an array inside the array",
            r#"[[{"topic":"a","data":"x"}]]"#,
            "application/json",
        ),
        (
            "an item that is a number",
            r#"[{"topic":"a","data":"x"},7]"#,
            "application/json",
        ),
        ("an array of strings", r#"["a","b"]"#, "application/json"),
        (
            "truncated NDJSON",
            "{\"topic\":\"a\",\"data\":\"x\"}\n{\"topic\":",
            "application/x-ndjson",
        ),
    ];
    for (what, body, ct) in cases {
        let before = server.snapshot(&["a"]).await;
        let resp = server.batch_raw(body.to_string(), ct).await;
        expect_problem(resp, 400, &format!("batch body {what}")).await;
        assert_eq!(
            server.snapshot(&["a"]).await,
            before,
            "{what} stores nothing"
        );
    }
}

#[tokio::test]
async fn empty_batch_is_400() {
    let server = Server::start(&[]).await;
    let resp = server.batch_raw("[]".into(), "application/json").await;
    expect_problem(resp, 400, "empty JSON batch").await;
    let resp = server
        .batch_raw(String::new(), "application/x-ndjson")
        .await;
    expect_problem(resp, 400, "empty NDJSON batch").await;
    assert!(server.topics().await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn batch_of_1000_is_accepted_and_1001_is_400() {
    let server = Server::start(&[]).await;
    let items = |n: usize| -> Vec<Value> {
        (1..=n)
            .map(|i| json!({"topic": "bulk", "data": i.to_string()}))
            .collect()
    };
    let body = Value::Array(items(1001)).to_string();
    let resp = server.batch_raw(body, "application/json").await;
    expect_problem(resp, 400, "batch of 1001 items").await;
    assert!(
        server.topics().await.is_empty(),
        "the 1001-item batch stored nothing"
    );

    let results = server.batch(&items(1000)).await;
    assert_eq!(results.len(), 1000);
    assert_eq!(results[999]["seq"], json!(1000));
}

#[tokio::test]
async fn batch_item_over_max_message_bytes_is_413() {
    let server = Server::start(&["--max-message-bytes", "100"]).await;
    server.publish("a", "existing").await;
    let before = server.snapshot(&["a"]).await;
    let body = json!([
        {"topic": "a", "data": "small"},
        {"topic": "a", "data": "x".repeat(101)},
    ])
    .to_string();
    let resp = server.batch_raw(body, "application/json").await;
    expect_problem(
        resp,
        413,
        "batch item of 101 bytes with --max-message-bytes 100",
    )
    .await;
    assert_eq!(
        server.snapshot(&["a"]).await,
        before,
        "the oversized batch stored nothing"
    );

    // The limit is on the payload, so base64 of 100 raw bytes is fine.
    let results = server
        .batch(&[
            json!({"topic": "a", "data": "y".repeat(100)}),
            json!({"topic": "a", "data_base64": crate::kit::b64_encode(&[0xffu8; 100])}),
        ])
        .await;
    assert_eq!(results.len(), 2, "items of exactly 100 bytes are accepted");
}

#[tokio::test]
async fn batch_shares_the_idempotency_key_space_with_the_header() {
    let server = Server::start(&[]).await;
    let resp = server
        .publish_with("orders", "p", &[("Idempotency-Key", "k-7")])
        .await;
    let (status, _, first) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED);

    let results = server
        .batch(&[
            json!({"topic": "orders", "data": "p", "idempotency_key": "k-7"}),
            json!({"topic": "orders", "data": "q", "idempotency_key": "k-8"}),
        ])
        .await;
    assert_eq!(
        results[0]["seq"], first["seq"],
        "a batch item replays the header's key"
    );
    assert_eq!(results[1]["seq"], json!(2));
    let msgs = messages(&server.read("orders", "since=all").await);
    assert_eq!(msgs.len(), 2, "the replayed item stored nothing: {msgs:?}");

    let resp = server
        .publish_with("orders", "q", &[("Idempotency-Key", "k-8")])
        .await;
    let (status, headers, replay) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        replay["seq"],
        json!(2),
        "the header replays a batch item's key"
    );
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );

    let before = server.snapshot(&["orders"]).await;
    let body = json!([{"topic": "orders", "data": "other", "idempotency_key": "k-7"}]).to_string();
    let resp = server.batch_raw(body, "application/json").await;
    expect_problem(resp, 409, "batch item reusing a key with another body").await;
    assert_eq!(server.snapshot(&["orders"]).await, before);
}

#[tokio::test]
async fn batch_marks_only_the_items_answered_from_their_idempotency_key() {
    let server = Server::start(&[]).await;
    let first = server
        .batch(&[json!({"topic": "orders", "data": "p", "idempotency_key": "k-1"})])
        .await;
    assert_eq!(
        first[0].as_object().map(|o| o.len()),
        Some(3),
        "a first store is not marked: {first:?}"
    );

    let body = json!([
        {"topic": "orders", "data": "p", "idempotency_key": "k-1"},
        {"topic": "orders", "data": "q", "idempotency_key": "k-2"},
        {"topic": "orders", "data": "r"},
    ])
    .to_string();
    let resp = server.batch_raw(body, "application/json").await;
    let (status, _, v) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let results = v["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3, "{v}");
    assert_eq!(results[0]["replayed"], json!(true), "{v}");
    assert_eq!(
        results[0]["seq"], first[0]["seq"],
        "the replay answers the first seq"
    );
    assert_eq!(results[0]["time"], first[0]["time"], "and the first time");
    for r in &results[1..] {
        assert!(
            r.get("replayed").is_none(),
            "a stored item has no mark: {v}"
        );
    }
    let msgs = messages(&server.read("orders", "since=all").await);
    assert_eq!(msgs.len(), 3, "the replayed item stored nothing: {msgs:?}");

    // The header's key space is shared: a batch item replaying a single publish is marked too.
    let resp = server
        .publish_with("audit", "x", &[("Idempotency-Key", "k-3")])
        .await;
    let (status, headers, single) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(
        single.get("replayed").is_none(),
        "a single publish's body is unchanged"
    );
    let results = server
        .batch(&[json!({"topic": "audit", "data": "x", "idempotency_key": "k-3"})])
        .await;
    assert_eq!(
        (results[0]["seq"].clone(), results[0]["replayed"].clone()),
        (single["seq"].clone(), json!(true))
    );
}
