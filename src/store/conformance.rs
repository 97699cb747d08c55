//! One behaviour suite for every engine: each test runs against `memory`, `sqlite` and `redis`
//! (a private `redis-server` per test).

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::engine::Engine;
use super::follow::CommitFeed;
use super::jobs::JobStore;
use super::log::{Log, Retention};
use super::redis::test_redis::RedisServer;
use super::redis::{RedisTarget, Replication};
use super::sqlite::{Durability, SqliteLog};
use crate::model::{
    EventName, Job, JobId, JobState, LogBounds, Message, Millis, NewMessage, StoreError, Topic,
    TopicInfo, now_millis,
};

fn t(s: &str) -> Topic {
    s.parse().unwrap()
}

fn msg(topic: &str, data: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        topic: t(topic),
        event: None,
        data: Bytes::from(data.to_owned()),
        idempotency_key: key.map(str::to_owned),
    }
}

/// What keeps an engine's backing alive for a test: the sqlite files, the redis server.
#[allow(dead_code)]
enum Backing {
    None,
    Dir(tempfile::TempDir),
    Redis(RedisServer),
    Replicated(RedisServer, RedisServer),
}

/// Every engine with this retention.
async fn engines(retention: Retention) -> Vec<(&'static str, Engine, Backing)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Engine::sqlite(dir.path(), retention, Durability::Process).unwrap();
    let server = RedisServer::start().await;
    let redis = Engine::redis(&RedisTarget::Single(server.url()), retention, None)
        .await
        .unwrap();
    // `durability = "replicated"`: every write waits for the replica, readers stop at the
    // committed head; every behaviour must hold the same.
    let master = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&master).await;
    let replication = Replication {
        min_replicas: 1,
        timeout: Duration::from_secs(5),
    };
    let replicated = Engine::redis(
        &RedisTarget::Single(master.url()),
        retention,
        Some(replication),
    )
    .await
    .unwrap();
    vec![
        ("memory", Engine::memory(retention), Backing::None),
        ("sqlite", sqlite, Backing::Dir(dir)),
        ("redis", redis, Backing::Redis(server)),
        (
            "redis-replicated",
            replicated,
            Backing::Replicated(master, replica),
        ),
    ]
}

#[tokio::test]
async fn seqs_count_from_one_per_topic() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let r = store
            .log
            .append(vec![
                msg("a", "1", None),
                msg("b", "1", None),
                msg("a", "2", None),
            ])
            .await
            .unwrap();
        let seqs: Vec<_> = r.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, vec![1, 1, 2], "{name}");
        let read = store.log.read(&t("a"), 0, 10, usize::MAX).await.unwrap();
        assert_eq!(read.messages.len(), 2, "{name}");
        assert_eq!(&read.messages[1].data[..], b"2", "{name}");
        assert_eq!(
            read.bounds(),
            LogBounds {
                first_seq: 1,
                last_seq: 2,
                deleted_through: 0
            },
            "{name}"
        );
        let after = store.log.read(&t("a"), 1, 10, usize::MAX).await.unwrap();
        assert_eq!(after.messages[0].seq, 2, "{name}");
    }
}

