//! Jobs: every long operation is a job with named steps, stored so that after a restart it is
//! resumed (its steps are idempotent) rather than left half done.

use std::sync::Arc;
use std::time::Duration;

use ferry_storage::Key;
use ferry_types::Timestamp;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::model::{ItemState, Job, JobKind, JobState, JobStep, Replication, Severity, StepState};

impl Control {
    pub(crate) fn new_job(&self, kind: JobKind, target: &str, steps: &[&str]) -> Result<Job> {
        self.new_job_with(kind, target, steps, serde_json::Value::Null)
    }

    /// A job with the parameters it needs to run again after a restart.
    pub(crate) fn new_job_with(
        &self,
        kind: JobKind,
        target: &str,
        steps: &[&str],
        params: serde_json::Value,
    ) -> Result<Job> {
        let now = Timestamp::now();
        let mut job = Job {
            id: 0,
            kind,
            target: target.into(),
            state: JobState::Running,
            steps: steps
                .iter()
                .map(|s| JobStep {
                    name: s.to_string(),
                    state: StepState::Pending,
                    detail: None,
                    percent: None,
                })
                .collect(),
            error: None,
            percent: Some(0.0),
            bytes_done: None,
            bytes_total: None,
            params,
            created: now,
            updated: now,
        };
        self.db.new_job(&mut job)?;
        Ok(job)
    }

    pub(crate) fn job_step(
        &self,
        job: &mut Job,
        step: usize,
        st: StepState,
        detail: Option<String>,
    ) -> Result<()> {
        if let Some(s) = job.steps.get_mut(step) {
            s.state = st;
            if detail.is_some() {
                s.detail = detail;
            }
            if st == StepState::Succeeded && s.percent.is_some() {
                s.percent = Some(100.0);
            }
        }
        let done: f64 = job
            .steps
            .iter()
            .map(|s| match s.state {
                StepState::Succeeded => 1.0,
                StepState::Running => s.percent.unwrap_or(0.0) / 100.0,
                StepState::Pending | StepState::Failed => 0.0,
            })
            .sum();
        job.percent = Some((done / job.steps.len().max(1) as f64 * 1000.0).round() / 10.0);
        job.updated = Timestamp::now();
        self.db.put_job(job)
    }

    /// A running step that moves data has moved `done` of `total` bytes: its percent, the
    /// job's percent and bytes, and `detail` for people.
    pub(crate) fn job_progress(
        &self,
        job: &mut Job,
        step: usize,
        (done, total): (u64, u64),
        detail: String,
    ) -> Result<()> {
        let pct = if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64 * 100.0).min(100.0)
        };
        if let Some(s) = job.steps.get_mut(step) {
            s.percent = Some((pct * 10.0).round() / 10.0);
        }
        job.bytes_done = Some(done);
        job.bytes_total = Some(total);
        self.job_step(job, step, StepState::Running, Some(detail))
    }

    pub(crate) fn job_fail(&self, job: &mut Job, step: usize, error: &str) -> Result<()> {
        job.state = JobState::Failed;
        job.error = Some(error.to_string());
        let name = job
            .steps
            .get(step)
            .map_or("", |s| s.name.as_str())
            .to_string();
        self.job_step(job, step, StepState::Failed, None)?;
        self.event(
            Severity::Warning,
            "job-failed",
            &job.target,
            format!(
                "job {} ({}) failed at \"{name}\": {error}",
                job.id, job.kind
            ),
        );
        Ok(())
    }

    pub(crate) fn job_succeed(&self, job: &mut Job) -> Result<()> {
        job.state = JobState::Succeeded;
        job.percent = Some(100.0);
        job.updated = Timestamp::now();
        self.db.put_job(job)?;
        self.event(
            Severity::Info,
            "job-succeeded",
            &job.target,
            format!("job {} ({}) succeeded", job.id, job.kind),
        );
        Ok(())
    }

    pub fn job(&self, id: u64) -> Result<Job> {
        self.db.job(id)?.ok_or_else(|| {
            ControlError::not_found(format!("job {id} does not exist; see `ferry job list`"))
        })
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.db.jobs()
    }
}

