//! `plexus consumers`: list, show, seek and remove durable consumers (docs/API.md §10).

use std::io::Write;

use clap::{Args, Subcommand};

use super::{CliError, Connection, DEFAULT_SERVER};

#[derive(Args, Debug)]
pub struct ConsumersArgs {
    /// The hub's URL
    #[arg(long, env = "PLEXUS_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: ConsumersCommand,
}

#[derive(Subcommand, Debug)]
pub enum ConsumersCommand {
    /// Every consumer with its lag figures (needs admin); one JSON object a line
    Ls,
    /// One consumer: its settings and, per topic, its lag figures
    Show { name: String },
    /// Move a consumer to where a read from SINCE starts (a cursor, all, now, a time, a duration)
    Seek { name: String, since: String },
    /// Delete a consumer
    Rm { name: String },
}

fn print(value: &serde_json::Value) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").map_err(CliError::Write)?;
    out.flush().map_err(CliError::Write)
}

pub async fn run(args: ConsumersArgs) -> Result<(), CliError> {
    let client = args.connection.client(&args.server)?;
    match args.command {
        ConsumersCommand::Ls => {
            let all = client.consumers().await?;
            for consumer in all["consumers"].as_array().into_iter().flatten() {
                print(consumer)?;
            }
            Ok(())
        }
        ConsumersCommand::Show { name } => print(&client.consumer(&name).await?),
        ConsumersCommand::Seek { name, since } => {
            print(&client.seek_consumer(&name, &since).await?)
        }
        ConsumersCommand::Rm { name } => client.delete_consumer(&name).await.map_err(Into::into),
    }
}
