//! Jobs as stored and as the API returns them: what kind of operation, its state, and its
//! named steps.

use ferry_types::Timestamp;
use serde::{Deserialize, Serialize};

/// The operation a job carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    EnableReplication,
    DisableReplication,
    Failover,
    TestFailover,
    TestFailoverCleanup,
    FailoverCommit,
    Reprotect,
    RepairReplication,
    VerifyReplication,
}

wire_names!(JobKind, "job kind", {
    EnableReplication => "enable-replication",
    DisableReplication => "disable-replication",
    Failover => "failover",
    TestFailover => "test-failover",
    TestFailoverCleanup => "test-failover-cleanup",
    FailoverCommit => "failover-commit",
    Reprotect => "reprotect",
    RepairReplication => "repair-replication",
    VerifyReplication => "verify-replication",
});

/// Whether a job runs (or is resumed after a restart) or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

wire_names!(JobState, "job state", {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// Where a job's step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

wire_names!(StepState, "step state", {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// How a test failover ended, recorded by its cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TestOutcome {
    Succeeded,
    Failed,
    /// Cleaned up before its job ended (or its job is gone).
    Cancelled,
}

wire_names!(TestOutcome, "test outcome", {
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl TestOutcome {
    /// The outcome of a test failover whose job is in `state` (none: the job is gone).
    pub fn of(state: Option<JobState>) -> TestOutcome {
        match state {
            Some(JobState::Succeeded) => TestOutcome::Succeeded,
            Some(JobState::Failed) => TestOutcome::Failed,
            Some(JobState::Running) | None => TestOutcome::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobStep {
    /// The step's title, which is also how the job's code finds it.
    pub name: String,
    pub state: StepState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a step that moves data: how far it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    pub target: String,
    pub state: JobState,
    pub steps: Vec<JobStep>,
    pub error: Option<String>,
    /// Done, counting a running step that moves data by its own progress.
    pub percent: Option<f64>,
    /// Bytes the running (or last) data-moving step has moved, of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// What the job was asked to do (for resuming it after a restart).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    pub created: Timestamp,
    pub updated: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: Serialize>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn wire_names_are_the_old_strings() {
        assert_eq!(
            names(JobKind::ALL),
            [
                "enable-replication",
                "disable-replication",
                "failover",
                "test-failover",
                "test-failover-cleanup",
                "failover-commit",
                "reprotect",
                "repair-replication",
                "verify-replication",
            ]
        );
        assert_eq!(names(JobState::ALL), ["running", "succeeded", "failed"]);
        assert_eq!(
            names(StepState::ALL),
            ["pending", "running", "succeeded", "failed"]
        );
        assert_eq!(
            names(TestOutcome::ALL),
            ["succeeded", "failed", "cancelled"]
        );
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>(), Ok(*k));
            let back: JobKind = serde_json::from_value(k.as_str().into()).unwrap();
            assert_eq!(back, *k);
        }
        for s in StepState::ALL {
            assert_eq!(names(&[*s])[0], s.to_string());
        }
        for s in JobState::ALL {
            assert_eq!(names(&[*s])[0], s.to_string());
        }
        for s in TestOutcome::ALL {
            assert_eq!(names(&[*s])[0], s.to_string());
        }
    }

    #[test]
    fn a_test_outcome_follows_its_job() {
        assert_eq!(
            TestOutcome::of(Some(JobState::Succeeded)),
            TestOutcome::Succeeded
        );
        assert_eq!(TestOutcome::of(Some(JobState::Failed)), TestOutcome::Failed);
        assert_eq!(
            TestOutcome::of(Some(JobState::Running)),
            TestOutcome::Cancelled
        );
        assert_eq!(TestOutcome::of(None), TestOutcome::Cancelled);
    }
}
