//! Events: every state change, health change, job end and fault, stored in order.
//!
//! Jobs and state moves record their events where they happen. What the agents and processors
//! report (they never touch the state database) is turned into events by [`Control::observe`],
//! which the monitor runs on every tick: it compares each item's view with the one it saw last
//! and records what changed.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_types::Timestamp;

use crate::control::Control;
use crate::db::Kind;
use crate::error::Result;
use crate::model::{Event, Health, ItemState, Replication, Severity};

/// What the monitor last saw of an item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observed {
    state: ItemState,
    health: Health,
    reasons: Vec<String>,
    tracking: String,
    refused_segment: Option<u64>,
    stale_segments_deleted: u64,
    disk_full_count: u64,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events about this target (`GROUP/VM` or `job/ID`).
    pub target: Option<String>,
    pub kind: Option<String>,
    /// That severity and above.
    pub severity: Option<Severity>,
    /// Only events after this id (to follow new ones).
    pub after: Option<u64>,
    /// At most this many (the newest); default 100.
    pub limit: Option<usize>,
}

/// A reason without its figures (RPO seconds, MiB to copy, times): a reason whose numbers
/// move is the same reason, not a new event.
fn shape(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut in_number = false;
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = in_number && (c == '.' || c == ':' || c == '-');
            if !in_number {
                out.push(c);
            }
        }
    }
    out
}

impl Control {
    /// Record an event (also logged). A failure to store it is logged, never returned: an
    /// event must not stop the work it describes.
    pub(crate) fn event(&self, severity: Severity, kind: &str, target: &str, message: String) {
        let mut e = Event {
            id: 0,
            time: Timestamp::now(),
            severity,
            kind: kind.into(),
            target: target.into(),
            message,
        };
        match severity {
            Severity::Critical => {
                tracing::error!(target: "ferry::event", kind, %target, message = %e.message)
            }
            Severity::Warning => {
                tracing::warn!(target: "ferry::event", kind, %target, message = %e.message)
            }
            Severity::Info => {
                tracing::info!(target: "ferry::event", kind, %target, message = %e.message)
            }
        }
        if let Err(err) = self.db.add_event(&mut e) {
            tracing::error!(error = %err, "store an event");
        }
    }

    /// Events, oldest first: the newest `limit` (default 100) that the filter lets through.
    pub fn events(&self, f: &EventFilter) -> Result<Vec<Event>> {
        self.db.events(&crate::db::EventQuery {
            after: f.after.unwrap_or(0),
            target: f.target.as_deref(),
            kind: f.kind.as_deref(),
            severity: f.severity,
            limit: f.limit.unwrap_or(100).clamp(1, 10_000),
        })
    }

    /// Compare every item with what was seen last and record what changed. The first look at
    /// an item (after a start) records only what is not healthy.
    pub(crate) fn observe(self: &Arc<Self>) -> Result<()> {
        let reps = self.db.list::<Replication>(Kind::Replication)?;
        let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: HashMap<String, Observed> = HashMap::new();
        for rep in reps {
            let v = self.view(&rep);
            let now = Observed {
                state: v.state,
                health: v.health,
                reasons: v.health_reasons.iter().map(|r| shape(r)).collect(),
                tracking: v.stats.tracking.clone(),
                disk_full_count: v.stats.disk_full_count,
                refused_segment: self
                    .processor_status(&v.name)
                    .and_then(|p| p.refused_segment),
                stale_segments_deleted: self
                    .processor_status(&v.name)
                    .map_or(0, |p| p.stale_segments_deleted),
            };
            let item = v.name.clone();
            let first = !seen.contains_key(&item);
            let before = seen.remove(&item).unwrap_or_else(|| Observed {
                state: now.state,
                health: Health::Healthy,
                reasons: Vec::new(),
                tracking: "ordered".into(),
                refused_segment: None,
                stale_segments_deleted: 0,
                disk_full_count: 0,
            });
            self.record_changes(&item, &before, &now, &v.health_reasons, first);
            next.insert(item, now);
        }
        *seen = next;
        Ok(())
    }

