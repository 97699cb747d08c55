//! The sqlite schema's migrations: a database written before the schema had a version
//! (`tests/fixtures/sqlite-v0`, made through the HTTP API by its `make.sh`) opened by this
//! binary is adopted as version 1 and keeps every message, job and idempotency key; a
//! database of a newer version than the binary knows is refused.
//!
//! What survives is checked twice: against the fixture file itself, read with SQLite (every
//! topic, message, job and key, byte for byte), and against what `make.sh` wrote, as tables
//! here (so that a fixture made wrong cannot pass for a migration kept right).

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::StatusCode;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use crate::jobs::millis;
use crate::kit::cli::{plexus, run_to_failure};
use crate::kit::{Server, assert_time, b64_decode, eventually, into_json, payload};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sqlite-v0/plexus.db"
);

/// The fixture's jobs (see its README), in the order `make.sh` submitted them.
const JOB_A: &str = "ddd3c850895779ec595f2a30dc2f026b";
const JOB_B: &str = "144c2fa389b0ba14640977506ca1f208";
const JOB_C: &str = "42d2d21289ae0959f39868ef6837abdd";
const JOB_D: &str = "65b9c336f4f0936348e7e8990d6865ab";
const JOB_E: &str = "f5eb74345f37b432051f44f9e0e10635";

/// `make.sh`'s `--jobs-backoff 5m`: B's first failure delays it by that.
const BACKOFF_MS: i64 = 5 * 60 * 1000;

/// A job as `make.sh` left it: id, state, attempts, max_attempts, result, error.
type Made = (
    &'static str,
    &'static str,
    i64,
    i64,
    Option<&'static [u8]>,
    Option<&'static str>,
);

/// A message: as the fixture stores it, or as a poll serves it. Numbers are SQLite's (i64).
#[derive(Clone, Debug, PartialEq)]
struct Message {
    seq: i64,
    /// Milliseconds since the epoch.
    time: i64,
    event: Option<String>,
    data: Vec<u8>,
}

/// A topic's counters and every message it retains.
#[derive(Clone, Debug, PartialEq)]
struct Topic {
    first_seq: i64,
    last_seq: i64,
    count: i64,
    bytes: i64,
    last_time: Option<i64>,
    messages: Vec<Message>,
}

/// Every field of a job that the job JSON shows to anyone but its claimer.
#[derive(Clone, Debug, PartialEq)]
struct Job {
    queue: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    created: i64,
    updated: i64,
    payload: Vec<u8>,
    result: Option<Vec<u8>>,
    error: Option<String>,
    run_at: Option<i64>,
}

/// The fixture file as it is, read straight from its tables.
struct Fixture {
    topics: BTreeMap<String, Topic>,
    jobs: BTreeMap<String, Job>,
    /// A message idempotency key: topic, key, the seq it names.
    message_keys: Vec<(String, String, i64)>,
    /// A job idempotency key: queue, key, the job it names.
    job_keys: Vec<(String, String, String)>,
}

