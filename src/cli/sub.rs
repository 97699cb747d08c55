//! `plexus sub`: follow topics, print one JSON envelope a line (gaps as gap lines).

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use plexus_client::{Gap, Item, ReadOptions, Transport};

use super::{CliError, Connection, DEFAULT_SERVER};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Via {
    /// Short polls, one a second
    Poll,
    /// Long polls (the hub answers as soon as something arrives)
    LongPoll,
    /// Server-Sent Events
    Sse,
    /// A multiplexed WebSocket
    Ws,
    /// An NDJSON stream
    Stream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// The hub moves the consumer on as it answers
    Auto,
    /// Each message is acknowledged after it is printed
    Explicit,
}

#[derive(Args, Debug)]
pub struct SubArgs {
    /// The hub's URL
    #[arg(long, env = "PLEXUS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// One topic or several, comma-separated
    pub topics: String,
    /// How to receive
    #[arg(long, value_enum, default_value = "long-poll")]
    pub via: Via,
    /// Where to start: a cursor, all, now, an RFC 3339 time or a duration such as 10m
    /// [default: now]
    #[arg(long, conflicts_with = "consumer")]
    pub since: Option<String>,
    /// Read through this durable consumer: the hub keeps the place (long polls; created
    /// `auto` from `all` when missing)
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// With --consumer: `explicit` creates the consumer with explicit acks (if missing) and
    /// acks each message after printing it
    #[arg(long, value_enum, requires = "consumer", default_value = "auto")]
    pub ack: AckArg,
    /// Exit after this many messages
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
    /// Interval between short polls
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    crate::model::parse_duration(s).map_err(|e| e.to_string())
}

fn print_gap(out: &mut impl Write, gap: &Gap) -> Result<(), CliError> {
    let mut line = serde_json::to_value(gap)?;
    line["event"] = "gap".into();
    writeln!(out, "{line}").map_err(CliError::Write)
}

pub async fn run(args: SubArgs) -> Result<(), CliError> {
    if let Some(name) = &args.consumer {
        return consume(&args, name).await;
    }
    let transport = match args.via {
        Via::Poll | Via::LongPoll => return poll(args).await,
        Via::Sse => Transport::Sse,
        Via::Ws => Transport::WebSocket,
        Via::Stream => Transport::Ndjson,
    };
    let client = args.connection.client(&args.server)?;
    // `follow` resumes by cursor after a dropped connection or a hub restart.
    let since = args.since.as_deref().unwrap_or("now");
    let mut follow = client.follow(&args.topics, Some(since), transport);
    let mut count = 0u64;
    loop {
        let item = follow.next().await?;
        let mut out = std::io::stdout().lock();
        match item {
            Item::Message(msg) => {
                let line = serde_json::to_string(&msg)?;
                writeln!(out, "{line}").map_err(CliError::Write)?;
                count += 1;
            }
            Item::Gap(gap) => print_gap(&mut out, &gap)?,
        }
        out.flush().map_err(CliError::Write)?;
        if args.count.is_some_and(|n| count >= n) {
            return Ok(());
        }
    }
}

async fn poll(args: SubArgs) -> Result<(), CliError> {
    let client = args.connection.client(&args.server)?;
    let mut since = args.since.clone().unwrap_or_else(|| "now".into());
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        let options = ReadOptions {
            since: Some(since.clone()),
            limit: None,
            wait: matches!(args.via, Via::LongPoll).then_some(Duration::from_secs(30)),
        };
        let page = client.read(&args.topics, &options).await?;
        let mut out = stdout.lock();
        for gap in &page.gaps {
            print_gap(&mut out, gap)?;
        }
        for msg in &page.messages {
            let line = serde_json::to_string(msg)?;
            writeln!(out, "{line}").map_err(CliError::Write)?;
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return out.flush().map_err(CliError::Write);
            }
        }
        out.flush().map_err(CliError::Write)?;
        drop(out);
        since = page.next;
        if matches!(args.via, Via::Poll) && page.messages.is_empty() {
            tokio::time::sleep(args.interval).await;
        }
    }
}

/// `--consumer`: long polls through a durable consumer; with `--ack explicit`, each message is
/// acknowledged once its line is printed (a crash before that gets it again).
async fn consume(args: &SubArgs, name: &str) -> Result<(), CliError> {
    let client = args.connection.client(&args.server)?;
    if args.ack == AckArg::Explicit {
        let topics: Vec<&str> = args.topics.split(',').collect();
        let settings = serde_json::json!({"topics": topics, "ack": "explicit"});
        client.put_consumer(name, &settings).await?;
    }
    let mut seen = 0u64;
    loop {
        // No more than --count still wants: what is read is taken from the consumer.
        let limit = args
            .count
            .map(|n| n.saturating_sub(seen).clamp(1, 1000) as usize);
        let page = client
            .read_consumer(&args.topics, name, limit, Some(Duration::from_secs(30)))
            .await?;
        for gap in &page.gaps {
            let mut out = std::io::stdout().lock();
            print_gap(&mut out, gap)?;
            out.flush().map_err(CliError::Write)?;
        }
        for msg in &page.messages {
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", serde_json::to_string(msg)?).map_err(CliError::Write)?;
                out.flush().map_err(CliError::Write)?;
            }
            if args.ack == AckArg::Explicit {
                let item = (msg.topic.clone(), msg.seq, msg.delivery);
                client.settle(name, "ack", &[item]).await?;
            }
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
    }
}
