//! The pattern lab inside the hub: the [`crate::http::LabRunner`] behind `POST /v1/lab/runs`
//! (docs/API.md, "The pattern lab"). A run is [`super::patterns::run`] in a task of the hub's
//! runtime, reaching the hub through its own listener with the caller's token; its progress
//! and results are published on `_lab.{id}` through [`HubNotes`].
//!
//! One run at a time: patterns are measured one after another so that each one's CPU time is
//! its own, and two runs at once would mix them (and double the load on the hub).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use plexus_client::Client;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::patterns::{self, Cpu, PatternResult, Progress, Sink};
use crate::app::{HubNotes, LabRunner, LabStartError};
use crate::model::LabSpec;

/// Finished runs kept for `GET /v1/lab/runs/{id}`; older ones are forgotten.
const KEEP: usize = 32;

struct Record {
    id: String,
    state: &'static str,
    spec: LabSpec,
    patterns: BTreeMap<String, PatternResult>,
    error: Option<String>,
}

impl Record {
    fn view(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "state": self.state,
            "spec": {
                "patterns": self.spec.patterns.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "clients": self.spec.clients,
                "rate": self.spec.rate,
                "duration_s": self.spec.duration.as_secs_f64(),
                "poll_interval_s": self.spec.poll_interval.as_secs_f64(),
                "size": self.spec.size,
            },
            "patterns": self.patterns,
        });
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }
}

#[derive(Default)]
struct Runs {
    /// Newest last.
    records: VecDeque<Record>,
    running: Option<String>,
}

/// The hub's pattern lab.
pub struct LabRuns {
    /// The hub's own listener, as a client reaches it.
    base: String,
    notes: HubNotes,
    /// The hub's shutdown: a run in progress ends with it.
    shutdown: CancellationToken,
    /// A std mutex: held only to read or update a record, never across an `.await`.
    runs: Arc<Mutex<Runs>>,
}

impl LabRuns {
    pub fn new(base: String, notes: HubNotes, shutdown: CancellationToken) -> Arc<LabRuns> {
        Arc::new(LabRuns {
            base,
            notes,
            shutdown,
            runs: Arc::default(),
        })
    }
}

fn lock(runs: &Mutex<Runs>) -> std::sync::MutexGuard<'_, Runs> {
    runs.lock().unwrap_or_else(|p| p.into_inner())
}

fn update(runs: &Mutex<Runs>, id: &str, f: impl FnOnce(&mut Record)) {
    let mut runs = lock(runs);
    if let Some(r) = runs.records.iter_mut().find(|r| r.id == id) {
        f(r);
    }
}

/// A fresh run id: time-ordered, and a valid topic segment.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let millis = crate::model::now_millis();
    format!("{millis:x}{:x}", NEXT.fetch_add(1, Ordering::Relaxed) % 16)
}

/// Clears the lab's running run when dropped, marking it failed if it was still running.
struct Unbusy {
    runs: Arc<Mutex<Runs>>,
    id: String,
}

impl Drop for Unbusy {
    fn drop(&mut self) {
        let mut runs = lock(&self.runs);
        if runs.running.as_deref() == Some(self.id.as_str()) {
            runs.running = None;
        }
        if let Some(r) = runs.records.iter_mut().find(|r| r.id == self.id)
            && r.state == "running"
        {
            r.state = "failed";
            r.error = Some("the run's task ended early".into());
        }
    }
}

impl LabRunner for LabRuns {
    fn start(&self, spec: LabSpec, token: Option<String>) -> Result<String, LabStartError> {
        if !self.base.starts_with("http://") {
            return Err(LabStartError::Unavailable(
                "the pattern lab counts the bytes of cleartext connections; this hub's listener speaks TLS".into(),
            ));
        }
        let mut builder = Client::builder(&self.base);
        if let Some(token) = &token {
            builder = builder.bearer_token(token);
        }
        let client = builder
            .build()
            .map_err(|e| LabStartError::Unavailable(e.to_string()))?;
        let id = {
            let mut runs = lock(&self.runs);
            if let Some(running) = &runs.running {
                return Err(LabStartError::Busy(format!(
                    "lab run {running} is going on; one run at a time"
                )));
            }
            let id = new_id();
            runs.running = Some(id.clone());
            runs.records.push_back(Record {
                id: id.clone(),
                state: "running",
                spec: spec.clone(),
                patterns: BTreeMap::new(),
                error: None,
            });
            while runs.records.len() > KEEP {
                runs.records.pop_front();
            }
            id
        };
        let (runs, notes, cancel) = (self.runs.clone(), self.notes.clone(), self.shutdown.clone());
        let run_id = id.clone();
        tokio::spawn(async move {
            // Should the run's task end without reaching its end (a panic), the lab is not left
            // busy forever and the run shows as failed.
            let _guard = Unbusy {
                runs: runs.clone(),
                id: run_id.clone(),
            };
            let topic = format!("_lab.{run_id}");
            let progress = {
                let (runs, notes, topic, run_id) =
                    (runs.clone(), notes.clone(), topic.clone(), run_id.clone());
                move |p: Progress| {
                    if let Progress::Done { pattern, result } = &p {
                        update(&runs, &run_id, |r| {
                            r.patterns.insert(pattern.clone(), result.clone());
                        });
                    }
                    if let Ok(text) = serde_json::to_string(&p) {
                        notes.publish(&topic, text);
                    }
                }
            };
            let sink = Sink {
                progress: &progress,
                cpu: Cpu::ThisProcess,
                cancel,
            };
            let outcome = patterns::run(&client, &spec, &format!("lab.{run_id}"), &sink).await;
            let (state, error) = match outcome {
                Ok(_) => ("done", None),
                Err(e) => ("failed", Some(e.to_string())),
            };
            let view = {
                let mut all = lock(&runs);
                all.running = None;
                let record = all.records.iter_mut().find(|r| r.id == run_id);
                record.map(|r| {
                    r.state = state;
                    r.error = error;
                    r.view()
                })
            };
            if let Some(view) = view {
                notes.publish(
                    &topic,
                    json!({"event": "finished", "run": view}).to_string(),
                );
            }
        });
        Ok(id)
    }

    fn show(&self, id: &str) -> Option<Value> {
        lock(&self.runs)
            .records
            .iter()
            .find(|r| r.id == id)
            .map(Record::view)
    }
}
