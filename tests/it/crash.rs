//! The delivery promise across a crash: every acknowledged message survives SIGKILL.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use serde_json::json;

use crate::kit::{Engine, Server, payload, seq};

const TASKS: usize = 8;
const PER_TASK: usize = 125;

/// The payload a publisher sends; every tenth one is not UTF-8.
fn body(task: usize, i: usize) -> Vec<u8> {
    let mut b = format!("task-{task}-msg-{i}").into_bytes();
    if i.is_multiple_of(10) {
        b.extend_from_slice(&[0xff, 0xfe, 0x00]);
    }
    b
}

async fn crash_and_recover(engine: Engine, args: &[&str]) {
    let mut server = Server::start_on(engine, args).await;
    let srv = &server;
    let publishers = (0..TASKS).map(|task| async move {
        let mut acked = Vec::with_capacity(PER_TASK);
        for i in 0..PER_TASK {
            let result = srv.publish("crash", body(task, i)).await;
            acked.push((seq(&result), body(task, i)));
        }
        acked
    });
    let acked: BTreeMap<u64, Vec<u8>> = join_all(publishers).await.into_iter().flatten().collect();
    assert_eq!(
        acked.len(),
        TASKS * PER_TASK,
        "every publish got its own seq"
    );

    server.sigkill().await;
    server.restart().await;

    let stored = server.read_all("crash").await;
    let got: Vec<u64> = stored.iter().map(seq).collect();
    let expected: Vec<u64> = (1..=(TASKS * PER_TASK) as u64).collect();
    assert_eq!(
        got, expected,
        "after the crash: seqs 1..=1000, each once, in order"
    );
    for env in &stored {
        let s = seq(env);
        assert_eq!(
            Some(&payload(env)),
            acked.get(&s),
            "payload of acknowledged seq {s} is intact: {env}"
        );
    }
    let next = server.publish("crash", "after").await;
    assert_eq!(
        next["seq"],
        json!(1001),
        "the counter continues after the crash"
    );
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    crash_and_recover(Engine::Sqlite, &[]).await;
}

/// The hub is killed, its Redis lives on: what Redis acknowledged is there after a restart.
#[tokio::test]
async fn acknowledged_messages_survive_sigkill_on_redis() {
    crash_and_recover(Engine::Redis, &[]).await;
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill_with_durability_machine() {
    crash_and_recover(Engine::Sqlite, &["--durability", "machine"]).await;
}
