//! Stateless nodes on Redis (docs/ARCHITECTURE.md, the cluster): several `plexus serve` processes
//! share one Redis (or a Redis Cluster); any node serves any client, a client resumes on another
//! node with its cursor, and a node that dies or restarts loses nothing.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::jobs::{claim, complete, id, status, submit};
use crate::kit::clients::Sse;
use crate::kit::redis::{RedisCluster, RedisServer};
use crate::kit::{Server, parse_cursor, seqs};

async fn node(storage: &str) -> Server {
    Server::start(&["--storage", storage]).await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &Server, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?{query}", server.addr()))
        .await
        .expect("WebSocket");
    ws
}

/// The next `n` message frames' (topic, seq, data).
async fn ws_messages(ws: &mut Ws, n: usize) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = ws
            .next()
            .await
            .expect("the socket stays open")
            .expect("no error");
        if let WsMessage::Text(t) = frame {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
            if v["op"] == "message" {
                out.push((
                    v["topic"].as_str().unwrap_or_default().to_owned(),
                    v["seq"].as_u64().expect("seq"),
                    v["data"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out
}

/// A long poll for messages after `since`, answered as soon as there is one.
async fn long_poll(server: &Server, topic: &str, since: &str) -> Value {
    let resp = server
        .client()
        .get(server.url(&format!(
            "/v1/topics/{topic}/messages?since={since}&wait=30"
        )))
        .send()
        .await
        .expect("long poll");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("JSON page")
}

#[tokio::test]
async fn three_nodes_deliver_each_others_publishes_and_clients_resume_on_another_node() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut a = node(&url).await;
    let mut b = node(&url).await;
    let c = node(&url).await;

    // Subscribers on B and C, long polls waiting on B and C, before anything is published.
    let mut sse_b = Sse::open(&b, "/v1/topics/orders/sse?since=all", &[]).await;
    let mut ws_c = ws(&c, "topic=orders&since=all").await;
    let poll_b = {
        let (client, url) = (
            b.client().clone(),
            b.url("/v1/topics/orders/messages?since=0&wait=30"),
        );
        tokio::spawn(async move { client.get(url).send().await?.json::<Value>().await })
    };
    let poll_c = {
        let (client, url) = (
            c.client().clone(),
            c.url("/v1/topics/orders/messages?since=0&wait=30"),
        );
        tokio::spawn(async move { client.get(url).send().await?.json::<Value>().await })
    };

    for i in 1..=5 {
        a.publish("orders", format!("o{i}")).await;
    }

    let events = sse_b.events(5).await;
    let sse_seqs: Vec<u64> = events
        .iter()
        .map(|e| e.json()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(sse_seqs, vec![1, 2, 3, 4, 5], "SSE on B sees A's publishes");
    let got = ws_messages(&mut ws_c, 5).await;
    assert_eq!(
        got.iter().map(|m| m.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "WebSocket on C sees A's publishes"
    );
    assert_eq!(got[4].2, "o5");
    for (name, poll) in [("B", poll_b), ("C", poll_c)] {
        let page = poll.await.expect("poll task").expect("poll answered");
        assert!(
            seqs(&page).first() == Some(&1),
            "the long poll on {name} is answered by A's first publish: {page}"
        );
    }

    // B dies mid-stream; its SSE client resumes on C with its last id, its poller with its
    // cursor, while A keeps publishing.
    let last_id = events[4].id().to_owned();
    b.sigkill().await;
    assert!(
        sse_b.next_event().await.is_none(),
        "B's stream ends when B dies"
    );
    for i in 6..=10 {
        a.publish("orders", format!("o{i}")).await;
    }
    let mut resumed = Sse::open(&c, "/v1/topics/orders/sse", &[("Last-Event-ID", &last_id)]).await;
    let again: Vec<u64> = resumed
        .events(5)
        .await
        .iter()
        .map(|e| e.json()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        again,
        vec![6, 7, 8, 9, 10],
        "resumed on C: no loss, no duplicate"
    );
    let page = long_poll(&c, "orders", "5").await;
    assert_eq!(seqs(&page)[0], 6, "the poller resumes on C after 5: {page}");
    let got = ws_messages(&mut ws_c, 5).await;
    assert_eq!(
        got.iter().map(|m| m.1).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10],
        "C's WebSocket goes on"
    );

    // A node restart loses nothing: everything is in Redis.
    a.restart().await;
    let all = a.read_all("orders").await;
    assert_eq!(
        all.iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "after A restarts it serves every message"
    );
    let published = a.publish("orders", "after restart").await;
    assert_eq!(published["seq"], 11, "the seq counter lives in Redis");
}

#[tokio::test]
async fn a_job_submitted_on_one_node_is_claimed_on_another_and_completed_on_a_third() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b, c) = (node(&url).await, node(&url).await, node(&url).await);

    let job = submit(&a, "render", "page 1").await;
    let job_id = id(&job);
    let claimed = claim(&b, "render", "30").await;
    assert_eq!(id(&claimed), job_id, "B claims the job A queued");
    // A second claim anywhere finds nothing: the job is held.
    let resp = crate::jobs::claim_raw(&c, "render", "wait=0").await;
    assert_eq!(resp.status(), 204, "no second claim of a held job");

    // The queue's topic carries the job's `queued` event to every node (claimers there watch it).
    let page = c.read("_queues.render", "since=all").await;
    let events: Vec<String> = crate::kit::messages(&page)
        .iter()
        .map(|m| m["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        events,
        vec!["queued"],
        "one queued event on _queues.render: {page}"
    );

    let done = complete(&c, &claimed, "rendered").await;
    assert_eq!(done["state"], "succeeded", "C completes B's claim: {done}");
    let seen = status(&a, &job_id, "").await;
    assert_eq!(seen["state"], "succeeded", "A sees the result: {seen}");
    assert_eq!(seen["result"], "rendered");
}

#[tokio::test]
async fn a_redis_cluster_serves_publish_read_and_resume_across_shards() {
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    // Topics whose keys live on three different masters.
    let mut topics: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let name = format!("shard{i}");
        let owner = cluster.owner_of(&format!("plexus:s:{{{name}}}"));
        if topics.iter().all(|(_, o)| *o != owner) {
            topics.push((name, owner));
        }
        if topics.len() == 3 {
            break;
        }
    }
    let names: Vec<&str> = topics.iter().map(|(n, _)| n.as_str()).collect();
    let x = node(&url).await;
    let y = node(&url).await;

    let joined = names.join(",");
    let mut sse = Sse::open(&y, &format!("/v1/topics/{joined}/sse?since=all"), &[]).await;
    for round in 1..=2 {
        for name in &names {
            let r = x.publish(name, format!("{name}-{round}")).await;
            assert_eq!(r["seq"], round, "{name} counts its own seqs");
        }
    }
    let events = sse.events(6).await;
    // Commits travel by sharded Pub/Sub: Y follows each topic's channel on the topic's own
    // shard, and nothing uses the classic, cluster-wide channel.
    for (name, owner) in &topics {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.port == *owner)
            .expect("the owner is a node");
        let counts = node.cli(&["PUBSUB", "SHARDNUMSUB", &format!("plexus:c:{{{name}}}")]);
        let subscribers: u64 = counts
            .lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            subscribers >= 1,
            "{name}'s shard channel has Y's subscription: {counts}"
        );
    }
    for node in &cluster.nodes {
        let classic = node.cli(&["PUBSUB", "NUMSUB", "plexus:commits"]);
        assert_eq!(
            classic.lines().nth(1).map(str::trim),
            Some("0"),
            "no node uses the classic channel on a cluster: {classic}"
        );
    }
    let mut per_topic: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in &events {
        let v = e.json();
        per_topic
            .entry(v["topic"].as_str().expect("topic").to_owned())
            .or_default()
            .push(v["seq"].as_u64().expect("seq"));
    }
    for name in &names {
        assert_eq!(
            per_topic.get(*name),
            Some(&vec![1, 2]),
            "{name}: both messages, in order, through the other node"
        );
    }

    // Read on Y everything X published, then resume with the returned cursor.
    let page = y.read(&joined, "since=all").await;
    assert_eq!(
        seqs(&page).len(),
        6,
        "a multi-topic read across shards: {page}"
    );
    let cursor = crate::kit::next(&page);
    let positions = parse_cursor(&cursor);
    assert_eq!(positions.len(), 3, "one position per topic: {cursor}");
    for name in &names {
        x.publish(name, "third").await;
    }
    let mut resumed = Sse::open(
        &y,
        &format!("/v1/topics/{joined}/sse"),
        &[("Last-Event-ID", events[5].id())],
    )
    .await;
    let rest: Vec<(String, u64)> = resumed
        .events(3)
        .await
        .iter()
        .map(|e| {
            let v = e.json();
            (
                v["topic"].as_str().expect("topic").to_owned(),
                v["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    let mut rest_topics: Vec<&str> = rest.iter().map(|(t, _)| t.as_str()).collect();
    rest_topics.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(rest_topics, want, "each topic's third message, once");
    assert!(
        rest.iter().all(|(_, seq)| *seq == 3),
        "resumed after seq 2 on every shard: {rest:?}"
    );
    let page = y.read(&joined, &format!("since={cursor}")).await;
    assert_eq!(
        seqs(&page),
        vec![3, 3, 3],
        "a read resumes from the cursor: {page}"
    );
}

/// Redis going away is a 503 with a problem body, never a crash; `/readyz` says so while
/// `/healthz` stays up; when Redis is back (its AOF kept everything) the node publishes again
/// and a client resuming by id gets every message once.
#[tokio::test]
async fn a_node_answers_503_while_redis_is_down_and_recovers_when_it_returns() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let a = node(&redis.url()).await;
    a.publish("up", "before").await;
    let mut sse = Sse::open(&a, "/v1/topics/up/sse?since=all", &[]).await;
    let first = sse.events(1).await.remove(0);
    assert_eq!(first.json()["data"], "before");

    redis.kill();
    let resp = a
        .client()
        .post(a.url("/v1/topics/up/messages"))
        .body("while down")
        .send()
        .await
        .expect("the node answers");
    let problem = crate::kit::expect_problem(resp, 503, "publish while redis is down").await;
    assert!(problem["detail"].is_string(), "{problem}");
    let resp = a.get("/readyz", &[]).await;
    crate::kit::expect_problem(resp, 503, "readyz while redis is down").await;
    let (status, _, _) = a.get_json("/healthz").await;
    assert_eq!(status, 200, "the process is alive");

    redis.start_again().await;
    let published = crate::kit::eventually("publishing works again", || async {
        let resp = a
            .client()
            .post(a.url("/v1/topics/up/messages"))
            .body("after")
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())?;
        resp.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(
        published["seq"], 2,
        "the seq counter survived in Redis: {published}"
    );
    let (status, _, _) = a.get_json("/readyz").await;
    assert_eq!(status, 200, "ready again");
    // A client whose stream ended (a stream that cannot read from Redis ends) resumes with
    // its last id and gets every message once.
    drop(sse);
    a.publish("up", "later").await;
    let mut resumed = Sse::open(&a, "/v1/topics/up/sse", &[("Last-Event-ID", first.id())]).await;
    let next: Vec<Value> = resumed
        .events(2)
        .await
        .iter()
        .map(|e| e.json()["data"].clone())
        .collect();
    assert_eq!(
        next,
        vec!["after", "later"],
        "nothing skipped, nothing twice"
    );
}

/// A node's commit subscription drops (Redis kills it) while another node publishes: the
/// node's live subscriber and waiting long poll still get the message, without waiting for
/// a later publish (on resubscribing, the node re-checks the heads of the topics it serves).
#[tokio::test]
async fn messages_published_while_a_nodes_subscription_is_down_still_reach_its_readers() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = (node(&url).await, node(&url).await);
    a.publish("feed", "one").await;
    let mut sse = Sse::open(&a, "/v1/topics/feed/sse?since=all", &[]).await;
    assert_eq!(sse.events(1).await[0].json()["data"], "one");
    let poll = {
        let (client, url) = (
            a.client().clone(),
            a.url("/v1/topics/feed/messages?since=1&wait=30"),
        );
        tokio::spawn(async move { client.get(url).send().await?.json::<Value>().await })
    };
    crate::kit::eventually("the long poll waits on A", || async {
        (a.topic_info("feed").await["subscribers"].as_u64()? >= 2).then_some(())
    })
    .await;

    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u64>().is_ok_and(|n| n >= 2),
        "both nodes' subscriptions were cut: {killed}"
    );
    b.publish("feed", "two").await;

    let got = sse.events(1).await;
    assert_eq!(
        got[0].json()["data"],
        "two",
        "the live subscriber on A gets it"
    );
    let page = poll.await.expect("poll task").expect("poll answered");
    assert_eq!(
        seqs(&page),
        vec![2],
        "the long poll on A is answered: {page}"
    );
}
