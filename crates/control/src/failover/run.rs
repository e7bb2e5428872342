//! The failover job. Each step can run again after a restart: the chosen point is kept in the
//! job's parameters, and creating the VM overwrites what an interrupted attempt left.

use std::sync::Arc;

use ferry_replica::{PointInfo, PointSelector, points};
use ferry_types::Timestamp;

use super::FailoverRequest;
use super::materialise::Placement;
use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::jobs::job_steps;
use crate::model::{Failover, ItemState, Job, StepState};
use crate::replication::PointView;

job_steps! {
    /// The failover job's steps.
    pub(crate) enum FailoverStep for Failover {
        Prerequisites => "Prerequisites check",
        ShutDownSource => "Shut down source VM",
        SelectPoint => "Select recovery point",
        StopReplication => "Stop replication",
        CreateVm => "Create VM and disks from recovery point",
        StartVm => "Start VM",
    }
}

fn split(target: &str) -> (String, String) {
    let (g, v) = target.split_once('/').unwrap_or((target, ""));
    (g.to_string(), v.to_string())
}

pub(crate) async fn run_failover(control: &Arc<Control>, job: &mut Job) -> Result<()> {
    let (group, vm) = split(&job.target);
    let req: FailoverRequest =
        serde_json::from_value(job.params["request"].clone()).unwrap_or_default();
    let rep = control.replication(&group, &vm)?;
    control.job_step(job, FailoverStep::Prerequisites, StepState::Succeeded, None)?;

    if !job.step_done(FailoverStep::ShutDownSource) {
        let detail = if req.shutdown_source {
            let (sg, sv) = split(&rep.source_key());
            control.job_step(job, FailoverStep::ShutDownSource, StepState::Running, None)?;
            let stopped = control.stop_vm(&sg, &sv).await?;
            Some(format!(
                "{}/{} is {}",
                stopped.group, stopped.name, stopped.state
            ))
        } else {
            Some("skipped (unplanned failover)".into())
        };
        control.job_step(
            job,
            FailoverStep::ShutDownSource,
            StepState::Succeeded,
            detail,
        )?;
    }

    let point = match job.params.get("point_id").and_then(|v| v.as_str()) {
        Some(id) => {
            let sel = PointSelector::parse(id)
                .ok_or_else(|| ControlError::Internal(format!("bad stored point id {id}")))?;
            points::resolve(&control.layout(&rep)?, &sel).await?
        }
        None => {
            control.job_step(
                job,
                FailoverStep::SelectPoint,
                StepState::Running,
                Some(req.point().to_string()),
            )?;
            let p = control.select_point(&rep, req.point()).await?;
            let info = PointInfo::from_record(&p);
            job.params["point_id"] = info.id.clone().into();
            crate::failpoint::hit("failover-after-select-point").await;
            control.job_step(
                job,
                FailoverStep::SelectPoint,
                StepState::Succeeded,
                Some(format!("{} ({}, {})", info.id, info.kind, info.time)),
            )?;
            p
        }
    };

    control.job_step(job, FailoverStep::StopReplication, StepState::Running, None)?;
    control.stop_item(&rep).await;
    control.job_step(
        job,
        FailoverStep::StopReplication,
        StepState::Succeeded,
        None,
    )?;

    control.job_step(job, FailoverStep::CreateVm, StepState::Running, None)?;
    let target_key = rep.failover_vm_key();
    let (tg, tv) = split(&target_key);
    let place = Placement {
        group: tg,
        name: tv,
        network: rep.target.network.clone(),
        subnet: rep.target.subnet.clone(),
        availability_set: rep.target.availability_set.clone(),
        created_by: "failover",
    };
    let mut target = control.materialise(&rep, &point, &place).await?;
    crate::failpoint::hit("failover-after-create-vm").await;
    let bytes: u64 = point.disks.iter().map(|d| d.size).sum();
    control.job_step(
        job,
        FailoverStep::CreateVm,
        StepState::Succeeded,
        Some(format!(
            "{target_key} in {}, {} disks, {bytes} bytes",
            target.region,
            target.disks.len()
        )),
    )?;

    control.job_step(job, FailoverStep::StartVm, StepState::Running, None)?;
    control.boot(&mut target).await?;
    control.job_step(
        job,
        FailoverStep::StartVm,
        StepState::Succeeded,
        Some(format!("{target_key} is running")),
    )?;

    let view = PointView::from(&point);
    control.move_item(&rep.item_key(), ItemState::FailedOver, |r| {
        r.failover = Some(Failover {
            vm: target_key.clone(),
            point: Some(view),
            planned: req.shutdown_source,
            started: r
                .failover
                .as_ref()
                .map_or_else(Timestamp::now, |f| f.started),
            committed: None,
        });
    })?;
    control.job_succeed(job)
}
