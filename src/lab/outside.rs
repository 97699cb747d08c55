//! `plexus lab`: the pattern lab run from outside a hub, as any client would run it — the
//! same engine as `POST /v1/lab/runs` ([`super::patterns`]), with a progress bar (plain lines
//! when stderr is not a terminal), a table on stdout, and JSON and SVG files.
//!
//! From outside, the hub's CPU time cannot be read: `cpu_s` is reported as `null`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use plexus_client::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::LabError;
use super::patterns::{self, Cpu, Progress, Sink};
use super::report;
use crate::model::LabSpec;

/// What `plexus lab` was asked to do.
#[derive(Debug, Clone)]
pub struct OutsideRun {
    pub server: String,
    pub token: Option<String>,
    pub spec: LabSpec,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
}

fn write(path: &PathBuf, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text)
        .map_err(|e| LabError::Io(format!("cannot write {}: {e}", path.display())))
}

pub async fn run(args: OutsideRun) -> Result<(), LabError> {
    if !args.server.starts_with("http://") {
        return Err(LabError::Usage(format!(
            "--server {}: the lab counts the bytes of cleartext connections; give an http:// URL",
            args.server
        )));
    }
    let mut builder = Client::builder(&args.server);
    if let Some(token) = &args.token {
        builder = builder.bearer_token(token);
    }
    let client = builder.build()?;
    let spec = &args.spec;
    let messages = spec.messages();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(messages * spec.patterns.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("  {msg:<28} [{bar:40}] {pos}/{len} messages published")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    // Patterns finished so far, to place each one's ticks on the bar.
    let finished = Mutex::new(0u64);
    let progress = |p: Progress| {
        let done = *finished.lock().unwrap_or_else(|e| e.into_inner());
        match (&p, &bar) {
            (Progress::Started { pattern, clients }, Some(bar)) => {
                bar.set_message(format!("{pattern}: {clients} clients"));
            }
            (Progress::Tick { published, .. }, Some(bar)) => {
                bar.set_position(done * messages + published);
            }
            (Progress::Done { .. }, Some(bar)) => {
                bar.set_position((done + 1) * messages);
            }
            (Progress::Started { pattern, clients }, None) => {
                eprintln!("lab: {pattern}: connecting {clients} clients");
            }
            (
                Progress::Tick {
                    pattern,
                    published,
                    messages,
                    deliveries,
                },
                None,
            ) => {
                eprintln!(
                    "lab: {pattern}: {published}/{messages} published, {deliveries} delivered"
                );
            }
            (Progress::Done { pattern, result }, None) => {
                eprintln!(
                    "lab: {pattern}: done, {} delivered, {} lost",
                    result.deliveries, result.lost
                );
            }
        }
        if matches!(p, Progress::Done { .. }) {
            *finished.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    };
    let sink = Sink {
        progress: &progress,
        cpu: Cpu::None,
        cancel: CancellationToken::new(),
    };
    // Fresh topics per run: the time keeps a second run from reading the first one's.
    let prefix = format!("lab.cli{:x}", crate::model::now_millis());
    let results = patterns::run(&client, spec, &prefix, &sink).await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    print!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let doc = json!({
            "server": args.server,
            "spec": {
                "patterns": spec.patterns.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "clients": spec.clients,
                "rate": spec.rate,
                "duration_s": spec.duration.as_secs_f64(),
                "poll_interval_s": spec.poll_interval.as_secs_f64(),
                "size": spec.size,
            },
            "patterns": results,
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| LabError::Run(format!("the JSON report: {e}")))?;
        write(path, &(text + "\n"))?;
    }
    if let Some(path) = &args.svg {
        write(
            path,
            &report::svg(&results, spec, &format!("Hub {}", args.server)),
        )?;
    }
    Ok(())
}
