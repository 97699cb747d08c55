//! Jobs/s for submit + claim + complete against a hub in this process (sqlite).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::LabError;
use crate::config::ServeArgs;

/// What `plexus bench jobs` measures.
#[derive(Debug, Clone)]
pub struct JobsBench {
    /// Worker counts to measure, one run each.
    pub workers: Vec<usize>,
    /// Jobs per run.
    pub jobs: usize,
    /// Concurrent submitters.
    pub submitters: usize,
}

pub async fn run(args: JobsBench) -> Result<(), LabError> {
    println!(
        "jobs: {} jobs per run, {} concurrent submitters, workers claim (wait 1 s) then complete; hub in-process on sqlite",
        args.jobs, args.submitters
    );
    for workers in args.workers.clone() {
        let dir = super::temp_dir("jobs")?;
        let config = super::hub_config(ServeArgs {
            data_dir: Some(dir.clone()),
            ..ServeArgs::default()
        })?;
        let hub = super::spawn_hub(&config).await?;
        let client = plexus_client::Client::new(hub.url())?;
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.submitters {
            let (client, next, total) = (client.clone(), next.clone(), args.jobs);
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    client.submit_job("bench", "payload", None).await?;
                }
                Ok::<(), plexus_client::Error>(())
            }));
        }
        for _ in 0..workers {
            let (client, done, total) = (client.clone(), done.clone(), args.jobs);
            tasks.push(tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < total {
                    let claimed = client
                        .claim("bench", Duration::from_secs(30), Duration::from_secs(1))
                        .await?;
                    if let Some(job) = claimed {
                        let token = job.lease.clone().unwrap_or_default();
                        client.complete(&job.id, &token, "ok").await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<(), plexus_client::Error>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| LabError::Run(e.to_string()))??;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {workers} worker(s): {:>8.0} jobs/s ({} jobs submitted, claimed and completed in {secs:.2} s)",
            args.jobs as f64 / secs,
            args.jobs
        );
        hub.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
