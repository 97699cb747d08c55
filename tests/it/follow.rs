//! `Client::follow`: a subscription that survives its server. Killed and restarted on the
//! same port and data directory, the hub is reconnected to with backoff and the follow
//! resumes from its cursor, so the caller sees every message exactly once, in order.

use std::time::Duration;

use plexus_client::{Follow, Item, Transport};
use tokio::time::timeout;

use crate::kit::{Server, free_port};

/// How long one item may take, a reconnection included.
const STEP: Duration = Duration::from_secs(60);

/// A server on a port of its own, which a restart binds again.
async fn server_on_a_fixed_port() -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    let server = Server::start_durable(&["--listen", &listen]).await;
    assert!(
        server.addr() == listen,
        "the server listens on {listen}, not {}",
        server.addr()
    );
    server
}

/// The next item, which must come within `STEP` and be no error.
async fn next(follow: &mut Follow, what: &str) -> Item {
    match timeout(STEP, follow.next()).await {
        Err(_) => panic!("{what}: no item within {STEP:?}"),
        Ok(Err(e)) => panic!("{what}: follow error {e}"),
        Ok(Ok(item)) => item,
    }
}

/// The next `n` items as `topic/seq=data`, panicking on a gap.
async fn take(follow: &mut Follow, n: usize, what: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match next(follow, what).await {
            Item::Message(m) => out.push(format!(
                "{}/{}={}",
                m.topic,
                m.seq,
                m.data.unwrap_or_default()
            )),
            Item::Gap(g) => panic!("{what}: unexpected gap {g:?} after {out:?}"),
        }
    }
    out
}

