//! Figure 1: the agent's NBD write path, with and without replication, beside `qemu-nbd`
//! serving a raw file of the same size; all driven by `qemu-img bench`.

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_nbd::bench::{Workload, qemu_img_bench, spawn_qemu_nbd, unix_url, wait_for_socket};

use super::rig::{Rig, wait_for};
use super::{Figure, MB, MIB, Plan, Target, progress};

const BASELINE: &str = "qemu-nbd raw file (writeback)";

struct Case {
    name: &'static str,
    unit: &'static str,
    work: Workload,
}

impl Case {
    fn rate(&self, seconds: f64) -> f64 {
        match self.unit {
            "IOPS" => self.work.iops(seconds),
            // One request in flight: the time each takes.
            "us" => seconds / self.work.count.max(1) as f64 * 1e6,
            _ => self.work.bytes_per_second(seconds) / MB,
        }
    }

    /// What the figure must reach: throughput at least 80 % of qemu-nbd's; a latency is
    /// reported beside qemu-nbd's.
    fn target(&self) -> Target {
        match self.unit {
            "us" => Target::None,
            // The write path with replication active, as a VM sees it: 80 % of qemu-nbd.
            _ => Target::RatioAtLeast(0.8),
        }
    }
}

pub async fn run(rig: &Rig, plan: Plan) -> Result<Vec<Figure>> {
    let size = plan.disk;
    let cases = [
        Case {
            name: "agent_nbd_seq_write",
            unit: "MB/s",
            work: Workload {
                count: if plan.quick {
                    size / MIB
                } else {
                    2 * size / MIB
                },
                size: MIB,
                step: MIB,
                depth: 16,
            },
        },
        Case {
            name: "agent_nbd_randwrite_4k",
            unit: "IOPS",
            work: Workload {
                count: if plan.quick { 10_000 } else { 60_000 },
                size: 4096,
                step: MIB + 4096,
                depth: 32,
            },
        },
        Case {
            name: "agent_nbd_write_4k_qd1_latency",
            unit: "us",
            work: Workload {
                count: if plan.quick { 2_000 } else { 10_000 },
                size: 4096,
                step: MIB + 4096,
                depth: 1,
            },
        },
    ];
    let dir = rig.dir.join("nbd-write");
    let (plain, repl) = ("bench/plain", "bench/replicated");
    rig.attach(plain, &[(dir.join("plain.img"), size)])?;
    rig.attach(repl, &[(dir.join("replicated.img"), size)])?;
    let protected = rig.protect(repl, None)?;
    wait_for(
        "initial replication of the empty disk",
        Duration::from_secs(60),
        || Ok(rig.status(repl)?.stream.initial_sync_done_seq),
    )
    .await?;
    let qemu_img = dir.join("qemu.img");
    std::fs::File::create(&qemu_img)?.set_len(size)?;
    let qemu_sock = dir.join("qemu-nbd.sock");
    let mut qemu = spawn_qemu_nbd(&qemu_sock, &qemu_img, "bench").context("start qemu-nbd")?;
    wait_for_socket(&qemu_sock)
        .await
        .context("qemu-nbd did not start")?;
    let urls = [
        unix_url(&qemu_sock, "bench"),
        rig.url(repl, 0),
        rig.url(plain, 0),
    ];
    let result = async {
        let mut figures = Vec::new();
        for case in &cases {
            // Several runs each, interleaved so drift hits all three alike; the median of each
            // (the replicated path's sealing and shipping of earlier runs overlaps later ones,
            // as it would for a VM).
            let rounds = if plan.quick { 3 } else { 5 };
            let mut runs: [Vec<f64>; 3] = Default::default();
            for round in 0..rounds {
                for (i, url) in urls.iter().enumerate() {
                    let secs = qemu_img_bench(url, &case.work).await?;
                    runs[i].push(secs);
                    let who = ["qemu-nbd", "agent+replication", "agent"][i];
                    progress(format!(
                        "{} run {}: {who}: {:.0} {}",
                        case.name,
                        round + 1,
                        case.rate(secs),
                        case.unit
                    ));
                }
            }
            let median = runs.map(|mut r| {
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            });
            let base = case.rate(median[0]);
            figures.push(Figure::new(
                case.name,
                case.rate(median[1]),
                case.unit,
                BASELINE,
                base,
                case.target(),
            ));
            let name = format!("{}_no_replication", case.name);
            figures.push(Figure::new(
                &name,
                case.rate(median[2]),
                case.unit,
                BASELINE,
                base,
                case.target(),
            ));
        }
        anyhow::Ok(figures)
    }
    .await;
    let _ = qemu.kill().await;
    if let Ok(s) = rig.status(repl) {
        let s = s.stream;
        progress(format!(
            "replicated VM: {:.0} MB written, {} segments ({:.1} MB compressed) shipped to the cache",
            s.bytes_written as f64 / MB,
            s.segments_shipped,
            s.bytes_shipped as f64 / MB
        ));
    }
    rig.release(protected).await;
    rig.host.detach_vm(plain).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
