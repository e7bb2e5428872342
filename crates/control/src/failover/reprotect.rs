//! Commit and reprotect.
//!
//! Reprotect turns the item around: the failed-over VM becomes the source, the VM the item
//! came from becomes the target. The reverse replica is first seeded, in the original region,
//! from the original VM's own disks (nothing crosses regions for that); the agent then reads
//! the failed-over disks and sends only the 64 KiB blocks whose BLAKE3 digest differs from
//! the seed's, before continuous replication goes on in the new direction.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_replica::{Processor, ProcessorConfig, points};
use ferry_types::{Generation, StreamId, Timestamp};

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::jobs::job_steps;
use crate::model::{ItemState, Job, Replication, StepState, StorageAccount, Target, Vm, VmState};
use crate::resources::key;

job_steps! {
    /// The steps of committing a failover.
    pub(crate) enum CommitStep for FailoverCommit {
        Prerequisites => "Prerequisites check",
        DiscardPoints => "Discard other recovery points",
        Commit => "Commit",
    }
}

job_steps! {
    /// The reprotect job's steps.
    pub(crate) enum ReprotectStep for Reprotect {
        Prerequisites => "Prerequisites check",
        StopOriginal => "Stop the original VM",
        PrepareTarget => "Prepare the reverse target",
        DeleteReplica => "Delete the old replica",
        Seed => "Seed the replica from the original disks",
        StartReplication => "Start replication",
        DeltaReplication => "Delta replication (send blocks that differ)",
        Protect => "Protect",
    }
}

fn split(k: &str) -> (String, String) {
    let (g, v) = k.split_once('/').unwrap_or((k, ""));
    (g.to_string(), v.to_string())
}

pub(crate) async fn run_commit(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = split(&job.target);
    let rep = control.replication(&group, &vm)?;
    let Some(failover) = rep.failover.clone() else {
        return Err(ControlError::conflict("there is no failover to commit"));
    };
    control.job_step(job, CommitStep::Prerequisites, StepState::Succeeded, None)?;

    control.job_step(job, CommitStep::DiscardPoints, StepState::Running, None)?;
    let layout = control.layout(&rep)?;
    let keep = failover.point.as_ref().map(|p| p.id.clone());
    let mut removed = 0;
    for p in points::list(&layout).await? {
        let info = ferry_replica::PointInfo::from_record(&p);
        if Some(&info.id) == keep.as_ref() {
            continue;
        }
        points::delete_point(&layout, &p).await?;
        removed += 1;
    }
    control.job_step(
        job,
        CommitStep::DiscardPoints,
        StepState::Succeeded,
        Some(format!("{removed} points discarded")),
    )?;

    control.job_step(
        job,
        CommitStep::Commit,
        StepState::Succeeded,
        Some(failover.vm),
    )?;
    control.succeed_moving(job, ItemState::FailoverCommitted, |r| {
        if let Some(f) = r.failover.as_mut() {
            f.committed = Some(Timestamp::now());
        }
    })?;
    Ok(())
}

/// How long a reprotect waits for the failed-over disks' restore to make progress.
const HYDRATION_STALL: std::time::Duration = std::time::Duration::from_secs(300);

