//! Failover RTO at a site loss, through separate processes: a guest (`scripts/guest-kit` under
//! qemu) runs on a joined east host of its own (`east-2`) and is replicated; that host's agent
//! and the guest's qemu are killed with SIGKILL; `failover run --recovery-point latest` is timed
//! to the failed-over guest's first console line, on a joined west host (`west-1`), whose agent
//! restores the disk from the server while the guest boots. Baseline: the cold boot of the same
//! guest on the east host (from `vm create` to its first console line).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use ferry_control::requests::{CreateVm, DiskRequest};
use serde_json::Value;

use super::procs::{Agent, wait_until};
use super::{
    GROUP, MIB, Sites, enable, item, replication, vm_path, wait_host_lost, wait_protected,
};
use crate::bench::failover::{BOOTED, find_guest};
use crate::bench::{Figure, Plan, Target, progress};
use crate::client::Client;

const VM: &str = "guest";
const EAST: &str = "east-2";
const WEST: &str = "west-1";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const RTO_TARGET: f64 = 10.0;

pub async fn run(sites: &mut Sites, dir: &Path, plan: Plan) -> Result<Vec<Figure>> {
    let size = if plan.quick { 256 * MIB } else { 4096 * MIB };
    let name = format!("sites_failover_rto_after_site_loss_{}mib", size / MIB);
    let baseline = "cold boot of the same guest on the east host";
    let guest = match find_guest() {
        Ok(g) => g,
        Err(reason) => {
            progress(format!("sites: the RTO is not measured: {reason}"));
            let target = Target::AtMost(RTO_TARGET);
            return Ok(vec![Figure::new(
                &name,
                f64::NAN,
                "s",
                baseline,
                f64::NAN,
                target,
            )]);
        }
    };
    let import = sites.server.data.join("import");
    std::fs::create_dir_all(&import).with_context(|| format!("create {}", import.display()))?;
    for (from, to) in [(&guest.kernel, "vmlinuz"), (&guest.initrd, "initrd.gz")] {
        std::fs::copy(from, import.join(to))
            .with_context(|| format!("copy {} into the import directory", from.display()))?;
    }
    let mut east = Agent::join(dir, &mut sites.server, EAST, "east").await?;
    let west = Agent::join(dir, &mut sites.server, WEST, "west").await?;
    let measured = measure(sites, dir, size, &mut east).await;
    // No guest outlives the bench, whatever happened.
    for host in [EAST, WEST] {
        kill_guests(&dir.join(host).join("vms"));
    }
    west.proc.stop().await;
    let (rto, cold) = measured?;
    Ok(vec![Figure::new(
        &name,
        rto,
        "s",
        baseline,
        cold,
        Target::AtMost(RTO_TARGET),
    )])
}

/// The failed-over guest's time to its first console line, and the cold boot's.
async fn measure(sites: &mut Sites, dir: &Path, size: u64, east: &mut Agent) -> Result<(f64, f64)> {
    let c = sites.server.client()?;
    let started = Instant::now();
    create_guest(&c, size).await?;
    let cold = first_console_line(&c, &item(VM), started).await?;
    progress(format!("sites: the guest booted on {EAST} in {cold:.2} s"));
    enable(&c, VM).await?;
    wait_protected(sites, VM).await?;

    // The east host dies with its guest.
    east.proc.kill9()?;
    kill_guests(&dir.join(EAST).join("vms"));
    wait_host_lost(&c, &mut sites.server, EAST).await?;

    let t = Instant::now();
    let body = serde_json::json!({"recovery_point": "latest", "shutdown_source": false});
    c.post(&format!("{}/failover", vm_path(VM)), &body)
        .await
        .with_context(|| format!("failover run {} --recovery-point latest", item(VM)))?;
    let target: String = wait_until(
        "the failover to name its VM",
        BOOT_TIMEOUT,
        || sites.server.proc.check(),
        || async {
            let rep = replication(&c, &item(VM)).await?;
            Ok(rep["failover"]["vm"].as_str().map(str::to_string))
        },
    )
    .await?;
    let rto = first_console_line(&c, &target, t).await?;
    progress(format!(
        "sites: the failed-over guest booted on {WEST} {rto:.2} s after the failover call"
    ));
    Ok((rto, cold))
}

/// SIGKILL every qemu whose pid file is under `dir` (`GROUP/VM/qemu.pid`).
fn kill_guests(dir: &Path) {
    let Ok(groups) = std::fs::read_dir(dir) else {
        return;
    };
    for vm in groups
        .flatten()
        .filter_map(|g| std::fs::read_dir(g.path()).ok())
        .flatten()
        .flatten()
    {
        if let Ok(pid) = std::fs::read_to_string(vm.path().join("qemu.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The guest VM on the east host: one disk of `size`, booted from the guest kit's kernel.
async fn create_guest(c: &Client, size: u64) -> Result<Value> {
    let body = CreateVm {
        name: VM.into(),
        network: "net".into(),
        subnet: "sub".into(),
        ip: None,
        availability_set: None,
        disks: vec![DiskRequest {
            size_bytes: size,
            storage: Some("east".into()),
        }],
        host: Some(EAST.into()),
        image: None,
        compute: Some("qemu".into()),
        kernel: Some("vmlinuz".into()),
        initrd: Some("initrd.gz".into()),
        append: Some("quiet".into()),
        pre_freeze_script: None,
        post_thaw_script: None,
    };
    c.post(&format!("/v1/groups/{GROUP}/vms"), &body)
        .await
        .with_context(|| format!("create the guest VM {}", item(VM)))
}

/// Seconds from `since` until `vm`'s console shows the guest's first line.
async fn first_console_line(c: &Client, vm: &str, since: Instant) -> Result<f64> {
    let (group, name) = vm
        .split_once('/')
        .ok_or_else(|| anyhow!("VM {vm} is not GROUP/NAME"))?;
    let path = format!("/v1/groups/{group}/vms/{name}/console");
    let deadline = since + BOOT_TIMEOUT;
    loop {
        if let Ok(resp) = c.get_raw(&path).await
            && resp.status().is_success()
            && resp.text().await.is_ok_and(|t| t.contains(BOOTED))
        {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            let text = match c.get_raw(&path).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => format!("{e:#}"),
            };
            return Err(anyhow!(
                "{vm} showed no {BOOTED:?} within {BOOT_TIMEOUT:?}; its console:\n{text}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
