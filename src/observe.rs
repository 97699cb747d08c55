//! Metrics: every layer records through the `metrics` facade (`counter!`, `gauge!`,
//! `histogram!`); this module installs the Prometheus recorder once per process and renders it
//! for `GET /metrics`. Families are listed in docs/CONFIG.md's companion, docs/ARCHITECTURE.md.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use (`None` if another recorder was
/// installed first, e.g. by an embedding application).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("plexus_store_commit_ops".into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Shards of a [`Tally`]: more than the threads that bump one at once (tokio's workers).
const SHARDS: usize = 16;

/// One shard on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard(AtomicU64);

/// A counter bumped by every worker thread for every delivered message. A `metrics` counter
/// is one pair of atomics all threads share, and its cache line went back and forth between
/// the cores at each delivery (the fan-out profile, docs/BENCHMARKS.md); here each thread adds
/// to a shard of its own, and the shards are folded into the Prometheus counter whenever
/// `/metrics` is rendered ([`render`]), so a scrape still counts every delivery made before it.
pub struct Tally {
    counter: metrics::Counter,
    shards: [Shard; SHARDS],
}

impl Tally {
    pub fn increment(&self, n: u64) {
        self.shards[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn fold(&self) {
        let n: u64 = self
            .shards
            .iter()
            .map(|s| s.0.swap(0, Ordering::AcqRel))
            .sum();
        if n > 0 {
            self.counter.increment(n);
        }
    }
}

/// The shard of the calling thread, given out in turn on a thread's first bump.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Every tally made, by transport (a handful, made once each and kept for the process).
static TALLIES: RwLock<Vec<(&'static str, &'static Tally)>> = RwLock::new(Vec::new());

/// The tally of `plexus_deliveries_total` for `transport`: a shared look-up once made (a poll
/// asks for it at every answer).
pub fn deliveries(transport: &'static str) -> &'static Tally {
    let find = |tallies: &[(&'static str, &'static Tally)]| {
        tallies
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, tally)| *tally)
    };
    if let Some(tally) = find(&TALLIES.read().unwrap_or_else(|p| p.into_inner())) {
        return tally;
    }
    let mut tallies = TALLIES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(tally) = find(&tallies) {
        return tally;
    }
    prometheus();
    let tally: &'static Tally = Box::leak(Box::new(Tally {
        counter: metrics::counter!("plexus_deliveries_total", "transport" => transport),
        shards: Default::default(),
    }));
    tallies.push((transport, tally));
    tally
}

/// The Prometheus text exposition, every tally folded in first; `None` without the recorder.
pub fn render() -> Option<String> {
    let handle = prometheus()?;
    for (_, tally) in TALLIES.read().unwrap_or_else(|p| p.into_inner()).iter() {
        tally.fold();
    }
    Some(handle.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_every_thread_s_bumps_at_the_next_render() {
        let tally = deliveries("tally-test");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        tally.increment(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(r#"plexus_deliveries_total{transport="tally-test"}"#))
                .map(str::to_owned)
        };
        let text = render().expect("the recorder");
        assert_eq!(
            line(&text).as_deref(),
            Some(r#"plexus_deliveries_total{transport="tally-test"} 4000"#)
        );
        tally.increment(5);
        let text = render().expect("the recorder");
        assert_eq!(
            line(&text).as_deref(),
            Some(r#"plexus_deliveries_total{transport="tally-test"} 4005"#)
        );
        assert!(
            std::ptr::eq(tally, deliveries("tally-test")),
            "one tally a transport"
        );
    }
}