impl Fixture {
    /// Reads a copy, read-only: SQLite keeps a `-shm` file beside a WAL database even to read
    /// it, which must not appear among the committed fixtures.
    fn read() -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        copy_fixture(dir.path());
        let conn = Connection::open_with_flags(
            dir.path().join("plexus.db"),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the fixture");
        let mut topics = BTreeMap::new();
        let sql = "SELECT name, first_seq, head, msg_count, bytes, last_time FROM topics";
        for (name, topic) in rows(&conn, sql, |r| {
            let topic = Topic {
                first_seq: r.get(1)?,
                last_seq: r.get(2)?,
                count: r.get(3)?,
                bytes: r.get(4)?,
                last_time: Some(r.get(5)?),
                messages: Vec::new(),
            };
            Ok((r.get::<_, String>(0)?, topic))
        }) {
            topics.insert(name, topic);
        }
        let sql = "SELECT name, seq, time, event, data FROM messages \
                   JOIN topics ON topics.id = messages.topic_id ORDER BY name, seq";
        for (name, message) in rows(&conn, sql, |r| {
            let message = Message {
                seq: r.get(1)?,
                time: r.get(2)?,
                event: r.get(3)?,
                data: r.get(4)?,
            };
            Ok((r.get::<_, String>(0)?, message))
        }) {
            let topic = topics.get_mut(&name).expect("a message of a known topic");
            topic.messages.push(message);
        }
        let sql = "SELECT name, key, seq FROM idempotency \
                   JOIN topics ON topics.id = idempotency.topic_id ORDER BY topic_id, seq";
        let message_keys = rows(&conn, sql, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        let mut jobs = BTreeMap::new();
        let mut job_keys = Vec::new();
        let sql = "SELECT id, queue, state, attempts, max_attempts, created, updated, payload, \
                   result, error, run_at, idem_key FROM jobs ORDER BY created";
        for (id, job, key) in rows(&conn, sql, |r| {
            let job = Job {
                queue: r.get(1)?,
                state: r.get(2)?,
                attempts: r.get(3)?,
                max_attempts: r.get(4)?,
                created: r.get(5)?,
                updated: r.get(6)?,
                payload: r.get(7)?,
                result: r.get(8)?,
                error: r.get(9)?,
                run_at: r.get(10)?,
            };
            Ok((r.get::<_, String>(0)?, job, r.get::<_, Option<String>>(11)?))
        }) {
            if let Some(key) = key {
                job_keys.push((job.queue.clone(), key, id.clone()));
            }
            jobs.insert(id, job);
        }
        Fixture {
            topics,
            jobs,
            message_keys,
            job_keys,
        }
    }
}

/// Every row of a query, each made into a `T` by `row` (whose types the columns must have).
fn rows<T>(
    conn: &Connection,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    stmt.query_map([], row)
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Replaces a data directory's database with a copy of the fixture.
fn copy_fixture(dir: &Path) {
    for file in ["plexus.db", "plexus.db-wal", "plexus.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::copy(FIXTURE, dir.join("plexus.db")).expect("copy the fixture");
}

fn user_version(dir: &Path) -> u32 {
    let conn = Connection::open(dir.join("plexus.db")).expect("open the database");
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("read user_version")
}

/// A server on a copy of the fixture. Retention by age would expire the fixture's messages
/// a week after it was made: the test asks for a century. Auth is open, so the server
/// lists every topic (`_jobs.*` and `_queues.*` included) to everyone.
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

/// Every topic the server lists, with every message a poll from `since=all` reads of it.
async fn served_topics(server: &Server) -> BTreeMap<String, Topic> {
    let mut out = BTreeMap::new();
    for info in server.topics().await {
        let name = info["topic"].as_str().expect("a topic name").to_owned();
        let number = |field: &str| {
            info[field]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: no {field} in {info}"))
        };
        let messages = server
            .read_all(&name)
            .await
            .iter()
            .map(|m| {
                assert_eq!(m["topic"], name.as_str(), "{m}");
                assert_time(&m["time"]);
                Message {
                    seq: m["seq"].as_i64().expect("a seq"),
                    time: millis(&m["time"]),
                    event: m["event"].as_str().map(str::to_owned),
                    data: payload(m),
                }
            })
            .collect();
        let topic = Topic {
            first_seq: number("first_seq"),
            last_seq: number("last_seq"),
            count: number("messages"),
            bytes: number("bytes"),
            last_time: (!info["last_publish"].is_null()).then(|| millis(&info["last_publish"])),
            messages,
        };
        out.insert(name, topic);
    }
    out
}

/// Text as `name`, anything else as `name_base64` (the job JSON's rule); `None` if neither.
fn text_or_base64(job: &Value, name: &str) -> Option<Vec<u8>> {
    let as_base64 = format!("{name}_base64");
    match (&job[name], &job[as_base64.as_str()]) {
        (Value::Null, Value::Null) => None,
        (Value::String(text), Value::Null) => Some(text.as_bytes().to_vec()),
        (Value::Null, Value::String(b64)) => {
            Some(b64_decode(b64).unwrap_or_else(|| panic!("{name}_base64 in {job}")))
        }
        _ => panic!("one of {name} and {name}_base64 at most: {job}"),
    }
}

/// `GET /v1/jobs/{id}`: its JSON, and the job it shows. No field is left unread: one the job
/// JSON gained would fail here until the fixture's checks cover it.
async fn served_job(server: &Server, id: &str) -> (Value, Job) {
    let (status, _, value) = server.get_json(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "GET /v1/jobs/{id}: {value}");
    let known = [
        "id",
        "queue",
        "state",
        "attempts",
        "max_attempts",
        "created",
        "updated",
        "payload",
        "payload_base64",
        "result",
        "result_base64",
        "error",
        "run_at",
    ];
    let fields = value.as_object().expect("the job JSON is an object");
    for field in fields.keys() {
        assert!(known.contains(&field.as_str()), "{id}: {field} in {value}");
    }
    assert_eq!(value["id"], id, "{value}");
    let string = |field: &str| {
        value[field]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: no {field} in {value}"))
            .to_owned()
    };
    let number = |field: &str| {
        value[field]
            .as_i64()
            .unwrap_or_else(|| panic!("{id}: no {field} in {value}"))
    };
    let job = Job {
        queue: string("queue"),
        state: string("state"),
        attempts: number("attempts"),
        max_attempts: number("max_attempts"),
        created: millis(&value["created"]),
        updated: millis(&value["updated"]),
        payload: text_or_base64(&value, "payload").unwrap_or_else(|| panic!("no payload: {value}")),
        result: text_or_base64(&value, "result"),
        error: value["error"].as_str().map(str::to_owned),
        run_at: (!value["run_at"].is_null()).then(|| millis(&value["run_at"])),
    };
    (value, job)
}

async fn publish(
    server: &Server,
    topic: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, bool) {
    let resp = server.publish_with(topic, body, headers).await;
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let (status, _, value) = into_json(resp).await;
    (status, value, replayed)
}

async fn submit(
    server: &Server,
    queue: &str,
    body: Vec<u8>,
    key: &str,
) -> (StatusCode, Value, bool) {
    let resp = server
        .client()
        .post(server.url(&format!("/v1/queues/{queue}/jobs")))
        .header("Idempotency-Key", key)
        .body(body)
        .send()
        .await
        .expect("send a job submit");
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let (status, _, value) = into_json(resp).await;
    (status, value, replayed)
}

fn ev(name: &str) -> Option<String> {
    Some(name.to_owned())
}

/// `(seq, event, payload)` of a topic's messages.
fn contents(topic: &Topic) -> Vec<(i64, Option<String>, Vec<u8>)> {
    topic
        .messages
        .iter()
        .map(|m| (m.seq, m.event.clone(), m.data.clone()))
        .collect()
}

#[tokio::test]
async fn a_database_from_before_versions_keeps_every_message_job_and_key() {
    let fixture = Fixture::read();
    let mut server = on_fixture().await;

    // C was running; its lease (stored with it) ran out long ago, so the sweeper puts it back,
    // then announces that on `_jobs.{C}` and `_queues.work` (one commit, after the job's).
    // Nothing else changes the store once both are done.
    let c_topic = format!("_jobs.{JOB_C}");
    eventually(
        "the expired lease of job C is swept and announced",
        || async {
            let (_, c) = served_job(&server, JOB_C).await;
            let announced = server.topic_info(&c_topic).await["last_seq"] == 3;
            (c.state == "queued" && announced).then_some(())
        },
    )
    .await;

    // Every job, every field: as stored, but for what the sweep did to C.
    let mut jobs = BTreeMap::new();
    let mut job_json = BTreeMap::new();
    for id in fixture.jobs.keys() {
        let (value, job) = served_job(&server, id).await;
        jobs.insert(id.clone(), job);
        job_json.insert(id.clone(), value);
    }
    let mut want_jobs = fixture.jobs.clone();
    let c = want_jobs.get_mut(JOB_C).expect("job C");
    assert!(jobs[JOB_C].updated > c.updated, "{}", job_json[JOB_C]);
    c.updated = jobs[JOB_C].updated;
    c.state = "queued".into();
    c.error = Some("the lease ran out".into());
    assert_eq!(jobs, want_jobs, "every job as the fixture stores it");

    // Every topic, every message (seq, time, event, payload bytes), and every topic's counters:
    // as stored, plus the sweep's announcement of C on `_jobs.{C}` and `_queues.work`.
    let topics = served_topics(&server).await;
    let mut want_topics = fixture.topics.clone();
    for name in [c_topic.clone(), "_queues.work".to_owned()] {
        let want = want_topics.get_mut(&name).expect("a topic of the fixture");
        let swept = topics[&name].messages.last().expect("a message").clone();
        assert_eq!(
            (swept.seq, swept.event.as_deref()),
            (want.last_seq + 1, Some("queued")),
            "{name}: the sweep's announcement follows the fixture's messages"
        );
        let data: Value = serde_json::from_slice(&swept.data).expect("the job JSON");
        assert_eq!(data, job_json[JOB_C], "{name}: C as it is now");
        want.last_seq += 1;
        want.count += 1;
        want.bytes += swept.data.len() as i64;
        want.last_time = Some(swept.time);
        want.messages.push(swept);
    }
    assert_eq!(topics, want_topics, "every topic as the fixture stores it");

    // What make.sh wrote (the fixture's README): the topics and the messages published.
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    let mut want_names = vec!["_queues.work", "notes", "orders", "scratch", "sensors.temp"];
    let job_topics = [JOB_A, JOB_B, JOB_C, JOB_D, JOB_E].map(|id| format!("_jobs.{id}"));
    want_names.extend(job_topics.iter().map(String::as_str));
    want_names.sort_unstable();
    assert_eq!(names, want_names);
    assert_eq!(
        contents(&topics["orders"]),
        vec![
            (1, ev("created"), br#"{"id":1,"total":"9.50"}"#.to_vec()),
            (2, ev("paid"), br#"{"id":1}"#.to_vec()),
            (3, ev("created"), br#"{"id":2,"total":"3.00"}"#.to_vec()),
        ]
    );
    assert_eq!(
        contents(&topics["sensors.temp"]),
        vec![
            (1, None, b"head\x00\x01\x02\xff\xfe\n\r\x80tail".to_vec()),
            (2, None, Vec::new()),
            (3, None, vec![0x00, 0xff, 0x10]),
        ]
    );
    assert_eq!(
        contents(&topics["notes"]),
        vec![
            (1, ev("note"), b"first note".to_vec()),
            (2, None, b"second note".to_vec()),
        ]
    );
    let scratch = &topics["scratch"];
    assert_eq!(
        (scratch.first_seq, scratch.last_seq, scratch.count),
        (3, 2, 0),
        "a deleted topic keeps its counter: {scratch:?}"
    );

    // The jobs make.sh left, submitted in this order on queue `work` with the payloads
    // `{"task":"a"}` to `{"task":"e"}`: state, attempts, max_attempts, result, error.
    let made: [Made; 5] = [
        (JOB_A, "succeeded", 1, 5, Some(b"result\x00\xff"), None),
        (JOB_B, "queued", 1, 5, None, Some("disk full")),
        (JOB_C, "queued", 1, 5, None, Some("the lease ran out")),
        (JOB_D, "dead", 1, 1, None, Some("bad input")),
        (JOB_E, "queued", 0, 5, None, None),
    ];
    let mut by_creation: Vec<(&String, &Job)> = jobs.iter().collect();
    by_creation.sort_by_key(|(_, job)| job.created);
    let ids: Vec<&str> = by_creation.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, made.map(|m| m.0), "the jobs, in the order submitted");
    for ((id, state, attempts, max_attempts, result, error), task) in made.into_iter().zip('a'..) {
        let job = &jobs[id];
        let payload = format!(r#"{{"task":"{task}"}}"#);
        assert_eq!(
            (
                job.queue.as_str(),
                job.state.as_str(),
                job.attempts,
                job.max_attempts,
                job.payload.as_slice(),
                job.result.as_deref(),
                job.error.as_deref(),
            ),
            (
                "work",
                state,
                attempts,
                max_attempts,
                payload.as_bytes(),
                result,
                error
            ),
            "{id}: {}",
            job_json[id]
        );
        // Only B's failure put it off, by the backoff.
        let delay = job.run_at.map(|at| at - job.updated);
        let want_delay = (id == JOB_B).then_some(BACKOFF_MS);
        assert_eq!(delay, want_delay, "{id}: run_at in {}", job_json[id]);
    }

    // Their events: each state a job went through, on `_jobs.{id}`, with the job JSON of
    // that moment (its state and attempts); each (re)queueing also on `_queues.work`.
    let events = |topic: &str| -> Vec<(String, String, i64)> {
        topics[topic]
            .messages
            .iter()
            .map(|m| {
                let data: Value = serde_json::from_slice(&m.data).expect("the job JSON");
                let event = m.event.clone().expect("an event");
                assert_eq!(data["state"], event.as_str(), "{topic} {}: {data}", m.seq);
                let id = data["id"].as_str().expect("an id").to_owned();
                (id, event, data["attempts"].as_i64().expect("attempts"))
            })
            .collect()
    };
    let history = |id: &str, states: &[(&str, i64)]| -> Vec<(String, String, i64)> {
        states
            .iter()
            .map(|(state, attempts)| (id.to_owned(), (*state).to_owned(), *attempts))
            .collect()
    };
    let lifetimes: [(&str, &[(&str, i64)]); 5] = [
        (JOB_A, &[("queued", 0), ("running", 1), ("succeeded", 1)]),
        (JOB_B, &[("queued", 0), ("running", 1), ("queued", 1)]),
        (JOB_C, &[("queued", 0), ("running", 1), ("queued", 1)]),
        (JOB_D, &[("queued", 0), ("running", 1), ("dead", 1)]),
        (JOB_E, &[("queued", 0)]),
    ];
    for (id, states) in lifetimes {
        assert_eq!(events(&format!("_jobs.{id}")), history(id, states), "{id}");
    }
    let queued = [
        (JOB_A, 0),
        (JOB_B, 0),
        (JOB_B, 1),
        (JOB_C, 0),
        (JOB_D, 0),
        (JOB_E, 0),
        (JOB_C, 1),
    ];
    let want_queued: Vec<_> = queued
        .iter()
        .map(|(id, attempts)| ((*id).to_owned(), "queued".to_owned(), *attempts))
        .collect();
    assert_eq!(events("_queues.work"), want_queued);

    // Every message idempotency key: a replay of the message it names answers its seq.
    let keys: Vec<(&str, &str, i64)> = fixture
        .message_keys
        .iter()
        .map(|(topic, key, seq)| (topic.as_str(), key.as_str(), *seq))
        .collect();
    assert_eq!(
        keys,
        [
            ("orders", "order-1", 1),
            ("orders", "order-2", 3),
            ("sensors.temp", "reading-1", 1),
            ("sensors.temp", "reading-3", 3),
            ("notes", "note-1", 1),
        ]
    );
    for (topic, key, seq) in keys {
        let first = topics[topic].messages.iter().find(|m| m.seq == seq);
        let first = first.unwrap_or_else(|| panic!("{topic} {key}: no message {seq}"));
        let mut headers = vec![("Idempotency-Key", key)];
        if let Some(event) = &first.event {
            headers.push(("Plexus-Event", event.as_str()));
        }
        let (status, value, replayed) = publish(&server, topic, first.data.clone(), &headers).await;
        assert_eq!(status, StatusCode::CREATED, "{topic} {key}: {value}");
        assert_eq!(value["seq"], seq, "{topic} {key}: {value}");
        assert!(replayed, "{topic} {key}: Idempotent-Replayed");
        let other_body = b"another body".to_vec();
        let key_only = [("Idempotency-Key", key)];
        let (status, value, _) = publish(&server, topic, other_body, &key_only).await;
        assert_eq!(status, StatusCode::CONFLICT, "{topic} {key}: {value}");
    }

    // Every job idempotency key: a replay answers the job it names; another payload conflicts.
    let keys: Vec<(&str, &str, &str)> = fixture
        .job_keys
        .iter()
        .map(|(queue, key, id)| (queue.as_str(), key.as_str(), id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("work", "job-a", JOB_A),
            ("work", "job-b", JOB_B),
            ("work", "job-e", JOB_E),
        ]
    );
    for (queue, key, id) in keys {
        let body = jobs[id].payload.clone();
        let (status, value, replayed) = submit(&server, queue, body, key).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{key}: {value}");
        assert_eq!(value, job_json[id], "{key}: the job as it is");
        assert!(replayed, "{key}: Idempotent-Replayed");
        let other = submit(&server, queue, br#"{"task":"other"}"#.to_vec(), key).await;
        assert_eq!(other.0, StatusCode::CONFLICT, "{key}: {}", other.1);
    }

    // Nothing above wrote: every topic is as it was.
    assert_eq!(
        served_topics(&server).await,
        topics,
        "replays write nothing"
    );

    // Writes go on after the old seqs.
    let (status, value, _) = publish(&server, "orders", b"{}".to_vec(), &[]).await;
    assert_eq!((status, &value["seq"]), (StatusCode::CREATED, &json!(4)));
    let (status, value, _) = publish(&server, "scratch", b"three".to_vec(), &[]).await;
    assert_eq!((status, &value["seq"]), (StatusCode::CREATED, &json!(3)));

    server.sigterm().await;
    // Adopted as version 1, then migrated to the latest (2 adds the consumers table).
    assert_eq!(
        user_version(server.data_dir()),
        2,
        "adopted as version 1, migrated to 2"
    );
}

#[tokio::test]
async fn a_database_of_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    copy_fixture(dir.path());
    {
        let conn = Connection::open(dir.path().join("plexus.db")).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("set user_version");
    }
    // Through the CLI runner: should `serve` start after all, it is killed at the runner's
    // deadline and the test fails, rather than hanging.
    let out = run_to_failure(
        plexus()
            .args(["serve", "--storage", "sqlite", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path()),
        "plexus serve on a database of schema version 99",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schema version 99") && stderr.contains("newer"),
        "the error says why: {stderr}"
    );
    assert_eq!(user_version(dir.path()), 99, "left as it was");
}
