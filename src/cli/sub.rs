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
    #[arg(long, default_value = "now")]
    pub since: String,
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
    let transport = match args.via {
        Via::Poll | Via::LongPoll => return poll(args).await,
        Via::Sse => Transport::Sse,
        Via::Ws => Transport::WebSocket,
        Via::Stream => Transport::Ndjson,
    };
    let client = args.connection.client(&args.server)?;
    // `follow` resumes by cursor after a dropped connection or a hub restart.
    let mut follow = client.follow(&args.topics, Some(&args.since), transport);
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
    let mut since = args.since.clone();
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
