//! Jobs: every long operation is a job with named steps, stored so that after a restart it is
//! resumed (its steps are idempotent) rather than left half done.
//!
//! Each kind of job declares its steps as an enum with [`job_steps!`]; the job's code marks a
//! step by its variant, which finds the stored step by its title.

use std::sync::Arc;

use ferry_types::Timestamp;
use serde::de::DeserializeOwned;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{Job, JobKind, JobState, JobStep, Severity, StepState};

/// The steps of one kind of job, in order. A stored job finds its steps again by their
/// titles, so a released title does not change.
pub(crate) trait JobSteps: Copy + 'static {
    /// The kind of job these are the steps of.
    const KIND: JobKind;
    /// Every step, in the order the job runs them.
    const ALL: &'static [Self];
    /// The title people see, e.g. "Select recovery point".
    fn title(self) -> &'static str;
}

/// Declares the steps of a kind of job: an enum of them, each with its title, and its
/// [`JobSteps`].
macro_rules! job_steps {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident for $kind:ident {
            $($variant:ident => $title:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($variant,)+
        }

        impl $crate::jobs::JobSteps for $name {
            const KIND: $crate::model::JobKind = $crate::model::JobKind::$kind;
            const ALL: &'static [Self] = &[$($name::$variant,)+];

            fn title(self) -> &'static str {
                match self {
                    $($name::$variant => $title,)+
                }
            }
        }
    };
}
pub(crate) use job_steps;

impl Job {
    /// A new running job of the kind `S` is the steps of, every step pending.
    fn start<S: JobSteps>(target: &str, params: serde_json::Value) -> Job {
        let now = Timestamp::now();
        Job {
            id: 0,
            kind: S::KIND,
            target: target.into(),
            state: JobState::Running,
            steps: S::ALL
                .iter()
                .map(|s| JobStep {
                    name: s.title().to_string(),
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
        }
    }

    /// Where `step` is among the job's steps, found by its title. A job of another kind, or
    /// stored without that step, is refused.
    pub(crate) fn step_index<S: JobSteps>(&self, step: S) -> Result<usize> {
        if self.kind != S::KIND {
            return Err(ControlError::Internal(format!(
                "job {} is a {} job, not a {} job",
                self.id,
                self.kind,
                S::KIND
            )));
        }
        self.steps
            .iter()
            .position(|s| s.name == step.title())
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "job {} ({}) has no step \"{}\"",
                    self.id,
                    self.kind,
                    step.title()
                ))
            })
    }

    /// Whether `step` has succeeded (a resumed job skips what it did before).
    pub(crate) fn step_done<S: JobSteps>(&self, step: S) -> bool {
        self.step_index(step)
            .is_ok_and(|i| self.steps[i].state == StepState::Succeeded)
    }

    /// The stored parameter `name` (absent, it reads as null: `None` for an `Option`). One
    /// that no longer reads, corrupt or stored by another version, is an error rather than a
    /// default: a failover must not go to `latest` when it was asked for another point.
    pub(crate) fn param<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value = self.params.get(name).cloned().unwrap_or_default();
        serde_json::from_value(value).map_err(|e| {
            ControlError::Internal(format!(
                "the job's stored {name} cannot be read: {e}; start the operation again"
            ))
        })
    }

    /// The step a failure is reported at: the first that has not succeeded.
    fn failed_step(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.state != StepState::Succeeded)
            .unwrap_or(0)
    }
}

impl Control {
    /// A job of the kind `S` is the steps of, stored before it runs.
    pub(crate) fn new_job<S: JobSteps>(&self, target: &str) -> Result<Job> {
        self.new_job_with::<S>(target, serde_json::Value::Null)
    }

