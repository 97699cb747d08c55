//! The sqlite schema's migrations: a database written before the schema had a version
//! (`tests/fixtures/sqlite-v0`, made through the HTTP API by its `make.sh`) opened by this
//! binary is adopted as version 1 and keeps every message, job and idempotency key; a
//! database of a newer version than the binary knows is refused.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::kit::{Server, assert_time, eventually, into_json, payload};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sqlite-v0/plexus.db"
);

/// The fixture's jobs (see its README): id, payload, key.
const JOB_A: &str = "ddd3c850895779ec595f2a30dc2f026b";
const JOB_B: &str = "144c2fa389b0ba14640977506ca1f208";
const JOB_C: &str = "42d2d21289ae0959f39868ef6837abdd";
const JOB_D: &str = "65b9c336f4f0936348e7e8990d6865ab";
const JOB_E: &str = "f5eb74345f37b432051f44f9e0e10635";

/// Replaces a data directory's database with a copy of the fixture.
fn copy_fixture(dir: &Path) {
    for file in ["plexus.db", "plexus.db-wal", "plexus.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::copy(FIXTURE, dir.join("plexus.db")).expect("copy the fixture");
}

fn user_version(dir: &Path) -> u32 {
    let conn = rusqlite::Connection::open(dir.join("plexus.db")).expect("open the database");
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("read user_version")
}

/// A server on a copy of the fixture. Retention by age would expire the fixture's messages
/// a week after it was made: the test asks for a century.
async fn on_fixture() -> Server {
    let mut server = Server::start(&["--storage", "sqlite", "--retention-age", "36500d"]).await;
    server.sigterm().await;
    copy_fixture(server.data_dir());
    assert_eq!(
        user_version(server.data_dir()),
        0,
        "the fixture has no version"
    );
    server.start_again().await;
    server
}

/// `(seq, event, payload)` of every message of a topic.
async fn contents(server: &Server, topic: &str) -> Vec<(u64, Option<String>, Vec<u8>)> {
    server
        .read_all(topic)
        .await
        .iter()
        .map(|m| {
            assert_time(&m["time"]);
            (
                m["seq"].as_u64().expect("a seq"),
                m["event"].as_str().map(str::to_owned),
                payload(m),
            )
        })
        .collect()
}

fn ev(name: &str) -> Option<String> {
    Some(name.to_owned())
}

async fn publish(
    server: &Server,
    topic: &str,
    body: &'static [u8],
    headers: &[(&str, &str)],
) -> (StatusCode, Value, bool) {
    let resp = server.publish_with(topic, body, headers).await;
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let (status, _, value) = into_json(resp).await;
    (status, value, replayed)
}

/// A publish to replay: topic, body, headers (the key among them), the seq it first got.
type Replay = (
    &'static str,
    &'static [u8],
    &'static [(&'static str, &'static str)],
    u64,
);

async fn job(server: &Server, id: &str) -> Value {
    let (status, _, value) = server.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/jobs/{id}: {value}");
    value
}

async fn submit(server: &Server, body: &'static str, key: &str) -> (StatusCode, Value, bool) {
    let resp = server
        .client()
        .post(server.url("/v1/queues/work/jobs"))
        .header("Idempotency-Key", key)
        .body(body)
        .send()
        .await
        .expect("send a job submit");
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let (status, _, value) = into_json(resp).await;
    (status, value, replayed)
}

#[tokio::test]
async fn a_database_from_before_versions_keeps_every_message_job_and_key() {
    let mut server = on_fixture().await;

    // Every message, with its seq, event and payload, byte for byte.
    assert_eq!(
        contents(&server, "orders").await,
        vec![
            (1, ev("created"), br#"{"id":1,"total":"9.50"}"#.to_vec()),
            (2, ev("paid"), br#"{"id":1}"#.to_vec()),
            (3, ev("created"), br#"{"id":2,"total":"3.00"}"#.to_vec()),
        ]
    );
    assert_eq!(
        contents(&server, "sensors.temp").await,
        vec![
            (1, None, b"head\x00\x01\x02\xff\xfe\n\r\x80tail".to_vec()),
            (2, None, Vec::new()),
            (3, None, vec![0x00, 0xff, 0x10]),
        ]
    );
    assert_eq!(
        contents(&server, "notes").await,
        vec![
            (1, ev("note"), b"first note".to_vec()),
            (2, None, b"second note".to_vec()),
        ]
    );
    assert_eq!(contents(&server, "scratch").await, vec![]);
    let scratch = server.topic_info("scratch").await;
    assert_eq!(
        (&scratch["first_seq"], &scratch["last_seq"]),
        (&Value::from(3), &Value::from(2)),
        "a deleted topic keeps its counter: {scratch}"
    );
    let events: Vec<_> = contents(&server, &format!("_jobs.{JOB_A}"))
        .await
        .into_iter()
        .map(|(seq, event, _)| (seq, event))
        .collect();
    assert_eq!(
        events,
        vec![(1, ev("queued")), (2, ev("running")), (3, ev("succeeded"))]
    );
    assert_eq!(contents(&server, "_queues.work").await.len(), 6);

    // Every message idempotency key: a replay answers the first seq, another body conflicts.
    let replays: [Replay; 5] = [
        (
            "orders",
            br#"{"id":1,"total":"9.50"}"#,
            &[("Plexus-Event", "created"), ("Idempotency-Key", "order-1")],
            1,
        ),
        (
            "orders",
            br#"{"id":2,"total":"3.00"}"#,
            &[("Plexus-Event", "created"), ("Idempotency-Key", "order-2")],
            3,
        ),
        (
            "sensors.temp",
            b"head\x00\x01\x02\xff\xfe\n\r\x80tail",
            &[("Idempotency-Key", "reading-1")],
            1,
        ),
        (
            "sensors.temp",
            b"\x00\xff\x10",
            &[("Idempotency-Key", "reading-3")],
            3,
        ),
        (
            "notes",
            b"first note",
            &[("Plexus-Event", "note"), ("Idempotency-Key", "note-1")],
            1,
        ),
    ];
    for (topic, body, headers, seq) in replays {
        let (status, value, replayed) = publish(&server, topic, body, headers).await;
        assert_eq!(status, StatusCode::CREATED, "{topic} {headers:?}: {value}");
        assert_eq!(value["seq"], seq, "{topic} {headers:?}: {value}");
        assert!(replayed, "{topic} {headers:?}: Idempotent-Replayed");
    }
    let (status, value, _) = publish(
        &server,
        "orders",
        b"another body",
        &[("Idempotency-Key", "order-1")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");

    // Every job, as it was left.
    let a = job(&server, JOB_A).await;
    assert_eq!(
        (
            &a["state"],
            &a["attempts"],
            &a["payload"],
            &a["result_base64"]
        ),
        (
            &Value::from("succeeded"),
            &Value::from(1),
            &Value::from(r#"{"task":"a"}"#),
            &Value::from("cmVzdWx0AP8=")
        ),
        "{a}"
    );
    let b = job(&server, JOB_B).await;
    assert_eq!(
        (&b["state"], &b["attempts"], &b["error"], &b["run_at"]),
        (
            &Value::from("queued"),
            &Value::from(1),
            &Value::from("disk full"),
            &Value::from("2026-12-04T20:39:55.366Z")
        ),
        "{b}"
    );
    let d = job(&server, JOB_D).await;
    assert_eq!(
        (&d["state"], &d["attempts"], &d["max_attempts"], &d["error"]),
        (
            &Value::from("dead"),
            &Value::from(1),
            &Value::from(1),
            &Value::from("bad input")
        ),
        "{d}"
    );
    let e = job(&server, JOB_E).await;
    assert_eq!(
        (&e["state"], &e["attempts"], &e["payload"]),
        (
            &Value::from("queued"),
            &Value::from(0),
            &Value::from(r#"{"task":"e"}"#)
        ),
        "{e}"
    );
    // C was running; its lease (stored with it) ran out long ago, so the sweeper puts it back.
    let c = eventually("the expired lease of job C is swept", || async {
        let c = job(&server, JOB_C).await;
        (c["state"] == "queued").then_some(c)
    })
    .await;
    assert_eq!(
        (&c["attempts"], &c["error"]),
        (&Value::from(1), &Value::from("the lease ran out")),
        "{c}"
    );

    // Every job idempotency key: a replay answers the first job, another payload conflicts.
    for (key, body, id, state) in [
        ("job-a", r#"{"task":"a"}"#, JOB_A, "succeeded"),
        ("job-b", r#"{"task":"b"}"#, JOB_B, "queued"),
        ("job-e", r#"{"task":"e"}"#, JOB_E, "queued"),
    ] {
        let (status, value, replayed) = submit(&server, body, key).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{key}: {value}");
        assert_eq!(
            (&value["id"], &value["state"]),
            (&Value::from(id), &Value::from(state))
        );
        assert!(replayed, "{key}: Idempotent-Replayed");
    }
    let (status, value, _) = submit(&server, r#"{"task":"other"}"#, "job-a").await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");

    // Writes go on after the old seqs.
    let (status, value, _) = publish(&server, "orders", b"{}", &[]).await;
    assert_eq!(
        (status, &value["seq"]),
        (StatusCode::CREATED, &Value::from(4))
    );
    let (status, value, _) = publish(&server, "scratch", b"three", &[]).await;
    assert_eq!(
        (status, &value["seq"]),
        (StatusCode::CREATED, &Value::from(3))
    );

    server.sigterm().await;
    assert_eq!(user_version(server.data_dir()), 1, "adopted as version 1");
}

#[tokio::test]
async fn a_database_of_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    copy_fixture(dir.path());
    {
        let conn = rusqlite::Connection::open(dir.path().join("plexus.db")).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("set user_version");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "--storage", "sqlite", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("PLEXUS_STORAGE")
        .output()
        .await
        .expect("run plexus serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a newer database must be refused: {stderr}"
    );
    assert!(
        stderr.contains("schema version 99") && stderr.contains("newer"),
        "the error says why: {stderr}"
    );
    assert_eq!(user_version(dir.path()), 99, "left as it was");
}
