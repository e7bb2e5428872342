//! Enabling replication: the target resources are derived and created, the item is recorded,
//! and a job starts the stream and follows the initial copy until the item is `protected`.

use std::sync::Arc;
use std::time::Duration;

use ferry_types::{Generation, StreamId, Timestamp};

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::jobs::job_steps;
use crate::model::{ItemState, Job, Replication, StepState};
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
        if let Some(r) = self.db.get::<Replication>(Kind::Replication, &vm_key)? {
            return Err(ControlError::conflict(format!(
                "VM {vm_key} is already replicated (state {})",
                r.state
            )));
        }
        self.agent(&req.target_region)?;
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
        let mut job = self.new_job::<EnableStep>(&vm_key)?;
        self.job_step(
            &mut job,
            EnableStep::Prerequisites,
            StepState::Succeeded,
            None,
        )?;
        let target = match self.create_targets(&source, &req) {
            Ok(t) => t,
            Err(e) => {
                self.job_fail(&mut job, &e.to_string())?;
                return Err(e);
            }
        };
        self.job_step(
            &mut job,
            EnableStep::CreateTargets,
            StepState::Succeeded,
            Some(format!(
                "{}/{} in {}",
                target.group, target.network, target.region
            )),
        )?;
        let rep = Replication {
            group: group.to_string(),
            vm: vm.to_string(),
            source_region: source.region.clone(),
            stream: StreamId::random(),
            generation: Generation(1),
            state: ItemState::Enabling,
            policy: policy.name,
            target,
            job: Some(job.id),
            created: Timestamp::now(),
            source_vm: None,
            target_vm: None,
            failover: None,
            test_failover: None,
            last_test_failover: None,
            resync_reason: None,
            resync_from: None,
        };
        self.db
            .insert(Kind::Replication, &vm_key, &rep, "replication of VM")?;
        crate::jobs::spawn(self.clone(), job.clone());
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
        let view = control.show_replication(&group, &vm)?;
        if view.state == ItemState::Protected {
            break;
        }
        if view.state == ItemState::Disabling {
            return Err(ControlError::conflict(
                "replication was disabled before it was protected",
            ));
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
    control.job_succeed(job)
}
