//! Durable consumers (docs/API.md §10), each scenario on sqlite and on redis: the hub keeps the
//! position across reads and restarts, explicit acks with leases, redelivery, dead letters,
//! flow control, lag figures equal in the API and `/metrics`, retention gaps, seek, two nodes
//! on one Redis, and bad input that changes nothing.

use std::collections::BTreeSet;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::kit::clients::{Ndjson, Sse, Ws};
use crate::kit::redis::RedisServer;
use crate::kit::{Engine, Server, expect_problem, gaps, into_json, messages, seqs};

async fn put(server: &Server, name: &str, body: Value) -> Response {
    server
        .client()
        .put(server.url(&format!("/v1/consumers/{name}")))
        .json(&body)
        .send()
        .await
        .expect("PUT consumer")
}

async fn create(server: &Server, name: &str, body: Value) -> Value {
    let (status, _, value) = into_json(put(server, name, body).await).await;
    assert_eq!(status, StatusCode::CREATED, "create {name}: {value}");
    value
}

async fn post(server: &Server, path: &str, body: Value) -> Response {
    server
        .client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("POST")
}

async fn settle(server: &Server, name: &str, action: &str, acks: Value) -> Response {
    post(
        server,
        &format!("/v1/consumers/{name}/{action}"),
        json!({ "acks": acks }),
    )
    .await
}

async fn ack_ok(server: &Server, name: &str, acks: Value) {
    let (status, _, value) = into_json(settle(server, name, "ack", acks.clone()).await).await;
    assert_eq!(status, StatusCode::OK, "ack {acks}: {value}");
}

async fn show(server: &Server, name: &str) -> Value {
    let (status, _, value) = server.get_json(&format!("/v1/consumers/{name}")).await;
    assert_eq!(status, StatusCode::OK, "GET consumer {name}: {value}");
    value
}

/// One topic's figures of a consumer.
async fn figures(server: &Server, name: &str, topic: &str) -> Value {
    show(server, name).await["topics_state"][topic].clone()
}

fn deliveries(page: &Value) -> Vec<u64> {
    messages(page)
        .iter()
        .map(|m| m["delivery"].as_u64().expect("a delivery count"))
        .collect()
}

