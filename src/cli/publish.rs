//! `plexus pub`: publish one message, print the result JSON.

use std::io::Read;

use clap::Args;

use super::{CliError, Connection, DEFAULT_SERVER};

#[derive(Args, Debug)]
pub struct PubArgs {
    /// The hub's URL
    #[arg(long, env = "PLEXUS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The topic to publish to
    pub topic: String,
    /// The payload; read from stdin when absent
    pub data: Option<String>,
    /// The message's event type
    #[arg(long)]
    pub event: Option<String>,
    /// Publish at most once under this key (kept 24 h)
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn run(args: PubArgs) -> Result<(), CliError> {
    let data = match args.data {
        Some(data) => data.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|error| CliError::Read {
                    what: "stdin".into(),
                    error,
                })?;
            buf
        }
    };
    let client = args.connection.client(&args.server)?;
    let options = plexus_client::PublishOptions {
        event: args.event,
        idempotency_key: args.idempotency_key,
    };
    let published = client.publish(&args.topic, data, &options).await?;
    let line = serde_json::to_string(&published)?;
    println!("{line}");
    Ok(())
}
