//! Jobs: every long operation is a job with named steps, stored so that after a restart it is
//! resumed (its steps are idempotent) rather than left half done.
//!
//! Each kind of job declares its steps as an enum with [`job_steps!`]; the job's code marks a
//! step by its variant, which finds the stored step by its title.

mod roll_back;
mod steps;

use std::sync::Arc;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{Job, JobKind, JobState, Severity, StepState};

pub(crate) use steps::{JobSteps, job_steps};

impl Control {
    /// A job stored as its admission stores one, without an item to hold (tests).
    #[cfg(test)]
    pub(crate) fn new_job_with<S: JobSteps>(
        &self,
        target: &str,
        params: serde_json::Value,
    ) -> Result<Job> {
        let mut job = Job::start::<S>(target, params);
        self.db.new_job(&mut job)?;
        Ok(job)
    }

    /// Move a step to `state`, with `detail` for people when there is one.
    pub(crate) fn job_step<S: JobSteps>(
        &self,
        job: &mut Job,
        step: S,
        state: StepState,
        detail: Option<String>,
    ) -> Result<()> {
        let i = job.step_index(step)?;
        self.set_step(job, i, state, detail)
    }

    fn set_step(
        &self,
        job: &mut Job,
        i: usize,
        state: StepState,
        detail: Option<String>,
    ) -> Result<()> {
        job.set_step(i, state, detail);
        self.db.put_job(job)
    }

    /// A running step that moves data has moved `done` of `total` bytes: its percent, the
    /// job's percent and bytes, and `detail` for people.
    pub(crate) fn job_progress<S: JobSteps>(
        &self,
        job: &mut Job,
        step: S,
        (done, total): (u64, u64),
        detail: String,
    ) -> Result<()> {
        let i = job.step_index(step)?;
        let pct = if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64 * 100.0).min(100.0)
        };
        job.steps[i].percent = Some((pct * 10.0).round() / 10.0);
        job.bytes_done = Some(done);
        job.bytes_total = Some(total);
        self.set_step(job, i, StepState::Running, Some(detail))
    }

    /// The job failed at its first step that has not succeeded.
    pub(crate) fn job_fail(&self, job: &mut Job, error: &str) -> Result<()> {
        let step = job.failed_step();
        job.state = JobState::Failed;
        job.error = Some(error.to_string());
        let name = job
            .steps
            .get(step)
            .map_or("", |s| s.name.as_str())
            .to_string();
        self.set_step(job, step, StepState::Failed, None)?;
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
        job.succeeded();
        self.db.put_job(job)?;
        self.job_succeeded_event(job);
        Ok(())
    }

    pub(crate) fn job_succeeded_event(&self, job: &Job) {
        self.event(
            Severity::Info,
            "job-succeeded",
            &job.target,
            format!("job {} ({}) succeeded", job.id, job.kind),
        );
    }

    pub fn job(&self, id: u64) -> Result<Job> {
        self.db.job(id)?.ok_or_else(|| {
            ControlError::not_found(format!("job {id} does not exist; see `ferry job list`"))
        })
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.db.jobs()
    }

    /// A page of jobs, oldest first: those after an id, of a state, at most so many.
    pub fn jobs_page(&self, q: &crate::db::JobQuery) -> Result<Vec<Job>> {
        self.db.jobs_page(q)
    }
}

/// Run a job in the background. A job whose code panics fails like any other, and lets go of
/// its item, rather than stay `running` for ever.
pub(crate) fn spawn(control: Arc<Control>, job: Job) {
    tokio::spawn(async move {
        let id = job.id;
        let c = control.clone();
        let ran = tokio::spawn(async move { run(&c, job).await }).await;
        if let Err(e) = ran
            && let Ok(mut job) = control.job(id)
            && job.state == JobState::Running
        {
            let error = format!("the job stopped unexpectedly ({e}); start the operation again");
            tracing::error!(job = id, %error, "job failed");
            let _ = control.job_fail(&mut job, &error);
            let _ = roll_back::roll_back(&control, &job, &ControlError::Internal(error));
        }
    });
}

/// Run a job to its end: a job that fails is failed at its first step that has not succeeded,
/// and the item goes back to where it was when that is still possible.
pub(crate) async fn run(control: &Arc<Control>, mut job: Job) -> Job {
    let result = match job.kind {
        JobKind::EnableReplication => {
            crate::replication::enable::run_enable(control, &mut job).await
        }
        JobKind::DisableReplication => {
            crate::replication::disable::run_disable(control, &mut job).await
        }
        JobKind::Failover => crate::failover::run_failover(control, &mut job).await,
        JobKind::TestFailover => crate::failover::run_test_failover(control, &mut job).await,
        JobKind::TestFailoverCleanup => crate::failover::run_test_cleanup(control, &mut job).await,
        JobKind::FailoverCommit => crate::failover::run_commit(control, &mut job).await,
        JobKind::Reprotect => crate::failover::run_reprotect(control, &mut job).await,
        JobKind::RepairReplication => {
            crate::replication::repair::run_repair(control, &mut job).await
        }
        JobKind::VerifyReplication => crate::replication::verify::run_verify(control, &mut job)
            .await
            .map(|_| ()),
    };
    if let Err(e) = result {
        tracing::error!(job = job.id, error = %e, "job failed");
        let _ = control.job_fail(&mut job, &e.to_string());
        if let Err(e) = roll_back::roll_back(control, &job, &e) {
            tracing::error!(job = job.id, error = %e, "roll back the item's state after a failed job");
        }
    }
    job
}

/// Resume every job a restart interrupted.
pub(crate) async fn resume(control: &Arc<Control>) -> Result<()> {
    let running = crate::db::JobQuery {
        state: Some(JobState::Running),
        ..Default::default()
    };
    for job in control.db.jobs_page(&running)? {
        tracing::info!(job = job.id, kind = %job.kind, "resuming job after restart");
        spawn(control.clone(), job);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_cannot_be_read_does_not_stop_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&Default::default(), dir.path()).unwrap();
        db.put_raw_job("{}").unwrap();
        // A running job, resumed at the start; its item is gone, so it fails.
        let mut job = Job::start::<crate::failover::TestFailoverStep>(
            "rg1/vm1",
            serde_json::json!({ "request": {} }),
        );
        db.new_job(&mut job).unwrap();
        drop(db);

        let control = Control::start_without_regions(dir.path()).await.unwrap();

        let jobs = control.jobs().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [job.id]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let resumed = loop {
            let j = control.job(job.id).unwrap();
            if j.state != JobState::Running || std::time::Instant::now() > deadline {
                break j;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(resumed.state, JobState::Failed);
        assert!(
            resumed.error.as_deref().unwrap().contains("does not exist"),
            "{resumed:?}"
        );
        control.shutdown().await;
    }
}