/// Run a job in the background.
pub(crate) fn spawn(control: Arc<Control>, job: Job) {
    tokio::spawn(async move {
        let mut job = job;
        let result = match job.kind {
            JobKind::EnableReplication => run_enable(&control, &mut job).await,
            JobKind::DisableReplication => run_disable(&control, &mut job).await,
            JobKind::Failover => crate::failover::run_failover(&control, &mut job).await,
            JobKind::TestFailover => crate::failover::run_test_failover(&control, &mut job).await,
            JobKind::TestFailoverCleanup => {
                crate::failover::run_test_cleanup(&control, &mut job).await
            }
            JobKind::FailoverCommit => crate::failover::run_commit(&control, &mut job).await,
            JobKind::Reprotect => crate::failover::run_reprotect(&control, &mut job).await,
            JobKind::RepairReplication => {
                crate::replication::repair::run_repair(&control, &mut job).await
            }
        };
        if let Err(e) = result {
            tracing::error!(job = job.id, error = %e, "job failed");
            let step = job
                .steps
                .iter()
                .position(|s| s.state != StepState::Succeeded)
                .unwrap_or(0);
            let _ = control.job_fail(&mut job, step, &e.to_string());
            if let Err(e) = crate::failover::roll_back(&control, &job) {
                tracing::error!(job = job.id, error = %e, "roll back the item's state after a failed job");
            }
        }
    });
}

/// Resume every job a restart interrupted.
pub(crate) async fn resume(control: &Arc<Control>) -> Result<()> {
    for job in control
        .db
        .jobs()?
        .into_iter()
        .filter(|j| j.state == JobState::Running)
    {
        tracing::info!(job = job.id, kind = %job.kind, "resuming job after restart");
        spawn(control.clone(), job);
    }
    Ok(())
}

fn split(target: &str) -> (&str, &str) {
    target.split_once('/').unwrap_or((target, ""))
}

async fn run_enable(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = split(&job.target);
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep = control.replication(&group, &vm)?;
    control.job_step(job, 2, StepState::Running, None)?;
    control.ensure_running(&rep).await?;
    control.job_step(job, 2, StepState::Succeeded, None)?;
    control.job_step(job, 3, StepState::Running, None)?;
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
            control.job_progress(job, 3, (init.scanned_bytes, init.total_bytes), detail)?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    control.job_step(job, 3, StepState::Succeeded, Some("100%".into()))?;
    control.job_step(job, 4, StepState::Succeeded, None)?;
    control.job_succeed(job)
}

async fn run_disable(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = split(&job.target);
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep: Replication = control.replication(&group, &vm)?;
    control.job_step(job, 0, StepState::Running, None)?;
    control.stop_item(&rep).await;
    let vm_key = crate::resources::key(&group, &vm);
    control
        .agent(&rep.source_region)?
        .forget_replication(&rep.source_key())
        .await?;
    control.job_step(job, 0, StepState::Succeeded, None)?;
    let plan = control.deletion_plan(&rep).await?;
    let count: usize = plan.iter().map(|(_, keys)| keys.len()).sum();
    control.job_step(
        job,
        1,
        StepState::Succeeded,
        Some(format!("{count} objects to delete")),
    )?;
    control.job_step(job, 2, StepState::Running, None)?;
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
            control.db.delete(
                Kind::Network,
                &crate::resources::key(&rep.target.group, &t.network),
            )?;
        }
    }
    control.job_step(job, 2, StepState::Succeeded, None)?;
    control.db.delete(Kind::Replication, &vm_key)?;
    control.db.forget_rpo_history(&vm_key)?;
    control.rates().forget(&vm_key);
    control.job_step(job, 3, StepState::Succeeded, None)?;
    control.job_succeed(job)
}

/// What disabling an item would do, shown before anything is deleted (`--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedDeletion {
    pub store: String,
    pub objects: usize,
}

impl Control {
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
