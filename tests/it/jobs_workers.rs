//! Jobs seen from the workers' side (docs/API.md, "Jobs"): a worker that vanishes, retries with
//! backoff until `dead`, competing workers over a thousand jobs, and jobs across a SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream;
use reqwest::StatusCode;
use serde_json::json;
use tokio::time::timeout;

use crate::jobs::{
    act, act_raw, assert_job, attempts, claim, complete, data_json, events, id, lease, millis,
    names, status, submit, submit_q, try_claim,
};
use crate::kit::{Engine, Server, expect_problem, into_json};

async fn vanished_worker(engine: Engine) {
    let server = Server::start_on(engine, &[]).await;
    let job = submit(&server, "v", "work").await;
    let job_id = id(&job);

    // The first worker claims with a one-second lease and is never heard from again.
    let first = claim(&server, "v", "1").await;
    assert_eq!(first["id"], json!(job_id), "{engine:?}: {first}");
    assert_eq!(attempts(&first), 1, "{engine:?}: {first}");

    // A second worker waits on the queue and gets the same job once the lease runs out.
    let second = claim(&server, "v", "60").await;
    assert_eq!(second["id"], json!(job_id), "{engine:?}: {second}");
    assert_eq!(attempts(&second), 2, "{engine:?}: {second}");
    assert_ne!(
        lease(&second),
        lease(&first),
        "{engine:?}: a new claim, a new token"
    );

    let late = act_raw(
        &server,
        &job_id,
        "complete",
        Some(&lease(&first)),
        "from first",
    )
    .await;
    expect_problem(late, 409, "complete with the vanished worker's token").await;

    let done = complete(&server, &second, "from second").await;
    assert_eq!(attempts(&done), 2, "{engine:?}: {done}");

    let shown = status(&server, &job_id, "").await;
    assert_job(&shown, "v", "succeeded");
    assert_eq!(shown["result"], json!("from second"), "{engine:?}: {shown}");

    let envs = events(&server, &job_id).await;
    let got = names(&envs);
    assert_eq!(
        got.iter().filter(|n| *n == "succeeded").count(),
        1,
        "{engine:?}: the job succeeded once: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|n| *n == "running").count(),
        2,
        "{engine:?}: claimed twice: {got:?}"
    );
    assert_eq!(
        got.first().map(String::as_str),
        Some("queued"),
        "{engine:?}: {got:?}"
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some("succeeded"),
        "{engine:?}: {got:?}"
    );
    assert_eq!(
        try_claim(&server, "v", "wait=0").await,
        None,
        "{engine:?}: nothing is left to claim"
    );
}

#[tokio::test]
async fn jobs_vanished_worker_lease_expires_and_another_worker_finishes_sqlite() {
    vanished_worker(Engine::Sqlite).await;
}

#[tokio::test]
async fn jobs_vanished_worker_lease_expires_and_another_worker_finishes_memory() {
    vanished_worker(Engine::Memory).await;
}

#[tokio::test]
async fn jobs_vanished_worker_lease_expires_and_another_worker_finishes_redis() {
    vanished_worker(Engine::Redis).await;
}

#[tokio::test]
async fn jobs_failures_retry_with_backoff_then_dead() {
    let server = Server::start(&["--jobs-backoff", "100ms"]).await;
    let job = submit_q(&server, "retry", "?max_attempts=3", "fragile").await;
    let job_id = id(&job);
    assert_eq!(job["max_attempts"], json!(3), "{job}");

    for attempt in 1..=3u64 {
        // A claim that waits gets the requeued job once its backoff has passed.
        let claimed = claim(&server, "retry", "60").await;
        assert_eq!(claimed["id"], json!(job_id), "{claimed}");
        assert_eq!(attempts(&claimed), attempt, "{claimed}");
        let error = format!("boom {attempt}");
        let failed = act(&server, &claimed, "fail", &error).await;
        assert_eq!(attempts(&failed), attempt, "{failed}");
        assert!(
            failed["error"].as_str().is_some_and(|e| e.contains(&error)),
            "the error text is kept: {failed}"
        );
        if attempt < 3 {
            assert_job(&failed, "retry", "queued");
            assert!(
                millis(&failed["run_at"]) >= millis(&failed["updated"]),
                "run_at is after the failure: {failed}"
            );
            let shown = status(&server, &job_id, "").await;
            assert_eq!(shown["state"], json!("queued"), "{shown}");
            assert!(shown["run_at"].is_string(), "{shown}");
        } else {
            assert_job(&failed, "retry", "dead");
        }
    }

    let shown = status(&server, &job_id, "").await;
    assert_job(&shown, "retry", "dead");
    assert_eq!(attempts(&shown), 3, "{shown}");
    assert!(
        shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("boom 3")),
        "{shown}"
    );

    let envs = events(&server, &job_id).await;
    let got = names(&envs);
    assert_eq!(
        got,
        [
            "queued", "running", "queued", "running", "queued", "running", "dead"
        ],
        "the events of _jobs.{job_id}"
    );
    let dead = data_json(envs.last().expect("a dead event"));
    assert_eq!(dead["state"], json!("dead"), "{dead}");
    assert_eq!(attempts(&dead), 3, "{dead}");
    assert_eq!(
        try_claim(&server, "retry", "wait=1").await,
        None,
        "a dead job is not claimed again"
    );
}

