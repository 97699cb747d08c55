//! `plexus lab`: the pattern lab against a running hub (docs/API.md, "The pattern lab").

use std::path::PathBuf;

use clap::Args;

use super::{CliError, DEFAULT_SERVER};
use crate::lab::LabError;
use crate::lab::outside::{self, OutsideRun};
use crate::model::LabSpec;

#[derive(Args, Debug)]
pub struct LabArgs {
    /// The hub (http:// only: the lab counts the bytes of cleartext connections)
    #[arg(long, env = "PLEXUS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// A bearer token for a hub with auth required
    #[arg(long, env = "PLEXUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Patterns to measure, one after another: short-poll, long-poll, sse, ws, sse-h2
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "short-poll,long-poll,sse,ws,sse-h2"
    )]
    pub patterns: Vec<String>,
    /// Clients per pattern
    #[arg(long, default_value_t = 50)]
    pub clients: u64,
    /// Messages published per second
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How long each pattern is measured
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// The short poll's interval
    #[arg(long, default_value = "1s")]
    pub poll_interval: String,
    /// Payload bytes per message (at least 21)
    #[arg(long, default_value_t = 100)]
    pub size: u64,
    /// Write the figures as JSON here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of the figures here
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

pub async fn run(args: LabArgs) -> Result<(), CliError> {
    let spec = LabSpec::new(
        &args.patterns,
        args.clients,
        args.rate,
        &args.duration,
        &args.poll_interval,
        args.size,
    )
    .map_err(|e| CliError::Lab(LabError::Usage(e)))?;
    outside::run(OutsideRun {
        server: args.server,
        token: args.token,
        spec,
        json: args.json,
        svg: args.svg,
    })
    .await?;
    Ok(())
}
