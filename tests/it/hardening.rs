//! Hardening of the store (docs/SECURITY.md): on Redis a job and its events are one script,
//! so a hub killed mid-work leaves every job's state equal to its last event.

use crate::kit::Engine;

#[tokio::test]
async fn on_redis_a_job_and_its_last_event_agree_after_sigkill() {
    crate::regression::jobs_and_their_last_events_agree_after_sigkill(Engine::Redis).await;
}

// `limits.max_topics_total`: a write that would create a topic beyond the cap gets `507`
// problem+json and stores nothing; existing topics keep accepting, on every engine.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::kit::{Server, expect_problem};

/// The names of the topics the hub lists (reserved ones included: open mode).
async fn listed(server: &Server) -> Vec<String> {
    server
        .topics()
        .await
        .iter()
        .filter_map(|t| t["topic"].as_str().map(str::to_owned))
        .collect()
}

async fn too_many(resp: reqwest::Response, what: &str) {
    let problem = expect_problem(resp, 507, what).await;
    assert_eq!(
        problem["type"],
        json!("urn:plexus:problem:too-many-topics"),
        "{what}: {problem}"
    );
}

async fn the_topic_cap_holds_on(engine: Engine) {
    use crate::jobs::{claim, complete, events, id, submit, submit_raw};

    // Five topics: a, b, c, then one job's `_jobs.{id}` and its `_queues.q`.
    let server = Server::start_on(engine, &["--max-topics-total", "5"]).await;
    for topic in ["a", "b", "c"] {
        server.publish(topic, "first").await;
    }
    // A job needs two new topics: room for exactly one job.
    let job = submit(&server, "q", "work").await;
    let mut all = listed(&server).await;
    all.sort();
    assert_eq!(all.len(), 5, "{engine:?}: {all:?}");

    // Beyond the cap: a publish, a batch naming one new topic among old ones, a job.
    too_many(
        server.publish_with("d", "no room", &[]).await,
        "publish to d",
    )
    .await;
    let batch = json!([{"topic": "a", "data": "x"}, {"topic": "e", "data": "x"}]).to_string();
    too_many(
        server.batch_raw(batch, "application/json").await,
        "a batch naming e",
    )
    .await;
    too_many(
        submit_raw(&server, "q", "", "second", &[]).await,
        "a second job (its own _jobs topic)",
    )
    .await;
    // A WebSocket publish frame: an `error` frame with the same status; the socket goes on.
    let mut ws = crate::kit::clients::Ws::connect(&server, "").await;
    let mut others = Vec::new();
    let refused = ws
        .call(
            json!({"op":"publish","id":1,"topic":"f","data":"x"}),
            &mut others,
        )
        .await;
    assert_eq!(
        (refused["op"].clone(), refused["status"].clone()),
        (json!("error"), json!(507)),
        "{engine:?}: {refused}"
    );
    // Nothing of them was stored: a still holds one message, no new topic, no second job.
    let mut now = listed(&server).await;
    now.sort();
    assert_eq!(now, all, "{engine:?}: no topic was created");
    let a = server.read_all("a").await;
    assert_eq!(
        a.len(),
        1,
        "{engine:?}: the refused batch stored nothing: {a:?}"
    );
    let (status, _, _) = server.get_json("/v1/topics/d").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{engine:?}");

    // Existing topics keep accepting: a publish (HTTP and WebSocket), a batch, the job's own
    // state changes.
    ws.ok(
        json!({"op":"publish","id":2,"topic":"a","data":"ws"}),
        &mut others,
    )
    .await;
    server.publish("a", "second").await;
    server
        .batch(&[
            json!({"topic": "b", "data": "y"}),
            json!({"topic": "c", "data": "y"}),
        ])
        .await;
    let claimed = claim(&server, "q", "60").await;
    assert_eq!(id(&claimed), id(&job), "{engine:?}: the only job");
    complete(&server, &claimed, "done").await;
    let names: Vec<Value> = events(&server, &id(&job))
        .await
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("queued"), json!("running"), json!("succeeded")],
        "{engine:?}"
    );
    let second = crate::jobs::try_claim(&server, "q", "wait=0").await;
    assert!(second.is_none(), "{engine:?}: no second job: {second:?}");
}

