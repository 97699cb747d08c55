//! How `plexus lab` shows a run: a table for the terminal, and a self-contained SVG chart
//! (hand-written: no script, no external font or image, so any browser or viewer renders it
//! alone). One panel per figure, one bar per pattern, each labelled with its value.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::patterns::PatternResult;
use crate::model::{LabPattern, LabSpec};

/// The patterns of `results` in the lab's order.
fn ordered(results: &BTreeMap<String, PatternResult>) -> Vec<(&'static str, &PatternResult)> {
    LabPattern::ALL
        .iter()
        .filter_map(|p| results.get(p.name()).map(|r| (p.name(), r)))
        .collect()
}

fn cpu(r: &PatternResult) -> String {
    r.cpu_s
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"))
}

/// One row per pattern: the figures of docs/API.md, "The pattern lab".
pub fn table(results: &BTreeMap<String, PatternResult>) -> String {
    let mut out = format!(
        "{:<11} {:>7} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}\n",
        "pattern",
        "clients",
        "deliveries",
        "lost",
        "p50 ms",
        "p99 ms",
        "req/msg",
        "B/msg",
        "cpu s",
        "conns"
    );
    for (name, r) in ordered(results) {
        let _ = writeln!(
            out,
            "{name:<11} {:>7} {:>10} {:>6} {:>9.1} {:>9.1} {:>9.3} {:>9.1} {:>7} {:>6}",
            r.clients,
            r.deliveries,
            r.lost,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.requests_per_message,
            r.bytes_per_message,
            cpu(r),
            r.connections
        );
    }
    out
}

/// A colour per pattern, the same in every panel (and in the legend).
fn colour(name: &str) -> &'static str {
    match name {
        "short-poll" => "#d62728",
        "long-poll" => "#ff7f0e",
        "sse" => "#1f77b4",
        "ws" => "#2ca02c",
        "webhook" => "#8c564b",
        _ => "#9467bd",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart: a title with the run's settings, a legend, and four panels (requests per
/// message, bytes per message, latency p50 and p99).
pub fn svg(results: &BTreeMap<String, PatternResult>, spec: &LabSpec, subtitle: &str) -> String {
    let rows = ordered(results);
    type Metric = fn(&PatternResult) -> f64;
    let panels: [(&str, Metric); 4] = [
        ("HTTP requests per delivered message", |r| {
            r.requests_per_message
        }),
        ("bytes on the wire per delivered message", |r| {
            r.bytes_per_message
        }),
        ("latency p50 (ms)", |r| r.latency_ms.p50),
        ("latency p99 (ms)", |r| r.latency_ms.p99),
    ];
    let (width, bar_h, gap, label_w, bar_w) = (760.0, 18.0, 6.0, 90.0, 560.0);
    let panel_h = 28.0 + rows.len() as f64 * (bar_h + gap) + 10.0;
    let top = 80.0;
    let height = top + panels.len() as f64 * panel_h + 10.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="22" font-size="16" font-weight="bold" fill="#111">Plexus pattern lab</text>
<text x="10" y="40" fill="#333">{} clients per pattern, {} msgs/s for {} s, poll every {} ms, {} B payload. {}</text>
"##,
        spec.clients,
        spec.rate,
        spec.duration.as_secs_f64(),
        spec.poll_interval.as_millis(),
        spec.size,
        escape(subtitle)
    );
    // The legend: one swatch and name per pattern.
    for (i, (name, _)) in rows.iter().enumerate() {
        let x = 10.0 + i as f64 * 120.0;
        let _ = writeln!(
            out,
            r##"<g class="legend"><rect x="{x}" y="52" width="12" height="12" fill="{}"/><text x="{}" y="62" fill="#111">{name}</text></g>"##,
            colour(name),
            x + 16.0
        );
    }
    for (p, (title, metric)) in panels.iter().enumerate() {
        let y0 = top + p as f64 * panel_h;
        let _ = writeln!(
            out,
            r##"<text x="10" y="{}" font-weight="bold" fill="#111">{title}</text>"##,
            y0 + 16.0
        );
        let max = rows
            .iter()
            .map(|(_, r)| metric(r))
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        for (i, (name, r)) in rows.iter().enumerate() {
            let y = y0 + 26.0 + i as f64 * (bar_h + gap);
            let value = metric(r);
            // A bar at least a pixel wide, so a zero still shows where it would be.
            let w = (value / max * bar_w).max(1.0);
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#111">{name}</text><rect class="bar" x="{label_w}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{}" fill="#111">{}</text>"##,
                label_w - 6.0,
                y + 13.0,
                colour(name),
                label_w + w + 4.0,
                y + 13.0,
                if value >= 100.0 {
                    format!("{value:.0}")
                } else {
                    format!("{value:.3}")
                }
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::patterns::Latency;

    #[test]
    fn the_table_and_the_chart_have_a_row_and_a_bar_per_pattern() {
        let spec = LabSpec::new(
            &["sse".into(), "short-poll".into()],
            2,
            1.0,
            "1s",
            "250ms",
            100,
        )
        .expect("a valid spec");
        let result = |req: f64| PatternResult {
            clients: 2,
            deliveries: 2,
            lost: 0,
            latency_ms: Latency { p50: 1.0, p99: 2.0 },
            requests_per_message: req,
            bytes_per_message: 300.0,
            bytes_received_per_message: 200.0,
            cpu_s: None,
            connections: 2,
        };
        let results = BTreeMap::from([
            ("sse".to_owned(), result(0.0)),
            ("short-poll".to_owned(), result(4.0)),
        ]);
        let table = table(&results);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("short-poll"))
        );
        let svg = svg(&results, &spec, "a <test>");
        assert_eq!(svg.matches(r#"class="bar""#).count(), 8);
        assert_eq!(svg.matches(r#"class="legend""#).count(), 2);
        assert!(svg.contains("a &lt;test&gt;") && svg.ends_with("</svg>\n"));
    }
}