#[tokio::test]
async fn read_limits_count_and_bytes() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let batch = (0..10)
            .map(|i| msg("a", &"x".repeat(10 + i), None))
            .collect();
        store.log.append(batch).await.unwrap();
        assert_eq!(
            store
                .log
                .read(&t("a"), 0, 3, usize::MAX)
                .await
                .unwrap()
                .messages
                .len(),
            3,
            "{name}"
        );
        // 10 + 11 = 21 bytes fit in 25, the third does not; one message always comes.
        assert_eq!(
            store
                .log
                .read(&t("a"), 0, 100, 25)
                .await
                .unwrap()
                .messages
                .len(),
            2,
            "{name}"
        );
        assert_eq!(
            store
                .log
                .read(&t("a"), 0, 100, 1)
                .await
                .unwrap()
                .messages
                .len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn idempotency_replays_and_conflicts() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let first = store
            .log
            .append(vec![msg("a", "x", Some("k"))])
            .await
            .unwrap()[0];
        let again = store
            .log
            .append(vec![msg("a", "x", Some("k"))])
            .await
            .unwrap()[0];
        assert_eq!(again.seq, first.seq, "{name}");
        assert!(again.replayed && !first.replayed, "{name}");
        let err = store
            .log
            .append(vec![msg("a", "other", Some("k"))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{name}"
        );
        // The same key on another topic is another key.
        assert_eq!(
            store
                .log
                .append(vec![msg("b", "y", Some("k"))])
                .await
                .unwrap()[0]
                .seq,
            1,
            "{name}"
        );
        // A conflicting item refuses its whole batch.
        let err = store
            .log
            .append(vec![msg("a", "new", None), msg("a", "other", Some("k"))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{name}"
        );
        assert_eq!(
            store.log.bounds(&t("a")).await.unwrap().unwrap().last_seq,
            1,
            "{name}"
        );
        // Within one batch, a repeated key stores once.
        let r = store
            .log
            .append(vec![msg("c", "z", Some("j")), msg("c", "z", Some("j"))])
            .await
            .unwrap();
        assert_eq!((r[0].seq, r[1].seq, r[1].replayed), (1, 1, true), "{name}");
    }
}

#[tokio::test]
async fn delete_keeps_the_counter() {
    for (name, store, _dir) in engines(Retention::default()).await {
        store
            .log
            .append(vec![msg("a", "1", None), msg("a", "2", None)])
            .await
            .unwrap();
        assert!(store.log.delete_topic(&t("a")).await.unwrap(), "{name}");
        assert!(!store.log.delete_topic(&t("nope")).await.unwrap(), "{name}");
        let bounds = store.log.bounds(&t("a")).await.unwrap().unwrap();
        assert_eq!(
            (bounds.first_seq, bounds.last_seq, bounds.deleted_through),
            (3, 2, 2),
            "{name}"
        );
        let info = store.log.topic(&t("a")).await.unwrap().unwrap();
        assert_eq!((info.messages, info.bytes), (0, 0), "{name}");
        assert_eq!(
            store.log.append(vec![msg("a", "3", None)]).await.unwrap()[0].seq,
            3,
            "{name}"
        );
    }
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest() {
    let retention = Retention {
        max_messages: 3,
        ..Retention::default()
    };
    for (name, store, _dir) in engines(retention).await {
        let batch = (0..10).map(|i| msg("a", &i.to_string(), None)).collect();
        store.log.append(batch).await.unwrap();
        // sqlite trims in its writer within a tick; wait for the end state.
        let mut first = 0;
        for _ in 0..200 {
            first = store.log.bounds(&t("a")).await.unwrap().unwrap().first_seq;
            if first == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(first, 8, "{name}");
        let info = store.log.topic(&t("a")).await.unwrap().unwrap();
        assert_eq!(
            (info.messages, info.bytes, info.last_seq),
            (3, 3, 10),
            "{name}"
        );
        let read = store.log.read(&t("a"), 0, 100, usize::MAX).await.unwrap();
        let seqs: Vec<_> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![8, 9, 10], "{name}");
    }
}

#[tokio::test]
async fn seek_time_finds_the_first_at_or_after() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let a = store.log.append(vec![msg("a", "1", None)]).await.unwrap()[0];
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = store.log.append(vec![msg("a", "2", None)]).await.unwrap()[0];
        assert_eq!(
            store.log.seek_time(&t("a"), a.time).await.unwrap(),
            0,
            "{name}"
        );
        assert_eq!(
            store.log.seek_time(&t("a"), b.time).await.unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            store.log.seek_time(&t("a"), b.time + 1).await.unwrap(),
            2,
            "{name}"
        );
        assert_eq!(
            store.log.seek_time(&t("none"), 0).await.unwrap(),
            0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn sqlite_reopens_with_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SqliteLog::open(dir.path(), Retention::default(), Durability::Machine).unwrap();
        log.append(vec![msg("a", "1", Some("k")), msg("a", "2", None)])
            .await
            .unwrap();
        log.delete_topic(&t("a")).await.unwrap();
        log.append(vec![msg("a", "3", None)]).await.unwrap();
        log.close().await;
    }
    let log = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
    let bounds = log.bounds(&t("a")).await.unwrap().unwrap();
    assert_eq!(
        (bounds.first_seq, bounds.last_seq, bounds.deleted_through),
        (3, 3, 2)
    );
    assert_eq!(
        log.append(vec![msg("a", "4", None)]).await.unwrap()[0].seq,
        4
    );
    // The idempotency key outlives the delete and the restart.
    let replay = log.append(vec![msg("a", "1", Some("k"))]).await.unwrap()[0];
    assert_eq!((replay.seq, replay.replayed), (1, true));
}

// ---------------------------------------------------------------------------------------------
// Helpers for the tests below.

/// Gives up on waiting for an engine's background work (sqlite trims in its writer's tick,
/// the redis feed arrives over Pub/Sub) only after a deadline far beyond any normal delay.
struct Patience {
    until: Instant,
}

impl Patience {
    fn new() -> Self {
        Patience {
            until: Instant::now() + Duration::from_secs(30),
        }
    }

    /// Sleeps a little before the next poll, or fails the test with `what` past the deadline.
    async fn wait(&self, what: impl Display) {
        assert!(Instant::now() < self.until, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn ev(name: &str) -> EventName {
    name.parse().unwrap()
}

fn raw(topic: &str, event: Option<&str>, data: &[u8], key: Option<&str>) -> NewMessage {
    NewMessage {
        topic: t(topic),
        event: event.map(ev),
        data: Bytes::copy_from_slice(data),
        idempotency_key: key.map(str::to_owned),
    }
}

/// Reads everything of a topic (these tests keep far fewer messages; no byte limit).
async fn read_all(log: &Arc<dyn Log>, topic: &str) -> Vec<Arc<Message>> {
    log.read(&t(topic), 0, 100_000, usize::MAX)
        .await
        .unwrap()
        .messages
}

/// Collects `n` messages from an engine's commit feed (empty batches: a resync, skipped).
async fn feed_n(feed: &mut CommitFeed, n: usize, name: &str) -> Vec<Arc<Message>> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(30), feed.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: the commit feed gave {} of {n}", got.len()))
            .unwrap_or_else(|| panic!("{name}: the commit feed closed"));
        got.extend(batch);
    }
    assert_eq!(got.len(), n, "{name}: more commits than appended");
    got
}

/// A fixed clock for the job tests: the store is told `now`, never reads it.
const T0: Millis = 1_700_000_000_000;

fn jid(n: u8) -> JobId {
    JobId::from_random([n; 16])
}

/// A fresh queued job with a binary payload (newline, NUL, a non-UTF-8 byte).
fn job(queue: &str, n: u8, created: Millis) -> Job {
    Job {
        id: jid(n),
        queue: t(queue),
        state: JobState::Queued,
        attempts: 0,
        max_attempts: 3,
        created,
        updated: created,
        payload: Bytes::from(vec![b'{', 0, b'\n', 0xff, n, b'}']),
        result: None,
        error: None,
        run_at: None,
        lease: None,
        lease_until: None,
        lease_ms: None,
    }
}

/// What a claim at `now` makes of `job`, per `Job::claim`.
fn claimed(mut job: Job, now: Millis, lease: &str, lease_ms: u64) -> Job {
    job.claim(now, lease.to_owned(), lease_ms);
    job
}

/// A job put back in the queue (a retry, or a reaped lease), due at `run_at`.
fn requeued(mut job: Job, updated: Millis, run_at: Option<Millis>, error: &str) -> Job {
    job.state = JobState::Queued;
    job.updated = updated;
    job.run_at = run_at;
    job.error = Some(error.to_owned());
    job.lease = None;
    job.lease_until = None;
    job.lease_ms = None;
    job
}

async fn claim(jobs: &Arc<dyn JobStore>, queue: &str, now: Millis, lease: &str) -> Option<Job> {
    jobs.claim(&t(queue), now, lease.to_owned(), 30_000)
        .await
        .unwrap()
}

fn ids(jobs: &[Job]) -> HashSet<JobId> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Jobs.

#[tokio::test]
async fn job_create_then_get_round_trips_a_fresh_job() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let fresh = job("q", 1, T0);
        let (stored, replayed) = store.jobs.create(fresh.clone(), None).await.unwrap();
        assert_eq!((&stored, replayed), (&fresh, false), "{name}");
        assert_eq!(
            store.jobs.get(&fresh.id).await.unwrap(),
            Some(fresh),
            "{name}"
        );
        // An empty payload is a payload too.
        let mut empty = job("q", 2, T0 + 1);
        empty.payload = Bytes::new();
        store.jobs.create(empty.clone(), None).await.unwrap();
        assert_eq!(
            store.jobs.get(&empty.id).await.unwrap(),
            Some(empty),
            "{name}"
        );
        // A payload with every byte value.
        let mut bytes = job("q", 3, T0 + 2);
        bytes.payload = Bytes::from((0..=255u8).collect::<Vec<_>>());
        store.jobs.create(bytes.clone(), None).await.unwrap();
        assert_eq!(
            store.jobs.get(&bytes.id).await.unwrap(),
            Some(bytes),
            "{name}"
        );
        assert_eq!(store.jobs.get(&jid(0xee)).await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn job_create_then_get_round_trips_every_field() {
    for (name, store, _dir) in engines(Retention::default()).await {
        // A running job with its lease, a result and an error.
        let running = Job {
            state: JobState::Running,
            attempts: 2,
            max_attempts: 7,
            updated: T0 + 50,
            result: Some(Bytes::from_static(b"ok\0\n\xff")),
            error: Some("line one\nline two".to_owned()),
            run_at: None,
            lease: Some("lease-1".to_owned()),
            lease_until: Some(T0 + 30_050),
            lease_ms: Some(30_000),
            ..job("q", 1, T0)
        };
        // A queued retry: due later, carrying its last error and an (empty) result.
        let retry = Job {
            attempts: 1,
            updated: T0 + 60,
            result: Some(Bytes::new()),
            error: Some("timed out".to_owned()),
            run_at: Some(T0 + 5_000),
            ..job("q", 2, T0 + 1)
        };
        for j in [running, retry] {
            let (stored, replayed) = store.jobs.create(j.clone(), None).await.unwrap();
            assert_eq!((&stored, replayed), (&j, false), "{name}");
            assert_eq!(
                store.jobs.get(&j.id).await.unwrap().as_ref(),
                Some(&j),
                "{name}: job_get after job_create lost fields"
            );
        }
    }
}

#[tokio::test]
async fn job_save_then_get_round_trips_every_field() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let fresh = job("q", 1, T0);
        store.jobs.create(fresh.clone(), None).await.unwrap();
        let full = Job {
            state: JobState::Running,
            attempts: 1,
            max_attempts: 9,
            updated: T0 + 10,
            result: Some(Bytes::from_static(b"\0partial\n")),
            error: Some("warn\0ing".to_owned()),
            run_at: Some(T0 + 20),
            lease: Some("lease-1".to_owned()),
            lease_until: Some(T0 + 1_010),
            lease_ms: Some(1_000),
            ..fresh.clone()
        };
        assert_eq!(
            store.jobs.save(full.clone(), None).await.unwrap(),
            full,
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&full.id).await.unwrap(),
            Some(full),
            "{name}"
        );
        // And back: every optional field cleared.
        let cleared = Job {
            updated: T0 + 20,
            ..fresh
        };
        assert_eq!(
            store
                .jobs
                .save(cleared.clone(), Some("lease-1".to_owned()))
                .await
                .unwrap(),
            cleared,
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&cleared.id).await.unwrap(),
            Some(cleared),
            "{name}"
        );
    }
}

#[tokio::test]
async fn job_idempotency_replays_and_conflicts() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let first = job("q", 1, T0);
        let key = Some("k".to_owned());
        assert_eq!(
            store.jobs.create(first.clone(), key.clone()).await.unwrap(),
            (first.clone(), false),
            "{name}"
        );
        // Same key, same payload: the first job, and nothing new stored.
        let again = Job {
            id: jid(2),
            created: T0 + 1,
            updated: T0 + 1,
            ..first.clone()
        };
        assert_eq!(
            store.jobs.create(again.clone(), key.clone()).await.unwrap(),
            (first.clone(), true),
            "{name}"
        );
        assert_eq!(store.jobs.get(&again.id).await.unwrap(), None, "{name}");
        // Same key, another payload: a conflict, nothing stored.
        let other = Job {
            id: jid(3),
            payload: Bytes::from_static(b"{\0\n\xff\x01!"),
            ..first.clone()
        };
        let err = store
            .jobs
            .create(other.clone(), key.clone())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::IdempotencyConflict {
                topic: t("q"),
                key: "k".to_owned()
            },
            "{name}"
        );
        assert_eq!(store.jobs.get(&other.id).await.unwrap(), None, "{name}");
        // The same key on another queue is another key.
        let elsewhere = Job {
            id: jid(4),
            queue: t("r"),
            ..other.clone()
        };
        assert_eq!(
            store
                .jobs
                .create(elsewhere.clone(), key.clone())
                .await
                .unwrap(),
            (elsewhere.clone(), false),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&elsewhere.id).await.unwrap(),
            Some(elsewhere),
            "{name}"
        );
        // Without a key, the same payload twice is two jobs.
        let twin = Job {
            id: jid(5),
            ..first.clone()
        };
        assert_eq!(
            store.jobs.create(twin.clone(), None).await.unwrap(),
            (twin.clone(), false),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&twin.id).await.unwrap(),
            Some(twin),
            "{name}"
        );
        // A replay returns the job as it is now, not as it was created.
        let running = claim(&store.jobs, "q", T0 + 100, "l1").await;
        assert_eq!(
            running,
            Some(claimed(first.clone(), T0 + 100, "l1", 30_000)),
            "{name}"
        );
        assert_eq!(
            store.jobs.create(again, key).await.unwrap(),
            (running.unwrap(), true),
            "{name}"
        );
    }
}

