//! The `plexus` subcommands.

pub mod bench;
pub mod jobs;
pub mod publish;
pub mod serve;
pub mod sub;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeArgs;

/// Plexus: a self-hosted communication hub over one durable topic log.
#[derive(Parser, Debug)]
#[command(name = "plexus", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub
    Serve(Box<ServeArgs>),
    /// Publish one message; prints the result JSON
    Pub(publish::PubArgs),
    /// Subscribe to topics; prints one JSON envelope a line
    Sub(sub::SubArgs),
    /// Submit jobs, check them, or work a queue
    Jobs(jobs::JobsArgs),
    /// Measure the hub (results go to docs/BENCHMARKS.md)
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command. An error is one line for the user and exit code 1.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Pub(args) => block_on(publish::run(args)),
        Command::Sub(args) => block_on(sub::run(args)),
        Command::Jobs(args) => block_on(jobs::run(args)),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

fn block_on<F: std::future::Future<Output = Result<(), String>>>(f: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(f)
}

/// The default hub address of client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7539";

/// How client commands reach the hub.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Trust this certificate (PEM), e.g. the hub's <data_dir>/tls/self-signed.pem
    #[arg(long, env = "PLEXUS_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Speak HTTP/2 from the first byte on an http:// URL (h2c prior knowledge)
    #[arg(long)]
    pub http2: bool,
}

impl Connection {
    pub fn client(&self, server: &str) -> Result<plexus_client::Client, String> {
        let mut builder = plexus_client::Client::builder(server);
        if self.http2 {
            builder = builder.http2_prior_knowledge();
        }
        if let Some(path) = &self.cacert {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            builder = builder
                .add_root_certificate_pem(&pem)
                .map_err(|e| e.to_string())?;
        }
        builder.build().map_err(|e| e.to_string())
    }
}
