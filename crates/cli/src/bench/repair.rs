//! The repair figure: `replication repair` of a protected VM whose disk matches its replica
//! (it reads every block and sends none), as disk bytes compared per second, beside a
//! sequential read of the same image in 1 MiB reads. Both start with the image out of the
//! page cache (synced, then dropped with `POSIX_FADV_DONTNEED`), so both read the disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ferry_control::model::{JobState, StepState};
use ferry_control::requests::{
    CreateGroup, CreateNetwork, CreateStorage, CreateVm, DiskRequest, EnableReplication, SubnetSpec,
};
use ferry_control::{Control, ControlConfig};

use super::data::{self, Pool};
use super::failover::{fill_disk, wait_job};
use super::{Figure, MB, MIB, Plan, Target, progress};

const GROUP: &str = "rp";

pub async fn run(dir: &Path, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let data = dir.join("rp");
    let control = Control::start(ControlConfig::embedded(data.join("ctl")))
        .await
        .context("start the control plane")?;
    let result = measure(&control, plan.disk, pool).await;
    control.shutdown().await;
    drop(control);
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn measure(control: &Arc<Control>, size: u64, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    control.create_group(CreateGroup {
        name: GROUP.into(),
        region: "east".into(),
    })?;
    control.create_network(
        GROUP,
        CreateNetwork {
            name: "net".into(),
            address_space: "10.2.0.0/16".into(),
            subnets: vec![SubnetSpec {
                name: "sub".into(),
                cidr: "10.2.1.0/24".into(),
            }],
        },
    )?;
    control.create_storage(
        GROUP,
        CreateStorage {
            name: "sa".into(),
            url: None,
        },
    )?;
    let vm = control
        .create_vm(
            GROUP,
            CreateVm {
                host: None,
                name: "db".into(),
                network: "net".into(),
                subnet: "sub".into(),
                ip: None,
                availability_set: None,
                disks: vec![DiskRequest {
                    size_bytes: size,
                    storage: None,
                }],
                image: None,
                compute: Some("external".into()),
                kernel: None,
                initrd: None,
                append: None,
                pre_freeze_script: None,
                post_thaw_script: None,
            },
        )
        .await
        .context("create the VM")?;
    fill_disk(&vm.disks[0].nbd_uri, size, pool, 7 << 40).await?;
    let job = control
        .enable_replication(
            GROUP,
            "db",
            EnableReplication {
                target_region: "west".into(),
                ..Default::default()
            },
        )
        .await?;
    wait_job(control, job.id, "enable replication").await?;
    progress(format!(
        "repair: {} MiB of random data protected",
        size / MIB
    ));

    let image = PathBuf::from(&vm.disks[0].image);
    let path = image.clone();
    let baseline = tokio::task::spawn_blocking(move || {
        drop_cache(&path)?;
        data::read_file_once(&path)
    })
    .await??;
    drop_cache(&image)?;
    let t = Instant::now();
    let job = control.repair_replication(GROUP, "db").await?;
    let steps = step_times(control, job.id, t).await?;
    let secs = t.elapsed().as_secs_f64();
    progress(format!("repair: steps done at {steps}"));
    let view = control.show_replication(GROUP, "db")?;
    let sent = view.initial_replication.map_or(0, |i| i.sent_bytes);
    let rate = size as f64 / MB / secs;
    progress(format!(
        "repair: {} MiB compared in {secs:.2} s ({rate:.0} MB/s, {sent} bytes sent); \
         sequential read {baseline:.0} MB/s",
        size / MIB
    ));
    Ok(vec![
        Figure::new(
            "repair_compare_throughput",
            rate,
            "MB/s",
            "sequential read of the image (cold)",
            baseline,
            Target::RatioAtLeast(0.8),
        ),
        Figure::new(
            "repair_bytes_sent_identical_disk",
            sent as f64,
            "B",
            "disk size, B",
            size as f64,
            Target::AtMost(0.0),
        ),
    ])
}

/// Waits for a job to succeed, noting when each step finished: `name at S s, ...`.
async fn step_times(control: &Arc<Control>, id: u64, t: Instant) -> Result<String> {
    let mut done: Vec<(String, f64)> = Vec::new();
    loop {
        let j = control.job(id)?;
        for s in &j.steps {
            if s.state == StepState::Succeeded && !done.iter().any(|(n, _)| *n == s.name) {
                done.push((s.name.clone(), t.elapsed().as_secs_f64()));
            }
        }
        match j.state {
            JobState::Succeeded => break,
            JobState::Failed => {
                anyhow::bail!("repair (job {id}) failed: {}", j.error.unwrap_or_default())
            }
            JobState::Running => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
        if t.elapsed() > std::time::Duration::from_secs(600) {
            anyhow::bail!("repair (job {id}) did not finish in 10 minutes");
        }
    }
    Ok(done
        .iter()
        .map(|(n, s)| format!("{n:?} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Write back and drop a file's cached pages, so the next read comes from the disk.
#[allow(unsafe_code)]
fn drop_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.sync_all()?;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned by `f`.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise {}: error {rc}", path.display());
    Ok(())
}