/// A labelled gauge's value in a Prometheus text.
fn gauge(text: &str, name: &str, consumer: &str, topic: &str) -> Option<u64> {
    let key = format!("{name}{{consumer=\"{consumer}\",topic=\"{topic}\"}}");
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// `curl …/messages?consumer=c&limit=10` twice gives 1..10 then 11..20, and after a hub
/// restart (SIGKILL) the next read goes on with 21..25.
async fn restart(engine: Engine) {
    let mut server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 25, "m").await;
    let plain = server.read("t", "since=all&limit=1").await;
    assert!(
        messages(&plain)[0].get("delivery").is_none(),
        "no delivery without a consumer: {plain}"
    );
    let first = server.read("t", "consumer=c&limit=10").await;
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<_>>(), "{first}");
    assert_eq!(deliveries(&first), vec![1; 10]);
    let second = server.read("t", "consumer=c&limit=10").await;
    assert_eq!(seqs(&second), (11..=20).collect::<Vec<_>>(), "{second}");
    server.restart().await;
    let third = server.read("t", "consumer=c&limit=10").await;
    assert_eq!(seqs(&third), (21..=25).collect::<Vec<_>>(), "{third}");
    let info = show(&server, "c").await;
    assert_eq!(info["ack"], json!("auto"), "created implicitly: {info}");
    assert_eq!(info["topics_state"]["t"]["pending"], json!(0), "{info}");

    // Explicit leases survive a restart: the first reader's acks still name its leases, and
    // what it had not acked is not handed to anyone else before its lease runs out.
    create(
        &server,
        "x",
        json!({"topics": ["t"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    let leased = server.read("t", "consumer=x&limit=3").await;
    assert_eq!(seqs(&leased), vec![1, 2, 3]);
    server.restart().await;
    let f = figures(&server, "x", "t").await;
    assert_eq!(
        (f["ack_pending"].clone(), f["delivered"].clone()),
        (json!(3), json!(3)),
        "{f}"
    );
    ack_ok(
        &server,
        "x",
        json!([{"topic": "t", "seq": 1, "delivery": 1}, {"topic": "t", "seq": 2, "delivery": 1}]),
    )
    .await;
    let next = server.read("t", "consumer=x&limit=100").await;
    assert_eq!(
        seqs(&next),
        (4..=25).collect::<Vec<_>>(),
        "seq 3 is still leased: {next}"
    );
}

/// Create, the same again, other settings, show, list order, delete; and the reads that
/// conflict with a consumer.
async fn lifecycle(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("a", 3, "m").await;
    let body =
        json!({"topics": ["b", "a"], "ack": "explicit", "ack_wait": "10s", "max_deliver": 3});
    let created = create(&server, "c1", body.clone()).await;
    assert_eq!(created["topics"], json!(["a", "b"]), "{created}");
    assert_eq!(created["ack_wait"], json!("10s"));
    assert_eq!(created["max_ack_pending"], json!(1000), "the default");
    assert_eq!(created["topics_state"]["a"]["pending"], json!(3));
    let same =
        json!({"topics": ["a", "b"], "ack": "explicit", "ack_wait": "10s", "max_deliver": 3});
    let (status, _, _) = into_json(put(&server, "c1", same).await).await;
    assert_eq!(status, StatusCode::OK, "the same settings again");
    let other = json!({"topics": ["a", "b"], "ack": "auto"});
    let p = expect_problem(put(&server, "c1", other).await, 409, "other settings").await;
    assert_eq!(p["type"], json!("urn:plexus:problem:consumer-conflict"));

    // Reads must name exactly its topics, and never `since`.
    let p = expect_problem(
        server.get("/v1/topics/a/messages?consumer=c1", &[]).await,
        409,
        "other topics",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:consumer-conflict"));
    let p = expect_problem(
        server
            .get("/v1/topics/b,a/messages?consumer=c1&since=all", &[])
            .await,
        400,
        "since with a consumer",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:bad-consumer"));
    let page = server.read("b,a", "consumer=c1").await;
    assert_eq!(seqs(&page), vec![1, 2, 3], "in any order of topics: {page}");

    let (status, _, list) = server.get_json("/v1/consumers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["consumers"][0]["name"], json!("c1"), "{list}");

    let resp = server
        .client()
        .delete(server.url("/v1/consumers/c1"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = server.get_json("/v1/consumers/c1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An unacknowledged message comes back after `ack_wait` with `delivery: 2`; the late first
/// reader's ack is `409` and changes nothing; the current holder's ack settles it.
async fn redelivery(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "w",
        json!({"topics": ["jobs"], "ack": "explicit", "ack_wait": "300ms"}),
    )
    .await;
    server.publish("jobs", "x").await;
    let first = server.read("jobs", "consumer=w&limit=1").await;
    assert_eq!((seqs(&first), deliveries(&first)), (vec![1], vec![1]));
    // The long poll returns once the lease has run out.
    let again = server.read("jobs", "consumer=w&limit=1&wait=20").await;
    assert_eq!(
        (seqs(&again), deliveries(&again)),
        (vec![1], vec![2]),
        "{again}"
    );
    let p = expect_problem(
        settle(
            &server,
            "w",
            "ack",
            json!([{"topic": "jobs", "seq": 1, "delivery": 1}]),
        )
        .await,
        409,
        "the late reader's ack",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:stale-delivery"));
    let f = figures(&server, "w", "jobs").await;
    assert_eq!(
        (f["ack_pending"].clone(), f["redelivered"].clone()),
        (json!(1), json!(1))
    );
    ack_ok(
        &server,
        "w",
        json!([{"topic": "jobs", "seq": 1, "delivery": 2}]),
    )
    .await;
    let f = figures(&server, "w", "jobs").await;
    assert_eq!(
        (f["ack_pending"].clone(), f["ack_floor"].clone()),
        (json!(0), json!(1)),
        "{f}"
    );
    let empty = server.read("jobs", "consumer=w").await;
    assert!(messages(&empty).is_empty(), "acknowledged: {empty}");
}

/// With `max_deliver: 3`, a message nak'ed three times lands on `_dead.{name}` with its
/// delivery count, and is not delivered again.
async fn dead_letters(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "d",
        json!({"topics": ["in"], "ack": "explicit", "max_deliver": 3}),
    )
    .await;
    server.publish("in", "poison").await;
    for delivery in 1..=3u64 {
        let page = server.read("in", "consumer=d&limit=1&wait=20").await;
        assert_eq!(
            (seqs(&page), deliveries(&page)),
            (vec![1], vec![delivery]),
            "{page}"
        );
        let resp = settle(
            &server,
            "d",
            "nak",
            json!([{"topic": "in", "seq": 1, "delivery": delivery}]),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "nak {delivery}");
    }
    let dead = server.read("_dead.d", "since=all").await;
    let m = messages(&dead);
    assert_eq!(m.len(), 1, "{dead}");
    let letter: Value = serde_json::from_str(m[0]["data"].as_str().expect("JSON text"))
        .expect("a dead letter is JSON");
    assert_eq!(
        (
            &letter["topic"],
            &letter["seq"],
            &letter["delivery"],
            &letter["data"]
        ),
        (&json!("in"), &json!(1), &json!(3), &json!("poison")),
        "{letter}"
    );
    let after = server.read("in", "consumer=d").await;
    assert!(messages(&after).is_empty(), "not delivered again: {after}");
    let f = figures(&server, "d", "in").await;
    assert_eq!(
        (f["ack_pending"].clone(), f["ack_floor"].clone()),
        (json!(0), json!(1))
    );
}

/// `pending`, `ack_pending` and `ack_floor` in the API, and the gauges in `/metrics`, before
/// and after acks.
async fn lag_figures(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(&server, "lag", json!({"topics": ["t"], "ack": "explicit"})).await;
    server.publish_n("t", 10, "m").await;
    let check = |f: Value, pending: u64, ack_pending: u64, floor: u64| {
        assert_eq!(
            (
                f["pending"].clone(),
                f["ack_pending"].clone(),
                f["ack_floor"].clone()
            ),
            (json!(pending), json!(ack_pending), json!(floor)),
            "{f}"
        );
    };
    check(figures(&server, "lag", "t").await, 10, 0, 0);
    let page = server.read("t", "consumer=lag&limit=4").await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    let f = figures(&server, "lag", "t").await;
    check(f.clone(), 6, 4, 0);
    let text = server.metrics().await;
    assert_eq!(
        (
            gauge(&text, "plexus_consumer_pending", "lag", "t"),
            gauge(&text, "plexus_consumer_ack_pending", "lag", "t")
        ),
        (Some(6), Some(4)),
        "before acks: {text}"
    );
    ack_ok(
        &server,
        "lag",
        json!([{"topic": "t", "seq": 1}, {"topic": "t", "seq": 2}]),
    )
    .await;
    check(figures(&server, "lag", "t").await, 6, 2, 2);
    ack_ok(&server, "lag", json!([{"topic": "t", "seq": 4}])).await;
    let f = figures(&server, "lag", "t").await;
    check(f.clone(), 6, 1, 2);
    let text = server.metrics().await;
    assert_eq!(
        gauge(&text, "plexus_consumer_pending", "lag", "t"),
        f["pending"].as_u64(),
        "{text}"
    );
    assert_eq!(
        gauge(&text, "plexus_consumer_ack_pending", "lag", "t"),
        f["ack_pending"].as_u64(),
        "{text}"
    );
}

/// `max_ack_pending: 10` holds back an 11th delivery until an ack arrives; a long poll
/// waiting for it is answered by the ack.
async fn flow_control(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "fc",
        json!({"topics": ["t"], "ack": "explicit", "max_ack_pending": 10}),
    )
    .await;
    server.publish_n("t", 11, "m").await;
    let page = server.read("t", "consumer=fc&limit=100").await;
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<_>>());
    let held = server.read("t", "consumer=fc").await;
    assert!(messages(&held).is_empty(), "held back: {held}");
    let waiting = {
        let (client, url) = (
            server.client().clone(),
            server.url("/v1/topics/t/messages?consumer=fc&wait=20"),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .expect("long poll")
                .json::<Value>()
                .await
                .expect("JSON")
        })
    };
    ack_ok(&server, "fc", json!([{"topic": "t", "seq": 3}])).await;
    let got = waiting.await.expect("the long poll");
    assert_eq!(seqs(&got), vec![11], "{got}");
}

/// A consumer behind retention gets one `expired` gap, then the rest.
async fn retention(engine: Engine) {
    let server = Server::start_on(engine, &["--retention-messages", "5"]).await;
    create(&server, "r", json!({"topics": ["t"]})).await;
    server.publish_n("t", 20, "m").await;
    crate::kit::eventually("retention to run", || async {
        let info = server.topic_info("t").await;
        info["messages"]
            .as_u64()
            .is_some_and(|n| n <= 5)
            .then_some(())
    })
    .await;
    let page = server.read("t", "consumer=r&limit=100").await;
    let g = gaps(&page);
    assert_eq!(g.len(), 1, "{page}");
    assert_eq!(
        (g[0]["from"].clone(), g[0]["reason"].clone()),
        (json!(1), json!("expired"))
    );
    let to = g[0]["to"].as_u64().expect("a gap end");
    assert_eq!(seqs(&page), (to + 1..=20).collect::<Vec<_>>(), "{page}");
    let next = server.read("t", "consumer=r").await;
    assert!(
        messages(&next).is_empty() && gaps(&next).is_empty(),
        "{next}"
    );
}

/// After a seek to `since=5` the next read starts at 6.
async fn seek(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 10, "m").await;
    let all = server.read("t", "consumer=s&limit=100").await;
    assert_eq!(seqs(&all).len(), 10);
    let (status, _, info) =
        into_json(post(&server, "/v1/consumers/s/seek", json!({"since": "5"})).await).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["topics_state"]["t"]["delivered"], json!(5), "{info}");
    let page = server.read("t", "consumer=s&limit=100").await;
    assert_eq!(seqs(&page), (6..=10).collect::<Vec<_>>(), "{page}");
}

/// Small reads of an explicit consumer after a larger backlog: each gets the next messages in
/// order, then what was published since; a seek back hands them out again from there (a node
/// may keep messages read ahead of its readers: they follow the consumer's position).
async fn read_ahead(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "ra",
        json!({"topics": ["t"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    server.publish_n("t", 5, "m").await;
    let page = server.read("t", "consumer=ra&limit=2").await;
    assert_eq!(seqs(&page), [1, 2], "{page}");
    let page = server.read("t", "consumer=ra&limit=2").await;
    assert_eq!(seqs(&page), [3, 4], "{page}");
    server.publish_n("t", 3, "m").await;
    let page = server.read("t", "consumer=ra&limit=10").await;
    assert_eq!(seqs(&page), [5, 6, 7, 8], "{page}");
    let (status, _, info) =
        into_json(post(&server, "/v1/consumers/ra/seek", json!({"since": "1"})).await).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let page = server.read("t", "consumer=ra&limit=3").await;
    assert_eq!(seqs(&page), [2, 3, 4], "{page}");
    assert_eq!(deliveries(&page), [1, 1, 1], "{page}");
    server.publish_n("t", 1, "m").await;
    let page = server.read("t", "consumer=ra&limit=100").await;
    assert_eq!(seqs(&page), [5, 6, 7, 8, 9], "{page}");
    let f = figures(&server, "ra", "t").await;
    assert_eq!(f["ack_pending"], json!(8), "{f}");
}

/// An ack with `"read": N` settles, then answers the next page as a read would: one call per
/// batch. A bad `read` is refused and settles nothing; a stale ack reads nothing.
async fn ack_next(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "an",
        json!({"topics": ["t"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    server.publish_n("t", 7, "m").await;
    let page = server.read("t", "consumer=an&limit=3").await;
    assert_eq!(seqs(&page), [1, 2, 3], "{page}");
    let acks = |page: &Value| -> Value {
        messages(page)
            .iter()
            .map(|m| json!({"topic": "t", "seq": m["seq"], "delivery": m["delivery"]}))
            .collect()
    };

    for bad in [json!(0), json!(1001), json!("3"), json!(-1)] {
        let r = post(
            &server,
            "/v1/consumers/an/ack",
            json!({"acks": acks(&page), "read": bad}),
        )
        .await;
        let p = expect_problem(r, 400, "an ack with a bad read").await;
        assert_eq!(
            p["type"],
            json!("urn:plexus:problem:bad-consumer"),
            "read {bad}: {p}"
        );
        let f = figures(&server, "an", "t").await;
        assert_eq!(
            f["ack_pending"],
            json!(3),
            "read {bad} changed nothing: {f}"
        );
    }

    let (status, _, next) = into_json(
        post(
            &server,
            "/v1/consumers/an/ack",
            json!({"acks": acks(&page), "read": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["settled"], json!(3), "{next}");
    assert_eq!(seqs(&next), [4, 5, 6], "{next}");
    assert_eq!(deliveries(&next), [1, 1, 1], "{next}");
    assert_eq!(next["next"], json!("6"), "{next}");
    let f = figures(&server, "an", "t").await;
    assert_eq!(f["ack_floor"], json!(3), "{f}");
    assert_eq!(f["ack_pending"], json!(3), "{f}");

    // The same acks again are stale: refused, and nothing is read (seq 7 stays unread).
    let r = post(
        &server,
        "/v1/consumers/an/ack",
        json!({"acks": acks(&page), "read": 3}),
    )
    .await;
    let p = expect_problem(r, 409, "a stale ack with a read").await;
    assert_eq!(p["type"], json!("urn:plexus:problem:stale-delivery"), "{p}");
    let f = figures(&server, "an", "t").await;
    assert_eq!(f["pending"], json!(1), "{f}");

    // The last page: seq 7, then an ack with a read that finds nothing.
    let (status, _, last) = into_json(
        post(
            &server,
            "/v1/consumers/an/ack",
            json!({"acks": acks(&next), "read": 10}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{last}");
    assert_eq!(seqs(&last), [7], "{last}");
    let (status, _, empty) = into_json(
        post(
            &server,
            "/v1/consumers/an/ack",
            json!({"acks": acks(&last), "read": 10}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["settled"], json!(1), "{empty}");
    assert!(seqs(&empty).is_empty(), "{empty}");
    let f = figures(&server, "an", "t").await;
    assert_eq!(f["ack_floor"], json!(7), "{f}");
    assert_eq!(f["ack_pending"], json!(0), "{f}");
}

/// Three readers of an explicit consumer of two topics, each acking every page with its next
/// read, take a backlog longer than what a node reads ahead at once (it reads further in the
/// background), and what is published while they read: every message goes to exactly one
/// reader, and each reader gets each topic's messages in order.
async fn long_backlog(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "long",
        json!({"topics": ["la", "lb"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    server.batch_n("la", 1500, "a").await;
    server.batch_n("lb", 1200, "b").await;
    const TOTAL: usize = 1900 + 1500;
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    async fn read_page(client: &reqwest::Client, base: &str) -> Value {
        let url = format!("{base}/v1/topics/la,lb/messages?consumer=long&limit=70");
        let resp = client.get(url).send().await.expect("read");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("JSON")
    }
    let reader = |client: reqwest::Client,
                  base: String,
                  taken: std::sync::Arc<std::sync::atomic::AtomicUsize>| async move {
        let mut got: Vec<(String, u64)> = Vec::new();
        let mut page = read_page(&client, &base).await;
        while taken.load(std::sync::atomic::Ordering::SeqCst) < TOTAL {
            let batch: Vec<(String, u64)> = messages(&page)
                .iter()
                .map(|m| {
                    let topic = m["topic"].as_str().expect("topic").to_string();
                    (topic, m["seq"].as_u64().expect("seq"))
                })
                .collect();
            if batch.is_empty() {
                // An ack names 1 to 1000 messages: with none to ack, the next page is a read.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                page = read_page(&client, &base).await;
                continue;
            }
            taken.fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
            let acks: Vec<Value> = messages(&page)
                .iter()
                .map(|m| json!({"topic": m["topic"], "seq": m["seq"], "delivery": m["delivery"]}))
                .collect();
            let resp = client
                .post(format!("{base}/v1/consumers/long/ack"))
                .json(&json!({ "acks": acks, "read": 70 }))
                .send()
                .await
                .expect("ack");
            assert_eq!(resp.status(), StatusCode::OK);
            page = resp.json().await.expect("JSON");
            got.extend(batch);
        }
        got
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (client, base) = (server.client().clone(), server.base().to_string());
            tokio::spawn(reader(client, base, taken.clone()))
        })
        .collect();
    server.batch_n("la", 400, "a").await;
    server.batch_n("lb", 300, "b").await;
    let mut all = BTreeSet::new();
    let mut total = 0;
    for r in readers {
        let got = r.await.expect("reader");
        for topic in ["la", "lb"] {
            let own: Vec<u64> = got
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, s)| *s)
                .collect();
            assert!(
                own.windows(2).all(|w| w[0] < w[1]),
                "{topic} in order: {own:?}"
            );
        }
        total += got.len();
        all.extend(got);
    }
    assert_eq!(total, all.len(), "no message went to two readers");
    let want: BTreeSet<(String, u64)> = (1..=1900)
        .map(|s| ("la".to_string(), s))
        .chain((1..=1500).map(|s| ("lb".to_string(), s)))
        .collect();
    assert_eq!(all, want);
}

/// Two readers of one explicit consumer share 1,000 messages: none goes to both (no lease
/// runs out: `ack_wait` is long).
async fn disjoint_readers(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    create(
        &server,
        "pool",
        json!({"topics": ["work"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    server.batch_n("work", 1000, "w").await;
    let reader = |client: reqwest::Client, base: String| async move {
        let mut got = Vec::new();
        loop {
            let page: Value = client
                .get(format!(
                    "{base}/v1/topics/work/messages?consumer=pool&limit=37"
                ))
                .send()
                .await
                .expect("read")
                .json()
                .await
                .expect("JSON");
            let batch = seqs(&page);
            if batch.is_empty() {
                return got;
            }
            let acks: Vec<Value> = messages(&page)
                .iter()
                .map(|m| json!({"topic": "work", "seq": m["seq"], "delivery": m["delivery"]}))
                .collect();
            let resp = client
                .post(format!("{base}/v1/consumers/pool/ack"))
                .json(&json!({ "acks": acks }))
                .send()
                .await
                .expect("ack");
            assert_eq!(resp.status(), StatusCode::OK);
            got.extend(batch);
        }
    };
    let a = tokio::spawn(reader(server.client().clone(), server.base().to_string()));
    let b = tokio::spawn(reader(server.client().clone(), server.base().to_string()));
    let (a, b) = (a.await.expect("reader a"), b.await.expect("reader b"));
    let sa: BTreeSet<u64> = a.iter().copied().collect();
    let sb: BTreeSet<u64> = b.iter().copied().collect();
    assert_eq!(sa.len(), a.len(), "no repeats within a reader");
    assert!(sa.is_disjoint(&sb), "no message went to both readers");
    let union: BTreeSet<u64> = sa.union(&sb).copied().collect();
    assert_eq!(union, (1..=1000).collect::<BTreeSet<_>>());
}

/// Bad names, settings and ack bodies, and unknown consumers: each its status and problem
/// type, and nothing changes.
async fn bad_input(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    for (name, body, what) in [
        ("bad.name", json!({"topics": ["t"]}), "a dot in the name"),
        (&"x".repeat(65), json!({"topics": ["t"]}), "a long name"),
        ("ok", json!({"topics": []}), "no topics"),
        ("ok", json!({"topics": ["a b"]}), "a bad topic"),
        ("ok", json!({"topics": ["t"], "ack": "maybe"}), "a bad ack"),
        (
            "ok",
            json!({"topics": ["t"], "ack_wait": "soon"}),
            "a bad ack_wait",
        ),
        (
            "ok",
            json!({"topics": ["t"], "max_deliver": 0}),
            "max_deliver 0",
        ),
        (
            "ok",
            json!({"topics": ["t"], "max_ack_pending": 0}),
            "max_ack_pending 0",
        ),
        (
            "ok",
            json!({"topics": ["t"], "start": "whenever"}),
            "a bad start",
        ),
        (
            "ok",
            json!({"topics": ["t"], "colour": "red"}),
            "an unknown field",
        ),
    ] {
        let p = expect_problem(put(&server, name, body).await, 400, what).await;
        assert_eq!(
            p["type"],
            json!("urn:plexus:problem:bad-consumer"),
            "{what}"
        );
    }
    let (_, _, list) = server.get_json("/v1/consumers").await;
    assert_eq!(list["consumers"], json!([]), "nothing stored: {list}");
    let p = expect_problem(
        server.get("/v1/topics/t/messages?consumer=a.b", &[]).await,
        400,
        "a bad name on a read",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:bad-consumer"));

    let ack = json!([{"topic": "t", "seq": 1}]);
    expect_problem(
        settle(&server, "nobody", "ack", ack.clone()).await,
        404,
        "unknown",
    )
    .await;
    create(&server, "e", json!({"topics": ["t"], "ack": "explicit"})).await;
    server.publish_n("t", 2, "m").await;
    let page = server.read("t", "consumer=e&limit=1").await;
    assert_eq!(seqs(&page), vec![1]);
    for (body, what) in [
        (json!({"acks": []}), "no acks"),
        (json!({"acks": "all"}), "acks not a list"),
        (json!({"acks": [{"topic": "t"}]}), "no seq"),
        (
            json!({"acks": [{"topic": "t", "seq": 1}], "delay": "1s"}),
            "a delay on an ack",
        ),
    ] {
        let p = expect_problem(post(&server, "/v1/consumers/e/ack", body).await, 400, what).await;
        assert_eq!(
            p["type"],
            json!("urn:plexus:problem:bad-consumer"),
            "{what}"
        );
    }
    let resp = server
        .client()
        .post(server.url("/v1/consumers/e/ack"))
        .body("not json")
        .send()
        .await
        .expect("POST");
    expect_problem(resp, 400, "not JSON").await;
    let many: Vec<Value> = (1..=1001)
        .map(|s| json!({"topic": "t", "seq": s}))
        .collect();
    expect_problem(
        settle(&server, "e", "ack", json!(many)).await,
        400,
        "1001 acks",
    )
    .await;
    // One unknown item refuses the whole call: seq 1 stays leased.
    let p = expect_problem(
        settle(
            &server,
            "e",
            "ack",
            json!([{"topic": "t", "seq": 1}, {"topic": "t", "seq": 2}]),
        )
        .await,
        409,
        "an ack of a message never delivered",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:stale-delivery"));
    let f = figures(&server, "e", "t").await;
    assert_eq!(f["ack_pending"], json!(1), "nothing changed: {f}");
    let p = expect_problem(
        settle(
            &server,
            "e",
            "ack",
            json!([{"topic": "t", "seq": 1, "delivery": 7}]),
        )
        .await,
        409,
        "a delivery that never was",
    )
    .await;
    assert_eq!(p["type"], json!("urn:plexus:problem:stale-delivery"));
    // An auto consumer takes no acks.
    server.read("t", "consumer=auto1").await;
    let p = expect_problem(settle(&server, "auto1", "ack", ack).await, 400, "auto").await;
    assert_eq!(p["type"], json!("urn:plexus:problem:bad-consumer"));
    assert_eq!(figures(&server, "e", "t").await["ack_pending"], json!(1));
}

/// Waits until the hub holds no open stream of `transport` (its gauge at 0): a client that
/// closed is gone from the hub too. Until then a message published may still be written to
/// the closed connection, and an `auto` consumer then counts it as sent.
async fn until_closed(server: &Server, transport: &str) {
    let series = format!("plexus_streams_open{{transport=\"{transport}\"}} 0");
    crate::kit::eventually(&format!("no open {transport} stream"), || async {
        server.metrics().await.contains(&series).then_some(())
    })
    .await;
}

/// Waits until the consumer's position on `topic` is `seq`.
async fn until_delivered(server: &Server, name: &str, topic: &str, seq: u64) {
    crate::kit::eventually(&format!("{name} at {topic}:{seq}"), || async {
        let f = figures(server, name, topic).await;
        (f["delivered"] == json!(seq)).then_some(())
    })
    .await;
}

/// A browser-like EventSource on `/sse?consumer=c`, closed and opened again without
/// `Last-Event-ID`, resumes after the last message written; one with a `Last-Event-ID` below
/// the position moves it back.
async fn event_source(engine: Engine) {
    let server = Server::start_on(engine, &["--keepalive", "1s"]).await;
    create(&server, "es", json!({"topics": ["t"]})).await;
    server.publish_n("t", 5, "m").await;
    let path = "/v1/topics/t/sse?consumer=es";
    let mut sse = Sse::open(&server, path, &[]).await;
    let got = sse.events(5).await;
    let ids: Vec<&str> = got.iter().map(|f| f.id()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    assert_eq!(got[0].json()["delivery"], json!(1), "{:?}", got[0]);
    drop(sse);
    until_closed(&server, "sse").await;
    until_delivered(&server, "es", "t", 5).await;
    server.publish_n("t", 5, "n").await;
    let mut sse = Sse::open(&server, path, &[]).await;
    let ids: Vec<String> = sse
        .events(5)
        .await
        .iter()
        .map(|f| f.id().to_string())
        .collect();
    assert_eq!(
        ids,
        ["6", "7", "8", "9", "10"],
        "resumed after what was written"
    );
    drop(sse);
    until_delivered(&server, "es", "t", 10).await;
    let mut sse = Sse::open(&server, path, &[("last-event-id", "7")]).await;
    let ids: Vec<String> = sse
        .events(3)
        .await
        .iter()
        .map(|f| f.id().to_string())
        .collect();
    assert_eq!(ids, ["8", "9", "10"], "moved back to the Last-Event-ID");
    // `since` is refused with a consumer.
    expect_problem(
        server
            .get("/v1/topics/t/sse?consumer=es&since=all", &[])
            .await,
        400,
        "since on a consumer stream",
    )
    .await;
}

/// NDJSON through an explicit consumer: envelopes with `delivery`, settled by acks.
async fn ndjson_explicit(engine: Engine) {
    let server = Server::start_on(engine, &["--keepalive", "1s"]).await;
    create(&server, "nd", json!({"topics": ["t"], "ack": "explicit"})).await;
    server.publish_n("t", 3, "m").await;
    let mut lines = Ndjson::open(&server, "/v1/topics/t/stream?consumer=nd").await;
    let got = lines.events(3).await;
    let acks: Vec<Value> = got
        .iter()
        .map(|m| {
            assert_eq!(m["delivery"], json!(1), "{m}");
            json!({"topic": "t", "seq": m["seq"], "delivery": m["delivery"]})
        })
        .collect();
    assert_eq!(figures(&server, "nd", "t").await["ack_pending"], json!(3));
    ack_ok(&server, "nd", json!(acks)).await;
    let f = figures(&server, "nd", "t").await;
    assert_eq!(
        (f["ack_pending"].clone(), f["ack_floor"].clone()),
        (json!(0), json!(3))
    );
    server.publish("t", "live").await;
    let live = lines.next_event().await.expect("a live line");
    assert_eq!(
        (live["seq"].clone(), live["delivery"].clone()),
        (json!(4), json!(1))
    );
}

/// A WebSocket `subscribe` with `consumer`: an explicit consumer's messages carry
/// `delivery`, and acks settle them; an auto consumer resumes after what was sent on a new
/// socket; `since` with a consumer is refused.
async fn websocket(engine: Engine) {
    let server = Server::start_on(engine, &["--keepalive", "1s"]).await;
    create(&server, "wx", json!({"topics": ["t"], "ack": "explicit"})).await;
    create(&server, "wa", json!({"topics": ["t"]})).await;
    server.publish_n("t", 3, "m").await;
    let mut ws = Ws::connect(&server, "").await;
    let mut others = Vec::new();
    ws.ok(
        json!({"op": "subscribe", "id": 1, "topic": "t", "consumer": "wx"}),
        &mut others,
    )
    .await;
    let need = 3 - others.len();
    others.extend(ws.events(need).await);
    let got: Vec<(Value, Value)> = others
        .iter()
        .map(|m| (m["seq"].clone(), m["delivery"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(1), json!(1)),
            (json!(2), json!(1)),
            (json!(3), json!(1))
        ]
    );
    ack_ok(
        &server,
        "wx",
        json!([{"topic": "t", "seq": 1}, {"topic": "t", "seq": 2}, {"topic": "t", "seq": 3}]),
    )
    .await;
    assert_eq!(figures(&server, "wx", "t").await["ack_floor"], json!(3));

    let mut others = Vec::new();
    ws.ok(
        json!({"op": "subscribe", "id": 2, "topic": "t", "consumer": "wa"}),
        &mut others,
    )
    .await;
    let need = 3 - others.iter().filter(|m| m["delivery"].is_u64()).count();
    others.extend(ws.events(need).await);
    drop(ws);
    until_closed(&server, "ws").await;
    until_delivered(&server, "wa", "t", 3).await;
    server.publish("t", "m4").await;
    let mut ws = Ws::connect(&server, "").await;
    let mut others = Vec::new();
    ws.ok(
        json!({"op": "subscribe", "id": 3, "topic": "t", "consumer": "wa"}),
        &mut others,
    )
    .await;
    if others.is_empty() {
        others.extend(ws.events(1).await);
    }
    assert_eq!(
        others[0]["seq"],
        json!(4),
        "resumed after what was sent: {others:?}"
    );
    let refused = ws
        .call(
            json!({"op": "subscribe", "id": 4, "topic": "t", "consumer": "wa", "since": "all"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(refused["op"], json!("error"), "{refused}");
    let refused = ws
        .call(
            json!({"op": "subscribe", "id": 5, "topic": "t", "consumer": "bad.name"}),
            &mut Vec::new(),
        )
        .await;
    assert_eq!(refused["status"], json!(400), "{refused}");
}

/// `plexus sub --consumer NAME --ack explicit` and `plexus consumers ls|show|seek|rm`.
async fn cli(engine: Engine) {
    use crate::kit::cli::{json_lines, output, plexus, run, stdout_json};
    let server = Server::start_on(engine, &[]).await;
    server.publish_n("t", 5, "m").await;
    let base = server.base().to_string();
    let sub = |count: &'static str| {
        let mut cmd = plexus();
        cmd.args(["sub", "--server", &base, "t", "--consumer", "cc"]);
        cmd.args(["--ack", "explicit", "--count", count]);
        cmd
    };
    let lines = json_lines(&run(&mut sub("3"), "sub --consumer").await);
    let got: Vec<(Value, Value)> = lines
        .iter()
        .map(|l| (l["seq"].clone(), l["delivery"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!(1), json!(1)),
            (json!(2), json!(1)),
            (json!(3), json!(1))
        ]
    );
    let consumers = |args: &[&str]| {
        let mut cmd = plexus();
        cmd.args(["consumers", "--server", &base]).args(args);
        cmd
    };
    let info = stdout_json(&run(&mut consumers(&["show", "cc"]), "show").await, "show");
    let f = &info["topics_state"]["t"];
    assert_eq!(
        (
            f["delivered"].clone(),
            f["ack_floor"].clone(),
            f["ack_pending"].clone()
        ),
        (json!(3), json!(3), json!(0)),
        "acked after printing: {info}"
    );
    let lines = json_lines(&run(&mut sub("2"), "sub again").await);
    assert_eq!(
        lines.iter().map(|l| l["seq"].clone()).collect::<Vec<_>>(),
        [json!(4), json!(5)]
    );
    let info = stdout_json(
        &run(&mut consumers(&["seek", "cc", "1"]), "seek").await,
        "seek",
    );
    assert_eq!(info["topics_state"]["t"]["delivered"], json!(1), "{info}");
    let lines = json_lines(&run(&mut consumers(&["ls"]), "ls").await);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["name"], json!("cc"));
    let lines = json_lines(&run(&mut sub("1"), "sub after seek").await);
    assert_eq!(lines[0]["seq"], json!(2), "after the seek to 1: {lines:?}");
    run(&mut consumers(&["rm", "cc"]), "rm").await;
    let out = output(&mut consumers(&["show", "cc"]), "show after rm").await;
    assert!(!out.status.success(), "gone after rm");
}

/// Two nodes on one Redis serve one explicit consumer; one is killed mid-stream. Every
/// message is delivered, and the only repeats are leases that ran out (`delivery` > 1).
#[tokio::test]
async fn two_nodes_on_one_redis_and_a_node_killed() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut a = Server::start(&["--storage", &url]).await;
    let b = Server::start(&["--storage", &url]).await;
    create(
        &a,
        "shared",
        json!({"topics": ["q"], "ack": "explicit", "ack_wait": "2s"}),
    )
    .await;
    a.batch_n("q", 300, "m").await;
    // A serves an SSE stream through the consumer; the reader acks the first 10 frames it
    // gets and is in the middle of the stream (more frames leased and sent, none acked) when
    // A is killed. B takes everything else, acking as it goes.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut acked_by_a = BTreeSet::new();
    let mut unacked_from_a = BTreeSet::new();
    {
        let mut sse = Sse::open(&a, "/v1/topics/q/sse?consumer=shared", &[]).await;
        let frames = sse.events(20).await;
        assert_eq!(frames.len(), 20, "A streams");
        let mut acks = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let m = f.json();
            let (seq, delivery) = (
                m["seq"].as_u64().unwrap_or(0),
                m["delivery"].as_u64().unwrap_or(0),
            );
            assert_eq!(delivery, 1, "{m}");
            seen.push((seq, delivery));
            if i < 10 {
                acks.push(json!({"topic": "q", "seq": seq, "delivery": delivery}));
                acked_by_a.insert(seq);
            } else {
                unacked_from_a.insert(seq);
            }
        }
        ack_ok(&a, "shared", json!(acks)).await;
        a.sigkill().await;
        // Frames A wrote that the reader never took are leases that run out, like the rest.
        drop(sse);
    }
    let mut done: BTreeSet<u64> = acked_by_a.clone();
    let mut from_b: Vec<(u64, u64)> = Vec::new();
    while done.len() < 300 {
        let page = b.read("q", "consumer=shared&limit=50&wait=20").await;
        assert!(!messages(&page).is_empty(), "B gets the rest: {page}");
        let mut acks = Vec::new();
        for m in messages(&page) {
            let (seq, delivery) = (
                m["seq"].as_u64().unwrap_or(0),
                m["delivery"].as_u64().unwrap_or(0),
            );
            from_b.push((seq, delivery));
            done.insert(seq);
            acks.push(json!({"topic": "q", "seq": seq, "delivery": delivery}));
        }
        ack_ok(&b, "shared", json!(acks)).await;
    }
    assert_eq!(done, (1..=300).collect::<BTreeSet<_>>(), "every message");
    // What A's stream leased comes again only as a redelivery (`delivery` > 1): the frames the
    // reader got and did not ack are the only messages it sees twice; what it acked on A
    // never comes again.
    let from_a: BTreeSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    let mut repeats = 0;
    for (seq, delivery) in &from_b {
        assert!(!acked_by_a.contains(seq), "{seq} was acked on A");
        if from_a.contains(seq) {
            assert!(*delivery > 1, "{seq} was A's: B gets it as a redelivery");
            repeats += 1;
        }
    }
    assert_eq!(
        repeats,
        unacked_from_a.len(),
        "every frame A sent and nobody acked comes back, once"
    );
    let b_seqs: BTreeSet<u64> = from_b.iter().map(|(s, _)| *s).collect();
    assert_eq!(b_seqs.len(), from_b.len(), "B got each message once");
    assert_eq!(from_a.len() + from_b.len() - repeats, 300);
}

/// Rights: creating, reading through, showing, settling and deleting a consumer need
/// `subscribe` on every one of its topics; listing needs `admin`.
#[tokio::test]
async fn rights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plexus.toml");
    std::fs::write(
        &file,
        "[auth]\nmode = \"required\"\n\
         [[auth.tokens]]\ntoken = \"root-token-1\"\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = true\n\
         [[auth.tokens]]\ntoken = \"only-a-token\"\nsubscribe = [\"a\"]\n",
    )
    .expect("write config");
    let server = Server::start(&["--config", file.to_str().expect("UTF-8")]).await;
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = server
            .client()
            .request(method, server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    use reqwest::Method;
    let both = json!({"topics": ["a", "b"], "ack": "explicit"});
    // Only `a`: may not create a consumer of a and b; the root token may.
    let r = call(
        Method::PUT,
        "/v1/consumers/ab",
        "only-a-token",
        Some(both.clone()),
    )
    .await
    .expect("PUT");
    expect_problem(r, 403, "create without subscribe on b").await;
    let r = call(Method::PUT, "/v1/consumers/ab", "root-token-1", Some(both))
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED);
    for (method, path, body) in [
        (Method::GET, "/v1/consumers/ab", None),
        (Method::GET, "/v1/topics/a,b/messages?consumer=ab", None),
        (
            Method::POST,
            "/v1/consumers/ab/ack",
            Some(json!({"acks": [{"topic": "a", "seq": 1}]})),
        ),
        (
            Method::POST,
            "/v1/consumers/ab/seek",
            Some(json!({"since": "all"})),
        ),
        (Method::DELETE, "/v1/consumers/ab", None),
        (Method::GET, "/v1/consumers", None),
    ] {
        let r = call(method.clone(), path, "only-a-token", body)
            .await
            .expect("request");
        expect_problem(r, 403, &format!("{method} {path} with only a")).await;
    }
    let r = call(Method::GET, "/v1/consumers", "root-token-1", None)
        .await
        .expect("GET");
    let (status, _, list) = into_json(r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["consumers"][0]["name"],
        json!("ab"),
        "still there: {list}"
    );
    // Its own topic is fine for the narrow token.
    let r = call(
        Method::GET,
        "/v1/topics/a/messages?consumer=mine",
        "only-a-token",
        None,
    )
    .await
    .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
}

/// The tests of each scenario, one per engine it names: `consumers::<scenario>::<engine>`.
macro_rules! on_engines {
    ($($scenario:ident on [$($engine:ident = $variant:ident),*]),* $(,)?) => {
        $(
            mod $scenario {
                $(
                    #[tokio::test]
                    async fn $engine() {
                        super::$scenario(crate::kit::Engine::$variant).await;
                    }
                )*
            }
        )*
    };
}

on_engines!(
    // The memory engine forgets everything with its process, by design.
    restart on [sqlite = Sqlite, redis = Redis],
    lifecycle on [sqlite = Sqlite, redis = Redis, memory = Memory],
    redelivery on [sqlite = Sqlite, redis = Redis, memory = Memory],
    dead_letters on [sqlite = Sqlite, redis = Redis, memory = Memory],
    lag_figures on [sqlite = Sqlite, redis = Redis, memory = Memory],
    flow_control on [sqlite = Sqlite, redis = Redis, memory = Memory],
    retention on [sqlite = Sqlite, redis = Redis, memory = Memory],
    seek on [sqlite = Sqlite, redis = Redis, memory = Memory],
    ack_next on [sqlite = Sqlite, redis = Redis, memory = Memory],
    disjoint_readers on [sqlite = Sqlite, redis = Redis, memory = Memory],
    read_ahead on [sqlite = Sqlite, redis = Redis, memory = Memory],
    long_backlog on [sqlite = Sqlite, redis = Redis, memory = Memory],
    bad_input on [sqlite = Sqlite, redis = Redis, memory = Memory],
    event_source on [sqlite = Sqlite, redis = Redis, memory = Memory],
    ndjson_explicit on [sqlite = Sqlite, redis = Redis, memory = Memory],
    websocket on [sqlite = Sqlite, redis = Redis, memory = Memory],
    cli on [sqlite = Sqlite, redis = Redis],
);

/// An ack that carries a read whose read is refused (the hub's read budget is held by a
/// stalled batch upload: `503` busy) still stores its settlement: the acked messages are no
/// longer pending an ack.
#[tokio::test]
async fn an_ack_whose_read_is_refused_still_settles() {
    let config =
        crate::kit::config_file("[limits]\nmax_read_bytes = 65536\nread_budget_bytes = 1048576\n");
    let server = Server::start(&["--config", crate::kit::path_arg(&config)]).await;
    create(
        &server,
        "busy",
        json!({"topics": ["t"], "ack": "explicit", "ack_wait": "10m"}),
    )
    .await;
    // A stalled batch upload of 600,000 bytes holds the whole budget.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        // Three messages leased, all of what the log holds: nothing is kept read ahead,
        // so the ack's read goes to the log.
        server.publish_n("t", 3, "m").await;
        let page = server.read("t", "consumer=busy&limit=3").await;
        assert_eq!(messages(&page).len(), 3, "{page}");
        let acks: Vec<Value> = messages(&page)
            .iter()
            .map(|m| json!({"topic": "t", "seq": m["seq"], "delivery": m["delivery"]}))
            .collect();
        let stalled = server.stalled_batch(600_000).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let r = post(
            &server,
            "/v1/consumers/busy/ack",
            json!({"acks": acks, "read": 3}),
        )
        .await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break r;
        }
        // The stalled upload had not taken the budget yet: the ack went through; again.
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "an ack with a read is 200 or 503"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read budget was never held"
        );
        drop(stalled);
    };
    let p = expect_problem(refused, 503, "an ack whose read is refused").await;
    assert_eq!(p["type"], json!("urn:plexus:problem:busy"), "{p}");
    let f = figures(&server, "busy", "t").await;
    assert_eq!(f["ack_pending"], json!(0), "the settlement was stored: {f}");
}
