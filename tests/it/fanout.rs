//! Fan-out (docs/ARCHITECTURE.md, the hub): a thousand SSE subscribers on one topic each get every
//! message, in order. The subscribers are raw sockets; the test publishes only once the topic
//! reports all of them (`GET /v1/topics/{t}` → `subscribers`).

use futures_util::stream::{self, StreamExt};
use serde_json::json;

use crate::kit::clients::Sse;
use crate::kit::{Server, eventually};

const SUBSCRIBERS: usize = 1_000;
const MESSAGES: u64 = 20;
/// How many subscribers are being opened (or read) at once.
const PARALLEL: usize = 100;

/// What one subscriber saw of a message: the frame's `id:`, the envelope's seq and data.
type Seen = (String, u64, String);

#[tokio::test]
async fn a_thousand_sse_subscribers_each_get_every_message_in_order() {
    let server = Server::start(&[]).await;
    server.publish("t", "before").await;

    let subs: Vec<Sse> = stream::iter(0..SUBSCRIBERS)
        .map(|_| Sse::open(&server, "/v1/topics/t/sse", &[]))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    assert_eq!(subs.len(), SUBSCRIBERS);
    eventually(&format!("{SUBSCRIBERS} subscribers on t"), || async {
        let info = server.topic_info("t").await;
        (info["subscribers"].as_u64() == Some(SUBSCRIBERS as u64)).then_some(())
    })
    .await;

    for i in 1..=MESSAGES {
        server.publish("t", format!("m{i}")).await;
    }

    let results: Vec<(usize, Vec<Seen>)> = stream::iter(subs.into_iter().enumerate())
        .map(|(n, mut sse)| async move {
            let frames = sse.events(MESSAGES as usize).await;
            let got = frames
                .iter()
                .map(|f| {
                    let env = f.json();
                    (
                        f.id().to_string(),
                        env["seq"]
                            .as_u64()
                            .unwrap_or_else(|| panic!("seq in {env}")),
                        env["data"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (n, got)
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    let want: Vec<Seen> = (2..=MESSAGES + 1)
        .map(|seq| (seq.to_string(), seq, format!("m{}", seq - 1)))
        .collect();
    for (n, got) in &results {
        assert_eq!(got, &want, "subscriber {n} of {SUBSCRIBERS}");
    }
    assert_eq!(results.len(), SUBSCRIBERS);
    let info = server.topic_info("t").await;
    assert_eq!(info["last_seq"], json!(MESSAGES + 1), "{info}");
}
