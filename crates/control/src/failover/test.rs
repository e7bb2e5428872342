//! Test failover: boot a copy of the item in an isolated network while replication goes on,
//! and clean it up afterwards.

use std::sync::Arc;

use ferry_replica::PointInfo;
use ferry_types::Timestamp;

use super::FailoverRequest;
use super::materialise::Placement;
use crate::control::Control;
use crate::db::Kind;
use crate::error::Result;
use crate::jobs::{JobSteps, job_steps};
use crate::model::{Job, Network, Replication, StepState, TestFailover, TestOutcome, Vm, VmState};
use crate::replication::PointView;
use crate::resources::key;

job_steps! {
    /// The test failover job's steps.
    pub(crate) enum TestFailoverStep for TestFailover {
        Prerequisites => "Prerequisites check",
        CreateNetwork => "Create test network",
        SelectPoint => "Select recovery point",
        CreateVm => "Create test VM and disks from recovery point",
        StartVm => "Start test VM",
    }
}

job_steps! {
    /// The steps of a test failover's cleanup.
    pub(crate) enum TestCleanupStep for TestFailoverCleanup {
        StopVm => "Stop test VM",
        DeleteVm => "Delete test VM and its disks",
        DeleteNetwork => "Delete test network",
        RecordOutcome => "Record outcome",
    }
}

/// The test failover's record before its job has run: names chosen up front so that a
/// cleanup after a crash knows what to look for.
pub(crate) fn placeholder(rep: &Replication, req: &FailoverRequest, job: u64) -> TestFailover {
    let name = rep.source_key();
    let name = name.split_once('/').map_or(name.as_str(), |(_, v)| v);
    TestFailover {
        vm: key(&rep.target.group, &format!("{name}-test")),
        network: req
            .network
            .clone()
            .unwrap_or_else(|| format!("{}-test", rep.target.network)),
        created_network: req.network.is_none(),
        point: None,
        job,
        started: Timestamp::now(),
        cleaned_up: None,
        outcome: None,
    }
}

pub(crate) async fn run_test_failover(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = job.target.split_once('/').unwrap_or((&job.target, ""));
    let (group, vm) = (group.to_string(), vm.to_string());
    let req: FailoverRequest = job.param("request")?;
    let rep = control.replication(&group, &vm)?;
    let Some(test) = rep.test_failover.clone() else {
        return Err(crate::error::ControlError::conflict(
            "the test failover was cleaned up before it ran",
        ));
    };
    control.job_step(
        job,
        TestFailoverStep::Prerequisites,
        StepState::Succeeded,
        None,
    )?;

    control.job_step(
        job,
        TestFailoverStep::CreateNetwork,
        StepState::Running,
        None,
    )?;
    if test.created_network {
        control.ensure_test_network(&rep, &test.network)?;
    }
    control.job_step(
        job,
        TestFailoverStep::CreateNetwork,
        StepState::Succeeded,
        Some(format!("{}/{}", rep.target.group, test.network)),
    )?;

    control.job_step(
        job,
        TestFailoverStep::SelectPoint,
        StepState::Running,
        Some(req.point().to_string()),
    )?;
    let point = control.select_point(&rep, req.point()).await?;
    let info = PointInfo::from_record(&point);
    control.job_step(
        job,
        TestFailoverStep::SelectPoint,
        StepState::Succeeded,
        Some(format!("{} ({}, {})", info.id, info.kind, info.time)),
    )?;
    control.update_item_for(job, |r| {
        if let Some(t) = r.test_failover.as_mut() {
            t.point = Some(PointView::from(&info));
        }
    })?;

    control.job_step(job, TestFailoverStep::CreateVm, StepState::Running, None)?;
    let (tg, tv) = test.vm.split_once('/').unwrap_or((&test.vm, ""));
    let net = control.network(tg, &test.network)?;
    let subnet = net
        .subnets
        .iter()
        .find(|s| s.name == rep.target.subnet)
        .or(net.subnets.first())
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let place = Placement {
        group: tg.to_string(),
        name: tv.to_string(),
        network: test.network.clone(),
        subnet,
        availability_set: None,
        created_by: "test-failover",
    };
    let mut target = control.materialise(&rep, &point, &place).await?;
    control.job_step(
        job,
        TestFailoverStep::CreateVm,
        StepState::Succeeded,
        Some(test.vm.clone()),
    )?;

    control.job_step(job, TestFailoverStep::StartVm, StepState::Running, None)?;
    control.boot(&mut target).await?;
    control.job_step(
        job,
        TestFailoverStep::StartVm,
        StepState::Succeeded,
        Some(format!("{} is running", test.vm)),
    )?;
    control.job_succeed(job)
}