#[tokio::test]
async fn jobs_max_attempts_default_comes_from_the_flag() {
    let server = Server::start(&["--jobs-max-attempts", "2", "--jobs-backoff", "100ms"]).await;
    let job = submit(&server, "flagged", "p").await;
    assert_eq!(job["max_attempts"], json!(2), "{job}");
    for attempt in 1..=2u64 {
        let claimed = claim(&server, "flagged", "60").await;
        assert_eq!(attempts(&claimed), attempt, "{claimed}");
        act(&server, &claimed, "fail", "no").await;
    }
    assert_eq!(status(&server, &id(&job), "").await["state"], json!("dead"));
}

const JOBS: usize = 1000;
const WORKERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_four_workers_complete_a_thousand_jobs_exactly_once() {
    let server = Server::start(&[]).await;
    let srv = &server;
    let done = AtomicUsize::new(0);
    let completed: Mutex<BTreeMap<String, usize>> = Mutex::default();

    let submits = async {
        stream::iter(0..JOBS)
            .map(|i| async move { (id(&submit(srv, "bulk", format!("job-{i}")).await), i) })
            .buffer_unordered(64)
            .collect::<BTreeMap<String, usize>>()
            .await
    };
    let workers = (0..WORKERS).map(|w| {
        let (done, completed) = (&done, &completed);
        async move {
            let mut mine = 0usize;
            while done.load(Ordering::SeqCst) < JOBS {
                let Some(claimed) = try_claim(srv, "bulk", "wait=1&lease=60").await else {
                    continue;
                };
                assert_eq!(
                    attempts(&claimed),
                    1,
                    "worker {w}: healthy workers: {claimed}"
                );
                let input = claimed["payload"]
                    .as_str()
                    .unwrap_or_else(|| panic!("worker {w}: text payload: {claimed}"))
                    .to_string();
                let job_id = id(&claimed);
                let resp = act_raw(
                    srv,
                    &job_id,
                    "complete",
                    Some(&lease(&claimed)),
                    input.to_uppercase(),
                )
                .await;
                let (code, _, job) = into_json(resp).await;
                assert_eq!(code, StatusCode::OK, "worker {w}: complete {job_id}: {job}");
                assert_eq!(job["state"], json!("succeeded"), "{job}");
                *completed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(job_id)
                    .or_default() += 1;
                done.fetch_add(1, Ordering::SeqCst);
                mine += 1;
            }
            mine
        }
    });
    let run = async { tokio::join!(submits, join_all(workers)) };
    let (submitted, per_worker) = timeout(Duration::from_secs(240), run)
        .await
        .expect("1,000 jobs over 4 workers finish within 4 minutes");

    assert_eq!(submitted.len(), JOBS, "1,000 distinct job ids");
    assert_eq!(per_worker.iter().sum::<usize>(), JOBS, "{per_worker:?}");
    let completed = completed.into_inner().unwrap_or_else(|e| e.into_inner());
    let twice: Vec<_> = completed.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs completed more than once: {twice:?}");
    let completed_ids: BTreeSet<&String> = completed.keys().collect();
    let submitted_ids: BTreeSet<&String> = submitted.keys().collect();
    assert_eq!(
        completed_ids, submitted_ids,
        "every submitted job, completed"
    );

    let checks = stream::iter(submitted.iter())
        .map(|(job_id, i)| async move {
            let job = status(srv, job_id, "").await;
            (job, *i)
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for (job, i) in checks {
        assert_eq!(job["state"], json!("succeeded"), "{job}");
        assert_eq!(attempts(&job), 1, "{job}");
        assert_eq!(job["result"], json!(format!("JOB-{i}")), "{job}");
    }
    assert_eq!(
        try_claim(&server, "bulk", "wait=0").await,
        None,
        "nothing is left to claim"
    );
}

#[tokio::test]
async fn jobs_queued_and_running_jobs_survive_sigkill() {
    let mut server = Server::start_durable(&[]).await;
    let mut payloads = BTreeMap::new();
    for i in 0..10 {
        let job = submit(&server, "durable", format!("d-{i}")).await;
        payloads.insert(id(&job), format!("d-{i}"));
    }
    let mut running = BTreeSet::new();
    for _ in 0..3 {
        let claimed = claim(&server, "durable", "2").await;
        running.insert(id(&claimed));
    }
    assert_eq!(running.len(), 3, "three distinct claims: {running:?}");

    server.restart().await;

    for (job_id, body) in &payloads {
        let job = status(&server, job_id, "").await;
        assert_eq!(job["payload"], json!(body), "after the crash: {job}");
        if !running.contains(job_id) {
            assert_job(&job, "durable", "queued");
            assert_eq!(attempts(&job), 0, "after the crash: {job}");
        }
    }

    let mut claimed_after = BTreeMap::new();
    while claimed_after.len() < payloads.len() {
        let claimed = claim(&server, "durable", "60").await;
        let job_id = id(&claimed);
        let expected = if running.contains(&job_id) { 2 } else { 1 };
        assert_eq!(
            attempts(&claimed),
            expected,
            "a job claimed before the crash comes back with attempts 2, others 1: {claimed}"
        );
        assert_eq!(claimed["payload"], json!(payloads[&job_id]), "{claimed}");
        assert!(
            claimed_after.insert(job_id, claimed).is_none(),
            "a job was claimed twice after the crash"
        );
    }
    for claimed in claimed_after.values() {
        complete(&server, claimed, "ok").await;
    }
    for job_id in payloads.keys() {
        assert_eq!(
            status(&server, job_id, "").await["state"],
            json!("succeeded")
        );
    }
    assert_eq!(try_claim(&server, "durable", "wait=0").await, None);
}
