//! Slow consumers (docs/API.md, "Streams"; docs/ARCHITECTURE.md, the hub): a subscriber that stops
//! reading while thousands of messages are published falls behind the topic's live buffer (256
//! messages). Each policy keeps its promise when it reads again: `catchup` gets everything, in
//! order, once; `latest` gets the newest and a `skipped` gap for exactly what it missed;
//! `disconnect` ends cleanly and its cursor resumes with no loss. Meanwhile the hub's memory stays
//! bounded.
//!
//! To fall behind, a client opens its stream over a raw socket with a small receive buffer and
//! does not read while payloads of a few KB are published: the socket buffers fill far sooner
//! than the publishes end. No test waits on a timer.

use serde_json::{Value, json};

use crate::kit::Server;
use crate::kit::clients::{Dial, Frame, Ndjson, Sse, Ws};

/// The receive buffer of a stalled client (the kernel's minimum is about this).
const SMALL: Dial = Dial {
    recv_buffer: Some(4096),
};

/// A payload of `size` bytes that names its index.
fn payload(i: usize, size: usize) -> String {
    let mut s = format!("{i:06}:");
    s.push_str(&"x".repeat(size.saturating_sub(s.len())));
    s
}

/// Publishes `n` messages of `size` bytes to `topic` in batches of 100.
async fn publish_big(server: &Server, topic: &str, n: usize, size: usize) {
    publish_range(server, topic, 1..=n, size).await;
}

/// Publishes the messages with indexes `range` (payloads that name them) in batches of 100.
async fn publish_range(
    server: &Server,
    topic: &str,
    range: std::ops::RangeInclusive<usize>,
    size: usize,
) {
    let items: Vec<Value> = range
        .map(|i| json!({"topic": topic, "data": payload(i, size)}))
        .collect();
    for chunk in items.chunks(100) {
        let results = server.batch(chunk).await;
        assert_eq!(results.len(), chunk.len());
    }
}

/// The server's anonymous resident memory in bytes (`RssAnon` of `/proc/<pid>/status`): its
/// heap and stacks, where a queued backlog would live. File-backed pages (the store's files,
/// if mapped) are left out; they belong to the page cache, not to the hub.
fn rss_anon_bytes(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read /proc/<pid>/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("an RssAnon line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("RssAnon in kB");
    kb * 1024
}

/// What a single-topic stream delivered, in order.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Msg(u64),
    Gap { from: u64, to: u64, reason: String },
}

fn gap_item(g: &Value) -> Item {
    Item::Gap {
        from: g["from"]
            .as_u64()
            .unwrap_or_else(|| panic!("gap `from`: {g}")),
        to: g["to"].as_u64().unwrap_or_else(|| panic!("gap `to`: {g}")),
        reason: g["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("gap `reason`: {g}"))
            .to_string(),
    }
}

fn sse_item(f: &Frame) -> Item {
    if f.is_gap() {
        let g = f.json();
        let item = gap_item(&g);
        if let Item::Gap { to, .. } = item {
            assert_eq!(
                f.id(),
                to.to_string(),
                "a gap's id is the cursor after it: {f:?}"
            );
        }
        return item;
    }
    let env = f.json();
    let seq = env["seq"].as_u64().unwrap_or_else(|| panic!("seq: {env}"));
    assert_eq!(f.id(), seq.to_string(), "{f:?}");
    assert_eq!(
        env["data"].as_str().map(|d| d[..6].parse::<u64>().ok()),
        Some(Some(seq)),
        "the payload of seq {seq} is its own"
    );
    Item::Msg(seq)
}

/// Asserts that `items` cover `first..=last` in order with no overlap and no hole: each
/// message is the next seq, each gap starts at the next seq. Returns the gaps.
fn assert_covers(items: &[Item], first: u64, last: u64, what: &str) -> Vec<(u64, u64, String)> {
    let mut next = first;
    let mut gaps = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Msg(seq) => {
                assert_eq!(
                    *seq, next,
                    "{what}: item {i} is seq {seq}, expected {next} (duplicate, hole or disorder)"
                );
                next += 1;
            }
            Item::Gap { from, to, reason } => {
                assert_eq!(
                    *from, next,
                    "{what}: item {i}, a gap {from}..={to}, must start at {next}"
                );
                assert!(to >= from, "{what}: empty gap {item:?}");
                gaps.push((*from, *to, reason.clone()));
                next = to + 1;
            }
        }
    }
    assert_eq!(
        next,
        last + 1,
        "{what}: delivered up to {}, expected up to {last}",
        next - 1
    );
    gaps
}