pub(crate) async fn run_test_cleanup(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = job.target.split_once('/').unwrap_or((&job.target, ""));
    let (group, vm) = (group.to_string(), vm.to_string());
    let rep = control.replication(&group, &vm)?;
    let Some(test) = rep.test_failover.clone() else {
        for step in TestCleanupStep::ALL {
            control.job_step(
                job,
                *step,
                StepState::Succeeded,
                Some("nothing to do".into()),
            )?;
        }
        return control.job_succeed(job);
    };
    let vm_record: Option<Vm> = control.db.get(Kind::Vm, &test.vm)?;

    control.job_step(job, TestCleanupStep::StopVm, StepState::Running, None)?;
    if vm_record.is_some() {
        control.set_power(&test.vm, VmState::Stopped).await?;
    }
    control.job_step(job, TestCleanupStep::StopVm, StepState::Succeeded, None)?;

    control.job_step(job, TestCleanupStep::DeleteVm, StepState::Running, None)?;
    if let Some(v) = &vm_record {
        control.remove_vm(v).await?;
    }
    control.job_step(
        job,
        TestCleanupStep::DeleteVm,
        StepState::Succeeded,
        Some(test.vm.clone()),
    )?;

    control.job_step(
        job,
        TestCleanupStep::DeleteNetwork,
        StepState::Running,
        None,
    )?;
    let detail = if test.created_network {
        control
            .db
            .delete(Kind::Network, &key(&rep.target.group, &test.network))?;
        format!("deleted {}/{}", rep.target.group, test.network)
    } else {
        format!(
            "kept {}/{} (not created by the test)",
            rep.target.group, test.network
        )
    };
    control.job_step(
        job,
        TestCleanupStep::DeleteNetwork,
        StepState::Succeeded,
        Some(detail),
    )?;

    let test_job = control.job(test.job).ok();
    let outcome = TestOutcome::of(test_job.as_ref().map(|j| j.state));
    control.update_item_for(job, |r| {
        let mut done = test.clone();
        done.cleaned_up = Some(Timestamp::now());
        done.outcome = Some(outcome);
        r.last_test_failover = Some(done);
        r.test_failover = None;
    })?;
    control.job_step(
        job,
        TestCleanupStep::RecordOutcome,
        StepState::Succeeded,
        Some(format!("test failover {outcome}")),
    )?;
    control.job_succeed(job)
}

impl Control {
    /// An isolated copy of the target network (same address space and subnets, no mapping).
    fn ensure_test_network(&self, rep: &Replication, name: &str) -> Result<()> {
        let k = key(&rep.target.group, name);
        if self.db.get::<Network>(Kind::Network, &k)?.is_some() {
            return Ok(());
        }
        let prod = self.network(&rep.target.group, &rep.target.network)?;
        let net = Network {
            group: prod.group.clone(),
            name: name.to_string(),
            region: prod.region.clone(),
            address_space: prod.address_space.clone(),
            subnets: prod.subnets.clone(),
            owner: Some(rep.item_key()),
        };
        self.db.put(Kind::Network, &k, &net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;

    #[tokio::test]
    async fn a_stored_request_that_no_longer_reads_fails_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::start_without_regions(dir.path()).await.unwrap();
        let params = serde_json::json!({ "request": "latest" });
        let job = control
            .new_job_with::<TestFailoverStep>("rg1/vm1", params)
            .unwrap();

        let job = crate::jobs::run(&control, job).await;

        assert_eq!(job.state, JobState::Failed);
        let error = job.error.unwrap();
        assert!(
            error.starts_with("the job's stored request cannot be read: invalid type: string"),
            "{error}"
        );
        assert_eq!(job.steps[0].state, StepState::Failed);
        control.shutdown().await;
    }
}