#[tokio::test]
async fn job_claim_takes_the_oldest_due_first() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let now = T0 + 1_000;
        // Created out of order; two share a created time (the id decides).
        let c = job("q", 3, T0 + 2);
        let a = job("q", 2, T0 + 1);
        let b = job("q", 1, T0 + 1);
        let other = job("r", 4, T0);
        for j in [&c, &a, &b, &other] {
            store.jobs.create(j.clone(), None).await.unwrap();
        }
        for (expect, lease) in [(&b, "l-b"), (&a, "l-a"), (&c, "l-c")] {
            let want = claimed(expect.clone(), now, lease, 30_000);
            assert_eq!(
                claim(&store.jobs, "q", now, lease).await.as_ref(),
                Some(&want),
                "{name}: claim order"
            );
            assert_eq!(
                store.jobs.get(&want.id).await.unwrap(),
                Some(want),
                "{name}: the claim is stored"
            );
        }
        assert_eq!(claim(&store.jobs, "q", now, "l-none").await, None, "{name}");
        assert_eq!(
            claim(&store.jobs, "nope", now, "l-none").await,
            None,
            "{name}"
        );
        // Another queue's job was never touched.
        assert_eq!(
            store.jobs.get(&other.id).await.unwrap(),
            Some(other),
            "{name}"
        );
    }
}

#[tokio::test]
async fn job_claim_waits_for_run_at() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let d = Job {
            run_at: Some(T0 + 500),
            ..job("q", 1, T0)
        };
        let e = Job {
            run_at: Some(T0 + 300),
            ..job("q", 2, T0 + 1)
        };
        store.jobs.create(d.clone(), None).await.unwrap();
        store.jobs.create(e.clone(), None).await.unwrap();
        assert_eq!(
            store.jobs.next_due(&t("q")).await.unwrap(),
            Some(T0 + 300),
            "{name}"
        );
        assert_eq!(
            store.jobs.next_due(&t("nope")).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 299, "l0").await,
            None,
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 300, "l1").await,
            Some(claimed(e, T0 + 300, "l1", 30_000)),
            "{name}: due exactly at run_at"
        );
        assert_eq!(
            store.jobs.next_due(&t("q")).await.unwrap(),
            Some(T0 + 500),
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 499, "l2").await,
            None,
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 500, "l3").await,
            Some(claimed(d, T0 + 500, "l3", 30_000)),
            "{name}"
        );
        assert_eq!(store.jobs.next_due(&t("q")).await.unwrap(), None, "{name}");
        assert_eq!(
            claim(&store.jobs, "q", T0 + 10_000, "l4").await,
            None,
            "{name}"
        );
        // A delayed job that has come due is older than a ready one: it goes first.
        let f = Job {
            run_at: Some(T0 + 100),
            ..job("q", 3, T0 + 2)
        };
        let g = job("q", 4, T0 + 3);
        store.jobs.create(g.clone(), None).await.unwrap();
        store.jobs.create(f.clone(), None).await.unwrap();
        assert_eq!(
            claim(&store.jobs, "q", T0 + 1_000, "l5").await,
            Some(claimed(f, T0 + 1_000, "l5", 30_000)),
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 1_000, "l6").await,
            Some(claimed(g, T0 + 1_000, "l6", 30_000)),
            "{name}"
        );
    }
}

/// `now` is the caller's clock: nodes sharing a store do not share one. A claim whose `now` is
/// behind an earlier claim's must still leave a not-yet-due job claimable later.
#[tokio::test]
async fn job_claim_with_an_earlier_now_keeps_the_job() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let a = job("q", 1, T0 + 1);
        let b = Job {
            run_at: Some(T0 + 100),
            ..job("q", 2, T0 + 2)
        };
        store.jobs.create(a.clone(), None).await.unwrap();
        store.jobs.create(b.clone(), None).await.unwrap();
        assert_eq!(
            claim(&store.jobs, "q", T0 + 200, "l1").await,
            Some(claimed(a, T0 + 200, "l1", 30_000)),
            "{name}"
        );
        // Another node, its clock behind: b is not due for it yet.
        assert_eq!(claim(&store.jobs, "q", T0 + 50, "l2").await, None, "{name}");
        assert_eq!(
            store.jobs.get(&b.id).await.unwrap().as_ref(),
            Some(&b),
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 200, "l3").await,
            Some(claimed(b, T0 + 200, "l3", 30_000)),
            "{name}: a due job was lost by a claim with an earlier clock"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_claims_never_return_the_same_job() {
    const N: u8 = 24;
    for (name, store, _dir) in engines(Retention::default()).await {
        for i in 0..N {
            store
                .jobs
                .create(job("q", i + 1, T0 + i as Millis), None)
                .await
                .unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..(2 * N as usize) {
            let store = store.clone();
            tasks.spawn(async move {
                let lease = format!("lease-{i}");
                let got = store
                    .jobs
                    .claim(&t("q"), T0 + 1_000, lease.clone(), 30_000)
                    .await
                    .unwrap();
                (lease, got)
            });
        }
        let mut taken = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (lease, got) = joined.unwrap();
            if let Some(j) = got {
                assert_eq!(j.lease.as_deref(), Some(lease.as_str()), "{name}");
                taken.push(j);
            }
        }
        let concurrent = taken.len();
        // Whatever a contended claim gave up on is still there for a quiet one.
        while let Some(j) = claim(&store.jobs, "q", T0 + 1_000, "mop-up").await {
            taken.push(j);
        }
        assert_eq!(
            ids(&taken).len(),
            taken.len(),
            "{name}: a job was claimed twice"
        );
        assert_eq!(
            ids(&taken),
            (1..=N).map(jid).collect(),
            "{name}: every job is claimed once ({concurrent} by the concurrent round)"
        );
        for j in &taken {
            let stored = store.jobs.get(&j.id).await.unwrap().unwrap();
            assert_eq!(&stored, j, "{name}: the stored claim is the returned one");
            assert_eq!(stored.attempts, 1, "{name}");
        }
    }
}

#[tokio::test]
async fn job_save_compares_the_lease() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let j = job("q", 1, T0);
        store.jobs.create(j.clone(), None).await.unwrap();
        // Never claimed: its lease is none.
        let touched = Job {
            updated: T0 + 1,
            ..j.clone()
        };
        assert_eq!(
            store.jobs.save(touched.clone(), Some("x".to_owned())).await,
            Err(StoreError::JobChanged(j.id.clone())),
            "{name}"
        );
        assert_eq!(
            store.jobs.save(touched.clone(), None).await,
            Ok(touched.clone()),
            "{name}"
        );
        // Saving an unknown job does not create it.
        let unknown = job("q", 9, T0);
        for expected in [None, Some("l".to_owned())] {
            assert_eq!(
                store.jobs.save(unknown.clone(), expected).await,
                Err(StoreError::UnknownJob(unknown.id.clone())),
                "{name}"
            );
        }
        assert_eq!(store.jobs.get(&unknown.id).await.unwrap(), None, "{name}");
        // Worker 1 claims; its lease ends; the job is requeued and worker 2 claims it.
        let first = claim(&store.jobs, "q", T0 + 10, "l1").await.unwrap();
        assert_eq!(first, claimed(touched, T0 + 10, "l1", 30_000), "{name}");
        let reaped = requeued(first.clone(), T0 + 40_000, None, "lease ended");
        assert_eq!(
            store.jobs.save(reaped.clone(), Some("l1".to_owned())).await,
            Ok(reaped.clone()),
            "{name}"
        );
        let second = claim(&store.jobs, "q", T0 + 40_000, "l2").await;
        assert_eq!(
            second,
            Some(claimed(reaped, T0 + 40_000, "l2", 30_000)),
            "{name}"
        );
        let second = second.unwrap();
        assert_eq!(second.attempts, 2, "{name}");
        // Worker 1 comes back late: its lease is stale, whatever it says.
        let late = Job {
            state: JobState::Succeeded,
            result: Some(Bytes::from_static(b"late")),
            ..first
        };
        for expected in [Some("l1".to_owned()), None, Some("l3".to_owned())] {
            assert_eq!(
                store.jobs.save(late.clone(), expected).await,
                Err(StoreError::JobChanged(j.id.clone())),
                "{name}"
            );
        }
        assert_eq!(
            store.jobs.get(&j.id).await.unwrap().as_ref(),
            Some(&second),
            "{name}: a refused save changed nothing"
        );
        // Worker 2 finishes.
        let done = Job {
            state: JobState::Succeeded,
            updated: T0 + 41_000,
            result: Some(Bytes::from_static(b"ok\0")),
            lease: None,
            lease_until: None,
            lease_ms: None,
            ..second
        };
        assert_eq!(
            store.jobs.save(done.clone(), Some("l2".to_owned())).await,
            Ok(done.clone()),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&j.id).await.unwrap().as_ref(),
            Some(&done),
            "{name}"
        );
        // A second finish with the same lease is stale too (the lease is gone).
        assert_eq!(
            store.jobs.save(done.clone(), Some("l2".to_owned())).await,
            Err(StoreError::JobChanged(j.id.clone())),
            "{name}"
        );
    }
}

