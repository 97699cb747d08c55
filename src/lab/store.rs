//! Append throughput of the sqlite store at several batch sizes. This measures the store, not
//! the hub, so it is the one load generator that names an engine: nothing else of the lab
//! may, and nothing in the store depends on it.

use std::time::Instant;

use bytes::Bytes;

use super::LabError;
use crate::model::{NewMessage, Topic};
use crate::store::{Durability, Log, Retention, SqliteLog};

/// What `plexus bench store` measures.
#[derive(Debug, Clone)]
pub struct StoreBench {
    /// Batch sizes to measure, one run each.
    pub batch: Vec<usize>,
    /// Messages appended per batch size.
    pub messages: usize,
    /// Payload size in bytes.
    pub size: usize,
    /// `process` or `machine`.
    pub durability: String,
}

pub async fn run(args: StoreBench) -> Result<(), LabError> {
    let durability = match args.durability.as_str() {
        "machine" => Durability::Machine,
        _ => Durability::Process,
    };
    let payload = Bytes::from(vec![b'x'; args.size]);
    println!(
        "store append: sqlite, durability {:?}, {} messages of {} bytes per batch size",
        durability, args.messages, args.size
    );
    let topic: Topic = "bench".parse().map_err(|e| LabError::Run(format!("{e}")))?;
    for batch_size in args.batch {
        let dir = super::temp_dir("store")?;
        let log = SqliteLog::open(&dir, Retention::default(), durability)
            .map_err(|e| LabError::Run(e.to_string()))?;
        let started = Instant::now();
        let mut done = 0;
        while done < args.messages {
            let n = batch_size.min(args.messages - done);
            let batch = (0..n)
                .map(|_| NewMessage {
                    topic: topic.clone(),
                    event: None,
                    data: payload.clone(),
                    idempotency_key: None,
                })
                .collect();
            log.append(batch)
                .await
                .map_err(|e| LabError::Run(e.to_string()))?;
            done += n;
        }
        let secs = started.elapsed().as_secs_f64();
        log.close().await;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "  batch {batch_size:>5}: {:>10.0} msgs/s ({done} in {secs:.2} s)",
            done as f64 / secs
        );
    }
    Ok(())
}
