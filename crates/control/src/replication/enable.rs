//! Enabling replication: the target resources are derived and created, the item is recorded,
//! and a job starts the stream and follows the initial copy until the item is `protected`.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::{Generation, StreamId, Timestamp};

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::jobs::job_steps;
use crate::model::{ItemState, Job, Replication, StepState, Vm};
use crate::requests::EnableReplication;
use crate::resources::key;

job_steps! {
    /// The steps of enabling replication.
    pub(crate) enum EnableStep for EnableReplication {
        Prerequisites => "Prerequisites check",
        CreateTargets => "Create target resources",
        StartReplication => "Start replication",
        InitialReplication => "Initial replication",
        Protect => "Protect",
    }
}

impl Control {
    /// Enable replication: derive and create the target resources, record the item, and start
    /// a job that starts the stream and follows initial replication to `protected`.
    pub async fn enable_replication(
        self: &Arc<Self>,
        group: &str,
        vm: &str,
        req: EnableReplication,
    ) -> Result<Job> {
        let source = self.vm(group, vm)?;
        let vm_key = key(group, vm);
        self.refuse_if_busy(&vm_key, &[])?;
        refuse_enable(&vm_key, &self.db.list(Kind::Replication)?)?;
        self.check_region(&req.target_region)?;
        if req.target_region == source.region {
            return Err(ControlError::invalid(format!(
                "the target region must differ from the VM's region {}",
                source.region
            )));
        }
        let policy = match &req.policy {
            Some(p) => self.policy(p)?,
            None => self.default_policy()?,
        };
        let target = self.create_targets(&source, &req)?;
        let created = format!("{}/{} in {}", target.group, target.network, target.region);
        let mut rep = Replication {
            group: group.to_string(),
            vm: vm.to_string(),
            source_region: source.region.clone(),
            stream: StreamId::random(),
            generation: Generation(1),
            state: ItemState::Enabling,
            policy: policy.name,
            target,
            job: None,
            created: Timestamp::now(),
            source_vm: None,
            target_vm: None,
            failover: None,
            test_failover: None,
            last_test_failover: None,
            resync_reason: None,
            resync_from: None,
        };
        // The VM cannot be deleted meanwhile, nor enabled twice: one transaction checks and
        // records the item with its job.
        let _vm = self.lock_vm(&vm_key).await;
        let job = self.db.transact(|tx| {
            if tx.get::<Vm>(Kind::Vm, &vm_key)?.is_none() {
                return Err(ControlError::not_found(format!(
                    "VM {vm_key} does not exist"
                )));
            }
            // Enabled already, and a job runs on it: the refusal names the job.
            if let Some(rep) = tx.get::<Replication>(Kind::Replication, &vm_key)?
                && let Some(running) = crate::operations::running_job(tx, &rep)?
            {
                return Err(crate::operations::busy(&vm_key, &running));
            }
            refuse_enable(&vm_key, &tx.list(Kind::Replication)?)?;
            let mut job = Job::start::<EnableStep>(&vm_key, serde_json::Value::Null);
            job.mark(EnableStep::Prerequisites, StepState::Succeeded, None)?;
            job.mark(
                EnableStep::CreateTargets,
                StepState::Succeeded,
                Some(created),
            )?;
            tx.new_job(&mut job)?;
            rep.job = Some(job.id);
            tx.insert(Kind::Replication, &vm_key, &rep, "replication of VM")?;
            Ok(job)
        })?;
        self.launch(job.clone()).await;
        Ok(job)
    }

    fn default_policy(&self) -> Result<crate::model::Policy> {
        match self.db.get(Kind::Policy, "default")? {
            Some(p) => Ok(p),
            None => {
                let p = crate::model::Policy::default_named("default");
                self.db.put(Kind::Policy, "default", &p)?;
                Ok(p)
            }
        }
    }
}

/// Why `vm_key` cannot be enabled as a new item, given every item: it is one, or another
/// item works with it (a failover or a test failover would overwrite it, or replicates from
/// it, or a failback would).
fn refuse_enable(vm_key: &str, items: &[Replication]) -> Result<()> {
    for r in items {
        if r.item_key() == vm_key {
            return Err(ControlError::conflict(format!(
                "VM {vm_key} is already replicated (state {})",
                r.state
            )));
        }
        let role = match crate::operations::role_of(r, vm_key) {
            Some(role) => role,
            // A failover of the item would create (or overwrite) a VM of this name.
            None if r.failover_vm_key() == vm_key => "failover target",
            None => continue,
        };
        return Err(ControlError::conflict(format!(
            "VM {vm_key} cannot be replicated as a new item: it is the {role} of the \
             replicated item {} (state {}), whose replication covers it",
            r.item_key(),
            r.state
        )));
    }
    Ok(())
}

pub(crate) async fn run_enable(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = job.target.split_once('/').unwrap_or((&job.target, ""));
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep = control.replication(&group, &vm)?;
    control.job_step(job, EnableStep::StartReplication, StepState::Running, None)?;
    control.ensure_running(&rep).await?;
    control.job_step(
        job,
        EnableStep::StartReplication,
        StepState::Succeeded,
        None,
    )?;
    control.job_step(
        job,
        EnableStep::InitialReplication,
        StepState::Running,
        None,
    )?;
    let mut last_percent = -1.0;
    loop {
        // A disable takes the item over; the stream may also turn out untrustworthy.
        control.still_owns(job)?;
        let view = control.show_replication(&group, &vm)?;
        match view.state {
            ItemState::Enabling | ItemState::InitialReplication => {}
            other => {
                // A disable that took the item over since the check above moved it: say so.
                control.still_owns(job)?;
                return Err(ControlError::conflict(format!(
                    "the item left its initial replication (it is {other}: {}); see `ferry replication show {group}/{vm}`",
                    view.health_reasons.join("; ")
                )));
            }
        }
        let applied = control
            .processor_status(&job.target)
            .is_some_and(|s| s.initial_sync_seq.is_some());
        if applied {
            break;
        }
        if let Some(init) = &view.initial_replication
            && (init.percent - last_percent).abs() >= 1.0
        {
            last_percent = init.percent;
            let detail = format!(
                "{:.0}% ({} of {} bytes read, {} sent)",
                init.percent, init.scanned_bytes, init.total_bytes, init.sent_bytes
            );
            control.job_progress(
                job,
                EnableStep::InitialReplication,
                (init.scanned_bytes, init.total_bytes),
                detail,
            )?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    control.job_step(
        job,
        EnableStep::InitialReplication,
        StepState::Succeeded,
        Some("100%".into()),
    )?;
    control.job_step(job, EnableStep::Protect, StepState::Succeeded, None)?;
    // The initial copy is applied: protected, and the item is free for the next operation.
    control.succeed_moving(job, ItemState::Protected, |_| {})?;
    tracing::info!(item = %job.target, "protected");
    Ok(())
}