#[tokio::test]
async fn job_retry_is_claimable_once_due() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let j = job("q", 1, T0);
        store.jobs.create(j.clone(), None).await.unwrap();
        let first = claim(&store.jobs, "q", T0 + 10, "l1").await.unwrap();
        let retry = requeued(first, T0 + 20, Some(T0 + 5_000), "boom");
        assert_eq!(
            store.jobs.save(retry.clone(), Some("l1".to_owned())).await,
            Ok(retry.clone()),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&j.id).await.unwrap().as_ref(),
            Some(&retry),
            "{name}"
        );
        assert_eq!(
            claim(&store.jobs, "q", T0 + 4_999, "l2").await,
            None,
            "{name}"
        );
        assert_eq!(
            store.jobs.next_due(&t("q")).await.unwrap(),
            Some(T0 + 5_000),
            "{name}"
        );
        let second = claim(&store.jobs, "q", T0 + 5_000, "l3").await;
        assert_eq!(
            second,
            Some(claimed(retry, T0 + 5_000, "l3", 30_000)),
            "{name}"
        );
        let second = second.unwrap();
        assert_eq!(
            (second.attempts, second.error.as_deref()),
            (2, Some("boom")),
            "{name}"
        );
        // A retry with no run_at is due at once.
        let now_retry = requeued(second, T0 + 5_001, None, "again");
        store
            .jobs
            .save(now_retry.clone(), Some("l3".to_owned()))
            .await
            .unwrap();
        assert_eq!(store.jobs.next_due(&t("q")).await.unwrap(), None, "{name}");
        assert_eq!(
            claim(&store.jobs, "q", T0 + 5_002, "l4").await,
            Some(claimed(now_retry, T0 + 5_002, "l4", 30_000)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn finished_jobs_are_never_claimed() {
    for (name, store, _dir) in engines(Retention::default()).await {
        // Finished through a claim.
        let j1 = job("q", 1, T0);
        store.jobs.create(j1.clone(), None).await.unwrap();
        let running = claim(&store.jobs, "q", T0 + 10, "l1").await.unwrap();
        let done = Job {
            state: JobState::Succeeded,
            updated: T0 + 20,
            result: Some(Bytes::from_static(b"\0")),
            ..running
        };
        store
            .jobs
            .save(done.clone(), Some("l1".to_owned()))
            .await
            .unwrap();
        // Stored finished from the start, one of them with a run_at.
        let j2 = Job {
            state: JobState::Succeeded,
            ..job("q", 2, T0 + 1)
        };
        let j3 = Job {
            state: JobState::Dead,
            run_at: Some(T0 + 5),
            error: Some("gave up".to_owned()),
            ..job("q", 3, T0 + 2)
        };
        store.jobs.create(j2.clone(), None).await.unwrap();
        store.jobs.create(j3.clone(), None).await.unwrap();
        let later = T0 + 10_000_000;
        assert_eq!(claim(&store.jobs, "q", later, "l2").await, None, "{name}");
        assert_eq!(store.jobs.next_due(&t("q")).await.unwrap(), None, "{name}");
        assert_eq!(
            store.jobs.expired(later, 100).await.unwrap(),
            vec![],
            "{name}"
        );
        assert_eq!(store.jobs.get(&j1.id).await.unwrap(), Some(done), "{name}");
        assert_eq!(
            store.jobs.get(&j2.id).await.unwrap().map(|j| j.state),
            Some(JobState::Succeeded),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&j3.id).await.unwrap().map(|j| j.state),
            Some(JobState::Dead),
            "{name}"
        );
    }
}

#[tokio::test]
async fn job_expired_lists_ended_leases() {
    for (name, store, _dir) in engines(Retention::default()).await {
        for (queue, n) in [("q1", 1), ("q1", 2), ("q1", 3), ("q1", 4), ("q2", 5)] {
            store
                .jobs
                .create(job(queue, n, T0 + n as Millis), None)
                .await
                .unwrap();
        }
        let now = T0 + 100;
        let mut running = Vec::new();
        for (queue, lease_ms) in [("q1", 100), ("q1", 100), ("q1", 10_000), ("q2", 100)] {
            let lease = format!("l{}", running.len() + 1);
            let j = store
                .jobs
                .claim(&t(queue), now, lease, lease_ms)
                .await
                .unwrap()
                .unwrap();
            running.push(j);
        }
        let [j1, j2, j3, j5] = <[Job; 4]>::try_from(running).unwrap();
        assert_eq!(
            (&j1.id, &j2.id, &j3.id, &j5.id),
            (&jid(1), &jid(2), &jid(3), &jid(5)),
            "{name}"
        );
        // A lease ends at lease_until: expired only strictly after it.
        assert_eq!(
            store.jobs.expired(T0 + 200, 10).await.unwrap(),
            vec![],
            "{name}"
        );
        let mut expired = store.jobs.expired(T0 + 201, 10).await.unwrap();
        expired.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            expired,
            vec![j1.clone(), j2.clone(), j5.clone()],
            "{name}: running jobs past their lease, across queues"
        );
        let two = store.jobs.expired(T0 + 201, 2).await.unwrap();
        assert_eq!(two.len(), 2, "{name}: the limit");
        assert!(
            ids(&two).is_subset(&ids(&expired)),
            "{name}: {:?}",
            ids(&two)
        );
        assert_eq!(
            store.jobs.expired(T0 + 201, 0).await.unwrap(),
            vec![],
            "{name}"
        );
        // Finished (even keeping its lease fields) or requeued: not running, not expired.
        let done = Job {
            state: JobState::Succeeded,
            ..j2.clone()
        };
        store.jobs.save(done, j2.lease.clone()).await.unwrap();
        let back = requeued(j5.clone(), T0 + 300, None, "reaped");
        store.jobs.save(back, j5.lease.clone()).await.unwrap();
        assert_eq!(
            store.jobs.expired(T0 + 201, 10).await.unwrap(),
            vec![j1.clone()],
            "{name}"
        );
        // Later, the long lease ends too.
        let mut expired = store.jobs.expired(T0 + 20_000, 10).await.unwrap();
        expired.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(expired, vec![j1, j3], "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Messages.

#[tokio::test]
async fn retention_by_age_drops_old_messages() {
    let retention = Retention {
        max_age: Duration::from_secs(1),
        ..Retention::default()
    };
    let engines = engines(retention).await;
    let mut appended = Vec::new();
    for (_, store, _) in &engines {
        appended.push(
            store
                .log
                .append(vec![
                    msg("a", "1", None),
                    msg("a", "22", None),
                    msg("a", "333", None),
                ])
                .await
                .unwrap(),
        );
    }
    for ((name, store, _), appended) in engines.iter().zip(appended) {
        let patience = Patience::new();
        loop {
            let bounds = store.log.bounds(&t("a")).await.unwrap().unwrap();
            if bounds.first_seq == 4 {
                break;
            }
            patience
                .wait(format_args!(
                    "{name}: messages older than max_age, {bounds:?}"
                ))
                .await;
        }
        let gone = LogBounds {
            first_seq: 4,
            last_seq: 3,
            deleted_through: 0,
        };
        let info = TopicInfo {
            topic: t("a"),
            first_seq: 4,
            last_seq: 3,
            messages: 0,
            bytes: 0,
            last_publish: Some(appended[2].time),
        };
        assert_eq!(
            store.log.topic(&t("a")).await.unwrap().as_ref(),
            Some(&info),
            "{name}"
        );
        assert_eq!(store.log.topics().await.unwrap(), vec![info], "{name}");
        let read = store.log.read(&t("a"), 0, 10, usize::MAX).await.unwrap();
        assert_eq!(
            (read.messages.len(), read.bounds),
            (0, Some(gone)),
            "{name}"
        );
        assert_eq!(store.log.seek_time(&t("a"), 0).await.unwrap(), 3, "{name}");
        // The counter goes on; a young message is kept.
        let fresh = store
            .log
            .append(vec![msg("a", "4444", None)])
            .await
            .unwrap()[0];
        assert_eq!(fresh.seq, 4, "{name}");
        let read = store.log.read(&t("a"), 0, 10, usize::MAX).await.unwrap();
        if now_millis() < fresh.time + 1_000 {
            let seqs: Vec<_> = read.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, vec![4], "{name}");
        }
    }
}

#[tokio::test]
async fn seek_time_after_age_retention_trimmed_the_front() {
    const MAX_AGE: Millis = 1_000;
    let retention = Retention {
        max_age: Duration::from_millis(MAX_AGE as u64),
        ..Retention::default()
    };
    let engines = engines(retention).await;
    let mut old = Vec::new();
    for (_, store, _) in &engines {
        old.push(
            store
                .log
                .append(vec![msg("a", "old1", None), msg("a", "old2", None)])
                .await
                .unwrap(),
        );
    }
    for ((name, store, _), old) in engines.iter().zip(old) {
        // Each try appends a young message once everything before it expired, then checks
        // while that message is surely younger than max_age (a stalled machine tries again).
        let mut head = 2;
        for attempt in 0.. {
            assert!(attempt < 5, "{name}: too slow to judge age retention");
            let patience = Patience::new();
            loop {
                let bounds = store.log.bounds(&t("a")).await.unwrap().unwrap();
                if bounds.first_seq == head + 1 {
                    break;
                }
                patience
                    .wait(format_args!("{name}: the front expiring, {bounds:?}"))
                    .await;
            }
            let young = store
                .log
                .append(vec![msg("a", "young", None)])
                .await
                .unwrap()[0];
            assert_eq!(young.seq, head + 1, "{name}");
            head = young.seq;
            let got = (
                store.log.seek_time(&t("a"), 0).await.unwrap(),
                store.log.seek_time(&t("a"), old[0].time).await.unwrap(),
                store.log.seek_time(&t("a"), young.time).await.unwrap(),
                store.log.seek_time(&t("a"), young.time + 1).await.unwrap(),
                store.log.bounds(&t("a")).await.unwrap().unwrap().first_seq,
                read_all(&store.log, "a")
                    .await
                    .iter()
                    .map(|m| m.seq)
                    .collect::<Vec<_>>(),
            );
            if now_millis() < young.time + MAX_AGE {
                assert_eq!(
                    got,
                    (head - 1, head - 1, head - 1, head, head, vec![head]),
                    "{name}: seek_time, bounds and read over a trimmed front"
                );
                break;
            }
        }
    }
}

#[tokio::test]
async fn events_round_trip() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let mut feed = store.follow.take_commits().unwrap();
        let sent = vec![
            raw("a", Some("created"), b"x", None),
            raw("a", None, b"y", None),
            raw("a", Some("A.b-c_9"), b"", None),
            raw("a", Some(&"e".repeat(64)), b"\n\0", None),
        ];
        store.log.append(sent.clone()).await.unwrap();
        let read = read_all(&store.log, "a").await;
        let got: Vec<_> = read
            .iter()
            .map(|m| (m.event.clone(), m.data.clone()))
            .collect();
        let want: Vec<_> = sent
            .iter()
            .map(|m| (m.event.clone(), m.data.clone()))
            .collect();
        assert_eq!(got, want, "{name}: read");
        let fed = feed_n(&mut feed, sent.len(), name).await;
        assert_eq!(
            fed, read,
            "{name}: the commit feed carries the same messages"
        );
        // The event is part of the body an idempotency key remembers.
        let first = store
            .log
            .append(vec![raw("b", Some("e1"), b"same", Some("k"))])
            .await
            .unwrap()[0];
        for event in [Some("e2"), None] {
            let err = store
                .log
                .append(vec![raw("b", event, b"same", Some("k"))])
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::IdempotencyConflict { .. }),
                "{name}: {event:?} {err:?}"
            );
        }
        let again = store
            .log
            .append(vec![raw("b", Some("e1"), b"same", Some("k"))])
            .await
            .unwrap()[0];
        assert_eq!((again.seq, again.replayed), (first.seq, true), "{name}");
        let read = read_all(&store.log, "b").await;
        assert_eq!(read.len(), 1, "{name}");
        assert_eq!(read[0].event, Some(ev("e1")), "{name}");
    }
}

