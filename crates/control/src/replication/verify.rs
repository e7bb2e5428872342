//! Verifying an item's replica on demand, and repairing damaged chunks from the source disks.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_replica::ProcessorConfig;
use ferry_replica::verify::{self, ImageFiles, VerifyReport};

use crate::control::Control;
use crate::error::Result;

impl Control {
    /// Re-read every page and chunk behind the item's retained recovery points and check their
    /// digests; with `repair`, rebuild damaged chunks in place from the source VM's disk images
    /// where they still hold the data. Runs to the end before answering.
    pub async fn verify_replication(
        &self,
        group: &str,
        vm: &str,
        repair: bool,
    ) -> Result<VerifyReport> {
        let rep = self.replication(group, vm)?;
        let layout = self.layout(&rep)?;
        if !repair {
            return Ok(verify::check(&layout).await?);
        }
        let source = self.source_vm(&rep)?;
        let images = ImageFiles(
            source
                .disks
                .iter()
                .map(|d| PathBuf::from(&d.image))
                .collect(),
        );
        let report = verify::check_and_repair(
            &layout,
            Arc::new(images),
            ProcessorConfig::default().zstd_level,
        )
        .await?;
        tracing::info!(
            item = %format!("{group}/{vm}"),
            problems = report.problems.len(),
            repaired = report.repaired,
            "verified the replica"
        );
        Ok(report)
    }
}
