//! `plexus bench`: the arguments of each measurement and the dispatch into [`crate::lab`],
//! where the load generators live. Each run prints its numbers next to a baseline measured in
//! the same run; docs/BENCHMARKS.md records them.

use clap::{Args, Subcommand, ValueEnum};

use super::CliError;
use crate::lab;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Append throughput of the sqlite store at several batch sizes
    Store(StoreArgs),
    /// Durable HTTP publish throughput next to a bare axum handler, same client, same run
    Publish(PublishArgs),
    /// HTTP/1.1 keep-alive vs HTTP/2: publish throughput and SSE fan-out, same hub, same run
    Http2(Http2Args),
    /// Jobs/s for submit + claim + complete with 1 and 4 workers
    Jobs(JobsBenchArgs),
    /// Explicit-ack consumption through a durable consumer next to plain polling, same run
    Consumers(ConsumersBenchArgs),
    /// Webhook deliveries per second (1 and many webhooks) and publish-to-webhook latency
    Webhooks(WebhooksBenchArgs),
    /// Fan-out to many subscribers (SSE, WebSocket, long polling) next to a raw TCP loop
    Fanout(FanoutArgs),
    /// Publish throughput and p50/p99 latency, durability replicated vs the default, on one Redis with replicas
    Replication(ReplicationArgs),
    /// Server CPU while many job claims wait (`claim?wait=60`), next to the same hub idle
    IdleClaims(IdleClaimsArgs),
    /// Latency the sidecar adds to publish and delivery, its CPU per 1,000 publishes/s and idle RSS
    Sidecar(SidecarBenchArgs),
    /// Zero-loss long polling through hold mode (GRIP) next to the hub's own long poll
    Hold(HoldBenchArgs),
    /// The raw TCP loop server used as fanout's baseline (started by `bench fanout`)
    #[command(hide = true)]
    RawServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// The raw long-poll server used as fanout's long-poll baseline (started by `bench fanout`)
    #[command(hide = true)]
    RawPollServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Batch sizes to measure
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    pub batch: Vec<usize>,
    /// Messages appended per batch size
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Payload size in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// process or machine
    #[arg(long, default_value = "process")]
    pub durability: String,
}

#[derive(Args, Debug)]
pub struct HoldBenchArgs {
    /// Concurrent long-poll clients
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds of publishing, one message a second
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Args, Debug)]
pub struct SidecarBenchArgs {
    /// Publishes per second (open loop)
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds each target is measured
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Concurrent keep-alive connections of the load generator
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds each target is measured
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Topics the publishes are spread over (built-in load generator only)
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Durability of the hub under test: process or machine
    #[arg(long, default_value = "process")]
    pub durability: String,
    /// Load generator: wrk (a separate, lean process; used when installed) or builtin
    #[arg(long, default_value = "auto")]
    pub load: String,
    /// Bare and durable runs, alternating; the ratio reported is their median
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Args, Debug)]
pub struct ReplicationArgs {
    /// The Redis both hubs use, with at least one replica per shard (redis://… or redis+cluster://…)
    #[arg(long)]
    pub storage: String,
    /// Concurrent publishers, each on its own keep-alive connection
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds each durability is measured
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Topics the publishes are spread over
    #[arg(long, default_value_t = 8)]
    pub topics: usize,
}

#[derive(Args, Debug)]
pub struct Http2Args {
    /// Concurrent publishers (HTTP/1.1: one connection each; HTTP/2: streams on one connection)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds each publish measurement lasts
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// SSE subscriptions for the fan-out comparison
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages published for the fan-out comparison
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
}

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

#[derive(Args, Debug)]
pub struct IdleClaimsArgs {
    /// Claims waiting at once (one connection each)
    #[arg(long, default_value_t = 4000)]
    pub claims: usize,
    /// How long the baseline and the waiting claims are each measured (e.g. 30s)
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Queues the claims are spread over
    #[arg(long, default_value_t = 40)]
    pub queues: usize,
    /// Storage engine of the hub under test
    #[arg(long, default_value = "sqlite")]
    pub storage: String,
}

#[derive(Args, Debug)]
pub struct ConsumersBenchArgs {
    /// Messages on the topic
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Concurrent readers
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Messages per poll (and per ack call)
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
}

#[derive(Args, Debug)]
pub struct WebhooksBenchArgs {
    /// Messages per webhook
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Webhooks in the many-webhooks run
    #[arg(long, default_value_t = 100)]
    pub webhooks: usize,
    /// Messages sent one at a time for the latency figures
    #[arg(long, default_value_t = 500)]
    pub latency_samples: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Sse,
    /// SSE over HTTP/2 (h2c), 100 subscriptions per connection
    SseH2,
    Ws,
    LongPoll,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// How subscribers receive
    #[arg(long, value_enum, default_value = "sse")]
    pub via: Via,
    /// Concurrent subscribers on one topic
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages published
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Payload size in bytes (at least 32: a timestamp and an index lead it)
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per second; 0 publishes as fast as the publishers can (saturated)
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Storage engine of the hub under test (`redis://…` to run several nodes on one Redis)
    #[arg(long, default_value = "sqlite")]
    pub storage: String,
    /// Hub nodes sharing the storage (more than one needs a redis storage); subscribers and
    /// publishers are spread over them in turn
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Concurrent publishers when saturated (one paced publisher with --rate)
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Skip the raw TCP loop baseline
    #[arg(long)]
    pub no_baseline: bool,
    /// Hub and baseline runs, alternating; the ratios reported are their medians
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub check: CheckArgs,
}

