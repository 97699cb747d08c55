//! Webhook delivery: deliveries per second to a local receiver for 1 and for many webhooks,
//! and the latency from publish to the receiver (p50, p99), on an in-process hub (sqlite).
//!
//! The baseline, same hub and run: one client reading the topic one message per request
//! (`limit=1`, one request in flight), the same "one HTTP round trip per message" shape a
//! webhook has, without the signing, the sender's store writes and the receiver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::LabError;
use crate::config::ServeArgs;

#[derive(Debug, Clone)]
pub struct WebhooksBench {
    /// Messages per webhook in the throughput runs.
    pub messages: usize,
    /// Webhooks in the many-webhooks run.
    pub webhooks: usize,
    /// Messages sent one at a time for the latency figures.
    pub latency_samples: usize,
}

/// What the receiver saw: requests, and each one's latency (µs) from the time in its body.
struct Seen {
    count: AtomicUsize,
    latencies: Mutex<Vec<u64>>,
    changed: tokio::sync::Notify,
    start: Instant,
}

async fn receiver(seen: Arc<Seen>) -> Result<u16, LabError> {
    let listener = super::loopback().await?;
    let port = listener
        .local_addr()
        .map_err(|e| LabError::Io(e.to_string()))?
        .port();
    let app = axum::Router::new().fallback(move |body: bytes::Bytes| {
        let seen = seen.clone();
        async move {
            let now = seen.start.elapsed().as_micros() as u64;
            if let Some(sent) = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                let mut l = seen.latencies.lock().unwrap_or_else(|p| p.into_inner());
                l.push(now.saturating_sub(sent));
            }
            seen.count.fetch_add(1, Ordering::SeqCst);
            seen.changed.notify_waiters();
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

/// A JSON POST to the hub over a fresh connection (the lab's client has no webhook calls).
async fn post_json(base: &str, path: &str, body: &str) -> Result<(u16, String), LabError> {
    let host = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| LabError::Io(format!("connect {host}: {e}")))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| LabError::Io(e.to_string()))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)
        .await
        .map_err(|e| LabError::Io(e.to_string()))?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

async fn wait_count(seen: &Seen, target: usize, limit: Duration) -> Result<(), LabError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = seen.changed.notified();
        if seen.count.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(LabError::Run(format!(
                "the receiver got {} of {target} deliveries in {limit:?}",
                seen.count.load(Ordering::SeqCst)
            )));
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

pub async fn run(args: WebhooksBench) -> Result<(), LabError> {
    if args.messages == 0 || args.webhooks == 0 || args.latency_samples == 0 {
        return Err(LabError::Usage(
            "--messages, --webhooks and --latency-samples at least 1".into(),
        ));
    }
    println!(
        "webhooks: {} messages per webhook, 1 and {} webhooks, {} latency samples; hub in-process on sqlite, receiver on loopback",
        args.messages, args.webhooks, args.latency_samples
    );
    let dir = super::temp_dir("webhooks")?;
    let config = super::hub_config(ServeArgs {
        data_dir: Some(dir.clone()),
        webhooks_allow_networks: Some("127.0.0.1/32".into()),
        ..ServeArgs::default()
    })?;
    let hub = super::spawn_hub(&config).await?;
    let client = plexus_client::Client::new(hub.url())?;
    let seen = Arc::new(Seen {
        count: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::new()),
        changed: tokio::sync::Notify::new(),
        start: Instant::now(),
    });
    let port = receiver(seen.clone()).await?;
    let create = |topic: String| {
        let base = hub.url().to_string();
        async move {
            let body = format!(
                r#"{{"url":"http://127.0.0.1:{port}/hook","topics":["{topic}"],"raw":true}}"#
            );
            let (status, text) = post_json(&base, "/v1/webhooks", &body).await?;
            if status != 201 {
                return Err(LabError::Run(format!("creating a webhook: {text}")));
            }
            Ok::<(), LabError>(())
        }
    };
    let publish_all = |topics: Vec<String>, n: usize| {
        let client = client.clone();
        let seen = seen.clone();
        async move {
            // A batch holds at most 1000 items: per topic as many as fit.
            let per = (1000 / topics.len().max(1)).max(1);
            for chunk_start in (0..n).step_by(per) {
                let k = (n - chunk_start).min(per);
                let mut items = Vec::new();
                for _ in 0..k {
                    let now = seen.start.elapsed().as_micros().to_string();
                    for t in &topics {
                        items.push(plexus_client::BatchItem::text(t, &now));
                    }
                }
                client.publish_batch(&items).await?;
            }
            Ok::<(), LabError>(())
        }
    };

    // Baseline: one client, one message per request.
    client
        .publish_batch(
            &(0..args.messages)
                .map(|_| plexus_client::BatchItem::text("baseline", "0"))
                .collect::<Vec<_>>(),
        )
        .await?;
    let started = Instant::now();
    let mut since = "all".to_string();
    let mut got = 0;
    while got < args.messages {
        let page = client
            .read(
                "baseline",
                &plexus_client::ReadOptions {
                    since: Some(since.clone()),
                    limit: Some(1),
                    wait: None,
                },
            )
            .await?;
        got += page.messages.len();
        since = page.next;
    }
    let baseline = got as f64 / started.elapsed().as_secs_f64();
    println!("  baseline (poll, limit=1):  {baseline:>9.0} msgs/s");

    // One webhook.
    create("one".into()).await?;
    let started = Instant::now();
    publish_all(vec!["one".into()], args.messages).await?;
    wait_count(&seen, args.messages, Duration::from_secs(600)).await?;
    let one = args.messages as f64 / started.elapsed().as_secs_f64();
    println!(
        "  1 webhook:                 {one:>9.0} deliveries/s  ({:.2}x baseline)",
        one / baseline
    );

    // Latency: one message at a time on the same webhook.
    seen.latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    for i in 0..args.latency_samples {
        let now = seen.start.elapsed().as_micros().to_string();
        client
            .publish_batch(&[plexus_client::BatchItem::text("one", &now)])
            .await?;
        wait_count(&seen, args.messages + i + 1, Duration::from_secs(60)).await?;
    }
    let mut lat = seen
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    lat.sort_unstable();
    println!(
        "  publish -> webhook latency: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );

    // Many webhooks, one topic each.
    let before = seen.count.load(Ordering::SeqCst);
    let topics: Vec<String> = (0..args.webhooks).map(|i| format!("many{i}")).collect();
    for t in &topics {
        create(t.clone()).await?;
    }
    let started = Instant::now();
    publish_all(topics.clone(), args.messages).await?;
    let total = args.messages * args.webhooks;
    wait_count(&seen, before + total, Duration::from_secs(1200)).await?;
    let many = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "  {} webhooks:              {many:>9.0} deliveries/s  ({:.2}x baseline)",
        args.webhooks,
        many / baseline
    );
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