pub(crate) async fn run_reprotect(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = split(&job.target);
    let rep = control.replication(&group, &vm)?;

    // Until the turn (seeding) the record still describes the failover being reversed.
    let turned = rep.failover.is_none();
    if !turned {
        let failover = rep
            .failover
            .clone()
            .ok_or_else(|| ControlError::conflict("there is no committed failover to reverse"))?;
        let (fg, fv) = split(&failover.vm);
        control.job_step(
            job,
            ReprotectStep::Prerequisites,
            StepState::Running,
            Some(format!(
                "waiting until the disks of {} are restored",
                failover.vm
            )),
        )?;
        let mut last = -1.0;
        control
            .wait_hydrated(&fg, &fv, HYDRATION_STALL, |done, total, pct| {
                if pct - last >= 1.0 {
                    last = pct;
                    let detail =
                        format!("restoring the disks first: {pct:.0}% ({done} of {total} bytes)");
                    if let Err(e) = control.job_progress(
                        job,
                        ReprotectStep::Prerequisites,
                        (done, total),
                        detail,
                    ) {
                        tracing::warn!(error = %e, "record the job's progress");
                    }
                }
            })
            .await?;
        let new_source = control.vm(&fg, &fv)?;
        let original = control.source_vm(&rep)?;
        control.job_step(
            job,
            ReprotectStep::Prerequisites,
            StepState::Succeeded,
            Some(format!(
                "{} in {} → {}/{} in {}",
                failover.vm, new_source.region, original.group, original.name, original.region
            )),
        )?;

        control.job_step(job, ReprotectStep::StopOriginal, StepState::Running, None)?;
        let (og, ov) = (original.group.clone(), original.name.clone());
        let original = control.set_power(&key(&og, &ov), VmState::Stopped).await?;
        control.job_step(
            job,
            ReprotectStep::StopOriginal,
            StepState::Succeeded,
            Some(format!("{og}/{ov} is stopped")),
        )?;

        control.job_step(job, ReprotectStep::PrepareTarget, StepState::Running, None)?;
        // The original's host may have been lost with its site: a host that joined since
        // takes it, and gets every block.
        let lost_host = original.host.clone();
        let original = control.rehome_if_lost(&original)?;
        let target = control.reverse_target(&new_source, &original)?;
        let moved = match (&lost_host, &original.host) {
            (Some(old), new) if lost_host != original.host => format!(
                "; {og}/{ov} moves from lost host {old} to {}",
                new.as_deref().unwrap_or("the server's own agent")
            ),
            _ => String::new(),
        };
        control.job_step(
            job,
            ReprotectStep::PrepareTarget,
            StepState::Succeeded,
            Some(format!(
                "{}/{} in {}{moved}",
                target.group, target.network, target.region
            )),
        )?;

        control.job_step(job, ReprotectStep::DeleteReplica, StepState::Running, None)?;
        control.stop_item(&rep).await;
        control
            .source_host(&rep)?
            .forget_replication(&rep.source_key())
            .await?;
        let plan = control.deletion_plan(&rep).await?;
        let count: usize = plan.iter().map(|(_, k)| k.len()).sum();
        for (store, keys) in plan {
            for k in keys {
                store.delete(&k).await?;
            }
        }
        control.job_step(
            job,
            ReprotectStep::DeleteReplica,
            StepState::Succeeded,
            Some(format!("{count} objects deleted")),
        )?;

        control.job_step(job, ReprotectStep::Seed, StepState::Running, None)?;
        let turned = control.move_item_for(job, ItemState::Reprotecting, |r| {
            r.source_vm = Some(failover.vm.clone());
            r.source_region = new_source.region.clone();
            r.target_vm = Some(key(&original.group, &original.name));
            r.target = target;
            r.stream = StreamId::random();
            r.generation = Generation(r.generation.0 + 1);
            r.failover = None;
        })?;
        crate::failpoint::hit("reprotect-after-turn").await;
        let seeded = control.seed(&turned, &original).await?;
        control.job_step(job, ReprotectStep::Seed, StepState::Succeeded, Some(seeded))?;
    } else if !job.step_done(ReprotectStep::StartReplication) {
        // A restart after the turn: seeding again is a no-op once the seed is stored.
        let (og, ov) = split(&rep.failover_vm_key());
        let original = control.vm(&og, &ov)?;
        control.job_step(job, ReprotectStep::Seed, StepState::Running, None)?;
        let seeded = control.seed(&rep, &original).await?;
        control.job_step(job, ReprotectStep::Seed, StepState::Succeeded, Some(seeded))?;
    }

    let rep = control.replication(&group, &vm)?;
    control.job_step(
        job,
        ReprotectStep::StartReplication,
        StepState::Running,
        None,
    )?;
    control.ensure_running(&rep).await?;
    control.job_step(
        job,
        ReprotectStep::StartReplication,
        StepState::Succeeded,
        None,
    )?;

    control.job_step(
        job,
        ReprotectStep::DeltaReplication,
        StepState::Running,
        None,
    )?;
    loop {
        let view = control.show_replication(&group, &vm)?;
        if view.state != ItemState::Reprotecting {
            return Err(ControlError::conflict(format!(
                "the item left reprotection (it is {}: {})",
                view.state,
                view.health_reasons.join("; ")
            )));
        }
        let applied = control
            .processor_status(&job.target)
            .is_some_and(|s| s.initial_sync_seq.is_some());
        if let Some(init) = &view.initial_replication {
            let detail = format!(
                "{:.0}% ({} of {} bytes compared, {} sent)",
                init.percent, init.scanned_bytes, init.total_bytes, init.sent_bytes
            );
            let bytes = (init.scanned_bytes, init.total_bytes);
            control.job_progress(job, ReprotectStep::DeltaReplication, bytes, detail.clone())?;
            if applied {
                control.job_step(
                    job,
                    ReprotectStep::DeltaReplication,
                    StepState::Succeeded,
                    Some(detail),
                )?;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    control.job_step(job, ReprotectStep::Protect, StepState::Succeeded, None)?;
    control.succeed_moving(job, ItemState::Protected, |_| {})?;
    Ok(())
}

impl Control {
    /// Where the turned-around item replicates to: the original VM's group, network, subnet and
    /// accounts; the cache account in the new source's group.
    fn reverse_target(&self, new_source: &Vm, original: &Vm) -> Result<Target> {
        let nic = original
            .nics
            .first()
            .ok_or_else(|| ControlError::invalid("the original VM has no NIC"))?;
        let mut storage = BTreeMap::new();
        for (n, o) in new_source.disks.iter().zip(&original.disks) {
            storage.insert(n.storage.clone(), o.storage.clone());
        }
        let cache = format!("cache-{}", new_source.region);
        let cache_key = key(&new_source.group, &cache);
        if self
            .db
            .get::<StorageAccount>(Kind::Storage, &cache_key)?
            .is_none()
        {
            let url = self.default_account_url(&new_source.region, &new_source.group, &cache);
            self.stores.get(&url)?;
            let a = StorageAccount {
                group: new_source.group.clone(),
                name: cache.clone(),
                region: new_source.region.clone(),
                url,
            };
            self.db.put(Kind::Storage, &cache_key, &a)?;
        }
        Ok(Target {
            region: original.region.clone(),
            group: original.group.clone(),
            network: nic.network.clone(),
            subnet: nic.subnet.clone(),
            availability_set: original.availability_set.clone(),
            cache_storage: cache_key,
            storage,
        })
    }

    /// Seed the item's (new) replica from the disks of `original`, a stopped VM, and say how.
    /// The disks of a VM on a joined host are sent by its agent; where they are gone (a lost
    /// host, or a new one that took the VM) the replica starts empty and the new source sends
    /// every block (a full copy).
    async fn seed(&self, rep: &Replication, original: &Vm) -> Result<String> {
        if original.state != VmState::Stopped {
            return Err(ControlError::conflict(format!(
                "{}/{} must be stopped to seed the replica from its disks",
                original.group, original.name
            )));
        }
        let layout = self.layout(rep)?;
        let cache = self.item_cache(rep)?;
        let sizes = original.disks.iter().map(|d| d.size_bytes).collect();
        let processor = Processor::new(layout, cache, sizes, ProcessorConfig::default());
        let from = format!("{}/{}", original.group, original.name);
        if let Some(name) = &original.host {
            let host = self.host_of(original)?;
            if self
                .seed_from_host(&processor, &host, name, original, rep.generation)
                .await?
            {
                return Ok(format!(
                    "from {from} on host {name}: only the blocks that differ are sent"
                ));
            }
            processor.seed_empty(rep.generation).await?;
            return Ok(format!(
                "none: the disks of {from} are not on host {name}, so every block is copied"
            ));
        }
        let images: Vec<PathBuf> = original
            .disks
            .iter()
            .map(|d| d.image.clone().into())
            .collect();
        processor.seed(&images, rep.generation).await?;
        Ok(format!("from {from}"))
    }
}
