//! One behaviour suite for every engine: each test runs against `memory`, `sqlite` and `redis`
//! (a private `redis-server` per test).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::redis::TestRedis;
use super::{
    Durability, Log, LogBounds, MemoryLog, RedisLog, RedisTarget, Retention, SqliteLog, StoreError,
};
use crate::model::{NewMessage, Topic};

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
    Redis(TestRedis),
}

/// Every engine with this retention.
async fn engines(retention: Retention) -> Vec<(&'static str, Arc<dyn Log>, Backing)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLog::open(dir.path(), retention, Durability::Process).unwrap();
    let server = TestRedis::start().await;
    let redis = RedisLog::open(&RedisTarget::Single(server.url.clone()), retention)
        .await
        .unwrap();
    vec![
        ("memory", Arc::new(MemoryLog::new(retention)), Backing::None),
        ("sqlite", Arc::new(sqlite), Backing::Dir(dir)),
        ("redis", Arc::new(redis), Backing::Redis(server)),
    ]
}

#[tokio::test]
async fn seqs_count_from_one_per_topic() {
    for (name, log, _dir) in engines(Retention::default()).await {
        let r = log
            .append(vec![
                msg("a", "1", None),
                msg("b", "1", None),
                msg("a", "2", None),
            ])
            .await
            .unwrap();
        let seqs: Vec<_> = r.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, vec![1, 1, 2], "{name}");
        let read = log.read(&t("a"), 0, 10, usize::MAX).await.unwrap();
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
        let after = log.read(&t("a"), 1, 10, usize::MAX).await.unwrap();
        assert_eq!(after.messages[0].seq, 2, "{name}");
    }
}

#[tokio::test]
async fn read_limits_count_and_bytes() {
    for (name, log, _dir) in engines(Retention::default()).await {
        let batch = (0..10)
            .map(|i| msg("a", &"x".repeat(10 + i), None))
            .collect();
        log.append(batch).await.unwrap();
        assert_eq!(
            log.read(&t("a"), 0, 3, usize::MAX)
                .await
                .unwrap()
                .messages
                .len(),
            3,
            "{name}"
        );
        // 10 + 11 = 21 bytes fit in 25, the third does not; one message always comes.
        assert_eq!(
            log.read(&t("a"), 0, 100, 25).await.unwrap().messages.len(),
            2,
            "{name}"
        );
        assert_eq!(
            log.read(&t("a"), 0, 100, 1).await.unwrap().messages.len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn idempotency_replays_and_conflicts() {
    for (name, log, _dir) in engines(Retention::default()).await {
        let first = log.append(vec![msg("a", "x", Some("k"))]).await.unwrap()[0];
        let again = log.append(vec![msg("a", "x", Some("k"))]).await.unwrap()[0];
        assert_eq!(again.seq, first.seq, "{name}");
        assert!(again.replayed && !first.replayed, "{name}");
        let err = log
            .append(vec![msg("a", "other", Some("k"))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{name}"
        );
        // The same key on another topic is another key.
        assert_eq!(
            log.append(vec![msg("b", "y", Some("k"))]).await.unwrap()[0].seq,
            1,
            "{name}"
        );
        // A conflicting item refuses its whole batch.
        let err = log
            .append(vec![msg("a", "new", None), msg("a", "other", Some("k"))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { .. }),
            "{name}"
        );
        assert_eq!(
            log.bounds(&t("a")).await.unwrap().unwrap().last_seq,
            1,
            "{name}"
        );
        // Within one batch, a repeated key stores once.
        let r = log
            .append(vec![msg("c", "z", Some("j")), msg("c", "z", Some("j"))])
            .await
            .unwrap();
        assert_eq!((r[0].seq, r[1].seq, r[1].replayed), (1, 1, true), "{name}");
    }
}

#[tokio::test]
async fn delete_keeps_the_counter() {
    for (name, log, _dir) in engines(Retention::default()).await {
        log.append(vec![msg("a", "1", None), msg("a", "2", None)])
            .await
            .unwrap();
        assert!(log.delete_topic(&t("a")).await.unwrap(), "{name}");
        assert!(!log.delete_topic(&t("nope")).await.unwrap(), "{name}");
        let bounds = log.bounds(&t("a")).await.unwrap().unwrap();
        assert_eq!(
            (bounds.first_seq, bounds.last_seq, bounds.deleted_through),
            (3, 2, 2),
            "{name}"
        );
        let info = log.topic(&t("a")).await.unwrap().unwrap();
        assert_eq!((info.messages, info.bytes), (0, 0), "{name}");
        assert_eq!(
            log.append(vec![msg("a", "3", None)]).await.unwrap()[0].seq,
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
    for (name, log, _dir) in engines(retention).await {
        let batch = (0..10).map(|i| msg("a", &i.to_string(), None)).collect();
        log.append(batch).await.unwrap();
        // sqlite trims in its writer within a tick; wait for the end state.
        let mut first = 0;
        for _ in 0..200 {
            first = log.bounds(&t("a")).await.unwrap().unwrap().first_seq;
            if first == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(first, 8, "{name}");
        let info = log.topic(&t("a")).await.unwrap().unwrap();
        assert_eq!(
            (info.messages, info.bytes, info.last_seq),
            (3, 3, 10),
            "{name}"
        );
        let read = log.read(&t("a"), 0, 100, usize::MAX).await.unwrap();
        let seqs: Vec<_> = read.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![8, 9, 10], "{name}");
    }
}

#[tokio::test]
async fn seek_time_finds_the_first_at_or_after() {
    for (name, log, _dir) in engines(Retention::default()).await {
        let a = log.append(vec![msg("a", "1", None)]).await.unwrap()[0];
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = log.append(vec![msg("a", "2", None)]).await.unwrap()[0];
        assert_eq!(log.seek_time(&t("a"), a.time).await.unwrap(), 0, "{name}");
        assert_eq!(log.seek_time(&t("a"), b.time).await.unwrap(), 1, "{name}");
        assert_eq!(
            log.seek_time(&t("a"), b.time + 1).await.unwrap(),
            2,
            "{name}"
        );
        assert_eq!(log.seek_time(&t("none"), 0).await.unwrap(), 0, "{name}");
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
