//! The `plexus` subcommands: argument definitions and dispatch. `serve` runs the application
//! of [`crate::app`]; `bench` hands its arguments to [`crate::lab`].

pub mod bench;
pub mod consumers;
pub mod jobs;
pub mod lab;
pub mod publish;
pub mod serve;
pub mod sidecar;
pub mod sub;

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::AppError;
use crate::config::{ConfigError, ServeArgs};
use crate::lab::LabError;

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
    /// Run a sidecar: the hub's API on loopback, a durable spool, one connection upstream
    Sidecar(Box<crate::config::SidecarArgs>),
    /// List, show, seek or remove durable consumers
    Consumers(consumers::ConsumersArgs),
    /// Measure the hub (results go to docs/BENCHMARKS.md)
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Measure each delivery pattern against a running hub: a table, JSON and an SVG chart
    Lab(lab::LabArgs),
}

/// Why a command failed. `main` prints it as one line and exits with code 1.
#[derive(Debug)]
pub enum CliError {
    /// The async runtime could not start.
    Runtime(std::io::Error),
    /// The configuration of `serve` is invalid.
    Config(ConfigError),
    /// The application could not be built or started.
    App(AppError),
    /// A measurement of `bench` failed.
    Lab(LabError),
    /// The hub refused a request or could not be reached.
    Hub(plexus_client::Error),
    /// An input (stdin, a file) could not be read.
    Read { what: String, error: std::io::Error },
    /// Writing the output failed (e.g. a closed pipe).
    Write(std::io::Error),
    /// An answer could not be printed as JSON.
    Json(serde_json::Error),
    /// The sidecar could not start or serve.
    Sidecar(crate::sidecar::SidecarError),
    /// `jobs work` stopped: the hub refused the queue, or a job's command could not run.
    Worker(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Runtime(e) => write!(f, "cannot start the runtime: {e}"),
            CliError::Config(e) => write!(f, "{e}"),
            CliError::App(e) => write!(f, "{e}"),
            CliError::Lab(e) => write!(f, "{e}"),
            CliError::Hub(e) => write!(f, "{e}"),
            CliError::Read { what, error } => write!(f, "cannot read {what}: {error}"),
            CliError::Write(e) => write!(f, "{e}"),
            CliError::Json(e) => write!(f, "{e}"),
            CliError::Worker(m) => f.write_str(m),
            CliError::Sidecar(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e)
    }
}

impl From<AppError> for CliError {
    fn from(e: AppError) -> Self {
        CliError::App(e)
    }
}

impl From<LabError> for CliError {
    fn from(e: LabError) -> Self {
        CliError::Lab(e)
    }
}

impl From<plexus_client::Error> for CliError {
    fn from(e: plexus_client::Error) -> Self {
        CliError::Hub(e)
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::Json(e)
    }
}

/// Runs a parsed command. An error is one line for the user and exit code 1.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Pub(args) => block_on(publish::run(args)),
        Command::Sub(args) => block_on(sub::run(args)),
        Command::Jobs(args) => block_on(jobs::run(args)),
        Command::Sidecar(args) => sidecar::run(*args),
        Command::Consumers(args) => block_on(consumers::run(args)),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Lab(args) => block_on_threads(lab::run(args)),
    }
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(f: F) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?
        .block_on(f)
}

/// [`block_on`] on every core: `plexus lab` drives hundreds of clients at once.
fn block_on_threads<F: std::future::Future<Output = Result<(), CliError>>>(
    f: F,
) -> Result<(), CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?
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
    pub fn client(&self, server: &str) -> Result<plexus_client::Client, CliError> {
        let mut builder = plexus_client::Client::builder(server);
        if self.http2 {
            builder = builder.http2_prior_knowledge();
        }
        if let Some(path) = &self.cacert {
            let pem = std::fs::read(path).map_err(|error| CliError::Read {
                what: path.display().to_string(),
                error,
            })?;
            builder = builder.add_root_certificate_pem(&pem)?;
        }
        Ok(builder.build()?)
    }
}
