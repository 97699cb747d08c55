//! `plexus jobs submit | status | work` (docs/API.md, the CLI) against a running hub: `work` runs a
//! real shell command per job, its stdout the result and a non-zero exit a failure.

use std::process::Stdio;

use serde_json::json;
use tokio::process::Child;

use crate::jobs::{assert_job, attempts, id, status, status_until, submit, submit_q};
use crate::kit::Server;
use crate::kit::cli::{plexus, run, stdout_json};

/// A running `plexus jobs work`, killed on drop; its stderr goes to a file shown when the
/// test fails.
struct Worker {
    child: Child,
    what: String,
    stderr: tempfile::NamedTempFile,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
            eprintln!("---- {} stderr ----\n{log}", self.what);
        }
    }
}

/// Starts `plexus jobs work QUEUE --server URL [extra] -- CMD…`, running until killed.
fn worker(server: &Server, queue: &str, extra: &[&str], cmd: &[&str]) -> Worker {
    let stderr = tempfile::NamedTempFile::new().expect("create a file for the worker's stderr");
    let file = stderr.reopen().expect("open the worker's stderr file");
    let child = plexus()
        .args(["jobs", "work", queue, "--server", server.base()])
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn plexus jobs work");
    Worker {
        child,
        what: format!("plexus jobs work {queue} {extra:?} -- {cmd:?}"),
        stderr,
    }
}

async fn stop(mut worker: Worker) {
    let exited = worker.child.try_wait().expect("poll the worker");
    assert!(
        exited.is_none(),
        "{} runs until killed, but it exited ({exited:?})",
        worker.what
    );
    worker.child.kill().await.expect("kill the worker");
}

#[tokio::test]
async fn jobs_cli_work_runs_a_shell_command_per_job() {
    let server = Server::start(&["--jobs-backoff", "100ms"]).await;
    let upper = worker(
        &server,
        "upper",
        &["--concurrency", "2", "--lease", "30s"],
        &["sh", "-c", "tr a-z A-Z"],
    );
    let failing = worker(
        &server,
        "broken",
        &[],
        &["sh", "-c", "echo oops >&2; exit 3"],
    );

    let mut jobs = Vec::new();
    for word in ["hello", "plexus", "mixed Case 42"] {
        jobs.push((id(&submit(&server, "upper", word).await), word));
    }
    for (job_id, word) in &jobs {
        status_until(&server, job_id, "the worker to finish a job", |j| {
            j["state"] == "succeeded" || j["state"] == "dead"
        })
        .await;
        let job = status(&server, job_id, "").await;
        assert_job(&job, "upper", "succeeded");
        assert_eq!(
            job["result"],
            json!(word.to_uppercase()),
            "the command's stdout is the result: {job}"
        );
        assert_eq!(attempts(&job), 1, "{job}");
    }

    let bad = submit_q(&server, "broken", "?max_attempts=2", "anything").await;
    status_until(&server, &id(&bad), "the failing job to die", |j| {
        j["state"] == "dead" || j["state"] == "succeeded"
    })
    .await;
    let job = status(&server, &id(&bad), "").await;
    assert_job(&job, "broken", "dead");
    assert_eq!(attempts(&job), 2, "{job}");
    assert!(
        job["error"].as_str().is_some_and(|e| e.contains("oops")),
        "the command's stderr is the error: {job}"
    );

    stop(upper).await;
    stop(failing).await;
}

#[tokio::test]
async fn jobs_cli_submit_and_status_print_the_job_json() {
    let server = Server::start(&[]).await;
    let out = run(
        plexus().args([
            "jobs",
            "submit",
            "--server",
            server.base(),
            "cli.q",
            "payload-1",
        ]),
        "plexus jobs submit",
    )
    .await;
    let printed = stdout_json(&out, "plexus jobs submit");
    assert_job(&printed, "cli.q", "queued");
    assert_eq!(printed["payload"], json!("payload-1"), "{printed}");
    let job_id = id(&printed);
    assert_eq!(
        status(&server, &job_id, "").await["payload"],
        json!("payload-1")
    );

    let out = run(
        plexus().args(["jobs", "status", "--server", server.base(), &job_id]),
        "plexus jobs status",
    )
    .await;
    let shown = stdout_json(&out, "plexus jobs status");
    assert_job(&shown, "cli.q", "queued");
    assert_eq!(shown["id"], json!(job_id), "{shown}");

    // `status --wait` follows the job until it changes: a worker finishes it meanwhile.
    let upper = worker(&server, "cli.q", &[], &["sh", "-c", "tr a-z A-Z"]);
    status_until(&server, &job_id, "the worker to finish the job", |j| {
        j["state"] == "succeeded" || j["state"] == "dead"
    })
    .await;
    let out = run(
        plexus().args([
            "jobs",
            "status",
            "--server",
            server.base(),
            &job_id,
            "--wait",
            "30s",
        ]),
        "plexus jobs status --wait 30s",
    )
    .await;
    let shown = stdout_json(&out, "plexus jobs status --wait");
    assert_job(&shown, "cli.q", "succeeded");
    assert_eq!(shown["result"], json!("PAYLOAD-1"), "{shown}");
    stop(upper).await;
}

#[tokio::test]
async fn jobs_cli_submit_wait_prints_the_finished_job() {
    let server = Server::start(&[]).await;
    let upper = worker(&server, "sync.q", &[], &["sh", "-c", "tr a-z A-Z"]);
    let out = run(
        plexus().args([
            "jobs",
            "submit",
            "--server",
            server.base(),
            "sync.q",
            "wait for me",
            "--wait",
            "30s",
        ]),
        "plexus jobs submit --wait 30s",
    )
    .await;
    let printed = stdout_json(&out, "plexus jobs submit --wait");
    assert_job(&printed, "sync.q", "succeeded");
    assert_eq!(printed["result"], json!("WAIT FOR ME"), "{printed}");
    stop(upper).await;
}
