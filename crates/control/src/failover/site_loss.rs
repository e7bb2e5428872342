//! A failover to `latest` when the source site is gone: no agent can cut a point, so the
//! newest point is the end of what reached the cache account. Once the processor has applied
//! every segment the cache holds, a point is built at its last record (the journal keeps it),
//! so the failover leaves out only the writes that never left the site, not those since the
//! last marker.

use std::time::{Duration, Instant};

use ferry_format::point::PointRecord;
use ferry_replica::{PointSelector, points};
use ferry_types::Timestamp;

use crate::control::Control;
use crate::error::Result;
use crate::model::Replication;

/// How long a failover waits for the processor to apply what the cache account holds before
/// it takes the newest point as it is.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

impl Control {
    /// The newest point there can be with the source host unreachable.
    pub(super) async fn point_after_site_loss(&self, rep: &Replication) -> Result<PointRecord> {
        let layout = self.layout(rep)?;
        let newest = points::resolve(&layout, &PointSelector::Latest).await?;
        let Some(end) = self.cache_end(rep).await else {
            return Ok(newest);
        };
        if end <= newest.time || self.check_in_journal_window(rep, end).is_err() {
            return Ok(newest);
        }
        match self.replay_to(rep, end).await {
            Ok(p) => Ok(p),
            Err(e) => {
                tracing::warn!(item = %rep.item_key(), error = %e, "cannot build a point at the end of the cache account; using the newest point");
                Ok(newest)
            }
        }
    }

    /// The time of the last record the processor applied once it has found no further
    /// segment in the cache account after this call; none when it cannot get there (an
    /// error, a gap, a catch-up without a consistent point, or no processor).
    async fn cache_end(&self, rep: &Replication) -> Option<Timestamp> {
        let asked = Timestamp::now();
        // An idle processor may be in a long pause (`processor/idle.rs`).
        self.wake_processor(&rep.item_key());
        let deadline = Instant::now() + DRAIN_WAIT;
        loop {
            let s = self.processor_status(&rep.item_key())?;
            if s.error.is_some() || s.gap.is_some() || s.catch_up_seq.is_some() {
                tracing::warn!(item = %rep.item_key(), error = ?s.error, gap = ?s.gap, "the processor cannot apply the rest of the cache account; using the newest point");
                return None;
            }
            if s.drained_at.is_some_and(|t| t > asked) {
                return s.applied_time;
            }
            if Instant::now() > deadline {
                tracing::warn!(item = %rep.item_key(), "the processor did not apply the rest of the cache account within {} s; using the newest point", DRAIN_WAIT.as_secs());
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// When the item's source host is unreachable: since when, and how many seconds of writes
    /// before the loss `point` leaves out, from the newest write the server knows of (the
    /// host's last report, or the newest record the processor applied). Writes the host made
    /// after its last report (at most a heartbeat, 2 s) are not known to anyone left.
    pub(crate) fn writes_lost(&self, rep: &Replication, point: &PointRecord) -> Option<String> {
        let crate::hosts::Host::Joined(h) = self.source_host(rep).ok()? else {
            return None;
        };
        if h.alive() {
            return None;
        }
        let Some(last_seen) = h.last_seen() else {
            return Some(format!(
                "source host {} has not been heard from since the server started; the point \
                 is the newest the replica holds",
                h.name
            ));
        };
        let reported = h
            .vm_report(&rep.source_key())
            .and_then(|r| r.replication)
            .and_then(|s| s.stream.last_change);
        let applied = self
            .processor_status(&rep.item_key())
            .and_then(|p| p.applied_time);
        let newest = reported.max(applied).unwrap_or(point.time);
        let lost = point.time.seconds_until(newest).max(0.0);
        Some(format!(
            "source host {} unreachable since {last_seen}: the point leaves out {lost:.1} s of \
             writes before the loss (the newest record known of the stream was at {newest})",
            h.name
        ))
    }
}
