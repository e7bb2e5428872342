//! `GET /metrics`: OpenMetrics text, encoded by `prometheus-client` from a snapshot taken at
//! each scrape. Per item: RPO, health, state, bytes written (churn is its rate), the cache
//! backlog, bytes and segments shipped and applied; jobs by state; the latency of segment
//! applies and of NBD requests.
//!
//! Every label set is bounded: `item` by the protected items, `health`, `state` and the job
//! `state` by their enums, `command` by the five NBD commands ferry times.

use std::fmt;

use ferry_types::histogram::Snapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::Control;
use crate::error::{ControlError, Result};
use crate::model::JobState;
use crate::replication::ReplicationView;

/// The media type of the page.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A metric family: name, help, type and its samples.
type Series = (&'static str, &'static str, MetricType, Vec<(Labels, f64)>);

/// The metrics page of the whole control plane.
pub fn render(control: &Control) -> Result<String> {
    let mut jobs: Vec<(&'static str, u64)> =
        JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for j in control.jobs()? {
        if let Some(n) = jobs.iter_mut().find(|(s, _)| *s == j.state.as_str()) {
            n.1 += 1;
        }
    }
    let scrape = Scrape {
        items: control.replications()?,
        jobs,
        apply: ferry_replica::apply_latency(),
        nbd: ferry_nbd::metrics::request_latency()
            .into_iter()
            .map(|(c, s)| (c.to_string(), s))
            .collect(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    encode(&mut out, &registry)
        .map_err(|_| ControlError::Internal("the metrics could not be encoded".into()))?;
    Ok(out)
}

/// What one scrape reports.
#[derive(Debug)]
struct Scrape {
    items: Vec<ReplicationView>,
    jobs: Vec<(&'static str, u64)>,
    apply: Snapshot,
    nbd: Vec<(String, Snapshot)>,
}

impl Scrape {
    /// One value per item, labelled with its name.
    fn per_item(&self, f: impl Fn(&ReplicationView) -> f64) -> Vec<(Labels, f64)> {
        self.items
            .iter()
            .map(|i| (vec![("item", i.name.clone())], f(i)))
            .collect()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let item = |i: &ReplicationView| ("item", i.name.clone());
        let rpo = self
            .items
            .iter()
            .filter_map(|i| i.rpo_seconds.map(|r| (vec![item(i)], r)))
            .collect();
        let health = self
            .items
            .iter()
            .map(|i| (vec![item(i), ("health", i.health.to_string())], 1.0))
            .collect();
        let state = self
            .items
            .iter()
            .map(|i| (vec![item(i), ("state", i.state.to_string())], 1.0))
            .collect();
        let jobs = self
            .jobs
            .iter()
            .map(|(s, n)| (vec![("state", s.to_string())], *n as f64))
            .collect();
        let series: [Series; 10] = [
            (
                "ferry_rpo_seconds",
                "Time since the newest instant that can be recovered.",
                Gauge,
                rpo,
            ),
            (
                "ferry_health",
                "1 for the item's health (healthy, warning or critical).",
                Gauge,
                health,
            ),
            (
                "ferry_replication_state",
                "1 for the item's replication state.",
                Gauge,
                state,
            ),
            (
                "ferry_written_bytes",
                "Bytes the VM wrote to its disks since its agent started (churn: its rate).",
                Counter,
                self.per_item(|i| i.stats.bytes_written as f64),
            ),
            (
                "ferry_cache_backlog_bytes",
                "Bytes of the write stream not yet in the cache account (the agent's ship buffer).",
                Gauge,
                self.per_item(|i| i.stats.ship_buffer_bytes as f64),
            ),
            (
                "ferry_cache_backlog_segments",
                "Segments shipped to the cache account and not applied yet.",
                Gauge,
                self.per_item(|i| {
                    i.stats
                        .segments_shipped
                        .saturating_sub(i.stats.segments_applied) as f64
                }),
            ),
            (
                "ferry_shipped_bytes",
                "Segment bytes stored in the cache account since the agent started.",
                Counter,
                self.per_item(|i| i.stats.bytes_shipped as f64),
            ),
            (
                "ferry_shipped_segments",
                "Segments stored in the cache account since the agent started.",
                Counter,
                self.per_item(|i| i.stats.segments_shipped as f64),
            ),
            (
                "ferry_applied_segments",
                "Segments applied to the replica since the processor started.",
                Counter,
                self.per_item(|i| i.stats.segments_applied as f64),
            ),
            ("ferry_jobs", "Jobs by state.", Gauge, jobs),
        ];
        for (name, help, kind, rows) in series {
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for (labels, v) in rows {
                let mut family = m.encode_family(&labels)?;
                match kind {
                    Counter => family.encode_counter::<Labels, f64, f64>(&v, None)?,
                    _ => family.encode_gauge(&v)?,
                }
            }
        }
        histogram(
            &mut enc,
            "ferry_segment_apply_seconds",
            "Time to apply one verified segment to the replica.",
            &[(Vec::new(), &self.apply)],
        )?;
        let nbd: Vec<(Labels, &Snapshot)> = self
            .nbd
            .iter()
            .map(|(c, s)| (vec![("command", c.clone())], s))
            .collect();
        histogram(
            &mut enc,
            "ferry_nbd_request_seconds",
            "Time the agent takes to execute an NBD request (the VM's disk I/O).",
            &nbd,
        )
    }
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, &Snapshot)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, s) in series {
        m.encode_family(labels)?.encode_histogram::<Labels>(
            s.sum_seconds,
            s.count,
            &per_bucket(s),
            None,
        )?;
    }
    Ok(())
}

/// The snapshot's cumulative counts as counts per bucket (the encoder adds them up again).
fn per_bucket(s: &Snapshot) -> Vec<(f64, u64)> {
    let mut below = 0;
    s.cumulative
        .iter()
        .map(|&(le, n)| {
            let here = n.saturating_sub(below);
            below = n;
            (le, here)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_become_counts_per_bucket() {
        let s = Snapshot {
            cumulative: vec![(0.001, 2), (0.01, 5), (f64::INFINITY, 6)],
            sum_seconds: 0.02,
            count: 6,
        };
        assert_eq!(per_bucket(&s), [(0.001, 2), (0.01, 3), (f64::INFINITY, 1)]);
    }

    #[test]
    fn a_label_value_is_escaped_by_the_encoder() {
        let scrape = Scrape {
            items: Vec::new(),
            jobs: vec![("run\"ning\n", 1)],
            apply: Snapshot {
                cumulative: vec![(f64::INFINITY, 0)],
                sum_seconds: 0.0,
                count: 0,
            },
            nbd: Vec::new(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"ferry_jobs{state="run\"ning\n"} 1"#),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
