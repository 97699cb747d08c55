//! `plexus bench jobs`: submit + claim + complete throughput against a live hub (sqlite).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServeArgs};

#[derive(Args, Debug)]
pub struct JobsBenchArgs {
    /// Worker counts to measure, one run each
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub workers: Vec<usize>,
    /// Jobs per run
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Concurrent submitters
    #[arg(long, default_value_t = 8)]
    pub submitters: usize,
}

pub async fn run(args: JobsBenchArgs) -> Result<(), String> {
    println!(
        "jobs: {} jobs per run, {} concurrent submitters, workers claim (wait 1 s) then complete; hub in-process on sqlite",
        args.jobs, args.submitters
    );
    for workers in args.workers.clone() {
        let dir = super::temp_dir("jobs")?;
        let config = Config::load(&ServeArgs {
            data_dir: Some(dir.clone()),
            rate: Some(0.0),
            ..ServeArgs::default()
        })
        .map_err(|e| e.to_string())?;
        let stop = CancellationToken::new();
        let stats = Arc::new(crate::server::ConnStats::default());
        let store = super::super::serve::open_store(&config).await?;
        let app = super::super::serve::app(
            &config,
            store.clone(),
            stop.clone(),
            stop.clone(),
            stats.clone(),
        )?;
        let base = super::spawn_server_with(app, stop.clone(), stats).await?;
        let client = plexus_client::Client::new(&base).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.submitters {
            let (client, next, total) = (client.clone(), next.clone(), args.jobs);
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    client
                        .submit_job("bench", "payload", None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            }));
        }
        for _ in 0..workers {
            let (client, done, total) = (client.clone(), done.clone(), args.jobs);
            tasks.push(tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < total {
                    let claimed = client
                        .claim("bench", Duration::from_secs(30), Duration::from_secs(1))
                        .await
                        .map_err(|e| e.to_string())?;
                    if let Some(job) = claimed {
                        let token = job.lease.clone().unwrap_or_default();
                        client
                            .complete(&job.id, &token, "ok")
                            .await
                            .map_err(|e| e.to_string())?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {workers} worker(s): {:>8.0} jobs/s ({} jobs submitted, claimed and completed in {secs:.2} s)",
            args.jobs as f64 / secs,
            args.jobs
        );
        stop.cancel();
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
