//! Figure 2: the highest write rate the whole pipeline (agent, stream, sealer, shipping,
//! processor) sustains while the RPO and the processor's lag both stay under 10 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_nbd::NbdClient;
use ferry_types::Timestamp;

use super::data::{self, Pool};
use super::rig::{Protected, Rig, wait_for};
use super::{Figure, MB, MIB, Plan, Target, progress};

const VM: &str = "bench/churn";
const WRITERS: u64 = 4;
const LIMIT_SECS: f64 = 10.0;

/// What one step saw.
struct Step {
    offered: f64,
    achieved: f64,
    rpo_max: f64,
    lag_max: f64,
    drained: bool,
}

impl Step {
    fn passed(&self) -> bool {
        self.drained
            && self.rpo_max < LIMIT_SECS
            && self.lag_max < LIMIT_SECS
            && self.achieved >= 0.9 * self.offered
    }
}

pub async fn run(rig: &Rig, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let (rates, secs): (&[f64], u64) = if plan.quick {
        (&[50.0, 100.0, 150.0], 3)
    } else {
        (&[25.0, 50.0, 100.0, 150.0, 200.0, 300.0], 10)
    };
    let disk = if plan.quick { 512 * MIB } else { 2048 * MIB };
    let dir = rig.dir.join("churn");
    rig.attach(
        VM,
        &[(dir.join("disk0.img"), disk), (dir.join("disk1.img"), disk)],
    )?;
    let p = rig.protect(VM, Some(vec![disk, disk]))?;
    wait_for(
        "initial replication of the empty disks",
        Duration::from_secs(60),
        || Ok(p.processor()?.initial_sync_seq),
    )
    .await?;
    let stamp = Arc::new(AtomicU64::new(1));
    let mut best: Option<Step> = None;
    let mut rpo_all = 0f64;
    for &rate in rates {
        let step = step(rig, &p, pool, &stamp, rate, Duration::from_secs(secs), disk).await?;
        rpo_all = rpo_all.max(step.rpo_max);
        let ok = step.passed();
        progress(format!(
            "churn {rate} MB/s offered: {:.0} MB/s written, max RPO {:.1} s, max processor lag {:.1} s, drained {}: {}",
            step.achieved,
            step.rpo_max,
            step.lag_max,
            step.drained,
            if ok { "ok" } else { "over the limit" }
        ));
        if !ok {
            break;
        }
        best = Some(step);
    }
    rig.release(p).await;
    let _ = std::fs::remove_dir_all(&dir);
    let p2 = pool.clone();
    let total = if plan.quick { 128 } else { 512 } * MIB as usize;
    let baseline =
        tokio::task::spawn_blocking(move || data::zstd_blake3_single_core(&p2, total)).await??;
    progress(format!(
        "baseline zstd-1 + BLAKE3 on one core: {baseline:.0} MB/s"
    ));
    let b = best.unwrap_or(Step {
        offered: 0.0,
        achieved: 0.0,
        rpo_max: rpo_all,
        lag_max: 0.0,
        drained: false,
    });
    let base = "zstd+blake3 single-core MB/s";
    Ok(vec![
        Figure::new(
            "replication_sustained_churn",
            b.offered,
            "MB/s",
            base,
            baseline,
            Target::AtLeast(100.0),
        ),
        Figure::new(
            "replication_sustained_churn_max_rpo",
            b.rpo_max,
            "s",
            "RPO limit",
            LIMIT_SECS,
            Target::AtMost(LIMIT_SECS),
        ),
        Figure::new(
            "replication_sustained_churn_max_processor_lag",
            b.lag_max,
            "s",
            "lag limit",
            LIMIT_SECS,
            Target::AtMost(LIMIT_SECS),
        ),
    ])
}

/// Offers `rate` MB/s for `dur` through four NBD clients (two per disk), then waits for the
/// stream to ship everything and the processor to apply it, sampling RPO and lag throughout.
async fn step(
    rig: &Rig,
    p: &Protected,
    pool: &Arc<Pool>,
    stamp: &Arc<AtomicU64>,
    rate: f64,
    dur: Duration,
    disk: u64,
) -> Result<Step> {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(MIB as f64 * WRITERS as f64 / (rate * MB));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = rig.url(VM, (w % 2) as usize);
        let (pool, stamp) = (pool.clone(), stamp.clone());
        writers.push(tokio::spawn(async move {
            let mut c = NbdClient::connect_uri(&url).await?;
            let mut buf = vec![0u8; MIB as usize];
            let mut written = 0u64;
            let mut next = start + interval.mul_f64(w as f64 / WRITERS as f64);
            while next < start + dur {
                tokio::time::sleep_until(next.into()).await;
                let n = stamp.fetch_add(1, Ordering::Relaxed);
                pool.fill(n, &mut buf);
                let offset = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % (disk / MIB) * MIB;
                c.write(offset, &buf, false).await?;
                written += MIB;
                next += interval;
            }
            let secs = start.elapsed().as_secs_f64();
            c.disconnect().await?;
            anyhow::Ok((written, secs))
        }));
    }
    let (mut rpo_max, mut lag_max) = (0f64, 0f64);
    let mut writing = true;
    let mut written = 0u64;
    let mut write_secs = dur.as_secs_f64();
    let drain_deadline = start + dur + Duration::from_secs(30);
    loop {
        let now = Timestamp::now();
        let s = rig.status(VM)?;
        let proc = p.processor()?;
        if let Some(e) = &proc.error {
            bail!("processor error: {e}");
        }
        let rpo = s
            .stream
            .oldest_unshipped
            .map_or(0.0, |t| t.seconds_until(now));
        let caught_up = proc.applied_seq.is_some_and(|a| a + 1 >= s.stream.next_seq);
        let lag = if caught_up {
            0.0
        } else {
            proc.applied_time.map_or(0.0, |t| t.seconds_until(now))
        };
        rpo_max = rpo_max.max(rpo);
        lag_max = lag_max.max(lag);
        if writing && writers.iter().all(|w| w.is_finished()) {
            write_secs = 0f64;
            for w in writers.drain(..) {
                let (bytes, secs) = w.await??;
                written += bytes;
                write_secs = write_secs.max(secs);
            }
            writing = false;
        }
        if !writing && rpo == 0.0 && caught_up {
            break;
        }
        let over = rpo_max >= LIMIT_SECS || lag_max >= LIMIT_SECS;
        if (!writing && over) || Instant::now() > drain_deadline {
            for w in &writers {
                w.abort();
            }
            return Ok(Step {
                offered: rate,
                achieved: written as f64 / MB / write_secs,
                rpo_max,
                lag_max,
                drained: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Step {
        offered: rate,
        achieved: written as f64 / MB / write_secs,
        rpo_max,
        lag_max,
        drained: true,
    })
}
