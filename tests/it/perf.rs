//! `plexus bench fanout --check`: the verdict logic against the targets, on tiny runs. The
//! thresholds are overridden to ones no run can miss or meet, so what is tested is the exit
//! status, never the machine's speed.

use crate::kit::cli::{output, plexus, run, run_to_failure};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fanout(via: &str, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = plexus();
    cmd.args([
        "bench",
        "fanout",
        "--via",
        via,
        "--subscribers",
        "3",
        "--messages",
        "4",
        "--publishers",
        "1",
        "--check",
    ])
    .args(extra);
    cmd
}

#[tokio::test]
async fn check_fails_on_an_impossible_target_and_passes_a_trivial_one() {
    let out = run_to_failure(
        &mut fanout("sse", &["--threshold", "fanout-saturated=1000000"]),
        "bench fanout --check (impossible)",
    )
    .await;
    let text = stdout(&out);
    assert!(text.contains("check FAIL fanout-saturated"), "{text}");
    assert!(
        text.contains("check ok   nothing lost or duplicated"),
        "the tiny run delivers everything: {text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check failed"),
        "the failure is explained"
    );

    let out = run(
        &mut fanout("ws", &["--threshold", "fanout-saturated=0"]),
        "bench fanout --check (trivial)",
    )
    .await;
    let text = stdout(&out);
    assert!(text.contains("check ok   fanout-saturated"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test]
async fn a_paced_run_is_judged_on_latency_over_http2() {
    let out = run_to_failure(
        &mut fanout("sse-h2", &["--rate", "50", "--threshold", "fanout-p99=0"]),
        "bench fanout --rate --check (impossible)",
    )
    .await;
    let text = stdout(&out);
    assert!(text.contains("check FAIL fanout-p99"), "{text}");
    assert!(text.contains("lost      0  dupes    0"), "{text}");
}

#[tokio::test]
async fn a_bad_threshold_is_a_usage_error() {
    for (args, says) in [
        (&["--threshold", "fanout-typo=1"][..], "not one of"),
        (&["--threshold", "fanout-p99"][..], "NAME=VALUE"),
        (&["--threshold", "fanout-p99=fast"][..], "not a number"),
        (&["--no-baseline"][..], "leave out --no-baseline"),
    ] {
        let out = output(&mut fanout("sse", args), "bench fanout, bad --check").await;
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !stdout(&out).contains("check "),
            "nothing measured: {args:?}"
        );
    }
}

#[tokio::test]
async fn a_paced_long_poll_run_is_judged_on_its_p99_and_requests_per_delivery() {
    // Every answered poll carries a message, so a run needs at least one request per
    // delivery: a target of half a request cannot be met, while a p99 of an hour always is.
    let out = run_to_failure(
        &mut fanout(
            "long-poll",
            &[
                "--rate",
                "20",
                "--threshold",
                "long-poll-p99-ms=3600000",
                "--threshold",
                "long-poll-requests=0.5",
            ],
        ),
        "bench fanout --via long-poll --check (impossible requests per delivery)",
    )
    .await;
    let text = stdout(&out);
    assert!(text.contains("check ok   long-poll-p99-ms"), "{text}");
    assert!(text.contains("check FAIL long-poll-requests"), "{text}");
    assert!(
        text.contains("check ok   nothing lost or duplicated"),
        "{text}"
    );
    assert!(
        !text.contains("fanout-p99"),
        "long polls have their own latency target: {text}"
    );
}
