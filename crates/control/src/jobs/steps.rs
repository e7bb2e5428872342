//! The steps of a kind of job: an enum declared with [`job_steps!`], whose titles are what a
//! job stores and how its code finds a step again after a restart. And the job's stored
//! parameters, read strictly.

use ferry_types::Timestamp;
use serde::de::DeserializeOwned;

use crate::error::{ControlError, Result};
use crate::model::{Job, JobKind, JobState, JobStep, StepState};

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
    pub(crate) fn start<S: JobSteps>(target: &str, params: serde_json::Value) -> Job {
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

    /// Move the step at `i` to `state` (with `detail` for people, when there is one) and
    /// count the job's percent again. Nothing is stored.
    pub(crate) fn set_step(&mut self, i: usize, state: StepState, detail: Option<String>) {
        if let Some(s) = self.steps.get_mut(i) {
            s.state = state;
            if detail.is_some() {
                s.detail = detail;
            }
            if state == StepState::Succeeded && s.percent.is_some() {
                s.percent = Some(100.0);
            }
        }
        let done: f64 = self
            .steps
            .iter()
            .map(|s| match s.state {
                StepState::Succeeded => 1.0,
                StepState::Running => s.percent.unwrap_or(0.0) / 100.0,
                StepState::Pending | StepState::Failed => 0.0,
            })
            .sum();
        self.percent = Some((done / self.steps.len().max(1) as f64 * 1000.0).round() / 10.0);
        self.updated = Timestamp::now();
    }

    /// The job ended well (nothing is stored).
    pub(crate) fn succeeded(&mut self) {
        self.state = JobState::Succeeded;
        self.percent = Some(100.0);
        self.updated = Timestamp::now();
    }

    /// [`Job::set_step`] by the step's name.
    pub(crate) fn mark<S: JobSteps>(
        &mut self,
        step: S,
        state: StepState,
        detail: Option<String>,
    ) -> Result<()> {
        let i = self.step_index(step)?;
        self.set_step(i, state, detail);
        Ok(())
    }

    /// The step a failure is reported at: the first that has not succeeded.
    pub(super) fn failed_step(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.state != StepState::Succeeded)
            .unwrap_or(0)
    }
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
        use crate::replication::{
            disable::DisableStep, enable::EnableStep, repair::RepairStep, verify::VerifyStep,
        };
        let kinds = [
            (EnableStep::KIND, titles::<EnableStep>()),
            (DisableStep::KIND, titles::<DisableStep>()),
            (FailoverStep::KIND, titles::<FailoverStep>()),
            (TestFailoverStep::KIND, titles::<TestFailoverStep>()),
            (TestCleanupStep::KIND, titles::<TestCleanupStep>()),
            (CommitStep::KIND, titles::<CommitStep>()),
            (ReprotectStep::KIND, titles::<ReprotectStep>()),
            (RepairStep::KIND, titles::<RepairStep>()),
            (VerifyStep::KIND, titles::<VerifyStep>()),
        ];
        let released: [(JobKind, &[&str]); 9] = [
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
            (
                JobKind::VerifyReplication,
                &["Verify every page and chunk behind the points"],
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
