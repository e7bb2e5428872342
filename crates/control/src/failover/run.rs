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
use crate::model::{Failover, ItemState, Job, Severity, StepState, VmState};
use crate::replication::PointView;
use crate::resources::key;

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
    let req: FailoverRequest = job.param("request")?;
    let rep = control.replication(&group, &vm)?;
    control.job_step(job, FailoverStep::Prerequisites, StepState::Succeeded, None)?;

    if !job.step_done(FailoverStep::ShutDownSource) {
        let detail = if req.shutdown_source {
            let (sg, sv) = split(&rep.source_key());
            control.job_step(job, FailoverStep::ShutDownSource, StepState::Running, None)?;
            let stopped = control.set_power(&key(&sg, &sv), VmState::Stopped).await?;
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

    let point = match job.param::<Option<String>>("point_id")? {
        Some(id) => {
            let sel = PointSelector::parse(&id).ok_or_else(|| {
                ControlError::Internal(format!(
                    "the job's stored point_id {id:?} is not a recovery point; \
                     start the operation again"
                ))
            })?;
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
            let mut detail = format!("{} ({}, {})", info.id, info.kind, info.time);
            if let Some(lost) = control.writes_lost(&rep, &p) {
                control.event(
                    Severity::Critical,
                    "failover-writes-lost",
                    &rep.item_key(),
                    lost.clone(),
                );
                detail = format!("{detail}; {lost}");
            }
            control.job_step(
                job,
                FailoverStep::SelectPoint,
                StepState::Succeeded,
                Some(detail),
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
    control.succeed_moving(job, ItemState::FailedOver, |r| {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_types::{Generation, StreamId};

    use super::*;
    use crate::db::Kind;
    use crate::model::{JobState, Replication, Target};

    /// An item failing over from `protected`, as `ferry failover run` leaves it.
    fn failing_over(job: u64) -> Replication {
        Replication {
            group: "rg1".into(),
            vm: "vm1".into(),
            source_region: "east".into(),
            stream: StreamId::random(),
            generation: Generation(1),
            state: ItemState::FailingOver,
            policy: "default".into(),
            target: Target {
                region: "west".into(),
                group: "rg1-asr".into(),
                network: "net1-asr".into(),
                subnet: "default".into(),
                availability_set: None,
                cache_storage: "rg1/cache".into(),
                storage: BTreeMap::new(),
            },
            job: Some(job),
            created: Timestamp::now(),
            source_vm: None,
            target_vm: None,
            failover: None,
            test_failover: None,
            last_test_failover: None,
            resync_reason: None,
            resync_from: None,
        }
    }

    #[tokio::test]
    async fn a_stored_request_that_no_longer_reads_fails_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::start_without_regions(dir.path()).await.unwrap();
        // Stored by another version: a field this one does not know.
        let params = serde_json::json!({
            "request": { "recovery_point": "2026-11-28T05:00:00Z", "turbo": true },
            "from_state": "protected",
        });
        let job = control
            .new_job_with::<FailoverStep>("rg1/vm1", params)
            .unwrap();
        control
            .db
            .put(Kind::Replication, "rg1/vm1", &failing_over(job.id))
            .unwrap();

        let job = crate::jobs::run(&control, job).await;

        assert_eq!(job.state, JobState::Failed);
        let error = job.error.clone().unwrap();
        assert!(
            error.starts_with("the job's stored request cannot be read: unknown field `turbo`")
                && error.ends_with("; start the operation again"),
            "{error}"
        );
        assert_eq!(job.steps[0].name, "Prerequisites check");
        assert_eq!(job.steps[0].state, StepState::Failed);
        assert!(job.steps[1..].iter().all(|s| s.state == StepState::Pending));
        let stored = control.job(job.id).unwrap();
        assert_eq!(stored.state, JobState::Failed);
        assert_eq!(stored.error, Some(error));
        // Nothing was done: the item is back where it came from.
        let rep = control.replication("rg1", "vm1").unwrap();
        assert_eq!(rep.state, ItemState::Protected);
        control.shutdown().await;
    }
}