fn expected(topic: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<String> {
    seqs.map(|s| format!("{topic}/{s}=m{s}")).collect()
}

/// Publishes `m{seq}` for each seq of the range to `topic` (which must give those seqs).
async fn publish_range(server: &Server, topic: &str, seqs: std::ops::RangeInclusive<u64>) {
    for s in seqs {
        let ack = server.publish(topic, format!("m{s}")).await;
        assert_eq!(ack["seq"], s, "publish m{s} to {topic}: {ack}");
    }
}

/// Follows one topic from `all` across a restart: messages read before it, messages
/// published before it but not yet read, and messages published after it.
async fn follow_across_a_restart(transport: Transport) {
    let topic = "follow.restart";
    let mut server = server_on_a_fixed_port().await;
    let client = plexus_client::Client::new(server.base()).expect("build a client");
    publish_range(&server, topic, 1..=3).await;

    let mut follow = client.follow(topic, Some("all"), transport);
    let what = format!("{transport:?} follow");
    assert_eq!(take(&mut follow, 3, &what).await, expected(topic, 1..=3));
    assert_eq!(
        follow.reconnects(),
        0,
        "no reconnection while the server ran"
    );

    // Published, perhaps already delivered to the follow, not yet read by the caller.
    publish_range(&server, topic, 4..=5).await;
    server.restart().await;
    publish_range(&server, topic, 6..=7).await;

    assert_eq!(
        take(&mut follow, 4, &what).await,
        expected(topic, 4..=7),
        "every message once, in order, across the restart"
    );
    assert!(
        follow.reconnects() >= 1,
        "the follow reconnected ({} reconnections)",
        follow.reconnects()
    );

    // Live again: the next publish arrives, and nothing was repeated before it.
    publish_range(&server, topic, 8..=8).await;
    assert_eq!(take(&mut follow, 1, &what).await, expected(topic, 8..=8));
}

#[tokio::test]
async fn sse_follow_resumes_across_a_restart() {
    follow_across_a_restart(Transport::Sse).await;
}

#[tokio::test]
async fn websocket_follow_resumes_across_a_restart() {
    follow_across_a_restart(Transport::WebSocket).await;
}

#[tokio::test]
async fn ndjson_follow_resumes_across_a_restart() {
    follow_across_a_restart(Transport::Ndjson).await;
}

/// Two topics on one follow: the cursor holds a position per topic, so neither topic
/// repeats nor loses a message across two restarts.
async fn follow_two_topics_across_restarts(transport: Transport) {
    let (a, b) = ("follow.multi-a", "follow.multi-b");
    let mut server = server_on_a_fixed_port().await;
    let client = plexus_client::Client::new(server.base()).expect("build a client");
    publish_range(&server, a, 1..=2).await;
    publish_range(&server, b, 1..=1).await;

    let mut follow = client.follow(&format!("{a},{b}"), Some("all"), transport);
    let what = format!("{transport:?} two-topic follow");
    let mut seen = take(&mut follow, 3, &what).await;

    server.restart().await;
    publish_range(&server, b, 2..=3).await;
    seen.extend(take(&mut follow, 2, &what).await);

    server.restart().await;
    publish_range(&server, a, 3..=3).await;
    publish_range(&server, b, 4..=4).await;
    seen.extend(take(&mut follow, 2, &what).await);

    // Per topic: every seq once, in order (the order across topics is the hub's choice).
    for (topic, last) in [(a, 3), (b, 4)] {
        let of_topic: Vec<String> = seen
            .iter()
            .filter(|s| s.starts_with(&format!("{topic}/")))
            .cloned()
            .collect();
        assert_eq!(of_topic, expected(topic, 1..=last), "all seen: {seen:?}");
    }
    assert!(
        follow.reconnects() >= 2,
        "two restarts, {} reconnections",
        follow.reconnects()
    );
}

#[tokio::test]
async fn sse_follow_of_two_topics_resumes_each() {
    follow_two_topics_across_restarts(Transport::Sse).await;
}

#[tokio::test]
async fn websocket_follow_of_two_topics_resumes_each() {
    follow_two_topics_across_restarts(Transport::WebSocket).await;
}

/// A follow started while nothing listens keeps trying (connection refused is not an
/// error to the caller) and delivers once the server comes up.
#[tokio::test]
async fn a_follow_waits_out_a_refused_connection() {
    let topic = "follow.refused";
    let mut server = server_on_a_fixed_port().await;
    let client = plexus_client::Client::new(server.base()).expect("build a client");
    publish_range(&server, topic, 1..=2).await;
    server.sigkill().await;

    let mut follow = client.follow(topic, Some("all"), Transport::Sse);
    // `next` runs against a closed port while the server comes back.
    let (items, ()) = tokio::join!(take(&mut follow, 2, "follow while down"), async {
        server.restart().await;
    });
    assert_eq!(items, expected(topic, 1..=2));
    publish_range(&server, topic, 3..=3).await;
    assert_eq!(
        take(&mut follow, 1, "follow after the server came up").await,
        expected(topic, 3..=3)
    );
}

/// A gap reaches the caller as an item, not as an error, and the follow goes on.
#[tokio::test]
async fn a_gap_is_an_item_of_a_follow() {
    let topic = "follow.gap";
    let server = Server::start(&[]).await;
    let client = plexus_client::Client::new(server.base()).expect("build a client");
    publish_range(&server, topic, 1..=2).await;
    let resp = server
        .client()
        .delete(server.url(&format!("/v1/topics/{topic}")))
        .send()
        .await
        .expect("DELETE the topic");
    assert_eq!(resp.status().as_u16(), 204);
    publish_range(&server, topic, 3..=3).await;

    // From cursor 0 (before seq 1): seqs 1 and 2 were deleted.
    let mut follow = client.follow(topic, Some("0"), Transport::Sse);
    match next(&mut follow, "gap follow").await {
        Item::Gap(g) => {
            assert_eq!(g.topic, topic, "{g:?}");
            assert_eq!((g.from, g.to), (Some(1), Some(2)), "{g:?}");
            assert_eq!(g.reason, "deleted", "{g:?}");
        }
        Item::Message(m) => panic!("expected a gap before {m:?}"),
    }
    assert_eq!(
        take(&mut follow, 1, "after the gap").await,
        expected(topic, 3..=3)
    );
}