    /// A job with the parameters it needs to run again after a restart.
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
        if let Some(s) = job.steps.get_mut(i) {
            s.state = state;
            if detail.is_some() {
                s.detail = detail;
            }
            if state == StepState::Succeeded && s.percent.is_some() {
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
        run(&control, job).await;
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
    };
    if let Err(e) = result {
        tracing::error!(job = job.id, error = %e, "job failed");
        let _ = control.job_fail(&mut job, &e.to_string());
        if let Err(e) = crate::failover::roll_back(control, &job) {
            tracing::error!(job = job.id, error = %e, "roll back the item's state after a failed job");
        }
    }
    job
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

#[cfg(test)]
mod tests {
    use super::*;

    job_steps! {
        enum Steps for Failover {
            First => "First step",
            Second => "Second step",
        }
    }

    job_steps! {
        enum OtherSteps for Reprotect {
            First => "First step",
        }
    }

    fn titles<S: JobSteps>() -> Vec<&'static str> {
        S::ALL.iter().map(|s| s.title()).collect()
    }

    /// Stored jobs find their steps by these titles: they stay as released, and are unique.
    #[test]
    fn every_kind_has_its_released_step_titles() {
        use crate::failover::*;
        use crate::replication::{disable::DisableStep, enable::EnableStep, repair::RepairStep};
        let kinds = [
            (EnableStep::KIND, titles::<EnableStep>()),
            (DisableStep::KIND, titles::<DisableStep>()),
            (FailoverStep::KIND, titles::<FailoverStep>()),
            (TestFailoverStep::KIND, titles::<TestFailoverStep>()),
            (TestCleanupStep::KIND, titles::<TestCleanupStep>()),
            (CommitStep::KIND, titles::<CommitStep>()),
            (ReprotectStep::KIND, titles::<ReprotectStep>()),
            (RepairStep::KIND, titles::<RepairStep>()),
        ];
        let released: [(JobKind, &[&str]); 8] = [
            (
                JobKind::EnableReplication,
                &[
                    "Prerequisites check",
                    "Create target resources",
                    "Start replication",
                    "Initial replication",
                    "Protect",
                ],
            ),
            (
                JobKind::DisableReplication,
                &[
                    "Stop replication",
                    "Plan deletion",
                    "Delete cache and replica data",
                    "Remove item",
                ],
            ),
            (
                JobKind::Failover,
                &[
                    "Prerequisites check",
                    "Shut down source VM",
                    "Select recovery point",
                    "Stop replication",
                    "Create VM and disks from recovery point",
                    "Start VM",
                ],
            ),
            (
                JobKind::TestFailover,
                &[
                    "Prerequisites check",
                    "Create test network",
                    "Select recovery point",
                    "Create test VM and disks from recovery point",
                    "Start test VM",
                ],
            ),
            (
                JobKind::TestFailoverCleanup,
                &[
                    "Stop test VM",
                    "Delete test VM and its disks",
                    "Delete test network",
                    "Record outcome",
                ],
            ),
            (
                JobKind::FailoverCommit,
                &[
                    "Prerequisites check",
                    "Discard other recovery points",
                    "Commit",
                ],
            ),
            (
                JobKind::Reprotect,
                &[
                    "Prerequisites check",
                    "Stop the original VM",
                    "Prepare the reverse target",
                    "Delete the old replica",
                    "Seed the replica from the original disks",
                    "Start replication",
                    "Delta replication (send blocks that differ)",
                    "Protect",
                ],
            ),
            (
                JobKind::RepairReplication,
                &[
                    "Prerequisites check",
                    "Stop replication",
                    "Fence the old stream (new generation)",
                    "Compare every block, send the ones that differ",
                    "Protect",
                ],
            ),
        ];
        for ((kind, titles), (want_kind, want)) in kinds.iter().zip(released) {
            assert_eq!(*kind, want_kind);
            assert_eq!(titles.as_slice(), want, "{kind}");
            let mut unique = titles.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), titles.len(), "{kind}");
        }
        let mut all: Vec<JobKind> = kinds.iter().map(|(k, _)| *k).collect();
        all.dedup();
        assert_eq!(all, JobKind::ALL);
    }

    #[test]
    fn a_step_is_found_by_its_title() {
        let mut job = Job::start::<Steps>("rg1/vm1", serde_json::Value::Null);
        assert_eq!(job.kind, JobKind::Failover);
        let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["First step", "Second step"]);
        assert_eq!(job.step_index(Steps::Second).unwrap(), 1);
        assert!(!job.step_done(Steps::Second));
        job.steps[1].state = StepState::Succeeded;
        assert!(job.step_done(Steps::Second));
        // Not the order of the stored steps: their titles.
        job.steps.reverse();
        assert_eq!(job.step_index(Steps::Second).unwrap(), 0);
        assert_eq!(job.failed_step(), 1);
    }

    #[test]
    fn a_stored_parameter_reads_or_fails_with_its_name() {
        let params = serde_json::json!({ "generation": 7, "point_id": 12 });
        let job = Job::start::<Steps>("rg1/vm1", params);
        assert_eq!(job.param::<Option<u64>>("generation").unwrap(), Some(7));
        assert_eq!(job.param::<Option<String>>("absent").unwrap(), None);
        let e = job.param::<Option<String>>("point_id").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the job's stored point_id cannot be read: invalid type: integer `12`, expected a \
             string; start the operation again"
        );
        assert!(job.param::<u64>("absent").is_err());
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_read_does_not_stop_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("state.db")).unwrap();
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
            resumed
                .error
                .as_deref()
                .unwrap()
                .contains("is not replicated"),
            "{resumed:?}"
        );
        control.shutdown().await;
    }

    #[test]
    fn a_step_of_another_kind_or_not_stored_is_refused() {
        let mut job = Job::start::<Steps>("rg1/vm1", serde_json::Value::Null);
        let e = job.step_index(OtherSteps::First).unwrap_err().to_string();
        assert!(e.contains("is a failover job, not a reprotect job"), "{e}");
        job.steps.pop();
        let e = job.step_index(Steps::Second).unwrap_err().to_string();
        assert!(e.contains("has no step \"Second step\""), "{e}");
        assert!(!job.step_done(Steps::Second));
    }
}
