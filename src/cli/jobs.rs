//! `plexus jobs`: submit, status, and a worker that runs a command per job.

use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Subcommand};
use plexus_client::{Client, Job};
use tokio::io::AsyncWriteExt;

use super::{CliError, Connection, DEFAULT_SERVER};
use crate::wire::base64;

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The hub's URL
    #[arg(long, env = "PLEXUS_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: JobsCommand,
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::model::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Submit a job; prints the job JSON
    Submit {
        queue: String,
        /// The payload; read from stdin when absent
        data: Option<String>,
        /// Wait this long for the job to succeed or die
        #[arg(long, value_parser = duration)]
        wait: Option<Duration>,
    },
    /// Print a job; with --wait, once something happens to it
    Status {
        id: String,
        #[arg(long, value_parser = duration)]
        wait: Option<Duration>,
    },
    /// Work a queue: run CMD per job, payload on stdin, stdout the result, non-zero exit a failure
    Work {
        queue: String,
        /// Jobs run at once
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Lease per claim (heartbeats extend it while the command runs)
        #[arg(long, default_value = "30s", value_parser = duration)]
        lease: Duration,
        /// The command and its arguments
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn print(job: &Job) -> Result<(), CliError> {
    println!("{}", serde_json::to_string(job)?);
    Ok(())
}

pub async fn run(args: JobsArgs) -> Result<(), CliError> {
    let client = args.connection.client(&args.server)?;
    match args.command {
        JobsCommand::Submit { queue, data, wait } => {
            let payload = match data {
                Some(d) => d.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(
                        |error| CliError::Read {
                            what: "stdin".into(),
                            error,
                        },
                    )?;
                    buf
                }
            };
            print(&client.submit_job(&queue, payload, wait).await?)
        }
        JobsCommand::Status { id, wait } => print(&client.job(&id, wait).await?),
        JobsCommand::Work {
            queue,
            concurrency,
            lease,
            command,
        } => {
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (client, queue, command) = (client.clone(), queue.clone(), command.clone());
                    tokio::spawn(async move { work(client, queue, lease, command).await })
                })
                .collect();
            for worker in workers {
                worker
                    .await
                    .map_err(|e| CliError::Worker(e.to_string()))??;
            }
            Ok(())
        }
    }
}

/// Claims and runs jobs until the process is stopped. Hub outages are waited out.
async fn work(
    client: Client,
    queue: String,
    lease: Duration,
    command: Vec<String>,
) -> Result<(), CliError> {
    loop {
        let job = match client.claim(&queue, lease, Duration::from_secs(30)).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(plexus_client::Error::Problem(p)) if p.status < 500 => {
                return Err(CliError::Worker(p.detail));
            }
            Err(e) => {
                eprintln!("plexus jobs work: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(token) = job.lease.clone() else {
            continue;
        };
        let outcome = run_one(&client, &job, &token, lease, &command).await;
        let answer = match outcome {
            Ok(stdout) => client.complete(&job.id, &token, stdout).await,
            Err(error) => client.fail(&job.id, &token, error).await,
        };
        if let Err(e) = answer {
            eprintln!("plexus jobs work: job {}: {e}", job.id);
        }
    }
}

/// Runs the command with the payload on stdin, heartbeating meanwhile. Ok(stdout) on exit 0,
/// Err(the tail of stderr) otherwise.
async fn run_one(
    client: &Client,
    job: &Job,
    token: &str,
    lease: Duration,
    command: &[String],
) -> Result<Vec<u8>, String> {
    let payload = match (&job.payload, &job.payload_base64) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(b64)) => base64::decode(b64).unwrap_or_default(),
        (None, None) => Vec::new(),
    };
    let (program, args) = command.split_first().ok_or("no command given")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(&payload).await;
    }
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut beat = tokio::time::interval(lease / 3);
    beat.tick().await;
    let output = loop {
        tokio::select! {
            output = &mut output => break output.map_err(|e| format!("{program}: {e}"))?,
            _ = beat.tick() => {
                if let Err(e) = client.heartbeat(&job.id, token).await {
                    eprintln!("plexus jobs work: heartbeat of job {}: {e}", job.id);
                }
            }
        }
    };
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(format!(
            "{program} exited with {}: {}",
            output.status,
            tail.trim_end()
        ))
    }
}
