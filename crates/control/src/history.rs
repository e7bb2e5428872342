//! Events and ended jobs are kept for a settable time (`event_retention_seconds`,
//! `job_retention_seconds`; 30 and 7 days by default), then deleted by the monitor, so the
//! state database does not grow with every change a fleet makes. A running job is never
//! deleted.

use std::time::{Duration, Instant};

use ferry_types::Timestamp;

use crate::control::Control;
use crate::error::Result;

/// How often the monitor prunes.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Rows deleted per statement (the database is held for one statement at a time).
const BATCH: usize = 5_000;

/// The most statements of one kind per pruning, so a first pruning of a huge history does not
/// hold the monitor: the rest goes at the next one.
const MOST_BATCHES: usize = 20;

impl Control {
    /// Delete events and ended jobs past their retention; how many of each went.
    pub(crate) fn prune_history(&self) -> Result<(usize, usize)> {
        let started = Instant::now();
        let events = drain(|| {
            self.db
                .prune_events(before(self.cfg.event_retention), BATCH)
        })?;
        let jobs = drain(|| self.db.prune_jobs(before(self.cfg.job_retention), BATCH))?;
        if events + jobs > 0 {
            tracing::info!(
                events,
                jobs,
                ms = started.elapsed().as_millis() as u64,
                "pruned events and ended jobs past their retention"
            );
        }
        Ok((events, jobs))
    }
}

fn before(retention: Duration) -> Timestamp {
    let now = Timestamp::now();
    Timestamp(
        now.0
            .saturating_sub(retention.as_nanos().min(i64::MAX as u128) as i64),
    )
}

fn drain(mut step: impl FnMut() -> Result<usize>) -> Result<usize> {
    let mut total = 0;
    for _ in 0..MOST_BATCHES {
        let n = step()?;
        total += n;
        if n < BATCH {
            break;
        }
    }
    Ok(total)
}
