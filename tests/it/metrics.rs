//! `/metrics`: each family moves when its event happens.

use serde_json::Value;

use crate::kit::clients::{Ndjson, Sse};
use crate::kit::{Server, eventually, metric};

async fn value(server: &Server, series: &str) -> u64 {
    metric(&server.metrics().await, series).unwrap_or(0)
}

#[tokio::test]
async fn each_family_moves_when_its_event_happens() {
    let server = Server::start(&["--retention-messages", "2"]).await;
    let publishes = r#"plexus_publishes_total{transport="http"}"#;
    let before = value(&server, publishes).await;
    server.publish("m", "1").await;
    assert_eq!(value(&server, publishes).await, before + 1);

    let batch = r#"plexus_publishes_total{transport="batch"}"#;
    server
        .client()
        .post(server.url("/v1/publish"))
        .body(r#"[{"topic":"m","data":"2"},{"topic":"m","data":"3"}]"#)
        .send()
        .await
        .expect("batch");
    assert_eq!(value(&server, batch).await, 2);

    // Streams: open while they live, a delivery counted per message.
    let mut sse = Sse::open(&server, "/v1/topics/m/sse", &[]).await;
    let mut nd = Ndjson::open(&server, "/v1/topics/m/stream").await;
    assert_eq!(
        value(&server, r#"plexus_streams_open{transport="sse"}"#).await,
        1
    );
    assert_eq!(
        value(&server, r#"plexus_streams_open{transport="ndjson"}"#).await,
        1
    );
    server.publish("m", "4").await;
    sse.next_event().await.expect("an SSE event");
    nd.next_event().await.expect("an NDJSON line");
    assert_eq!(
        value(&server, r#"plexus_deliveries_total{transport="sse"}"#).await,
        1
    );
    assert_eq!(
        value(&server, r#"plexus_deliveries_total{transport="ndjson"}"#).await,
        1
    );
    drop(sse);
    drop(nd);
    eventually("the streams are counted closed", || async {
        let text = server.metrics().await;
        let sse = metric(&text, r#"plexus_streams_open{transport="sse"}"#)?;
        let nd = metric(&text, r#"plexus_streams_open{transport="ndjson"}"#)?;
        (sse == 0 && nd == 0).then_some(())
    })
    .await;

    // Polls: deliveries, gaps (retention keeps 2 of 4), and long polls waiting.
    eventually("retention trims the topic to 2 messages", || async {
        let info: Value = server
            .client()
            .get(server.url("/v1/topics/m"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (info["messages"].as_u64()? <= 2).then_some(())
    })
    .await;
    let page: Value = server
        .client()
        .get(server.url("/v1/topics/m/messages?since=0"))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("JSON");
    let delivered = page["messages"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(
        value(&server, r#"plexus_deliveries_total{transport="poll"}"#).await,
        delivered
    );
    assert!(value(&server, r#"plexus_gaps_total{reason="expired"}"#).await >= 1);
    let poll = {
        let client = server.client().clone();
        let url = server.url("/v1/topics/quiet/messages?since=now&wait=30");
        tokio::spawn(async move { client.get(url).send().await })
    };
    eventually("a long poll is counted waiting", || async {
        (metric(&server.metrics().await, "plexus_long_polls_waiting")? == 1).then_some(())
    })
    .await;
    server.publish("quiet", "wake").await;
    poll.await.expect("join").expect("the poll answered");
    eventually("the long poll is no longer waiting", || async {
        (metric(&server.metrics().await, "plexus_long_polls_waiting")? == 0).then_some(())
    })
    .await;

    // Store commits, errors by status, requests by protocol, connections.
    let text = server.metrics().await;
    assert!(
        metric(&text, "plexus_store_commit_seconds_count").is_some_and(|n| n >= 4),
        "{text}"
    );
    assert!(
        metric(&text, "plexus_store_commit_ops_count").is_some_and(|n| n >= 4),
        "{text}"
    );
    assert!(
        metric(&text, r#"plexus_http_requests_total{protocol="http/1.1"}"#).is_some_and(|n| n > 5)
    );
    assert!(metric(&text, "plexus_connections_accepted_total").is_some_and(|n| n >= 1));
    let not_found = r#"plexus_http_errors_total{status="404"}"#;
    let before = metric(&text, not_found).unwrap_or(0);
    server
        .client()
        .get(server.url("/nope"))
        .send()
        .await
        .expect("404");
    assert_eq!(value(&server, not_found).await, before + 1);

    // Jobs by state.
    let job: Value = server
        .client()
        .post(server.url("/v1/queues/mq/jobs"))
        .body("work")
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    assert_eq!(job["state"], "queued");
    assert_eq!(
        value(&server, r#"plexus_job_transitions_total{state="queued"}"#).await,
        1
    );
    server
        .client()
        .post(server.url("/v1/queues/mq/claim"))
        .send()
        .await
        .expect("claim");
    assert_eq!(
        value(&server, r#"plexus_job_transitions_total{state="running"}"#).await,
        1
    );
}