#[tokio::test]
async fn read_returns_one_message_above_max_bytes() {
    for (name, store, _dir) in engines(Retention::default()).await {
        store
            .log
            .append(vec![
                msg("a", &"x".repeat(100), None),
                msg("a", &"y".repeat(50), None),
                msg("a", &"z".repeat(10), None),
            ])
            .await
            .unwrap();
        let seqs = |after, limit, max_bytes| {
            let store = store.clone();
            async move {
                store
                    .log
                    .read(&t("a"), after, limit, max_bytes)
                    .await
                    .unwrap()
                    .messages
                    .iter()
                    .map(|m| m.seq)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(seqs(0, 10, 0).await, vec![1], "{name}: max_bytes 0");
        assert_eq!(seqs(0, 10, 99).await, vec![1], "{name}");
        assert_eq!(seqs(0, 10, 100).await, vec![1], "{name}");
        assert_eq!(seqs(0, 10, 149).await, vec![1], "{name}");
        assert_eq!(seqs(0, 10, 150).await, vec![1, 2], "{name}");
        assert_eq!(seqs(1, 10, 5).await, vec![2], "{name}: from the middle");
        assert_eq!(seqs(2, 10, 0).await, vec![3], "{name}");
        assert_eq!(
            seqs(3, 10, 0).await,
            Vec::<u64>::new(),
            "{name}: past the end"
        );
        assert_eq!(seqs(0, 0, usize::MAX).await, Vec::<u64>::new(), "{name}");
    }
}

/// How a read counts messages with an empty payload against `max_bytes`: the trait does not
/// say, but every engine must count them the same way (the hub sizes its batches with it).
#[tokio::test]
async fn read_counts_empty_payloads_alike() {
    let mut answers: Vec<(&str, Vec<usize>)> = Vec::new();
    for (name, store, _dir) in engines(Retention::default()).await {
        let mut batch: Vec<_> = (0..5).map(|_| msg("a", "", None)).collect();
        batch.push(msg("a", "abc", None));
        store.log.append(batch).await.unwrap();
        let mut counts = Vec::new();
        for max_bytes in [0, 1, 3, 5, 8, usize::MAX] {
            let read = store.log.read(&t("a"), 0, 100, max_bytes).await.unwrap();
            assert!(!read.messages.is_empty(), "{name}");
            counts.push(read.messages.len());
        }
        answers.push((name, counts));
    }
    let (first, want) = &answers[0];
    for (name, counts) in &answers {
        assert_eq!(
            counts, want,
            "{name} counts for max_bytes [0, 1, 3, 5, 8, MAX] differ from {first}'s (all: {answers:?})"
        );
    }
}

#[tokio::test]
async fn delete_then_bounds_info_read_and_seek() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let a = store
            .log
            .append(vec![
                msg("a", "1", None),
                msg("a", "22", None),
                msg("a", "333", None),
            ])
            .await
            .unwrap();
        let b = store.log.append(vec![msg("b", "b", None)]).await.unwrap()[0];
        assert!(store.log.delete_topic(&t("a")).await.unwrap(), "{name}");
        let gone = LogBounds {
            first_seq: 4,
            last_seq: 3,
            deleted_through: 3,
        };
        let info_a = TopicInfo {
            topic: t("a"),
            first_seq: 4,
            last_seq: 3,
            messages: 0,
            bytes: 0,
            last_publish: Some(a[2].time),
        };
        let info_b = TopicInfo {
            topic: t("b"),
            first_seq: 1,
            last_seq: 1,
            messages: 1,
            bytes: 1,
            last_publish: Some(b.time),
        };
        assert_eq!(
            store.log.bounds(&t("a")).await.unwrap(),
            Some(gone),
            "{name}"
        );
        assert_eq!(
            store.log.topic(&t("a")).await.unwrap().as_ref(),
            Some(&info_a),
            "{name}"
        );
        assert_eq!(
            store.log.topics().await.unwrap(),
            vec![info_a.clone(), info_b.clone()],
            "{name}"
        );
        for after in [0, 2, 3] {
            let read = store
                .log
                .read(&t("a"), after, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                (read.messages.len(), read.bounds),
                (0, Some(gone)),
                "{name}: read after {after}"
            );
        }
        for time in [0, a[0].time, a[2].time + 1] {
            assert_eq!(
                store.log.seek_time(&t("a"), time).await.unwrap(),
                3,
                "{name}"
            );
        }
        // The other topic is untouched; deleting again changes nothing.
        assert_eq!(read_all(&store.log, "b").await.len(), 1, "{name}");
        assert!(store.log.delete_topic(&t("a")).await.unwrap(), "{name}");
        assert_eq!(
            store.log.bounds(&t("a")).await.unwrap(),
            Some(gone),
            "{name}"
        );
        assert_eq!(
            store.log.topic(&t("a")).await.unwrap(),
            Some(info_a),
            "{name}"
        );
        // Publishing again, then deleting again.
        let c = store
            .log
            .append(vec![msg("a", "4444", None)])
            .await
            .unwrap()[0];
        assert_eq!(c.seq, 4, "{name}");
        assert_eq!(
            store.log.topic(&t("a")).await.unwrap(),
            Some(TopicInfo {
                topic: t("a"),
                first_seq: 4,
                last_seq: 4,
                messages: 1,
                bytes: 4,
                last_publish: Some(c.time),
            }),
            "{name}"
        );
        let read = store.log.read(&t("a"), 0, 10, usize::MAX).await.unwrap();
        assert_eq!(
            read.bounds,
            Some(LogBounds {
                first_seq: 4,
                last_seq: 4,
                deleted_through: 3
            }),
            "{name}"
        );
        assert_eq!(read.messages.len(), 1, "{name}");
        assert_eq!(store.log.seek_time(&t("a"), 0).await.unwrap(), 3, "{name}");
        assert!(store.log.delete_topic(&t("a")).await.unwrap(), "{name}");
        assert_eq!(
            store.log.bounds(&t("a")).await.unwrap(),
            Some(LogBounds {
                first_seq: 5,
                last_seq: 4,
                deleted_through: 4
            }),
            "{name}"
        );
        // A topic never published.
        assert_eq!(store.log.bounds(&t("nope")).await.unwrap(), None, "{name}");
        assert_eq!(store.log.topic(&t("nope")).await.unwrap(), None, "{name}");
        let read = store.log.read(&t("nope"), 0, 10, usize::MAX).await.unwrap();
        assert_eq!((read.messages.len(), read.bounds), (0, None), "{name}");
        assert_eq!(
            store.log.seek_time(&t("nope"), 0).await.unwrap(),
            0,
            "{name}"
        );
        assert!(!store.log.delete_topic(&t("nope")).await.unwrap(), "{name}");
        assert_eq!(store.log.topics().await.unwrap().len(), 2, "{name}");
    }
}

