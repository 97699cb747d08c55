//! The CPU of a hub whose job claimers wait: each `claim?wait=` is parked on its queue's
//! notifier and costs nothing until a job comes (docs/SECURITY.md, idle job claimers). The
//! hub is a child `plexus serve`, so its CPU (from `/proc/<pid>/stat`) is its own, not the
//! load generator's; the baseline is the same hub idle, measured first in the same run.

use std::time::{Duration, Instant};

use super::LabError;

/// What `plexus bench idle-claims` measures.
#[derive(Debug, Clone)]
pub struct IdleClaimsBench {
    /// Claims waiting at once.
    pub claims: usize,
    /// How long each state is measured.
    pub duration: Duration,
    /// Queues the claims are spread over.
    pub queues: usize,
    /// Storage of the hub under test (a `--storage` value).
    pub storage: String,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, LabError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| LabError::Io(format!("cannot read /proc/{pid}/stat: {e}")))?;
    // The command name (field 2) may hold spaces: count fields after its closing ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(LabError::Run(format!(
            "an unexpected /proc/{pid}/stat: {stat}"
        ))),
    }
}

/// The CPU `pid` uses over `duration`, as a percentage of one core.
async fn cpu_percent(pid: u32, duration: Duration) -> Result<f64, LabError> {
    let (ticks, started) = (cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(duration).await;
    let used = (cpu_ticks(pid)? - ticks) as f64 / TICKS_PER_SECOND;
    Ok(100.0 * used / started.elapsed().as_secs_f64())
}

/// Waits until the hub holds at least `n` descriptors (a socket per claim, and a few more).
async fn wait_for_sockets(pid: u32, n: usize) -> Result<(), LabError> {
    let started = Instant::now();
    loop {
        let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| LabError::Io(format!("cannot list /proc/{pid}/fd: {e}")))?
            .count();
        if open >= n {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(LabError::Run(format!(
                "the hub holds {open} descriptors after 60 s, {n} expected"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: IdleClaimsBench) -> Result<(), LabError> {
    if args.claims == 0 || args.queues == 0 {
        return Err(LabError::Usage(
            "--claims and --queues must be at least 1".into(),
        ));
    }
    let dir = super::temp_dir("idle-claims")?;
    let data_dir = dir.to_string_lossy().into_owned();
    let per_client = (args.claims + 100).to_string();
    let (child, url) = super::fanout::spawn_server(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--storage",
        &args.storage,
        "--rate",
        "0",
        "--max-connections-per-client",
        &per_client,
    ])
    .await?;
    let pid = child
        .id()
        .ok_or_else(|| LabError::Run("the hub exited".into()))?;
    println!(
        "idle-claims: {} claims (wait=60 s, HTTP/1.1, one connection each) over {} queues; hub: a child `plexus serve` on {}, CPU from /proc/{pid}/stat over {:?} each",
        args.claims, args.queues, args.storage, args.duration
    );
    // One client per claim: each claim holds its own keep-alive connection, as workers do.
    let client = plexus_client::Client::builder(&url)
        .pool_max_idle_per_host(args.claims)
        .build()?;
    client.submit_job("warm.up", "x", None).await?;
    let baseline = cpu_percent(pid, args.duration).await?;
    let mut tasks = Vec::with_capacity(args.claims);
    // Opened a few hundred at a time, each wave once the hub holds its sockets: thousands of
    // connects at once overflow the listen backlog, which is not what this measures.
    while tasks.len() < args.claims {
        let wave = (args.claims - tasks.len()).min(250);
        for _ in 0..wave {
            let i = tasks.len();
            let (client, queue) = (client.clone(), format!("idle.{}", i % args.queues));
            tasks.push(tokio::spawn(async move {
                // A claim answers empty after its wait; a worker asks again at once.
                loop {
                    client
                        .claim(&queue, Duration::from_secs(30), Duration::from_secs(60))
                        .await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), plexus_client::Error>(())
            }));
        }
        wait_for_sockets(pid, tasks.len()).await?;
    }
    // Let the connection storm's work settle before measuring the idle state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu_percent(pid, args.duration).await?;
    for task in tasks {
        if task.is_finished() {
            let why = match task.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "it ended".into(),
                Err(e) => e.to_string(),
            };
            return Err(LabError::Run(format!("a claim failed: {why}")));
        }
        task.abort();
    }
    println!("  baseline, the same hub with no claim:  {baseline:>6.2} % of one core");
    println!(
        "  {} idle claims:                     {idle:>6.2} % of one core ({:+.2} points over the baseline; target < 5 %)",
        args.claims,
        idle - baseline
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