/// A subscriber that stops reading while 5,000 messages of 2 KB are published
/// (about 10 MB, far beyond the socket buffers and the live buffer) gets every one of them
/// once it reads again, and the hub does not hold the backlog in memory.
///
/// The first 1,000 messages warm up what the hub legitimately keeps (the live buffer, the
/// store's page cache, the allocator's pools) and fill the stalled socket; the RSS is
/// measured after them and after the remaining 4,000. A hub that queued the backlog for the
/// subscriber would grow by at least those 8 MB.
#[tokio::test]
async fn stalled_sse_subscriber_gets_everything_and_memory_stays_bounded() {
    const N: usize = 5_000;
    const WARM: usize = 1_000;
    const SIZE: usize = 2_048;
    let server = Server::start_durable(&[]).await;
    let mut sse = Sse::open_with(&server, "/v1/topics/t/sse?since=0", &[], SMALL).await;
    publish_range(&server, "t", 1..=WARM, SIZE).await;
    let before = rss_anon_bytes(&server);
    publish_range(&server, "t", WARM + 1..=N, SIZE).await;
    let after = rss_anon_bytes(&server);

    let mut items = Vec::with_capacity(N);
    while items.len() < N {
        let frame = sse
            .next_event()
            .await
            .unwrap_or_else(|| panic!("the stream ended after {} messages", items.len()));
        items.push(sse_item(&frame));
    }
    let gaps = assert_covers(&items, 1, N as u64, "catchup after a stall");
    assert!(gaps.is_empty(), "catchup never skips: {gaps:?}");

    let published = ((N - WARM) * SIZE) as u64;
    let growth = after.saturating_sub(before);
    eprintln!(
        "hub RssAnon {before} → {after} bytes (+{growth}) while {published} bytes were published"
    );
    assert!(
        growth < published / 2,
        "the hub's anonymous RSS grew by {growth} bytes (from {before} to {after}) while {published} bytes \
         were published to a stalled subscriber: the backlog must stay in the store, not in memory"
    );
}

#[tokio::test]
async fn slow_latest_skips_to_the_newest_with_a_skipped_gap() {
    const N: usize = 3_000;
    let server = Server::start(&[]).await;
    let mut sse = Sse::open_with(&server, "/v1/topics/t/sse?slow=latest", &[], SMALL).await;
    publish_big(&server, "t", N, 4_096).await;

    let mut items = Vec::new();
    loop {
        let frame = sse
            .next_event()
            .await
            .unwrap_or_else(|| panic!("slow=latest: the stream ended after {items:?}"));
        let item = sse_item(&frame);
        let done = item == Item::Msg(N as u64);
        items.push(item);
        if done {
            break;
        }
    }
    let gaps = assert_covers(&items, 1, N as u64, "slow=latest");
    assert!(
        !gaps.is_empty(),
        "slow=latest: a subscriber that fell behind must get a `skipped` gap; it got all {N} messages"
    );
    for g in &gaps {
        assert_eq!(g.2, "skipped", "slow=latest gaps are `skipped`: {gaps:?}");
    }
    // Live again: the next message follows at once.
    server.publish("t", payload(N + 1, 16)).await;
    let frame = sse.next_event().await.expect("the stream goes on");
    assert_eq!(sse_item(&frame), Item::Msg(N as u64 + 1));
    // The metrics saw it: a lagging subscriber under `latest`, and the gaps it was served.
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let lagged = crate::kit::metric(&text, "plexus_slow_subscribers_total{policy=\"latest\"}");
    assert!(lagged.is_some_and(|n| n >= 1), "{text}");
    let skipped = crate::kit::metric(&text, "plexus_gaps_total{reason=\"skipped\"}");
    assert_eq!(skipped, Some(gaps.len() as u64), "{text}");
}

#[tokio::test]
async fn slow_disconnect_ends_the_sse_stream_and_its_id_resumes() {
    const N: usize = 3_000;
    let server = Server::start(&[]).await;
    let mut sse = Sse::open_with(&server, "/v1/topics/t/sse?slow=disconnect", &[], SMALL).await;
    publish_big(&server, "t", N, 4_096).await;

    let mut items = Vec::new();
    let mut last_id = String::from("0");
    let mut last_frame = None;
    while let Some(frame) = sse.next_frame().await {
        if frame.id.is_some() {
            items.push(sse_item(&frame));
            last_id = frame.id().to_string();
        }
        last_frame = Some(frame);
    }
    let delivered = items.len();
    assert!(
        delivered < N,
        "slow=disconnect: the stream must end when it falls behind, yet all {N} arrived"
    );
    let last_frame = last_frame.expect("some frames");
    assert!(
        last_frame.id.is_none() && !last_frame.comments.is_empty(),
        "the stream ends after a comment: {last_frame:?}"
    );

    let mut sse = Sse::open(&server, "/v1/topics/t/sse", &[("Last-Event-ID", &last_id)]).await;
    while items.len() < N {
        let frame = sse
            .next_event()
            .await
            .unwrap_or_else(|| panic!("the resumed stream ended after {} items", items.len()));
        items.push(sse_item(&frame));
    }
    let gaps = assert_covers(&items, 1, N as u64, "disconnect, then resume");
    assert!(gaps.is_empty(), "{gaps:?}");
    server.publish("t", payload(N + 1, 16)).await;
    let frame = sse.next_event().await.expect("live after the resume");
    assert_eq!(sse_item(&frame), Item::Msg(N as u64 + 1));
}