    fn record_changes(
        self: &Arc<Self>,
        item: &str,
        before: &Observed,
        now: &Observed,
        reasons: &[String],
        first: bool,
    ) {
        if now.state != before.state {
            let severity = if now.state == ItemState::ResyncRequired {
                Severity::Critical
            } else {
                Severity::Info
            };
            self.event(
                severity,
                "state-changed",
                item,
                format!("state {} → {}", before.state, now.state),
            );
        }
        if now.health != before.health
            || (now.health != Health::Healthy && now.reasons != before.reasons && !first)
        {
            let severity = now.health.severity();
            let why = if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            };
            self.event(
                severity,
                "health-changed",
                item,
                format!("health {} → {}{why}", before.health, now.health),
            );
            if now.health != before.health {
                self.alert_health(item, before.health, now.health, reasons);
            }
        }
        // A full disk has its own event (below), not the ship buffer's.
        let disk_full = now.disk_full_count > before.disk_full_count;
        if now.tracking != before.tracking
            && now.tracking != "resyncing"
            && !(disk_full && now.tracking == "overflow")
        {
            let (severity, kind, message) = match now.tracking.as_str() {
                "overflow" => (
                    Severity::Critical,
                    "ship-buffer-overflow",
                    "the ship buffer is full: writes are tracked as dirty blocks; no instant is \
                     point-in-time recoverable until the catch-up completes"
                        .to_string(),
                ),
                "catching-up" => (
                    Severity::Warning,
                    "catch-up-started",
                    "the catch-up is copying the blocks written while the ship buffer was full"
                        .to_string(),
                ),
                _ if before.tracking == "resyncing" => (
                    Severity::Info,
                    "resync-done",
                    "the repair's resync compared every block: the stream is ordered again"
                        .to_string(),
                ),
                _ => (
                    Severity::Info,
                    "catch-up-done",
                    "the catch-up completed: the stream is ordered again".to_string(),
                ),
            };
            self.event(severity, kind, item, message);
        }
        if now.refused_segment.is_some() && now.refused_segment != before.refused_segment {
            let why = reasons
                .iter()
                .find(|r| r.contains("refused"))
                .cloned()
                .unwrap_or_default();
            self.event(
                Severity::Critical,
                "segment-refused",
                item,
                format!(
                    "segment {:016x} refused, nothing of it applied: {why}",
                    now.refused_segment.unwrap_or(0)
                ),
            );
        }
        if disk_full {
            self.event(
                Severity::Critical,
                "source-disk-full",
                item,
                "the source host's disk was full: a write could not be logged, so writes are \
                 tracked as dirty blocks until there is space; no instant is point-in-time \
                 recoverable until the catch-up completes; free space on the source host"
                    .to_string(),
            );
        }
        if now.stale_segments_deleted > before.stale_segments_deleted && !first {
            self.event(
                Severity::Warning,
                "stale-segment-deleted",
                item,
                format!(
                    "{} segment(s) of a fenced (stale) generation found in the cache and deleted",
                    now.stale_segments_deleted - before.stale_segments_deleted
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_whose_figures_move_keeps_its_shape() {
        let a = "RPO 130 s is over the warning threshold of 120 s";
        let b = "RPO 131 s is over the warning threshold of 120 s";
        assert_eq!(shape(a), shape(b));
        let c = "the ship buffer (1 MiB) is full (16.6 MiB to copy); no instant since \
                 2026-11-28T05:00:34.242458Z is recoverable";
        let d = "the ship buffer (1 MiB) is full (17.1 MiB to copy); no instant since \
                 2026-11-28T05:00:34.242458Z is recoverable";
        assert_eq!(shape(c), shape(d));
        assert_ne!(shape(a), shape(c));
    }
}
