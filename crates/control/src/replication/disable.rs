//! Disabling replication: a job stops the stream and the processor, then deletes the cache
//! segments, the replica and the item. The source VM is left untouched. `--dry-run` shows the
//! plan first.

use std::sync::Arc;

use ferry_storage::Key;

use crate::control::Control;
use crate::db::Kind;
use crate::error::Result;
use crate::jobs::job_steps;
use crate::model::{ItemState, Job, JobKind, Replication, StepState};
use crate::resources::key;

job_steps! {
    /// The steps of disabling replication.
    pub(crate) enum DisableStep for DisableReplication {
        StopReplication => "Stop replication",
        PlanDeletion => "Plan deletion",
        Delete => "Delete cache and replica data",
        RemoveItem => "Remove item",
    }
}

/// What disabling an item would do, shown before anything is deleted (`--dry-run`).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DisablePlan {
    pub item: String,
    pub state: ItemState,
    /// Objects to delete, per storage account.
    pub delete: Vec<PlannedDeletion>,
    /// VMs that ferry created for a test failover and deletes.
    pub delete_vms: Vec<String>,
    /// VMs left untouched.
    pub keep_vms: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PlannedDeletion {
    pub store: String,
    pub objects: usize,
}

impl Control {
    /// Disable replication: a job that stops the stream and processor, then deletes the
    /// cache segments, the replica and the item (the source VM is left untouched).
    pub async fn disable_replication(self: &Arc<Self>, group: &str, vm: &str) -> Result<Job> {
        let vm_key = key(group, vm);
        self.replication(group, vm)?;
        // Waiting for the initial copy or a repair to end is what a disable stops.
        let takes_from = [JobKind::EnableReplication, JobKind::RepairReplication];
        self.refuse_if_busy(&vm_key, &takes_from)?;
        self.refuse_if_hydrating_from(&vm_key, &format!("disable replication of {vm_key}"))?;
        self.admit::<DisableStep>(&vm_key, &takes_from, |r, _, _| {
            r.state = r.state.move_to(ItemState::Disabling)?;
            Ok(())
        })
        .await
    }

    /// `ferry replication disable --dry-run`: the plan, with nothing changed.
    pub async fn disable_plan(&self, group: &str, vm: &str) -> Result<DisablePlan> {
        let rep = self.replication(group, vm)?;
        let plan = self.deletion_plan(&rep).await?;
        let mut keep_vms = vec![rep.source_key()];
        if let Some(f) = &rep.failover {
            keep_vms.push(f.vm.clone());
        }
        if let Some(t) = &rep.target_vm {
            keep_vms.push(t.clone());
        }
        keep_vms.dedup();
        Ok(DisablePlan {
            item: rep.item_key(),
            state: rep.state,
            delete: plan
                .iter()
                .map(|(store, keys)| PlannedDeletion {
                    store: store.url().to_string(),
                    objects: keys.len(),
                })
                .collect(),
            delete_vms: rep.test_failover.iter().map(|t| t.vm.clone()).collect(),
            keep_vms,
        })
    }

    /// Every object that disabling an item deletes: its cache segments and its replica.
    pub(crate) async fn deletion_plan(
        &self,
        rep: &Replication,
    ) -> Result<Vec<(ferry_storage::DynStore, Vec<Key>)>> {
        let mut plan = Vec::new();
        let cache = self.item_cache(rep)?;
        let keys = cache.list(None).await?.into_iter().map(|o| o.key).collect();
        plan.push((cache, keys));
        let layout = self.layout(rep)?;
        let prefix = Key::from_segments(["replicas", &rep.stream.to_string()])
            .expect("stream ids are valid key segments");
        let mut seen: Vec<String> = Vec::new();
        for store in std::iter::once(&layout.meta).chain(layout.disks.iter()) {
            if seen.contains(&store.url().to_string()) {
                continue;
            }
            seen.push(store.url().to_string());
            let keys = store
                .list(Some(&prefix))
                .await?
                .into_iter()
                .map(|o| o.key)
                .collect();
            plan.push((store.clone(), keys));
        }
        Ok(plan)
    }
}

pub(crate) async fn run_disable(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = job.target.split_once('/').unwrap_or((&job.target, ""));
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep: Replication = control.replication(&group, &vm)?;
    control.job_step(job, DisableStep::StopReplication, StepState::Running, None)?;
    control.stop_item(&rep).await;
    let vm_key = key(&group, &vm);
    control
        .source_host(&rep)?
        .forget_replication(&rep.source_key())
        .await?;
    control.job_step(
        job,
        DisableStep::StopReplication,
        StepState::Succeeded,
        None,
    )?;
    let plan = control.deletion_plan(&rep).await?;
    let count: usize = plan.iter().map(|(_, keys)| keys.len()).sum();
    control.job_step(
        job,
        DisableStep::PlanDeletion,
        StepState::Succeeded,
        Some(format!("{count} objects to delete")),
    )?;
    control.job_step(job, DisableStep::Delete, StepState::Running, None)?;
    for (store, keys) in plan {
        for k in keys {
            store.delete(&k).await?;
        }
    }
    if let Some(t) = &rep.test_failover {
        if let Some(v) = control.db.get::<crate::model::Vm>(Kind::Vm, &t.vm)? {
            control.remove_vm(&v).await?;
        }
        if t.created_network {
            control
                .db
                .delete(Kind::Network, &key(&rep.target.group, &t.network))?;
        }
    }
    // The VMs it keeps (failed over to, replicated from) are the user's from now on.
    for v in control.db.list::<crate::model::Vm>(Kind::Vm)? {
        if v.owner.as_deref() == Some(vm_key.as_str()) {
            control.update_vm(&key(&v.group, &v.name), |v| {
                v.owner = None;
                Ok(())
            })?;
        }
    }
    control.job_step(job, DisableStep::Delete, StepState::Succeeded, None)?;
    control.db.delete(Kind::Replication, &vm_key)?;
    control.db.forget_rpo_history(&vm_key)?;
    control.rates().forget(&vm_key);
    control.job_step(job, DisableStep::RemoveItem, StepState::Succeeded, None)?;
    control.job_succeed(job)
}
