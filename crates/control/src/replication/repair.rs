//! `ferry replication repair`: a hash-compare delta resync under a new generation.
//!
//! When the stream cannot be trusted (state `resync-required`), or on demand, the item's
//! stream and processor stop; the replica is fenced for a new generation (cache segments
//! deleted, a checkpoint that resumes at the next sequence and opens a catch-up window, see
//! [`ferry_replica::resync`]); the agent starts the new generation's stream by reading every
//! block of every disk and sending only those whose BLAKE3 digest differs from the replica's,
//! while the VM keeps writing; the window closes with a point equal to the disks. Every point
//! from before the repair is kept.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::Generation;
use serde_json::json;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::jobs::job_steps;
use crate::model::{ItemState, Job, StepState};

job_steps! {
    /// The repair job's steps.
    pub(crate) enum RepairStep for RepairReplication {
        Prerequisites => "Prerequisites check",
        StopReplication => "Stop replication",
        Fence => "Fence the old stream (new generation)",
        Compare => "Compare every block, send the ones that differ",
        Protect => "Protect",
    }
}

impl Control {
    /// Start a repair of `GROUP/VM`'s replication.
    pub async fn repair_replication(self: &Arc<Self>, group: &str, vm: &str) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.refuse_if_busy(&rep.item_key(), &[])?;
        refuse_repair(&rep)?;
        // The repair builds on the replica's newest state: there must be one.
        if ferry_replica::points::list(&self.layout(&rep)?)
            .await?
            .is_empty()
        {
            return Err(ControlError::conflict(format!(
                "cannot repair {}: its replica has no recovery point yet to compare with; \
                 disable replication and enable it again, which copies every block",
                rep.item_key()
            )));
        }
        self.admit::<RepairStep>(&rep.item_key(), &[], |r, job, _| {
            refuse_repair(r)?;
            job.params = json!({ "from_state": r.state, "reason": r.resync_reason });
            r.state = r.state.move_to(ItemState::Resynchronizing)?;
            Ok(())
        })
        .await
    }
}

/// Why the item cannot be repaired now.
fn refuse_repair(rep: &crate::model::Replication) -> Result<()> {
    match rep.state {
        // Resynchronizing: a repair that failed or was interrupted, run again.
        ItemState::Protected | ItemState::ResyncRequired | ItemState::Resynchronizing => Ok(()),
        ItemState::Enabling | ItemState::InitialReplication => {
            Err(ControlError::conflict(format!(
                "cannot repair {}: its initial replication is still copying every block, which a \
             repair would do again; wait until it is protected",
                rep.item_key()
            )))
        }
        other => Err(ControlError::conflict(format!(
            "cannot repair {}: it is {other}; repair applies to a replicating item (protected \
             or resync-required)",
            rep.item_key()
        ))),
    }
}

pub(crate) async fn run_repair(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let item = job.target.clone();
    let (group, vm) = item.split_once('/').unwrap_or((&item, ""));
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep = control.replication(&group, &vm)?;
    let reason = rep
        .resync_reason
        .clone()
        .unwrap_or_else(|| "requested".into());
    control.job_step(
        job,
        RepairStep::Prerequisites,
        StepState::Succeeded,
        Some(reason),
    )?;

    if !job.step_done(RepairStep::Fence) {
        control.job_step(job, RepairStep::StopReplication, StepState::Running, None)?;
        control.stop_item(&rep).await;
        control.job_step(job, RepairStep::StopReplication, StepState::Succeeded, None)?;

        control.job_step(job, RepairStep::Fence, StepState::Running, None)?;
        // A generation once per repair, kept in the job so a resumed job fences the same one.
        let generation = match job.param::<Option<Generation>>("generation")? {
            Some(g) => g,
            None => {
                let g = Generation(rep.generation.0 + 1);
                job.params = json!({
                    "from_state": job.params.get("from_state"),
                    "reason": job.params.get("reason"),
                    "generation": g.0,
                });
                control.db.put_job(job)?;
                g
            }
        };
        let rep = control.update_item_for(job, |r| r.generation = generation)?;
        let layout = control.layout(&rep)?;
        let cache = control.item_cache(&rep)?;
        let start = ferry_replica::resync::fence(&layout, &cache, generation).await?;
        control.update_item_for(job, |r| r.resync_from = Some(start))?;
        control.job_step(
            job,
            RepairStep::Fence,
            StepState::Succeeded,
            Some(format!(
                "generation {generation}, resuming at sequence {start}"
            )),
        )?;
    }

    control.job_step(job, RepairStep::Compare, StepState::Running, None)?;
    let rep = control.replication(&group, &vm)?;
    let start = rep
        .resync_from
        .ok_or_else(|| ControlError::Internal("the repair lost its start sequence".into()))?;
    control.ensure_running(&rep).await?;
    let mut last_detail = String::new();
    loop {
        control.still_owns(job)?;
        let view = control.show_replication(&group, &vm)?;
        if view.state != ItemState::Resynchronizing {
            // A disable that took the item over since the check above moved it: say so.
            control.still_owns(job)?;
            return Err(ControlError::conflict(format!(
                "the item left the repair (state {})",
                view.state
            )));
        }
        if let Some(i) = &view.initial_replication {
            let detail = format!(
                "{:.0}% ({} of {} bytes compared, {} sent)",
                i.percent, i.scanned_bytes, i.total_bytes, i.sent_bytes
            );
            if detail != last_detail {
                let bytes = (i.scanned_bytes, i.total_bytes);
                control.job_progress(job, RepairStep::Compare, bytes, detail.clone())?;
                last_detail = detail;
            }
        }
        let caught_up = control.processor_status(&item).is_some_and(|p| {
            p.catch_up_seq.is_none() && p.last_point.as_ref().is_some_and(|l| l.seq >= start.0)
        });
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let view = control.show_replication(&group, &vm)?;
    let sent = view
        .initial_replication
        .as_ref()
        .map(|i| format!("{} of {} bytes sent", i.sent_bytes, i.total_bytes))
        .unwrap_or_default();
    control.job_step(job, RepairStep::Compare, StepState::Succeeded, Some(sent))?;
    control.job_step(job, RepairStep::Protect, StepState::Succeeded, None)?;
    control.succeed_moving(job, ItemState::Protected, |r| {
        r.resync_reason = None;
        r.resync_from = None;
    })?;
    Ok(())
}
