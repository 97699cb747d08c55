//! Explicit-ack consumption through a durable consumer next to plain polling of the same
//! topic, same hub, same run (sqlite, in-process).
//!
//! Plain polling: `readers` clients each read the whole topic with their own cursor (`since`),
//! `batch` messages a poll. Consumer: `readers` clients share one explicit consumer, each
//! reading `batch` messages a poll and acking them in one call; then the same with each ack
//! carrying the reader's next read (`"read": batch`). The figures are messages
//! received per second over all readers; the consumer's costs a store write per read and per
//! ack, the plain poll's none.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::LabError;
use crate::config::ServeArgs;

#[derive(Debug, Clone)]
pub struct ConsumersBench {
    pub messages: usize,
    pub readers: usize,
    pub batch: usize,
}

pub async fn run(args: ConsumersBench) -> Result<(), LabError> {
    if args.readers == 0 || args.batch == 0 || args.batch > 1000 {
        return Err(LabError::Usage(
            "--readers at least 1, --batch from 1 to 1000".into(),
        ));
    }
    println!(
        "consumers: {} messages of 100 bytes on one topic, {} readers, {} a poll; hub in-process on sqlite",
        args.messages, args.readers, args.batch
    );
    let dir = super::temp_dir("consumers")?;
    let config = super::hub_config(ServeArgs {
        data_dir: Some(dir.clone()),
        // Every message stays: a reader of the whole topic must find them all.
        retention_messages: Some(args.messages.max(1) as u64),
        ..ServeArgs::default()
    })?;
    let hub = super::spawn_hub(&config).await?;
    let client = plexus_client::Client::new(hub.url())?;
    let payload = "x".repeat(100);
    let items: Vec<plexus_client::BatchItem> = (0..1000)
        .map(|_| plexus_client::BatchItem::text("bench", &payload))
        .collect();
    let mut published = 0;
    while published < args.messages {
        let n = (args.messages - published).min(1000);
        client.publish_batch(&items[..n]).await?;
        published += n;
    }

    // Plain polling: every reader reads everything.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.readers {
        let (client, total, batch) = (client.clone(), args.messages, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut since = "all".to_string();
            let mut got = 0;
            while got < total {
                let options = plexus_client::ReadOptions {
                    since: Some(since.clone()),
                    limit: Some(batch as u32),
                    wait: None,
                };
                let page = client.read("bench", &options).await?;
                got += page.messages.len();
                since = page.next;
            }
            Ok::<usize, plexus_client::Error>(got)
        }));
    }
    let mut plain = 0;
    for task in tasks {
        plain += task.await.map_err(|e| LabError::Run(e.to_string()))??;
    }
    let plain_rate = plain as f64 / started.elapsed().as_secs_f64();
    println!(
        "  plain polling:           {plain_rate:>9.0} msgs/s ({plain} messages to {} readers)",
        args.readers
    );

    // One explicit consumer shared by the readers, each page acked in one call; then another
    // whose every ack carries the reader's next read (`"read": batch`): one call per batch.
    let settings = serde_json::json!({"topics": ["bench"], "ack": "explicit", "ack_wait": "5m"});
    let consumer_rate = consume(&client, "bench", &settings, &args, false).await?;
    let next_rate = consume(&client, "bench-next", &settings, &args, true).await?;
    println!(
        "  ratio consumer / plain:  {:.2} (a read, then an ack), {:.2} (ack with the next read)",
        consumer_rate / plain_rate,
        next_rate / plain_rate
    );
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Reads and acks the whole topic through a new explicit consumer `name` with `readers`
/// readers, each acking every page in one call (carrying its next read with `ack_next`);
/// prints and answers the messages consumed per second, until the last one was acked.
async fn consume(
    client: &plexus_client::Client,
    name: &'static str,
    settings: &serde_json::Value,
    args: &ConsumersBench,
    ack_next: bool,
) -> Result<f64, LabError> {
    client.put_consumer(name, settings).await?;
    let started = Instant::now();
    let acked = Arc::new(AtomicUsize::new(0));
    // When the last message was acked: readers still waiting in a long poll then (for
    // messages that will never come) are not consuming.
    let finished = Arc::new(std::sync::Mutex::new(None));
    let mut tasks = Vec::new();
    for _ in 0..args.readers {
        let (client, acked, finished, total, batch) = (
            client.clone(),
            acked.clone(),
            finished.clone(),
            args.messages,
            args.batch,
        );
        tasks.push(tokio::spawn(async move {
            let wait = Some(std::time::Duration::from_millis(200));
            let mut page = client
                .read_consumer("bench", name, Some(batch), wait)
                .await?;
            while acked.load(Ordering::Relaxed) < total {
                if page.messages.is_empty() {
                    page = client
                        .read_consumer("bench", name, Some(batch), wait)
                        .await?;
                    continue;
                }
                let items: Vec<(String, u64, Option<u32>)> = page
                    .messages
                    .iter()
                    .map(|m| (m.topic.clone(), m.seq, m.delivery))
                    .collect();
                page = if ack_next {
                    client.settle_and_read(name, "ack", &items, batch).await?
                } else {
                    client.settle(name, "ack", &items).await?;
                    client
                        .read_consumer("bench", name, Some(batch), wait)
                        .await?
                };
                let before = acked.fetch_add(items.len(), Ordering::Relaxed);
                if before < total && before + items.len() >= total {
                    let mut at = finished.lock().unwrap_or_else(|p| p.into_inner());
                    *at = Some(started.elapsed());
                }
            }
            Ok::<(), plexus_client::Error>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| LabError::Run(e.to_string()))??;
    }
    let consumed = acked.load(Ordering::Relaxed);
    let took = finished
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(|| started.elapsed());
    let rate = consumed as f64 / took.as_secs_f64();
    println!(
        "  explicit-ack consumer:   {rate:>9.0} msgs/s ({consumed} messages read and acked, batches of {}; {})",
        args.batch,
        if ack_next {
            "each ack carries the next read"
        } else {
            "a read, then an ack"
        }
    );
    Ok(rate)
}
