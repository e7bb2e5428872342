//! Where a failed job leaves its item: back where it was when nothing that cannot be undone
//! was done yet, or in a state that says what to do next. Only while the job still owns the
//! item: one that another operation took over (a disable) is left to it.

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{ItemState, Job, JobKind};

/// Move the item of `job`, which failed with `error`, to where it belongs now.
pub(crate) fn roll_back(control: &Control, job: &Job, error: &ControlError) -> Result<()> {
    let Ok(rep) = control.replication_by_key(&job.target) else {
        return Ok(());
    };
    if rep.job != Some(job.id) {
        return Ok(());
    }
    match (job.kind, rep.state) {
        (JobKind::Failover, ItemState::FailingOver) => {
            // Not guessed: an item that was failed over before is not protected.
            let back: ItemState = job.param("from_state").map_err(|e| {
                ControlError::Internal(format!("{e}; so {} stays {}", job.target, rep.state))
            })?;
            control.move_item_for(job, back, |_| {})?;
        }
        (JobKind::Reprotect, ItemState::Reprotecting) if rep.failover.is_some() => {
            control.move_item_for(job, ItemState::FailoverCommitted, |_| {})?;
        }
        (JobKind::RepairReplication, ItemState::Resynchronizing) => {
            if job.params.get("generation").is_some() {
                // The old stream is fenced: only another repair goes on from here.
                control.move_item_for(job, ItemState::ResyncRequired, |r| {
                    r.resync_reason = Some(format!(
                        "the repair (job {}) failed: {error}; run `ferry replication repair {}` again",
                        job.id, job.target
                    ));
                })?;
            } else {
                // Nothing fenced yet: replication goes on as it was (the monitor restarts
                // its parts), or waits for a repair as it did.
                let back: ItemState = job.param("from_state")?;
                control.move_item_for(job, back, |_| {})?;
            }
        }
        _ => {}
    }
    Ok(())
}
