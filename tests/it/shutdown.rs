//! Graceful shutdown: SIGTERM with an open SSE stream, an open WebSocket and a waiting long
//! poll exits 0, each client sees a clean end (the stream ends, WS close 1012, the poll is
//! answered), and after a restart each resumes from its cursor with nothing lost.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::kit::clients::Sse;
use crate::kit::{Server, eventually, free_port};

#[tokio::test]
async fn sigterm_drains_streams_and_polls_then_exits_0_and_clients_resume() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Server::start_durable(&["--listen", &listen, "--shutdown-grace", "5s"]).await;
    for i in 1..=3 {
        server.publish("drain", format!("m{i}")).await;
    }

    let mut sse = Sse::open(&server, "/v1/topics/drain/sse?since=all", &[]).await;
    let mut sse_ids = Vec::new();
    for _ in 0..3 {
        let frame = sse
            .next_event()
            .await
            .expect("an SSE event before the shutdown");
        sse_ids.push(frame.id.expect("an id"));
    }

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{listen}/v1/ws?topic=drain&since=all"))
            .await
            .expect("WebSocket");
    let mut ws_seqs = Vec::new();
    while ws_seqs.len() < 3 {
        if let WsMessage::Text(t) = ws.next().await.expect("a frame").expect("no error") {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["op"] == "message" {
                ws_seqs.push(v["seq"].as_u64().expect("seq"));
            }
        }
    }

    // A long poll waiting for seq 4.
    let poll = {
        let url = server.url("/v1/topics/drain/messages?since=3&wait=30");
        let client = server.client().clone();
        tokio::spawn(async move { client.get(url).send().await })
    };
    eventually("the long poll is waiting", || async {
        let info: Value = server
            .client()
            .get(server.url("/v1/topics/drain"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        // SSE and WS hold live receivers; the poll adds a head receiver.
        (info["subscribers"].as_u64()? >= 3).then_some(())
    })
    .await;

    let status = server.sigterm().await;
    assert!(
        status.success(),
        "plexus serve exits 0 after SIGTERM: {status}"
    );

    // The SSE stream ended cleanly (EOF, no error).
    assert!(
        sse.next_event().await.is_none(),
        "the SSE stream ends at shutdown"
    );
    // The WebSocket was closed with 1012 (service restart).
    let mut close_code = None;
    while let Some(frame) = ws.next().await {
        if let Ok(WsMessage::Close(Some(close))) = frame {
            close_code = Some(u16::from(close.code));
            break;
        }
    }
    assert_eq!(close_code, Some(1012), "the WebSocket is told to reconnect");
    // The long poll was answered (empty: nothing new), not cut.
    let answer = poll.await.expect("join").expect("the poll got an answer");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("JSON");
    assert_eq!(body["next"], "3");

    // Back up: everyone resumes from their cursor and gets exactly what came after.
    server.start_again().await;
    server.publish("drain", "m4").await;
    let last_id = sse_ids.last().expect("ids").clone();
    let mut sse = Sse::open(
        &server,
        "/v1/topics/drain/sse",
        &[("last-event-id", &last_id)],
    )
    .await;
    let frame = sse.next_event().await.expect("the resumed SSE event");
    assert_eq!(frame.id.as_deref(), Some("4"));
    let page: Value = server
        .client()
        .get(server.url(&format!(
            "/v1/topics/drain/messages?since={}",
            body["next"].as_str().expect("next")
        )))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("JSON");
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![4],
        "the poller resumes with exactly the new message"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{listen}/v1/ws?topic=drain&since={}",
        ws_seqs.last().expect("seqs")
    ))
    .await
    .expect("WebSocket again");
    loop {
        if let WsMessage::Text(t) = ws.next().await.expect("a frame").expect("no error") {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["op"] == "message" {
                assert_eq!(
                    v["seq"], 4,
                    "the socket resumes with exactly the new message"
                );
                break;
            }
        }
    }
}

/// With a drain delay, the first SIGTERM turns `/readyz` to 503 while the node still serves
/// (health, publishes, reads) so a load balancer can move clients away; a second SIGTERM ends
/// the wait and the node exits 0.
#[tokio::test]
async fn readyz_is_503_while_draining_and_the_node_still_serves() {
    let mut server = Server::start(&["--drain-delay", "10m"]).await;
    let (status, _, _) = server.get_json("/readyz").await;
    assert_eq!(status, 200, "ready before the signal");

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());

    let problem = eventually("/readyz turns 503", || async {
        let resp = server.get("/readyz", &[]).await;
        (resp.status() == 503).then_some(resp)
    })
    .await;
    let body = crate::kit::expect_problem(problem, 503, "readyz while draining").await;
    assert!(
        body["detail"].as_str().unwrap_or("").contains("draining"),
        "the problem says why: {body}"
    );
    let (status, _, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200, "alive while draining");
    let published = server.publish("draining", "still served").await;
    assert_eq!(published["seq"], 1, "publishes are served while draining");
    let page = server.read("draining", "since=all").await;
    assert_eq!(crate::kit::seqs(&page), vec![1], "reads too");

    let status = server.sigterm().await;
    assert!(
        status.success(),
        "a second SIGTERM ends the drain delay and the node exits 0: {status}"
    );
}