#[tokio::test]
async fn the_topic_cap_holds_on_memory() {
    the_topic_cap_holds_on(Engine::Memory).await;
}

#[tokio::test]
async fn the_topic_cap_holds_on_sqlite() {
    the_topic_cap_holds_on(Engine::Sqlite).await;
}

#[tokio::test]
async fn the_topic_cap_holds_on_redis() {
    the_topic_cap_holds_on(Engine::Redis).await;
}

// A full disk: `/readyz` answers `503` once the data directory's file system has less free
// space than the hub's reserve, before any commit fails on it, and `200` again when space
// comes back. Run for real on a 20 MiB tmpfs (needs root to mount; skipped with a reason
// otherwise).

/// Unmounts the test's tmpfs when dropped, even when the test fails (lazily: the server's
/// files may still be open).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let stat = rustix::fs::statvfs(dir).expect("statvfs of the data directory");
    stat.f_bavail * stat.f_frsize
}

#[tokio::test]
async fn readyz_sees_a_full_disk_before_a_commit_fails() {
    use std::io::Write;
    let mut server = Server::start_on(Engine::Sqlite, &[]).await;
    // Stopped only to mount over its data directory; how it exits is not this test's subject.
    let _ = server.sigterm().await;
    let dir = server.data_dir().to_path_buf();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
        .arg(&dir)
        .output();
    match &mounted {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!(
                "skipped: cannot mount a 20 MiB tmpfs on {} ({mounted:?}); needs root",
                dir.display()
            );
            return;
        }
    }
    let _unmount = Unmount(dir.clone());
    server.start_again().await;
    let ready = server.get("/readyz", &[]).await;
    assert_eq!(ready.status(), StatusCode::OK, "an empty tmpfs is ready");
    // Fill the file system up to 1 MiB: below the reserve, yet room for small commits.
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).expect("create the filler");
    let chunk = vec![0u8; 64 << 10];
    while free_bytes(&dir) > (1 << 20) + chunk.len() as u64 {
        file.write_all(&chunk).expect("write the filler");
        file.sync_all().expect("sync the filler");
    }
    drop(file);
    let published = server.publish("small", "x").await;
    assert_eq!(published["seq"], 1, "commits still succeed: {published}");
    let problem = expect_problem(
        server.get("/readyz", &[]).await,
        503,
        "readyz with less free space than the reserve",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("full")
            || problem["type"] == "urn:plexus:problem:unavailable",
        "{problem}"
    );
    // The review's probe: 500 KB publishes until the disk is really full fail with 503, the
    // process survives, and `/readyz` stays 503.
    let big = "x".repeat(500_000);
    let mut refused = false;
    for _ in 0..8 {
        let resp = server
            .client()
            .post(server.url("/v1/topics/fill/messages"))
            .body(big.clone())
            .send()
            .await
            .expect("publish");
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = true;
            break;
        }
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert!(refused, "a full disk refuses a 500 KB publish with 503");
    assert_eq!(
        server.get("/readyz", &[]).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Space comes back: ready again, and writes resume.
    std::fs::remove_file(&filler).expect("remove the filler");
    let ready = crate::kit::eventually("readyz recovers once space is back", || async {
        (server.get("/readyz", &[]).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    let () = ready;
    let published = server.publish("after", "x").await;
    assert_eq!(published["seq"], 1, "{published}");
    let _ = server.sigterm().await;
}

// A WebSocket's subscriptions share one catch-up turn: many subscribe frames on one socket
// whose client does not read hold one page from the hub's budget, not one page each.

/// `plexus_read_budget_bytes` of the server's `/metrics`.
async fn budget_used(server: &Server) -> u64 {
    let text = server
        .get("/metrics", &[])
        .await
        .text()
        .await
        .expect("the metrics text");
    crate::kit::metric(&text, "plexus_read_budget_bytes").unwrap_or(0)
}

#[tokio::test]
async fn a_websocket_holds_one_catch_up_page_however_many_topics_it_subscribes() {
    const TOPICS: usize = 16;
    const PER_TOPIC: usize = 8;
    const SIZE: usize = 256 << 10;
    let server = Server::start_durable(&[]).await;
    for t in 0..TOPICS {
        let items: Vec<Value> = (0..PER_TOPIC)
            .map(|i| json!({"topic": format!("page{t}"), "data": format!("{i:06}{}", "x".repeat(SIZE))}))
            .collect();
        server.batch(&items).await;
    }
    let stall = crate::kit::clients::Dial {
        recv_buffer: Some(4096),
    };
    let mut ws = crate::kit::clients::Ws::connect_with(&server, "", stall).await;
    for t in 0..TOPICS {
        ws.send(json!({"op": "subscribe", "id": t, "topic": format!("page{t}"), "since": "all"}))
            .await;
    }
    crate::kit::eventually("the socket's catch-up holds a page", || async {
        (budget_used(&server).await > 0).then_some(())
    })
    .await;
    // One topic's page is at most its 2 MiB; one page per subscription would be 32 MiB.
    let one_page = (PER_TOPIC * (SIZE + 64)) as u64;
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(budget_used(&server).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("a stalled socket over {TOPICS} topics held at most {most} budget bytes");
    assert!(
        most <= one_page * 2,
        "a stalled socket over {TOPICS} topics held {most} bytes; one page is {one_page}"
    );
    drop(ws);
    crate::kit::eventually("the page is given back when the socket goes", || async {
        (budget_used(&server).await == 0).then_some(())
    })
    .await;
}

// A body trickling a byte at a time keeps making progress, so the idle body timeout never
// cut it. Now a body slower than 1 KiB/s on average once its first `limits.body_timeout` is
// over fails with `408`, on HTTP/1.1 and on an HTTP/2 stream (hyper's client underneath).

async fn a_trickling_body_is_cut(client: reqwest::Client, what: &str) {
    let server = Server::start(&["--body-timeout", "1s"]).await;
    let trickle = futures_util::stream::unfold(0usize, |sent| async move {
        if sent == 600 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")),
            sent + 1,
        ))
    });
    let resp = tokio::time::timeout(
        crate::kit::clients::READ_TIMEOUT,
        client
            .post(server.url("/v1/topics/trickle/messages"))
            .header("content-type", "text/plain")
            .header("content-length", "600")
            .body(reqwest::Body::wrap_stream(trickle))
            .send(),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: the hub answers before the body ends"));
    match resp {
        Ok(resp) => {
            let problem = expect_problem(resp, 408, what).await;
            assert_eq!(problem["type"], "urn:plexus:problem:request-timeout");
        }
        // The hub may reset the stream or close the connection while the body still flows;
        // what matters is that it did so well before the 30 s the trickle needs.
        Err(e) => eprintln!("{what}: the request failed before its body ended: {e}"),
    }
    let page = server.read("trickle", "since=all").await;
    assert!(
        crate::kit::messages(&page).is_empty(),
        "{what}: nothing stored"
    );
}

#[tokio::test]
async fn a_trickling_body_is_cut_on_http1() {
    crate::kit::install_crypto_provider();
    let client = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("an HTTP/1.1 client");
    a_trickling_body_is_cut(client, "HTTP/1.1").await;
}

#[tokio::test]
async fn a_trickling_body_is_cut_on_http2() {
    crate::kit::install_crypto_provider();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    a_trickling_body_is_cut(client, "HTTP/2").await;
}
