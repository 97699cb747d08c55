//! `durability = "replicated"` on Redis (docs/API.md §8): a write is acknowledged and shown
//! only once a replica holds it. A standalone Redis without a replica refuses, then recovers
//! when one attaches; on a 3+3 Redis Cluster whose master fails over, every acknowledged
//! message survives with its own seq, and under the default durability the loss the docs
//! warn of happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::kit::cli::{plexus, run_to_failure};
use crate::kit::redis::{RedisCluster, RedisServer};
use crate::kit::{Server, eventually, expect_problem, into_json, messages, next, payload, seq};

const NOT_REPLICATED: &str = "urn:plexus:problem:not-replicated";

/// A hub on `storage` with `durability = "replicated"` and a short replica timeout.
async fn replicated_node(storage: &str) -> Server {
    Server::start(&[
        "--storage",
        storage,
        "--durability",
        "replicated",
        "--redis-replica-timeout",
        "2s",
    ])
    .await
}

fn logs(server: &Server) -> String {
    format!("{}\n{}", server.stdout_lines().join("\n"), server.stderr())
}

async fn readyz(server: &Server) -> reqwest::Response {
    server
        .client()
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz")
}

#[tokio::test]
async fn replicated_durability_needs_a_redis_storage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_to_failure(
        plexus()
            .args(["serve", "--listen", "127.0.0.1:0", "--storage", "sqlite"])
            .args(["--durability", "replicated", "--data-dir"])
            .arg(dir.path()),
        "serve with replicated durability on sqlite",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("durability") && stderr.contains("redis"),
        "the error names the key and what it needs: {stderr}"
    );
    let out = run_to_failure(
        plexus()
            .args(["serve", "--listen", "127.0.0.1:0", "--storage", "memory"])
            .args(["--redis-min-replicas", "0"]),
        "serve with redis.min_replicas = 0",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis.min_replicas"), "{stderr}");
    for timeout in ["0ms", "61s", "soon"] {
        let out = run_to_failure(
            plexus()
                .args(["serve", "--listen", "127.0.0.1:0", "--storage", "memory"])
                .args(["--redis-replica-timeout", timeout]),
            "serve with a bad redis.replica_timeout",
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("redis.replica_timeout"),
            "{timeout}: {stderr}"
        );
    }
}

