//! The browser runner: a Node script under tests/browser/ driving Debian's Chromium with
//! playwright-core, through scripts/browser (which installs the pinned playwright-core under
//! target/ when missing). The script's last line of stdout is its JSON result.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use tokio::time::timeout;

/// A guard against a browser that never exits; not a timing assertion.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `tests/browser/<script>` with `PLEXUS_URL` set to `base` and the extra `env`; its
/// JSON result. A script that fails fails the test with its stderr.
pub async fn run(script: &str, base: &str, env: &[(&str, &str)]) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("scripts/browser"));
    cmd.arg(root.join("tests/browser").join(script))
        .env("PLEXUS_URL", base)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = timeout(BROWSER_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {BROWSER_TIMEOUT:?}"))
        .expect("run scripts/browser");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script}: last line is not JSON ({e}): {last}\n{stderr}"))
}
