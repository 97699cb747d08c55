//! `plexus bench … --check`: the performance targets as one table, and the verdict of a run
//! against them. A later change is measured against the same targets by hand (never by CI,
//! which tests behaviour, not timing); docs/BENCHMARKS.md records what the targets mean.

use super::LabError;

/// Whether a measured ratio must be at least or at most the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    AtLeast,
    AtMost,
}

/// The targets, in one place: ratios to a baseline measured in the same run, and the hub's
/// own figures where the target is absolute (idle memory, long polls).
pub const THRESHOLDS: &[(&str, Bound, f64, &str)] = &[
    (
        "fanout-saturated",
        Bound::AtLeast,
        1.0 / 3.0,
        "saturated fan-out, hub / baseline deliveries/s",
    ),
    (
        "fanout-p99",
        Bound::AtMost,
        1.2,
        "paced fan-out, hub / baseline p99 latency",
    ),
    (
        "publish",
        Bound::AtLeast,
        0.5,
        "durable publish / bare axum handler requests/s",
    ),
    (
        "idle-kib",
        Bound::AtMost,
        8.0,
        "idle SSE subscribers at 10,000 or more, the hub's RSS growth in KiB per connection",
    ),
    (
        "long-poll-p99-ms",
        Bound::AtMost,
        1000.0,
        "paced long polls, the hub's p99 from publish to answer in ms",
    ),
    (
        "long-poll-requests",
        Bound::AtMost,
        1.0,
        "paced long polls, HTTP requests answered per delivered message",
    ),
];

/// The thresholds of one run: the table, with `NAME=VALUE` overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct Check {
    overrides: Vec<(String, f64)>,
}

impl Check {
    /// Parses `NAME=VALUE` overrides; an unknown name or a value that is not a number is a
    /// usage error.
    pub fn new(overrides: &[String]) -> Result<Check, LabError> {
        let mut parsed = Vec::new();
        for o in overrides {
            let (name, value) = o
                .split_once('=')
                .ok_or_else(|| LabError::Usage(format!("--threshold {o:?}: write NAME=VALUE")))?;
            if !THRESHOLDS.iter().any(|t| t.0 == name) {
                let known: Vec<&str> = THRESHOLDS.iter().map(|t| t.0).collect();
                return Err(LabError::Usage(format!(
                    "--threshold {name:?}: not one of {}",
                    known.join(", ")
                )));
            }
            let value: f64 = value
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| LabError::Usage(format!("--threshold {o:?}: not a number")))?;
            parsed.push((name.to_owned(), value));
        }
        Ok(Check { overrides: parsed })
    }

    /// One line saying whether `measured` meets the threshold `name`, and whether it does.
    pub fn verdict(&self, name: &str, measured: f64) -> (bool, String) {
        let Some(&(_, bound, default, what)) = THRESHOLDS.iter().find(|t| t.0 == name) else {
            return (false, format!("no threshold named {name}"));
        };
        let limit = self
            .overrides
            .iter()
            .rev()
            .find(|o| o.0 == name)
            .map_or(default, |o| o.1);
        let (ok, sign) = match bound {
            Bound::AtLeast => (measured >= limit, ">="),
            Bound::AtMost => (measured <= limit, "<="),
        };
        let mark = if ok { "ok  " } else { "FAIL" };
        (
            ok,
            format!("  check {mark} {name}: {measured:.3} (target {sign} {limit:.3}; {what})"),
        )
    }
}

/// Prints each verdict; an error naming the failures when any fell short, so that the
/// process exits non-zero.
pub fn conclude(verdicts: Vec<(bool, String)>) -> Result<(), LabError> {
    let mut failed = 0;
    for (ok, line) in &verdicts {
        println!("{line}");
        if !ok {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(LabError::Run(format!(
            "check failed: {failed} of {} targets not met",
            verdicts.len()
        )));
    }
    Ok(())
}

/// The median of `values` (the lower middle of an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[(v.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_the_table_and_bad_ones_are_refused() {
        let table = Check::new(&[]).expect("no overrides");
        assert!(table.verdict("fanout-saturated", 0.34).0);
        assert!(!table.verdict("fanout-saturated", 0.33).0);
        assert!(table.verdict("fanout-p99", 1.2).0);
        assert!(!table.verdict("fanout-p99", 1.21).0);
        let strict = Check::new(&["fanout-p99=0.5".into()]).expect("valid");
        assert!(!strict.verdict("fanout-p99", 0.6).0);
        assert!(Check::new(&["nope=1".into()]).is_err());
        assert!(Check::new(&["publish".into()]).is_err());
        assert!(Check::new(&["publish=x".into()]).is_err());
        assert!(conclude(vec![table.verdict("publish", 0.6)]).is_ok());
        assert!(conclude(vec![table.verdict("publish", 0.4)]).is_err());
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
