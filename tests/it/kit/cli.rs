//! The CLI runner: the `plexus` binary of this build, with nothing of the caller's
//! `PLEXUS_*` environment (the flags under test must not be overridden by whoever runs the
//! tests), killed when its handle is dropped; and `curl`, the reference HTTP client.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use tokio::time::timeout;

/// A guard against a CLI that never exits; not a timing assertion.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `plexus` with a clean environment; add the arguments.
pub fn plexus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plexus"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PLEXUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Runs a CLI command to its end with no stdin; its output. One that is still running after
/// [`CLI_TIMEOUT`] fails the test, and is killed as its handle drops.
pub async fn output(cmd: &mut Command, what: &str) -> Output {
    timeout(CLI_TIMEOUT, cmd.stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {CLI_TIMEOUT:?}"))
        .expect("run plexus")
}

/// [`output`], asserting success.
pub async fn run(cmd: &mut Command, what: &str) -> Output {
    let out = output(cmd, what).await;
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`output`], asserting failure: for a command that must refuse to run (a `serve` that must
/// not start), which then cannot hang the test by running after all.
pub async fn run_to_failure(cmd: &mut Command, what: &str) -> Output {
    let out = output(cmd, what).await;
    assert!(
        !out.status.success(),
        "{what} must fail, but succeeded:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout as one JSON value per non-empty line.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect()
}

/// The whole of stdout as one JSON value (compact or pretty).
pub fn stdout_json(out: &Output, what: &str) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON value ({e}): {text:?}"))
}

/// What a curl run answered: the status, `%{http_version}` and the body.
pub struct CurlAnswer {
    pub status: u16,
    pub version: String,
    pub body: String,
}

impl CurlAnswer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("curl body is not JSON ({e}): {:?}", self.body))
    }
}

/// Runs `curl -sS <args> <url>` and splits the body from a last line `STATUS VERSION`.
pub async fn curl(args: &[&str], url: &str) -> CurlAnswer {
    let output = timeout(
        CLI_TIMEOUT,
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--write-out",
                "\n%{http_code} %{http_version}",
            ])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl ends within the deadline")
    .expect("run curl");
    let stdout = String::from_utf8(output.stdout).expect("curl output is UTF-8");
    assert!(
        output.status.success(),
        "curl {args:?} {url} failed ({}): stdout {stdout:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, last) = stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no write-out line: {stdout:?}"));
    let (status, version) = last
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad curl write-out line {last:?}"));
    CurlAnswer {
        status: status.parse().expect("the status is a number"),
        version: version.to_string(),
        body: body.to_string(),
    }
}
