//! `GET /metrics`: the Prometheus text format (version 0.0.4). Per item: RPO, health, state,
//! bytes written (churn is its rate), the cache backlog, bytes and segments shipped and
//! applied; jobs by state; the latency of segment applies and of NBD requests.

use std::collections::BTreeMap;
use std::fmt::Write;

use ferry_types::histogram::Snapshot;

use crate::Control;
use crate::error::Result;
use crate::model::JobState;

/// The metrics page of the whole control plane.
pub fn render(control: &Control) -> Result<String> {
    let items = control.replications()?;
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", number(v));
        }
    };
    let item = |name: &str| format!("item=\"{}\"", escape(name));
    gauge(
        "ferry_rpo_seconds",
        "gauge",
        "Time since the newest instant that can be recovered.",
        items
            .iter()
            .filter_map(|i| i.rpo_seconds.map(|r| (item(&i.name), r)))
            .collect(),
    );
    gauge(
        "ferry_health",
        "gauge",
        "1 for the item's health (healthy, warning or critical).",
        items
            .iter()
            .map(|i| (format!("{},health=\"{}\"", item(&i.name), i.health), 1.0))
            .collect(),
    );
    gauge(
        "ferry_replication_state",
        "gauge",
        "1 for the item's replication state.",
        items
            .iter()
            .map(|i| (format!("{},state=\"{}\"", item(&i.name), i.state), 1.0))
            .collect(),
    );
    let per_item = |f: &dyn Fn(&crate::replication::ReplicationView) -> f64| -> Vec<(String, f64)> {
        items.iter().map(|i| (item(&i.name), f(i))).collect()
    };
    gauge(
        "ferry_written_bytes_total",
        "counter",
        "Bytes the VM wrote to its disks since its agent started (churn: its rate).",
        per_item(&|i| i.stats.bytes_written as f64),
    );
    gauge(
        "ferry_cache_backlog_bytes",
        "gauge",
        "Bytes of the write stream not yet in the cache account (the agent's ship buffer).",
        per_item(&|i| i.stats.ship_buffer_bytes as f64),
    );
    gauge(
        "ferry_cache_backlog_segments",
        "gauge",
        "Segments shipped to the cache account and not applied yet.",
        per_item(&|i| {
            i.stats
                .segments_shipped
                .saturating_sub(i.stats.segments_applied) as f64
        }),
    );
    gauge(
        "ferry_shipped_bytes_total",
        "counter",
        "Segment bytes stored in the cache account since the agent started.",
        per_item(&|i| i.stats.bytes_shipped as f64),
    );
    gauge(
        "ferry_shipped_segments_total",
        "counter",
        "Segments stored in the cache account since the agent started.",
        per_item(&|i| i.stats.segments_shipped as f64),
    );
    gauge(
        "ferry_applied_segments_total",
        "counter",
        "Segments applied to the replica since the processor started.",
        per_item(&|i| i.stats.segments_applied as f64),
    );
    let mut jobs: BTreeMap<&str, u64> = JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for j in control.jobs()? {
        *jobs.entry(j.state.as_str()).or_default() += 1;
    }
    gauge(
        "ferry_jobs",
        "gauge",
        "Jobs by state.",
        jobs.into_iter()
            .map(|(s, n)| (format!("state=\"{s}\""), n as f64))
            .collect(),
    );
    histogram(
        &mut out,
        "ferry_segment_apply_seconds",
        "Time to apply one verified segment to the replica.",
        &[(String::new(), ferry_replica::apply_latency())],
    );
    let nbd: Vec<(String, Snapshot)> = ferry_nbd::metrics::request_latency()
        .into_iter()
        .map(|(c, s)| (format!("command=\"{c}\""), s))
        .collect();
    histogram(
        &mut out,
        "ferry_nbd_request_seconds",
        "Time the agent takes to execute an NBD request (the VM's disk I/O).",
        &nbd,
    );
    Ok(out)
}

fn histogram(out: &mut String, name: &str, help: &str, series: &[(String, Snapshot)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, s) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, n) in &s.cumulative {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                le.to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", number(s.sum_seconds));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", s.count);
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        "NaN".into()
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