#[tokio::test]
async fn slow_disconnect_ends_ndjson_with_a_resumable_line() {
    const N: usize = 3_000;
    let server = Server::start(&[]).await;
    let mut stream = Ndjson::open_with(&server, "/v1/topics/t/stream?slow=disconnect", SMALL).await;
    publish_big(&server, "t", N, 4_096).await;

    let mut seqs = Vec::new();
    let mut lines = Vec::new();
    while let Some(line) = stream.next_event().await {
        if line.get("seq").is_some() {
            seqs.push(line["seq"].as_u64().expect("seq"));
        }
        lines.push(line);
    }
    let last = lines.last().expect("some lines").clone();
    assert_eq!(
        last["event"],
        json!("disconnect"),
        "the stream ends with a disconnect line: {last}"
    );
    let next = last["next"]
        .as_str()
        .expect("`next` is a string")
        .to_string();
    assert!(seqs.len() < N, "all {N} arrived without a disconnect");
    assert_eq!(
        next,
        seqs.last().copied().unwrap_or(0).to_string(),
        "`next` is the cursor after the last delivered message"
    );
    for l in &lines[..lines.len() - 1] {
        assert!(
            l.get("seq").is_some(),
            "only messages before the disconnect: {l}"
        );
    }

    let mut stream = Ndjson::open(&server, &format!("/v1/topics/t/stream?since={next}")).await;
    while seqs.len() < N {
        let line = stream
            .next_event()
            .await
            .expect("the resumed stream goes on");
        seqs.push(
            line["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("a message: {line}")),
        );
    }
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
}

/// A stalled WebSocket with one topic per policy: `catchup` gets everything, `latest` a
/// `skipped` gap, `disconnect` a disconnect frame — and the socket lives on.
#[tokio::test]
async fn slow_websocket_policies() {
    const N: usize = 3_000;
    let server = Server::start(&[]).await;
    let mut ws = Ws::connect_with(&server, "", SMALL).await;
    let mut early = Vec::new();
    for (id, topic, slow) in [
        (1, "c", "catchup"),
        (2, "l", "latest"),
        (3, "d", "disconnect"),
    ] {
        ws.ok(
            json!({"op":"subscribe","id":id,"topic":topic,"since":"0","slow":slow}),
            &mut early,
        )
        .await;
    }
    assert!(early.is_empty(), "{early:?}");
    for topic in ["c", "l", "d"] {
        publish_big(&server, topic, N, 4_096).await;
    }

    let mut got: std::collections::BTreeMap<&str, Vec<Item>> = Default::default();
    let mut disconnected = false;
    let complete = |got: &std::collections::BTreeMap<&str, Vec<Item>>, disconnected: bool| {
        let has_last = |t: &str| got.get(t).and_then(|v| v.last()) == Some(&Item::Msg(N as u64));
        has_last("c") && has_last("l") && disconnected
    };
    while !complete(&got, disconnected) {
        let f = ws.recv().await;
        let topic = match f["topic"].as_str() {
            Some("c") => "c",
            Some("l") => "l",
            Some("d") => "d",
            _ => panic!("unexpected frame {f}"),
        };
        match f["op"].as_str() {
            Some("message") => got
                .entry(topic)
                .or_default()
                .push(Item::Msg(f["seq"].as_u64().expect("seq"))),
            Some("gap") => got.entry(topic).or_default().push(gap_item(&f)),
            Some("disconnect") => {
                assert_eq!(topic, "d", "only the disconnect policy disconnects: {f}");
                assert_eq!(f["reason"], json!("slow consumer"), "{f}");
                assert!(!disconnected, "one disconnect: {f}");
                disconnected = true;
            }
            _ => panic!("unexpected frame {f}"),
        }
    }
    let c = assert_covers(&got["c"], 1, N as u64, "ws catchup");
    assert!(c.is_empty(), "catchup never skips: {c:?}");
    let l = assert_covers(&got["l"], 1, N as u64, "ws latest");
    assert!(!l.is_empty(), "ws latest: no skipped gap after a stall");
    assert!(l.iter().all(|g| g.2 == "skipped"), "{l:?}");
    let d = got.remove("d").unwrap_or_default();
    let last_d = match d.last() {
        Some(Item::Msg(s)) => *s,
        None => 0,
        Some(other) => panic!("ws disconnect: {other:?}"),
    };
    assert!((last_d as usize) < N, "ws disconnect: all {N} arrived");

    // The socket lives on: resume `d` from its last seq and get exactly the rest.
    let mut rest = Vec::new();
    ws.ok(
        json!({"op":"subscribe","id":4,"topic":"d","since":last_d.to_string()}),
        &mut rest,
    )
    .await;
    let mut items = d;
    for f in rest {
        assert_eq!(
            (f["op"].as_str(), f["topic"].as_str()),
            (Some("message"), Some("d")),
            "{f}"
        );
        items.push(Item::Msg(f["seq"].as_u64().expect("seq")));
    }
    while items.len() < N {
        let f = ws.recv().await;
        assert_eq!(f["topic"], json!("d"), "{f}");
        assert_eq!(f["op"], json!("message"), "{f}");
        items.push(Item::Msg(f["seq"].as_u64().expect("seq")));
    }
    let gaps = assert_covers(&items, 1, N as u64, "ws disconnect, then resume");
    assert!(gaps.is_empty(), "{gaps:?}");
}
