//! The forwarders: one task per lane of the spool (`LANES`; a topic always falls in the same
//! lane) sends the lane's entries to the hub in acceptance order, as `POST /v1/publish`
//! batches whose every item carries its idempotency key, and removes what the hub stored. A
//! batch whose answer is lost (the connection cut after the hub committed) is sent again with
//! the same keys, and the hub answers it from its idempotency records instead of storing it
//! twice. Each lane has one batch in flight at a time, so per topic the hub stores messages in
//! the order the sidecar accepted them, while publishes to topics of other lanes go up beside
//! it instead of waiting their turn (one lane made every publish at 1,000/s wait for the
//! forward before it about a third of the time; docs/BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::Shared;
use super::spool::{Entry, Lane, Outcome};
use crate::wire::base64;

/// Forwarders, each with its share of the topics and one batch in flight.
pub const LANES: usize = 8;
/// Items per forwarded batch (the hub takes 1 to 1,000).
const MAX_ITEMS: usize = 500;
/// Payload per forwarded batch; base64 and JSON keep the body well under the hub's 16 MiB.
const MAX_BYTES: usize = 4 << 20;
/// The longest one forward may take before it counts as failed (and is sent again).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub forgets idempotency keys after this long: an entry older than it may be stored twice.
const KEY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait drawn from its upper half.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let mut r = [0u8; 2];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        let fraction = u16::from_le_bytes(r) as f64 / u16::MAX as f64;
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

enum Sent {
    Stored(Vec<serde_json::Value>),
    /// The hub refused the request for good (a `4xx` but `408`/`429`): one item is at fault.
    Refused(plexus_client::Problem),
    /// Try again later: the hub is unreachable, or said `5xx`, `408` or `429`.
    Failed(String),
}

fn item(e: &Entry) -> plexus_client::BatchItem {
    let (data, data_base64) = match std::str::from_utf8(&e.data) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(base64::encode(&e.data))),
    };
    plexus_client::BatchItem {
        topic: e.topic.clone(),
        data,
        data_base64,
        event: e.event.clone(),
        idempotency_key: Some(e.key.clone()),
    }
}

async fn send(sc: &Shared, entries: &[Entry]) -> Sent {
    let items: Vec<_> = entries.iter().map(item).collect();
    let lease = sc.upstream.lease();
    match tokio::time::timeout(FORWARD_TIMEOUT, lease.publish_batch(&items)).await {
        Ok(Ok(results)) => {
            sc.hub_up.store(true, Ordering::Relaxed);
            Sent::Stored(
                results
                    .into_iter()
                    .map(|p| {
                        let mut v = json!({"topic": p.topic, "seq": p.seq, "time": p.time});
                        // Kept for the publisher waiting on this entry (see `publish.rs`). A
                        // batch sent again after a lost answer is replayed too, but its
                        // publishers were answered `202` when that forward failed.
                        if p.replayed {
                            v["replayed"] = json!(true);
                        }
                        v
                    })
                    .collect(),
            )
        }
        Ok(Err(plexus_client::Error::Problem(p))) => {
            sc.hub_up.store(true, Ordering::Relaxed);
            if (400..500).contains(&p.status) && p.status != 408 && p.status != 429 {
                Sent::Refused(p)
            } else {
                Sent::Failed(format!("the hub answered {}: {}", p.status, p.detail))
            }
        }
        Ok(Err(e)) => {
            sc.hub_up.store(false, Ordering::Relaxed);
            Sent::Failed(e.to_string())
        }
        Err(_) => {
            sc.hub_up.store(false, Ordering::Relaxed);
            Sent::Failed(format!("no answer within {FORWARD_TIMEOUT:?}"))
        }
    }
}

/// Forwards `lane`'s entries until shutdown.
pub async fn run(sc: Arc<Shared>, lane: Lane) {
    let mut backoff = Backoff::new();
    loop {
        if sc.shutdown.is_cancelled() {
            return;
        }
        // With nothing spooled the read waits for the next append, which hands it the new
        // entries as it commits them.
        let read = tokio::select! {
            read = sc.spool.next(lane, MAX_ITEMS, MAX_BYTES) => read,
            _ = sc.shutdown.cancelled() => return,
        };
        let batch = match read {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                if pause(&sc, backoff.wait()).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let now = crate::model::now_millis();
        let stale = batch
            .iter()
            .filter(|e| now - e.accepted > KEY_WINDOW_MS)
            .count() as u64;
        let failed = match send(&sc, &batch).await {
            Sent::Stored(results) => {
                if stale > 0 {
                    tracing::warn!(
                        stale,
                        "forwarded spooled messages older than the hub's 24 h idempotency window: \
                         if an earlier forward of them was stored, they are now stored twice"
                    );
                    sc.counters.stale_keys.fetch_add(stale, Ordering::Relaxed);
                }
                let n = batch.len() as u64;
                let done = batch
                    .iter()
                    .zip(results)
                    .map(|(e, r)| (e.seq, Outcome::Stored(r)))
                    .collect();
                match sc.spool.remove(done).await {
                    Ok(()) => {
                        sc.counters.forwarded.fetch_add(n, Ordering::Relaxed);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            Sent::Refused(p) => {
                tracing::info!(status = p.status, detail = %p.detail, "the hub refused a forwarded batch: forwarding its items one by one");
                one_by_one(&sc, &batch).await
            }
            Sent::Failed(why) => Some(why),
        };
        match failed {
            None => backoff.reset(),
            Some(why) => {
                sc.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, spooled = sc.spool.stats().messages, "forwarding to the hub failed; retrying");
                // Publishers waiting for this batch get their 202 now, not at forward_wait.
                sc.spool.defer(batch.iter().map(|e| e.seq));
                if pause(&sc, backoff.wait()).await {
                    return;
                }
            }
        }
    }
}

/// Forwards `batch` an item at a time after the hub refused it whole: the items it stores
/// leave the spool, an item it refuses leaves it too (its publisher, if still waiting, gets
/// the hub's problem), and a failure stops the round. `Some(why)` when it failed.
async fn one_by_one(sc: &Shared, batch: &[Entry]) -> Option<String> {
    for e in batch {
        let outcome = match send(sc, std::slice::from_ref(e)).await {
            Sent::Stored(mut r) => {
                sc.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                Outcome::Stored(r.pop().unwrap_or_default())
            }
            Sent::Refused(p) => {
                tracing::warn!(
                    topic = %e.topic, key = %e.key, status = p.status, detail = %p.detail,
                    "the hub refused a spooled message; it is dropped from the spool"
                );
                sc.counters.refused.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::to_vec(&p).unwrap_or_default();
                Outcome::Refused {
                    status: p.status,
                    body: body.into(),
                }
            }
            Sent::Failed(why) => return Some(why),
        };
        if let Err(e) = sc.spool.remove(vec![(e.seq, outcome)]).await {
            return Some(e.to_string());
        }
    }
    None
}

/// Sleeps `d`, or until the hub is seen back, or until shutdown; `true` on shutdown.
async fn pause(sc: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = sc.hub_back.notified() => false,
        _ = sc.shutdown.cancelled() => true,
    }
}
