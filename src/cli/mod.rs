//! The `plexus` subcommands.

pub mod bench;
pub mod publish;
pub mod serve;
pub mod sub;

use clap::{Parser, Subcommand};

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
    Serve(ServeArgs),
    /// Publish one message; prints the result JSON
    Pub(publish::PubArgs),
    /// Subscribe to topics; prints one JSON envelope a line
    Sub(sub::SubArgs),
    /// Measure the hub (results go to docs/BENCHMARKS.md)
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command. An error is one line for the user and exit code 1.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Pub(args) => block_on(publish::run(args)),
        Command::Sub(args) => block_on(sub::run(args)),
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
