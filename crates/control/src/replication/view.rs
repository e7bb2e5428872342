//! What `replication show` returns: the item with its live state, health and RPO.

use ferry_format::point::PointRecord;
use ferry_replica::PointInfo;
use ferry_types::Timestamp;
use serde::Serialize;

use super::rates::{self, ChurnView};
use crate::control::Control;
use crate::model::{Health, ItemState, Policy, Replication, Target};

#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PointView {
    pub id: String,
    pub time: String,
    pub kind: String,
}

impl From<&PointRecord> for PointView {
    fn from(r: &PointRecord) -> Self {
        let i = PointInfo::from_record(r);
        PointView::from(&i)
    }
}

impl From<&PointInfo> for PointView {
    fn from(i: &PointInfo) -> Self {
        PointView {
            id: i.id.clone(),
            time: i.time.to_string(),
            kind: i.kind.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct InitialReplicationView {
    pub total_bytes: u64,
    pub scanned_bytes: u64,
    pub sent_bytes: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct StatsView {
    pub bytes_written: u64,
    /// Bytes waiting in the agent's ship buffer, and its bound.
    pub ship_buffer_bytes: u64,
    pub ship_buffer_limit: u64,
    /// `ordered`, `overflow` (the buffer is full: writes tracked as dirty blocks) or
    /// `catching-up`.
    pub tracking: String,
    pub dirty_bytes: u64,
    pub catch_up_copied_bytes: u64,
    /// Since when the source host's disk has been too full to log writes (they are tracked as
    /// dirty blocks), and how often it was found full since the server started.
    pub disk_full_since: Option<String>,
    pub disk_full_count: u64,
    pub bytes_shipped: u64,
    pub segments_shipped: u64,
    pub segments_applied: u64,
    pub pending_local_logs: usize,
    pub applied_seq: Option<u64>,
    /// Shipped to the cache account and not applied yet (since the server started).
    pub cache_backlog_segments: u64,
    pub cache_backlog_bytes: u64,
}

/// One stored RPO sample (none: the item had no RPO then, e.g. it was not protected).
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RpoSample {
    pub time: String,
    pub rpo_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReplicationView {
    pub name: String,
    pub group: String,
    pub vm: String,
    pub source_region: String,
    pub state: ItemState,
    /// The item's write stream: its cache segments are under `streams/<stream>/`, its replica
    /// under `replicas/<stream>/`. A reprotect starts a new one.
    pub stream: ferry_types::StreamId,
    /// The writer generation: a repair moves to a new one, fencing the old stream.
    pub generation: u64,
    pub health: Health,
    pub health_reasons: Vec<String>,
    pub rpo_seconds: Option<f64>,
    /// The RPO thresholds of the item's policy.
    pub rpo_warning_seconds: f64,
    pub rpo_critical_seconds: f64,
    /// RPO samples of the last hour (in `replication show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_history: Option<Vec<RpoSample>>,
    pub last_recovery_point: Option<PointView>,
    /// The newest app-consistent point.
    pub last_app_consistent_point: Option<PointView>,
    /// Churn per disk and what replication ships, over the last 30 s.
    pub churn: Option<ChurnView>,
    pub policy: String,
    pub target: Target,
    pub initial_replication: Option<InitialReplicationView>,
    pub stats: StatsView,
    pub job: Option<u64>,
    pub created: String,
    /// The VM whose writes replicate now (the item's own VM until a reprotect turns it).
    pub source_vm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::model::Failover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_failover: Option<crate::model::TestFailover>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_test_failover: Option<crate::model::TestFailover>,
}

impl Control {
    pub(crate) fn view(&self, rep: &Replication) -> ReplicationView {
        let vm_key = rep.item_key();
        let agent = self.source_status(rep);
        let proc = self.processor_status(&vm_key);
        let now = Timestamp::now();
        let mut reasons = Vec::new();
        let mut critical = false;
        // A joined source host that stopped heartbeating: its last report is all there is.
        let lost_since = self.source_host_lost(rep);
        if let Some((host, since)) = &lost_since {
            reasons.push(match since {
                Some(t) => format!(
                    "source host {host} unreachable since {t}; if its site is lost, fail over \
                     with `ferry failover run {vm_key} --recovery-point latest`"
                ),
                None => format!("source host {host} has not connected since the server started"),
            });
            critical = true;
        }
        if let Some(e) = proc.as_ref().and_then(|p| p.error.clone()) {
            reasons.push(format!("processing: {e}"));
            critical = true;
        }
        if let Some(e) = agent.as_ref().and_then(|a| a.stream.last_error.clone()) {
            reasons.push(format!("agent: {e}"));
            critical = true;
        }
        if let Some(s) = agent.as_ref().map(|a| &a.stream)
            && let Some(since) = s.unordered_since
            && s.tracking != "resyncing"
        {
            const MIB: f64 = (1 << 20) as f64;
            let what = if let Some(full) = s.disk_full_since {
                format!(
                    "the source host's disk is full (since {full}): writes are tracked as dirty \
                     blocks, and the catch-up waits for space; free space on the source host"
                )
            } else if s.tracking == "overflow" {
                format!(
                    "the ship buffer ({:.0} MiB) is full: writes are tracked as dirty blocks",
                    s.buffer_limit as f64 / MIB
                )
            } else {
                "the catch-up is copying the blocks written while the ship buffer was full".into()
            };
            reasons.push(format!(
                "{what} ({:.1} MiB to copy); no instant since {since} is point-in-time \
                 recoverable until the catch-up completes, and the last point before it is kept",
                s.dirty_bytes as f64 / MIB
            ));
            critical = true;
        } else if let Some(p) = proc.as_ref()
            && let Some(seq) = p.catch_up_seq
            && rep.state != ItemState::Resynchronizing
        {
            reasons.push(format!(
                "the replica is applying a catch-up (from sequence {seq}): no new point until \
                 it completes"
            ));
        }
        if rep.state == ItemState::ResyncRequired {
            reasons.push(format!(
                "resync required: {}; replication is stopped, run `ferry replication repair {vm_key}`",
                rep.resync_reason.as_deref().unwrap_or("the stream cannot be trusted")
            ));
            critical = true;
        } else if rep.state == ItemState::Resynchronizing {
            reasons.push(
                "a repair is comparing every block with the replica; no new point until it completes"
                    .into(),
            );
        }
        if let Some((when, w)) = self.app_consistent_warning(&vm_key) {
            reasons.push(format!("app-consistent point at {when}: {w}"));
        }
        let protected = rep.state == ItemState::Protected;
        let rpo = protected.then(|| {
            let shipped_through = agent
                .as_ref()
                .and_then(|a| a.stream.oldest_unshipped)
                .unwrap_or(now);
            let stuck = proc
                .as_ref()
                .filter(|p| p.refused_segment.is_some())
                .and_then(|p| p.applied_time)
                .unwrap_or(now);
            // Nothing after the start of a catch-up window can be recovered until it closes.
            let unordered = agent
                .as_ref()
                .and_then(|a| a.stream.unordered_since)
                .or_else(|| proc.as_ref().and_then(|p| p.catch_up_since))
                .unwrap_or(now);
            // Nothing the host wrote since it was last heard from is known to be shipped.
            let heard = lost_since
                .as_ref()
                .map(|(_, t)| t.unwrap_or(now))
                .unwrap_or(now);
            shipped_through
                .min(stuck)
                .min(unordered)
                .min(heard)
                .seconds_until(now)
        });
        let policy = self
            .policy(&rep.policy)
            .unwrap_or_else(|_| Policy::default_named(&rep.policy));
        if let Some(r) = rpo {
            if r > policy.rpo_critical_seconds {
                reasons.push(format!(
                    "RPO {r:.1} s is over the critical threshold of {} s",
                    policy.rpo_critical_seconds
                ));
                critical = true;
            } else if r > policy.rpo_warning_seconds {
                reasons.push(format!(
                    "RPO {r:.1} s is over the warning threshold of {} s",
                    policy.rpo_warning_seconds
                ));
            }
        }
        let last_point = proc.as_ref().and_then(|p| p.last_point.clone());
        if protected
            && let Some(p) = &last_point
            && agent
                .as_ref()
                .is_some_and(|a| a.stream.unordered_since.is_none())
        {
            let age = p.time.seconds_until(now);
            if age > policy.no_point_warning() {
                let age = if age < 120.0 {
                    format!("{age:.0} s")
                } else {
                    format!("{:.0} min", age / 60.0)
                };
                reasons.push(format!(
                    "no recovery point for {age} (the last at {}); the policy cuts one every \
                     {:.0} s and warns after {:.0} s",
                    p.time,
                    policy.crash_consistent_every_seconds,
                    policy.no_point_warning()
                ));
            }
        }
        let churn = self.rates().churn(&vm_key);
        if let (Some(c), Some(a)) = (&churn, &agent)
            && a.stream.unordered_since.is_none()
            && let Some(r) =
                rates::above_capacity(c, a.stream.buffered_bytes, a.stream.buffer_limit)
        {
            reasons.push(r);
        }
        if !self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&vm_key)
            && rep.state.is_replicating()
        {
            reasons.push("the processor is not running".into());
        }
        if agent.is_none()
            && (rep.state == ItemState::Protected || rep.state == ItemState::InitialReplication)
        {
            reasons.push(format!(
                "no status from the agent in {} (its heartbeat is lost): the VM's writes may not \
                 be replicated; the server restarts the stream within seconds",
                rep.source_region
            ));
            critical = true;
        }
        let health = if critical {
            Health::Critical
        } else if reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Warning
        };
        let initial = agent.as_ref().map(|a| {
            let p = &a.initial_sync;
            let percent = if protected {
                100.0
            } else if p.total_bytes == 0 {
                0.0
            } else {
                (p.scanned_bytes as f64 / p.total_bytes as f64 * 100.0).min(99.9)
            };
            InitialReplicationView {
                total_bytes: p.total_bytes,
                scanned_bytes: p.scanned_bytes,
                sent_bytes: p.sent_bytes,
                percent,
            }
        });
        let stats = StatsView {
            bytes_written: agent.as_ref().map_or(0, |a| a.stream.bytes_written),
            ship_buffer_bytes: agent.as_ref().map_or(0, |a| a.stream.buffered_bytes),
            ship_buffer_limit: agent.as_ref().map_or(0, |a| a.stream.buffer_limit),
            tracking: agent
                .as_ref()
                .map_or("ordered", |a| a.stream.tracking.as_str())
                .into(),
            dirty_bytes: agent.as_ref().map_or(0, |a| a.stream.dirty_bytes),
            disk_full_since: agent
                .as_ref()
                .and_then(|a| a.stream.disk_full_since)
                .map(|t| t.to_string()),
            disk_full_count: agent.as_ref().map_or(0, |a| a.stream.disk_full_count),
            catch_up_copied_bytes: agent.as_ref().map_or(0, |a| a.catch_up_copied_bytes),
            bytes_shipped: agent.as_ref().map_or(0, |a| a.stream.bytes_shipped),
            segments_shipped: agent.as_ref().map_or(0, |a| a.stream.segments_shipped),
            segments_applied: proc.as_ref().map_or(0, |p| p.segments_applied),
            pending_local_logs: agent.as_ref().map_or(0, |a| a.stream.pending_logs),
            applied_seq: proc.as_ref().and_then(|p| p.applied_seq),
            cache_backlog_segments: agent
                .as_ref()
                .map_or(0, |a| a.stream.segments_shipped)
                .saturating_sub(proc.as_ref().map_or(0, |p| p.segments_applied)),
            cache_backlog_bytes: agent
                .as_ref()
                .map_or(0, |a| a.stream.bytes_shipped)
                .saturating_sub(proc.as_ref().map_or(0, |p| p.segment_bytes_applied)),
        };
        ReplicationView {
            name: vm_key,
            group: rep.group.clone(),
            vm: rep.vm.clone(),
            source_region: rep.source_region.clone(),
            state: rep.state,
            stream: rep.stream,
            generation: rep.generation.0,
            health,
            health_reasons: reasons,
            rpo_seconds: rpo.map(|r| (r * 1000.0).round() / 1000.0),
            rpo_warning_seconds: policy.rpo_warning_seconds,
            rpo_critical_seconds: policy.rpo_critical_seconds,
            rpo_history: None,
            last_recovery_point: last_point.as_ref().map(PointView::from),
            last_app_consistent_point: proc
                .as_ref()
                .and_then(|p| p.last_app_point.as_ref())
                .map(PointView::from),
            churn,
            policy: rep.policy.clone(),
            target: rep.target.clone(),
            initial_replication: initial,
            stats,
            job: rep.job,
            created: rep.created.to_string(),
            source_vm: rep.source_key(),
            failover: rep.failover.clone(),
            test_failover: rep.test_failover.clone(),
            last_test_failover: rep.last_test_failover.clone(),
        }
    }
}