#[tokio::test]
async fn binary_payloads_round_trip() {
    let payloads: Vec<Vec<u8>> = vec![
        b"line one\nline two\n".to_vec(),
        b"\0".to_vec(),
        b"a\0b\0\0".to_vec(),
        b"\r\n\r\n".to_vec(),
        Vec::new(),
        vec![0xff, 0xfe, 0x80, 0xc3],
        // What a line-framed feed could mistake for its own header.
        b"a 1 2 3 4\nb\n".to_vec(),
        (0..=255u8).collect(),
        (0..65_536u32).map(|i| (i % 251) as u8).collect(),
    ];
    for (name, store, _dir) in engines(Retention::default()).await {
        let mut feed = store.follow.take_commits().unwrap();
        let batch: Vec<_> = payloads.iter().map(|p| raw("a", None, p, None)).collect();
        store.log.append(batch).await.unwrap();
        let read = read_all(&store.log, "a").await;
        let got: Vec<&[u8]> = read.iter().map(|m| &m.data[..]).collect();
        let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        assert_eq!(got, want, "{name}: read");
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        let info = store.log.topic(&t("a")).await.unwrap().unwrap();
        assert_eq!(
            (info.messages, info.bytes),
            (payloads.len() as u64, bytes as u64),
            "{name}"
        );
        let fed = feed_n(&mut feed, payloads.len(), name).await;
        assert_eq!(fed, read, "{name}: the commit feed carries the same bytes");
        // A key remembers the whole body, past any NUL.
        let first = store
            .log
            .append(vec![raw("k", None, b"a\0b", Some("k"))])
            .await
            .unwrap()[0];
        let err = store
            .log
            .append(vec![raw("k", None, b"a\0c", Some("k"))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{name}: {err:?}"
        );
        let again = store
            .log
            .append(vec![raw("k", None, b"a\0b", Some("k"))])
            .await
            .unwrap()[0];
        assert_eq!((again.seq, again.replayed), (first.seq, true), "{name}");
    }
}

/// `limit` is a `usize`: "no limit" (`usize::MAX`) must read like any limit above the count.
#[tokio::test]
async fn read_accepts_the_largest_limit() {
    for (name, store, _dir) in engines(Retention::default()).await {
        store
            .log
            .append(vec![msg("a", "1", None), msg("a", "2", None)])
            .await
            .unwrap();
        for limit in [1_000_000, u32::MAX as usize, usize::MAX] {
            let read = store.log.read(&t("a"), 0, limit, usize::MAX).await;
            assert_eq!(
                read.map(|r| r.messages.len()),
                Ok(2),
                "{name}: limit {limit}"
            );
        }
    }
}

/// A key stored by a release before SHA-256 fingerprints (FNV-1a 64: an integer in sqlite,
/// a decimal in redis) still replays its body and refuses another; a new key stores the
/// SHA-256 and is matched by it.
#[tokio::test]
async fn legacy_fnv_idempotency_keys_still_match_their_body() {
    let body = msg("a", "x", Some("old"));
    let fnv = body.fingerprint().legacy();
    // sqlite: the old row, as a release before wrote it, next to the topic's first message.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
    sqlite.append(vec![msg("a", "first", None)]).await.unwrap();
    rusqlite::Connection::open(dir.path().join("plexus.db"))
        .unwrap()
        .execute(
            "INSERT INTO idempotency (topic_id, key, fingerprint, seq, time, expires)
             VALUES ((SELECT id FROM topics WHERE name = 'a'), 'old', ?1, 1, 5, ?2)",
            rusqlite::params![fnv as i64, i64::MAX],
        )
        .unwrap();
    // redis: the old value, `FINGERPRINT SEQ TIME`.
    let server = RedisServer::start().await;
    let redis_log = super::redis::RedisLog::open(
        &RedisTarget::Single(server.url()),
        Retention::default(),
        None,
    )
    .await
    .unwrap();
    redis_log
        .append(vec![msg("a", "first", None)])
        .await
        .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("plexus:i:{a}:old")
        .arg(format!("{fnv} 1 5"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let logs: [(&str, &dyn Log); 2] = [("sqlite", &sqlite), ("redis", &redis_log)];
    for (name, log) in logs {
        let replay = log.append(vec![body.clone()]).await.unwrap();
        assert_eq!((replay[0].seq, replay[0].replayed), (1, true), "{name}");
        let other = log.append(vec![msg("a", "y", Some("old"))]).await;
        assert!(
            matches!(other, Err(StoreError::IdempotencyConflict { .. })),
            "{name}: {other:?}"
        );
        // A new key: stored as SHA-256, replayed by the same body only.
        let new = log.append(vec![msg("a", "z", Some("new"))]).await.unwrap();
        let again = log.append(vec![msg("a", "z", Some("new"))]).await.unwrap();
        assert_eq!(
            (again[0].seq, again[0].replayed),
            (new[0].seq, true),
            "{name}"
        );
        assert!(
            log.append(vec![msg("a", "w", Some("new"))]).await.is_err(),
            "{name}"
        );
    }
}

/// Hardening: `topics_page` pages `topics` in name order, on every engine.
#[tokio::test]
async fn topics_page_pages_the_topics_in_name_order() {
    for (name, store, _dir) in engines(Retention::default()).await {
        store
            .log
            .append(vec![
                msg("c", "1", None),
                msg("a.x", "1", None),
                msg("b", "1", None),
                msg("a", "1", None),
            ])
            .await
            .unwrap();
        let names = |infos: Vec<TopicInfo>| -> Vec<String> {
            infos.iter().map(|i| i.topic.to_string()).collect()
        };
        let all = store.log.topics().await.unwrap();
        assert_eq!(
            names(store.log.topics_page(None, 10).await.unwrap()),
            names(all),
            "{name}"
        );
        assert_eq!(
            names(store.log.topics_page(None, 2).await.unwrap()),
            ["a", "a.x"],
            "{name}"
        );
        assert_eq!(
            names(store.log.topics_page(Some(t("a.x")), 2).await.unwrap()),
            ["b", "c"],
            "{name}"
        );
        assert!(
            store
                .log
                .topics_page(Some(t("c")), 2)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hardening: a job's state and its `_jobs.{id}` event were two commits; after a crash
// between them a follower could wait forever for an event. They are now written together.

/// A job write's events as `Jobs` makes them: the state, named by itself, on `_jobs.{id}`.
fn state_event(job: &Job) -> Vec<NewMessage> {
    vec![NewMessage {
        topic: job.id.topic(),
        event: Some(ev(job.state.as_str())),
        data: Bytes::from(job.state.as_str().to_owned()),
        idempotency_key: None,
    }]
}

#[tokio::test]
async fn job_writes_commit_their_events_with_them() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let j = job("q", 1, T0);
        let topic = j.id.topic();
        let events = || async { read_all(&store.log, topic.as_str()).await };
        let names = |msgs: Vec<Arc<Message>>| -> Vec<String> {
            msgs.iter()
                .map(|m| m.event.as_ref().map_or("", |e| e.as_str()).to_owned())
                .collect()
        };
        let key = Some("k".to_owned());
        let (made, replayed) = store
            .jobs
            .create_announced(j.clone(), key.clone(), Box::new(state_event))
            .await
            .unwrap();
        assert!(!replayed, "{name}");
        assert_eq!(
            names(events().await),
            ["queued"],
            "{name}: the new job's event"
        );
        // A replay of the key makes no job and no event.
        let (_, replayed) = store
            .jobs
            .create_announced(j.clone(), key, Box::new(state_event))
            .await
            .unwrap();
        assert!(replayed, "{name}");
        assert_eq!(
            events().await.len(),
            1,
            "{name}: a replay announces nothing"
        );
        // Nothing to claim: no event anywhere.
        let none = store
            .jobs
            .claim_announced(&t("empty"), T0, "l0".into(), 30_000, Box::new(state_event))
            .await
            .unwrap();
        assert!(none.is_none(), "{name}");
        let running = store
            .jobs
            .claim_announced(&t("q"), T0 + 1, "l1".into(), 30_000, Box::new(state_event))
            .await
            .unwrap()
            .expect("the job is due");
        assert_eq!(running.id, made.id, "{name}");
        assert_eq!(names(events().await), ["queued", "running"], "{name}");
        // A save refused by its compare-and-set writes neither the job nor its event.
        let done = Job {
            state: JobState::Succeeded,
            lease: None,
            lease_until: None,
            updated: T0 + 2,
            ..running.clone()
        };
        assert_eq!(
            store
                .jobs
                .save_announced(done.clone(), Some("stale".into()), Box::new(state_event))
                .await,
            Err(StoreError::JobChanged(j.id.clone())),
            "{name}"
        );
        assert_eq!(
            events().await.len(),
            2,
            "{name}: a refused save announces nothing"
        );
        store
            .jobs
            .save_announced(done.clone(), Some("l1".into()), Box::new(state_event))
            .await
            .unwrap();
        let all = events().await;
        assert_eq!(
            names(all.clone()),
            ["queued", "running", "succeeded"],
            "{name}"
        );
        let stored = store.jobs.get(&j.id).await.unwrap().expect("stored");
        assert_eq!(
            all.last().map(|m| m.data.clone()),
            Some(Bytes::from(stored.state.as_str().to_owned())),
            "{name}: the last event is the stored state"
        );
    }
}

// Hardening: finished jobs and their topics were kept forever.
#[tokio::test]
async fn finished_jobs_are_purged_with_their_topics() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let old = job("q", 1, T0);
        let young = job("q", 2, T0);
        let waiting = job("q", 3, T0);
        for j in [&old, &young, &waiting] {
            store
                .jobs
                .create_announced(j.clone(), None, Box::new(state_event))
                .await
                .unwrap();
        }
        for (j, updated) in [(&old, T0 + 10), (&young, T0 + 1_000)] {
            let finished = Job {
                state: JobState::Dead,
                updated,
                ..j.clone()
            };
            store
                .jobs
                .save_announced(finished, None, Box::new(state_event))
                .await
                .unwrap();
        }
        let purged = store.jobs.purge_finished(T0 + 500, 100).await.unwrap();
        assert_eq!(purged, 1, "{name}: only the job finished before the cut");
        assert_eq!(store.jobs.get(&old.id).await.unwrap(), None, "{name}");
        assert_eq!(
            store.log.topic(&old.id.topic()).await.unwrap(),
            None,
            "{name}: its topic went with it"
        );
        assert_eq!(
            store.log.bounds(&old.id.topic()).await.unwrap(),
            None,
            "{name}: and so did its bounds"
        );
        assert_eq!(
            store
                .log
                .bounds(&young.id.topic())
                .await
                .unwrap()
                .map(|b| (b.first_seq, b.last_seq)),
            Some((1, 2)),
            "{name}: a kept job's topic keeps its bounds"
        );
        assert!(store.jobs.get(&young.id).await.unwrap().is_some(), "{name}");
        assert!(
            store.jobs.get(&waiting.id).await.unwrap().is_some(),
            "{name}"
        );
        assert_eq!(
            read_all(&store.log, young.id.topic().as_str()).await.len(),
            2,
            "{name}"
        );
        assert_eq!(
            store.jobs.purge_finished(T0 + 500, 100).await.unwrap(),
            0,
            "{name}"
        );
    }
}

// Hardening: on Redis a job's state and its events were two writes (the job on its queue's
// shard, `_jobs.{id}` on its own), so a crash between them left a state without its event.
// They are now one script; on a cluster the job's topics share its queue's slot.

/// A job write's events as `Jobs` makes them: the state on `_jobs.{id}`, and on
/// `_queues.{queue}` while it is queued.
fn state_and_queue_events(job: &Job) -> Vec<NewMessage> {
    let mut events = state_event(job);
    if job.state == JobState::Queued {
        events.push(NewMessage {
            topic: t(&format!("_queues.{}", job.queue)),
            ..events[0].clone()
        });
    }
    events
}

/// Drives one job through create, claim, retry, claim and success with its events, and
/// checks each topic holds exactly the states written, in order.
async fn job_lifecycle_with_events(name: &str, store: &Engine) {
    let j = job("lifecycle.q", 7, T0);
    let events = |topic: Topic| {
        let log = store.log.clone();
        async move {
            read_all(&log, topic.as_str())
                .await
                .iter()
                .map(|m| m.event.as_ref().map_or("", |e| e.as_str()).to_owned())
                .collect::<Vec<_>>()
        }
    };
    let queue_topic = t("_queues.lifecycle.q");
    store
        .jobs
        .create_announced(j.clone(), None, Box::new(state_and_queue_events))
        .await
        .unwrap();
    let running = store
        .jobs
        .claim_announced(
            &j.queue,
            T0 + 1,
            "l1".into(),
            30_000,
            Box::new(state_and_queue_events),
        )
        .await
        .unwrap()
        .expect("due");
    let retry = requeued(running, T0 + 2, None, "boom");
    store
        .jobs
        .save_announced(retry, Some("l1".into()), Box::new(state_and_queue_events))
        .await
        .unwrap();
    let running = store
        .jobs
        .claim_announced(
            &j.queue,
            T0 + 3,
            "l2".into(),
            30_000,
            Box::new(state_and_queue_events),
        )
        .await
        .unwrap()
        .expect("due again");
    let done = Job {
        state: JobState::Succeeded,
        lease: None,
        lease_until: None,
        updated: T0 + 4,
        ..running
    };
    store
        .jobs
        .save_announced(done, Some("l2".into()), Box::new(state_and_queue_events))
        .await
        .unwrap();
    assert_eq!(
        events(j.id.topic()).await,
        ["queued", "running", "queued", "running", "succeeded"],
        "{name}"
    );
    assert_eq!(
        events(queue_topic.clone()).await,
        ["queued", "queued"],
        "{name}"
    );
    let listed: Vec<Topic> = store
        .log
        .topics()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.topic)
        .collect();
    assert!(
        listed.contains(&j.id.topic()) && listed.contains(&queue_topic),
        "{name}: both topics are listed: {listed:?}"
    );
    // Finished: retention finds it, and takes its topic with it.
    assert_eq!(
        store.jobs.purge_finished(T0 + 5, 10).await.unwrap(),
        1,
        "{name}"
    );
    assert_eq!(
        store.log.topic(&j.id.topic()).await.unwrap(),
        None,
        "{name}"
    );
}

#[tokio::test]
async fn a_job_and_its_topics_keep_every_state_in_order() {
    for (name, store, _dir) in engines(Retention::default()).await {
        job_lifecycle_with_events(name, &store).await;
    }
}

#[tokio::test]
async fn on_a_redis_cluster_a_job_and_its_events_share_one_shard() {
    let cluster = super::redis::test_redis::RedisCluster::start().await;
    let Some(Ok(target)) = RedisTarget::parse(&cluster.url()) else {
        panic!("a cluster URL");
    };
    let store = Engine::redis(&target, Retention::default(), None)
        .await
        .unwrap();
    // One script touching keys of two slots fails with CROSSSLOT: this runs only if the job,
    // its queue's sets and both topics share one slot.
    job_lifecycle_with_events("cluster", &store).await;
    let j = job("shard.q", 9, T0);
    let id = j.id.clone();
    let mut feed = store.follow.take_commits().unwrap();
    store
        .jobs
        .create_announced(j.clone(), None, Box::new(state_and_queue_events))
        .await
        .unwrap();
    // Followed once the job exists (its id is only known from its submit): the channel is
    // found through the job's queue. Its confirmation feeds the topic's newest message.
    store.follow.follow(&j.id.topic());
    let patience = Patience::new();
    let mut seen = Vec::new();
    while !seen.contains(&1) {
        patience
            .wait("the job topic's subscription is confirmed")
            .await;
        while let Ok(batch) = feed.try_recv() {
            seen.extend(
                batch
                    .iter()
                    .filter(|m| m.topic == j.id.topic())
                    .map(|m| m.seq),
            );
        }
    }
    for key in [
        format!("plexus:s:{{shard.q}}:_jobs.{id}"),
        "plexus:s:{shard.q}:_queues.shard.q".to_owned(),
    ] {
        assert_eq!(
            cluster.owner_of(&key),
            cluster.owner_of(&format!("plexus:j:{{shard.q}}:{id}")),
            "{key}"
        );
    }
    // The sharded feed carries the job topic's commits (its channel shares the slot too).
    let running = store
        .jobs
        .claim_announced(
            &j.queue,
            T0 + 1,
            "l".into(),
            30_000,
            Box::new(state_and_queue_events),
        )
        .await
        .unwrap()
        .expect("due");
    while !seen.contains(&2) {
        patience
            .wait("the claim's event on the job topic's feed")
            .await;
        while let Ok(batch) = feed.try_recv() {
            seen.extend(
                batch
                    .iter()
                    .filter(|m| m.topic == running.id.topic())
                    .map(|m| m.seq),
            );
        }
    }
}

#[tokio::test]
async fn redis_carries_a_job_topic_over_from_its_old_keys() {
    let server = RedisServer::start().await;
    let target = RedisTarget::Single(server.url());
    let store = Engine::redis(&target, Retention::default(), None)
        .await
        .unwrap();
    let j = job("old.q", 3, T0);
    let topic = j.id.topic();
    store
        .jobs
        .create_announced(j.clone(), None, Box::new(state_event))
        .await
        .unwrap();
    store.close().await;
    // As a release before this one left it: the job's topic under its own name, 3 events.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let new_keys = [
        format!("plexus:s:{{old.q}}:{topic}"),
        format!("plexus:m:{{old.q}}:{topic}"),
    ];
    let _: () = redis::cmd("DEL")
        .arg(&new_keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    for seq in 1..=3 {
        let _: String = redis::cmd("XADD")
            .arg(format!("plexus:s:{{{topic}}}"))
            .arg(format!("{seq}-0"))
            .arg("t")
            .arg(T0)
            .arg("d")
            .arg("old")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(format!("plexus:m:{{{topic}}}"))
        .arg("head")
        .arg(3)
        .arg("last")
        .arg(T0)
        .arg("bytes")
        .arg(9)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A node of this release: the topic counts on from 3, the old messages read as deleted.
    let store = Engine::redis(&target, Retention::default(), None)
        .await
        .unwrap();
    let running = claim(&store.jobs, "old.q", T0 + 1, "l").await.expect("due");
    assert_eq!(running.id, j.id);
    store
        .jobs
        .save_announced(
            Job {
                state: JobState::Dead,
                ..running
            },
            Some("l".into()),
            Box::new(state_event),
        )
        .await
        .unwrap();
    let batch = store.log.read(&topic, 0, 100, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = batch.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [4], "the dead event after the three old ones");
    assert_eq!(batch.bounds().deleted_through, 3);
    let old: i64 = redis::cmd("EXISTS")
        .arg(format!("plexus:s:{{{topic}}}"))
        .arg(format!("plexus:m:{{{topic}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(old, 0, "the old keys are gone");
}

// Hardening: nothing capped the number of topics. `Log::limit_topics` now refuses a write
// that would create one beyond the cap, storing nothing of it; existing topics keep accepting.
#[tokio::test]
async fn the_topic_cap_refuses_new_topics_and_stores_nothing() {
    for (name, store, _dir) in engines(Retention::default()).await {
        store.log.limit_topics(2);
        store.log.append(vec![msg("a", "1", None)]).await.unwrap();
        let over = store
            .log
            .append(vec![
                msg("a", "2", None),
                msg("b", "x", None),
                msg("c", "x", None),
            ])
            .await;
        assert_eq!(over, Err(StoreError::TooManyTopics { limit: 2 }), "{name}");
        assert_eq!(
            read_all(&store.log, "a").await.len(),
            1,
            "{name}: nothing stored"
        );
        assert_eq!(store.log.topic(&t("b")).await.unwrap(), None, "{name}");
        // A job takes two new topics (`_jobs.{id}`, `_queues.q`): 3 in all, one too many.
        let j = job("q", 1, T0);
        let refused = store
            .jobs
            .create_announced(
                j.clone(),
                Some("k".into()),
                Box::new(state_and_queue_events),
            )
            .await;
        assert_eq!(
            refused.err(),
            Some(StoreError::TooManyTopics { limit: 2 }),
            "{name}"
        );
        assert_eq!(
            store.jobs.get(&j.id).await.unwrap(),
            None,
            "{name}: no job kept"
        );
        assert!(claim(&store.jobs, "q", T0, "l").await.is_none(), "{name}");
        store.log.limit_topics(3);
        let (made, replayed) = store
            .jobs
            .create_announced(
                j.clone(),
                Some("k".into()),
                Box::new(state_and_queue_events),
            )
            .await
            .unwrap();
        assert!(!replayed, "{name}: the refused submit left no key behind");
        assert_eq!(made.id, j.id, "{name}");
        // Full again, yet the job's own topics and `a` keep accepting.
        let running = claim(&store.jobs, "q", T0, "l").await.expect("due");
        store
            .jobs
            .save_announced(
                requeued(running, T0 + 1, None, "again"),
                Some("l".into()),
                Box::new(state_and_queue_events),
            )
            .await
            .unwrap();
        store.log.append(vec![msg("a", "3", None)]).await.unwrap();
        assert_eq!(
            store.log.append(vec![msg("d", "x", None)]).await,
            Err(StoreError::TooManyTopics { limit: 3 }),
            "{name}"
        );
        assert_eq!(store.log.topics().await.unwrap().len(), 3, "{name}");
    }
}

// Hardening: on redis a page of the topic list loaded every name (`SMEMBERS`, then a sort)
// for each page. Names now also live in a sorted set; one left short by an older release is
// filled at open.
#[tokio::test]
async fn redis_pages_topics_from_names_an_older_release_left() {
    let server = RedisServer::start().await;
    let target = RedisTarget::Single(server.url());
    let store = Engine::redis(&target, Retention::default(), None)
        .await
        .unwrap();
    store
        .log
        .append(vec![
            msg("b", "1", None),
            msg("a", "1", None),
            msg("c", "1", None),
        ])
        .await
        .unwrap();
    store.close().await;
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("{plexus:topics}:byname")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = Engine::redis(&target, Retention::default(), None)
        .await
        .unwrap();
    let page = |after: Option<&str>| {
        let log = store.log.clone();
        let after = after.map(t);
        async move {
            log.topics_page(after, 2)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.topic.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None).await, ["a", "b"]);
    assert_eq!(page(Some("b")).await, ["c"]);
    store.log.append(vec![msg("a.z", "1", None)]).await.unwrap();
    assert_eq!(page(Some("a")).await, ["a.z", "b"]);
}

// Hardening: a job idempotency key stored by a release before SHA-256 kept its FNV-1a 64
// for as long as its job existed. sqlite now rewrites it as the SHA-256 of the job's payload
// at open (on redis job keys expire within a day).
#[tokio::test]
async fn sqlite_rehashes_legacy_job_keys_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let j = job("q", 4, T0);
    let fp = crate::model::fingerprint(&[&j.payload]);
    {
        let sqlite =
            SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
        sqlite.create(j.clone(), Some("k".into())).await.unwrap();
        sqlite.close().await;
    }
    let db = || rusqlite::Connection::open(dir.path().join("plexus.db")).unwrap();
    // As a release before SHA-256 left it: the FNV-1a 64, an integer.
    db().execute(
        "UPDATE jobs SET fingerprint = ?1 WHERE id = ?2",
        rusqlite::params![fp.legacy() as i64, j.id.as_str()],
    )
    .unwrap();
    let sqlite = SqliteLog::open(dir.path(), Retention::default(), Durability::Process).unwrap();
    let stored: Vec<u8> = db()
        .query_row(
            "SELECT fingerprint FROM jobs WHERE id = ?1",
            [j.id.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored,
        fp.sha256().to_vec(),
        "rewritten as the payload's SHA-256"
    );
    let (first, replayed) = sqlite.create(j.clone(), Some("k".into())).await.unwrap();
    assert!(replayed && first.id == j.id);
    let other = Job {
        id: jid(5),
        payload: Bytes::from_static(b"another"),
        ..j
    };
    assert!(matches!(
        sqlite.create(other, Some("k".into())).await,
        Err(StoreError::IdempotencyConflict { .. })
    ));
}

// Durable consumers: a record per name, every write a compare-and-set on its version, dead
// letters committed only with a write that wins.
#[tokio::test]
async fn consumer_records_compare_and_set() {
    for (name, store, _dir) in engines(Retention::default()).await {
        let c = &store.consumers;
        assert_eq!(c.consumer("c").await.unwrap(), None, "{name}");
        assert_eq!(
            c.put_consumer("c", 0, b"one".to_vec(), Vec::new())
                .await
                .unwrap(),
            Some(1),
            "{name}: created"
        );
        assert_eq!(
            c.put_consumer("c", 0, b"other".to_vec(), vec![msg("_dead.c", "x", None)])
                .await
                .unwrap(),
            None,
            "{name}: a second creator loses"
        );
        assert_eq!(
            store.log.topic(&t("_dead.c")).await.unwrap(),
            None,
            "{name}: the loser's dead letter is not kept"
        );
        assert_eq!(
            c.put_consumer("c", 1, b"two".to_vec(), vec![msg("_dead.c", "x", None)])
                .await
                .unwrap(),
            Some(2),
            "{name}"
        );
        assert_eq!(read_all(&store.log, "_dead.c").await.len(), 1, "{name}");
        assert_eq!(
            c.put_consumer("c", 1, b"stale".to_vec(), Vec::new())
                .await
                .unwrap(),
            None,
            "{name}: a stale version loses"
        );
        let got = c.consumer("c").await.unwrap().expect("stored");
        assert_eq!((got.version, got.body), (2, b"two".to_vec()), "{name}");
        c.put_consumer("b", 0, b"b".to_vec(), Vec::new())
            .await
            .unwrap();
        let names: Vec<String> = c
            .consumers()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["b", "c"], "{name}: in name order");
        assert!(c.delete_consumer("c").await.unwrap(), "{name}");
        assert!(!c.delete_consumer("c").await.unwrap(), "{name}: gone");
        assert_eq!(c.consumer("c").await.unwrap(), None, "{name}");
        assert_eq!(
            c.put_consumer("c", 0, b"again".to_vec(), Vec::new())
                .await
                .unwrap(),
            Some(1),
            "{name}: a name can be used again"
        );
    }
}