/// `--check`: compare the run's ratios with the targets (docs/BENCHMARKS.md), exit non-zero
/// when one falls short. Run by hand: CI tests behaviour, not timing.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Fail (exit non-zero) when a ratio falls short of its target, or anything is lost
    #[arg(long)]
    pub check: bool,
    /// Replace a target for this run: NAME=VALUE (fanout-saturated, fanout-p99, publish, idle-kib, long-poll-p99-ms, long-poll-requests)
    #[arg(long, value_name = "NAME=VALUE")]
    pub threshold: Vec<String>,
}

impl CheckArgs {
    fn into_check(self) -> Result<Option<lab::check::Check>, CliError> {
        if !self.check {
            return Ok(None);
        }
        Ok(Some(lab::check::Check::new(&self.threshold)?))
    }
}

pub fn run(cmd: BenchCommand) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let measured = match cmd {
        BenchCommand::Store(a) => runtime.block_on(lab::store::run(lab::store::StoreBench {
            batch: a.batch,
            messages: a.messages,
            size: a.size,
            durability: a.durability,
        })),
        BenchCommand::Publish(a) => {
            runtime.block_on(lab::publish::run(lab::publish::PublishBench {
                connections: a.connections,
                seconds: a.seconds,
                size: a.size,
                topics: a.topics,
                durability: a.durability,
                load: a.load,
                repeat: a.repeat,
                check: a.check.into_check()?,
            }))
        }
        BenchCommand::Http2(a) => runtime.block_on(lab::http2::run(lab::http2::Http2Bench {
            concurrency: a.concurrency,
            seconds: a.seconds,
            subscribers: a.subscribers,
            messages: a.messages,
        })),
        BenchCommand::Jobs(a) => runtime.block_on(lab::jobs::run(lab::jobs::JobsBench {
            workers: a.workers,
            jobs: a.jobs,
            submitters: a.submitters,
        })),
        BenchCommand::Consumers(a) => {
            runtime.block_on(lab::consumers::run(lab::consumers::ConsumersBench {
                messages: a.messages,
                readers: a.readers,
                batch: a.batch,
            }))
        }
        BenchCommand::Webhooks(a) => {
            runtime.block_on(lab::webhooks::run(lab::webhooks::WebhooksBench {
                messages: a.messages,
                webhooks: a.webhooks,
                latency_samples: a.latency_samples,
            }))
        }
        BenchCommand::Fanout(a) => runtime.block_on(lab::fanout::run(lab::fanout::FanoutBench {
            via: match a.via {
                Via::Sse => lab::fanout::Via::Sse,
                Via::SseH2 => lab::fanout::Via::SseH2,
                Via::Ws => lab::fanout::Via::Ws,
                Via::LongPoll => lab::fanout::Via::LongPoll,
            },
            subscribers: a.subscribers,
            messages: a.messages,
            size: a.size,
            rate: a.rate,
            storage: a.storage,
            nodes: a.nodes,
            publishers: a.publishers,
            no_baseline: a.no_baseline,
            repeat: a.repeat,
            check: a.check.into_check()?,
        })),
        BenchCommand::Replication(a) => {
            runtime.block_on(lab::replication::run(lab::replication::ReplicationBench {
                storage: a.storage,
                connections: a.connections,
                seconds: a.seconds,
                size: a.size,
                topics: a.topics,
            }))
        }
        BenchCommand::IdleClaims(a) => {
            let duration = crate::model::parse_duration(&a.duration)
                .map_err(|e| CliError::Lab(lab::LabError::Usage(format!("--duration: {e}"))))?;
            runtime.block_on(lab::claims::run(lab::claims::IdleClaimsBench {
                claims: a.claims,
                duration,
                queues: a.queues,
                storage: a.storage,
            }))
        }
        BenchCommand::Sidecar(a) => {
            runtime.block_on(lab::sidecar::run(lab::sidecar::SidecarBench {
                rate: a.rate,
                seconds: a.seconds,
                size: a.size,
            }))
        }
        BenchCommand::Hold(a) => runtime.block_on(lab::hold::run(lab::hold::HoldBench {
            clients: a.clients,
            seconds: a.seconds,
        })),
        BenchCommand::RawServer { listen } => runtime.block_on(lab::raw::serve(&listen)),
        BenchCommand::RawPollServer { listen } => runtime.block_on(lab::raw_poll::serve(&listen)),
    };
    Ok(measured?)
}
