//! Verifying an item's replica on demand, and repairing damaged chunks from the source disks.
//! A verify is a job like any operation on the item (so it never runs beside a failover or a
//! disable), run while the request waits for its report.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_replica::ProcessorConfig;
use ferry_replica::verify::{self, ImageFiles, VerifyReport};

use crate::control::Control;
use crate::error::Result;
use crate::jobs::job_steps;
use crate::model::{Job, StepState};

job_steps! {
    /// The steps of verifying a replica.
    pub(crate) enum VerifyStep for VerifyReplication {
        Verify => "Verify every page and chunk behind the points",
    }
}

impl Control {
    /// Re-read every page and chunk behind the item's retained recovery points and check their
    /// digests; with `repair`, rebuild damaged chunks in place from the source VM's disk images
    /// where they still hold the data. Runs to the end before answering.
    pub async fn verify_replication(
        self: &Arc<Self>,
        group: &str,
        vm: &str,
        repair: bool,
    ) -> Result<VerifyReport> {
        let item = crate::resources::key(group, vm);
        let mut job = self
            .admit_only::<VerifyStep>(&item, &[], |_, job, _| {
                job.params = serde_json::json!({ "repair": repair });
                Ok(())
            })
            .await?;
        let report = run_verify(self, &mut job).await;
        if let Err(e) = &report {
            self.job_fail(&mut job, &e.to_string())?;
        }
        report
    }
}

/// The verify job (also when resumed after a restart, with nobody waiting for the report).
pub(crate) async fn run_verify(control: &Arc<Control>, job: &mut Job) -> Result<VerifyReport> {
    let repair: bool = job.param("repair")?;
    let rep = control.replication_by_key(&job.target)?;
    control.job_step(job, VerifyStep::Verify, StepState::Running, None)?;
    let layout = control.layout(&rep)?;
    let report = if repair {
        let source = control.source_vm(&rep)?;
        let images = ImageFiles(
            source
                .disks
                .iter()
                .map(|d| PathBuf::from(&d.image))
                .collect(),
        );
        verify::check_and_repair(
            &layout,
            Arc::new(images),
            ProcessorConfig::default().zstd_level,
        )
        .await?
    } else {
        verify::check(&layout).await?
    };
    tracing::info!(
        item = %job.target,
        problems = report.problems.len(),
        repaired = report.repaired,
        "verified the replica"
    );
    let detail = format!(
        "{} problems found, {} chunks repaired",
        report.problems.len(),
        report.repaired
    );
    control.job_step(job, VerifyStep::Verify, StepState::Succeeded, Some(detail))?;
    control.job_succeed(job)?;
    Ok(report)
}