/// No replica: `/readyz` and every write answer 503 and nothing is shown; once a replica
/// attaches, both recover, and a retry with the first key answers the first result.
#[tokio::test]
async fn a_standalone_redis_without_a_replica_refuses_until_one_attaches() {
    let master = RedisServer::start().await;
    let server = replicated_node(&master.url()).await;
    eventually("the start-up error about missing replicas", || async {
        logs(&server)
            .contains("fewer connected replicas")
            .then_some(())
    })
    .await;

    let problem = expect_problem(readyz(&server).await, 503, "readyz without a replica").await;
    assert_eq!(problem["type"], "urn:plexus:problem:unavailable");

    let resp = server
        .publish_with("orders", "first", &[("Idempotency-Key", "k1")])
        .await;
    assert!(
        resp.headers().contains_key("retry-after"),
        "a 503 says when to retry"
    );
    let problem = expect_problem(resp, 503, "a publish without a replica").await;
    assert_eq!(problem["type"], NOT_REPLICATED, "{problem}");
    let resp = server
        .client()
        .post(server.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(r#"[{"topic":"orders","data":"b1"},{"topic":"audit","data":"b2"}]"#)
        .send()
        .await
        .expect("batch");
    let problem = expect_problem(resp, 503, "a batch of two topics without a replica").await;
    assert_eq!(problem["type"], NOT_REPLICATED, "{problem}");
    let resp = server
        .client()
        .post(server.url("/v1/queues/work/jobs"))
        .body("job")
        .send()
        .await
        .expect("submit");
    let problem = expect_problem(resp, 503, "a job submit without a replica").await;
    assert_eq!(problem["type"], NOT_REPLICATED, "{problem}");

    // Stored on the master, but never shown: not by a poll, not by the topic's numbers.
    for topic in ["orders", "audit"] {
        let page = server.read(topic, "since=all").await;
        assert!(messages(&page).is_empty(), "{topic}: {page}");
    }

    let replica = RedisServer::start_replica_of(&master).await;
    eventually("/readyz recovers once a replica is attached", || async {
        (readyz(&server).await.status() == StatusCode::OK).then_some(())
    })
    .await;

    // The retry with the first key answers the first result, now replicated and shown.
    let resp = server
        .publish_with("orders", "first", &[("Idempotency-Key", "k1")])
        .await;
    let replayed = resp.headers().get("idempotent-replayed").cloned();
    let (status, _, first) = into_json(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(seq(&first), 1, "the first result: {first}");
    assert_eq!(
        replayed.as_ref().and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second = server.publish("orders", "second").await;
    let all: Vec<(u64, Vec<u8>)> = server
        .read_all("orders")
        .await
        .iter()
        .map(|m| (seq(m), payload(m)))
        .collect();
    let want = |s: &str| s.as_bytes().to_vec();
    assert!(
        all.contains(&(1, want("first"))) && all.contains(&(seq(&second), want("second"))),
        "every acknowledged message is shown with its payload: {all:?}"
    );
    let resp = server
        .client()
        .post(server.url("/v1/queues/work/jobs"))
        .body("job")
        .send()
        .await
        .expect("submit");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "a job submit works again"
    );
    drop(replica);
}

/// Replicas, but not `replicated`: one warning at start that a failover can lose messages.
#[tokio::test]
async fn replicas_without_replicated_durability_log_a_warning() {
    let master = RedisServer::start().await;
    let _replica = RedisServer::start_replica_of(&master).await;
    let server = Server::start(&["--storage", &master.url()]).await;
    eventually("the warning about replicas", || async {
        logs(&server)
            .contains("durability is not replicated")
            .then_some(())
    })
    .await;
    server.publish("orders", "a").await;
}

/// What one failover run saw.
struct Failover {
    /// Every acknowledged publish, seq → payload, before and after the failover.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged publishes made while the replica was paused.
    acked_while_paused: usize,
    /// What a reader finds after the failover, seq → payload.
    found: BTreeMap<u64, Vec<u8>>,
    /// The seqs a reader with the pre-failover cursor reads.
    resumed: Vec<u64>,
    /// Seqs given to two different acknowledged payloads.
    reused: Vec<u64>,
}

/// A payload whose replication stream the kernel's socket buffers cannot hold for a paused
/// replica many times over (30 of them are ~30 MB).
fn large(i: usize) -> Vec<u8> {
    let mut p = format!("paused-{i}:").into_bytes();
    p.resize(1_000_000, b'a' + (i % 26) as u8);
    p
}

/// The issue's scenario on a real Redis Cluster of 3 masters and 3 replicas, two hubs:
/// 50 publishes; the topic master's replica paused (SIGSTOP); 30 large publishes; the master
/// killed (SIGKILL), the replica resumed and promoted, the old master back as its replica.
async fn failover(replicated: bool) -> Failover {
    let mut cluster = RedisCluster::start_with_replicas(
        1,
        &[
            "--cluster-node-timeout",
            "2000",
            "--cluster-replica-validity-factor",
            "0",
            "--repl-diskless-sync-delay",
            "0",
        ],
    )
    .await;
    let url = cluster.url();
    let mut args = vec!["--storage", url.as_str()];
    if replicated {
        args.extend([
            "--durability",
            "replicated",
            "--redis-replica-timeout",
            "2s",
        ]);
    }
    let a = Server::start(&args).await;
    let b = Server::start(&args).await;
    let topic = "orders";

    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut reused = Vec::new();
    let mut ack = |seq: u64, data: Vec<u8>, reused: &mut Vec<u64>| {
        if let Some(before) = acked.insert(seq, data.clone())
            && before != data
        {
            reused.push(seq);
        }
    };
    for i in 1..=50 {
        let node = if i % 2 == 0 { &a } else { &b };
        let data = format!("before-{i}").into_bytes();
        let done = node.publish(topic, data.clone()).await;
        ack(seq(&done), data, &mut reused);
    }
    let page = b.read(topic, "since=all&limit=1000").await;
    assert_eq!(messages(&page).len(), 50);
    let cursor = next(&page);

    let master = cluster.owner_of(&format!("plexus:s:{{{topic}}}"));
    let replica = *cluster
        .replicas_of(master)
        .first()
        .expect("the topic's master has a replica");
    cluster.node(replica).pause();

    // Readers poll both hubs from the cursor while the replica is paused, until the master
    // dies: under `replicated` none of them may ever see a message the replica lacks.
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pollers: Vec<_> = [&a, &b]
        .into_iter()
        .map(|node| {
            let (client, url) = (
                node.client().clone(),
                node.url(&format!(
                    "/v1/topics/{topic}/messages?since={cursor}&wait=1"
                )),
            );
            let polling = polling.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while polling.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(resp) = client.get(&url).send().await else {
                        continue;
                    };
                    if let Ok(page) = resp.json::<Value>().await
                        && let Some(got) = page["messages"].as_array()
                    {
                        seen.extend(got.iter().map(seq));
                    }
                }
                seen
            })
        })
        .collect();

    // 30 large publishes at once, through both hubs.
    let tasks: Vec<_> = (1..=30)
        .map(|i| {
            let node = if i % 2 == 0 { &a } else { &b };
            let (client, url) = (
                node.client().clone(),
                node.url(&format!("/v1/topics/{topic}/messages")),
            );
            tokio::spawn(async move {
                let data = large(i);
                let resp = client
                    .post(url)
                    .body(data.clone())
                    .send()
                    .await
                    .expect("publish");
                let status = resp.status();
                let retry_after = resp.headers().contains_key("retry-after");
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                (data, status, retry_after, body)
            })
        })
        .collect();
    let mut acked_while_paused = 0;
    for task in tasks {
        let (data, status, retry_after, body) = task.await.expect("publish task");
        if status == StatusCode::CREATED {
            acked_while_paused += 1;
            ack(seq(&body), data, &mut reused);
        } else if replicated {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["type"], NOT_REPLICATED, "{body}");
            assert!(retry_after, "a 503 says when to retry");
        }
    }
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut seen_while_paused = Vec::new();
    for poller in pollers {
        seen_while_paused.extend(poller.await.expect("poller"));
    }
    if replicated {
        // Visible only once replicated: neither hub shows what the replica does not hold.
        assert!(
            seen_while_paused.is_empty(),
            "polls saw unreplicated messages: {seen_while_paused:?}"
        );
        for node in [&a, &b] {
            let page = node.read(topic, &format!("since={cursor}")).await;
            assert!(
                messages(&page).is_empty(),
                "nothing unreplicated is shown: {:?}",
                messages(&page).iter().map(seq).collect::<Vec<_>>()
            );
        }
    }

    cluster.node_mut(master).kill();
    let died = Instant::now();
    cluster.node(replica).resume();
    cluster.wait_for_master(replica).await;
    // The old master comes back (empty: no persistence) as the new master's replica, so a
    // replicated write can be confirmed again.
    cluster.node_mut(master).start_again().await;

    // Publishing works again within 30 s of the master's death.
    let mut i = 0;
    let (data, done) = loop {
        i += 1;
        let data = format!("after-{i}").into_bytes();
        let resp = a.publish_with(topic, data.clone(), &[]).await;
        if resp.status() == StatusCode::CREATED {
            let (_, _, done) = into_json(resp).await;
            break (data, done);
        }
        assert!(
            died.elapsed() < Duration::from_secs(30),
            "publishing did not work again within 30 s of the master's death: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ack(seq(&done), data, &mut reused);
    for i in 1..=10 {
        let data = format!("later-{i}").into_bytes();
        let done = b.publish(topic, data.clone()).await;
        ack(seq(&done), data, &mut reused);
    }

    let found = a
        .read_all(topic)
        .await
        .iter()
        .map(|m| (seq(m), payload(m)))
        .collect();
    // The reader that held the pre-failover cursor resumes on the other hub.
    let mut resumed = Vec::new();
    let mut since = cursor;
    loop {
        let page = b.read(topic, &format!("since={since}&limit=1000")).await;
        let gaps = page["gaps"].as_array().cloned().unwrap_or_default();
        if replicated {
            assert!(gaps.is_empty(), "no gap on a resume: {gaps:?}");
        } else {
            // Under the default durability the replica may lag behind even the first 50
            // messages, so the promoted log can end before the reader's cursor: the reader is
            // told with a `reset` gap (the documented loss), never handed a different message
            // silently under a seq it already read.
            assert!(
                gaps.iter().all(|g| g["reason"] == "reset"),
                "only a reset gap on a resume: {gaps:?}"
            );
        }
        let got = messages(&page);
        if got.is_empty() {
            break;
        }
        resumed.extend(got.iter().map(seq));
        since = next(&page);
    }
    Failover {
        acked,
        acked_while_paused,
        found,
        resumed,
        reused,
    }
}

/// `replicated`: no write made while the replica is paused is acknowledged; after the
/// failover every acknowledged message is there with its own payload, no seq was given to two
/// acknowledged payloads, and the reader resuming from its old cursor skips none of them.
#[tokio::test]
async fn replicated_a_master_failover_loses_no_acknowledged_message() {
    let run = failover(true).await;
    assert_eq!(
        run.acked_while_paused, 0,
        "nothing is acknowledged unreplicated"
    );
    assert!(run.reused.is_empty(), "seqs reused: {:?}", run.reused);
    for (seq, data) in &run.acked {
        assert!(
            run.found.get(seq) == Some(data),
            "acknowledged seq {seq} is {}",
            match run.found.get(seq) {
                Some(_) => "there with another payload",
                None => "missing",
            }
        );
    }
    for seq in run.acked.keys().filter(|&&s| s > 50) {
        assert!(
            run.resumed.contains(seq),
            "the resumed reader skipped {seq}: {:?}",
            run.resumed
        );
    }
    assert!(
        run.resumed.windows(2).all(|w| w[0] < w[1]),
        "in seq order, once each: {:?}",
        run.resumed
    );
}

/// The default durability on the same scenario: acknowledged messages are lost and their
/// seqs given again, as docs/API.md warns.
#[tokio::test]
async fn default_durability_a_master_failover_loses_acknowledged_messages() {
    let run = failover(false).await;
    assert_eq!(
        run.acked_while_paused, 30,
        "every write is acknowledged at once"
    );
    let lost = run
        .acked
        .iter()
        .filter(|(seq, data)| run.found.get(seq) != Some(data))
        .count();
    assert!(
        lost > 0 || !run.reused.is_empty(),
        "the failover loses acknowledged messages under the default durability"
    );
    assert!(
        !run.reused.is_empty(),
        "the lost messages' seqs are given again to new messages"
    );
}
