//! `plexus pub` and `plexus sub` against a running hub.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

use crate::kit::cli::{CLI_TIMEOUT, json_lines, plexus, run};
use crate::kit::{Server, messages, seq};

#[tokio::test]
async fn pub_prints_the_result_json() {
    let server = Server::start(&[]).await;
    let out = run(
        plexus().args([
            "pub",
            "--server",
            server.base(),
            "cli.topic",
            "hello from cli",
        ]),
        "plexus pub",
    )
    .await;
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "one result: {lines:?}");
    assert_eq!(lines[0]["topic"], json!("cli.topic"));
    assert_eq!(lines[0]["seq"], json!(1));
    assert!(lines[0]["time"].is_string());

    let msgs = messages(&server.read("cli.topic", "since=all").await);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["data"], json!("hello from cli"));
}

#[tokio::test]
async fn pub_reads_data_from_stdin() {
    let server = Server::start(&[]).await;
    let mut child = plexus()
        .args(["pub", "--server", server.base(), "piped"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plexus pub");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"from stdin").await.unwrap();
    drop(stdin);
    let out = timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .expect("plexus pub exits")
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out)[0]["seq"], json!(1));
    let msgs = messages(&server.read("piped", "since=all").await);
    assert_eq!(msgs[0]["data"], json!("from stdin"));
}

#[tokio::test]
async fn pub_to_a_reserved_topic_fails() {
    let server = Server::start(&[]).await;
    let out = timeout(
        CLI_TIMEOUT,
        plexus()
            .args(["pub", "--server", server.base(), "_x", "no"])
            .output(),
    )
    .await
    .expect("plexus pub exits")
    .unwrap();
    assert!(!out.status.success(), "a 403 is a failure exit");
    assert!(!out.stderr.is_empty(), "the failure is explained on stderr");
}

#[tokio::test]
async fn sub_via_poll_prints_count_envelopes_and_exits() {
    let server = Server::start(&[]).await;
    server.publish_n("t", 3, "m").await;
    let out = run(
        plexus().args([
            "sub",
            "--server",
            server.base(),
            "t",
            "--via",
            "poll",
            "--since",
            "all",
            "--count",
            "2",
        ]),
        "plexus sub --via poll",
    )
    .await;
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "exactly --count envelopes: {lines:?}");
    assert_eq!(lines.iter().map(seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(lines[0]["topic"], json!("t"));
    assert_eq!(lines[1]["data"], json!("m2"));
}

#[tokio::test]
async fn sub_via_long_poll_waits_for_the_next_message() {
    let server = Server::start(&[]).await;
    server.publish("t", "m1").await;
    let mut child = plexus()
        .args([
            "sub",
            "--server",
            server.base(),
            "t",
            "--via",
            "long-poll",
            "--since",
            "all",
            "--count",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plexus sub");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = timeout(CLI_TIMEOUT, lines.next_line())
        .await
        .expect("first line")
        .unwrap()
        .expect("sub printed a first envelope");
    let first: Value = serde_json::from_str(&first).expect("first line is JSON");
    assert_eq!(first["seq"], json!(1));

    // The subscriber has printed m1 and now waits for a second message.
    server.publish("t", "m2").await;
    let second = timeout(CLI_TIMEOUT, lines.next_line())
        .await
        .expect("second line")
        .unwrap()
        .expect("sub printed a second envelope");
    let second: Value = serde_json::from_str(&second).expect("second line is JSON");
    assert_eq!(second["seq"], json!(2));
    assert_eq!(second["data"], json!("m2"));

    let status = timeout(CLI_TIMEOUT, child.wait())
        .await
        .expect("sub exits")
        .unwrap();
    assert!(status.success(), "sub exits 0 after --count messages");
    assert_eq!(
        lines.next_line().await.unwrap(),
        None,
        "nothing after --count envelopes"
    );
}

#[tokio::test]
async fn sub_via_poll_on_several_topics() {
    let server = Server::start(&[]).await;
    server.publish("a", "a1").await;
    server.publish("b", "b1").await;
    let out = run(
        plexus().args([
            "sub",
            "--server",
            server.base(),
            "a,b",
            "--via",
            "poll",
            "--since",
            "all",
            "--count",
            "2",
        ]),
        "plexus sub a,b --via poll",
    )
    .await;
    let mut topics: Vec<String> = json_lines(&out)
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, vec!["a", "b"]);
}
