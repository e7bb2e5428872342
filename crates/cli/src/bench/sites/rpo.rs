//! RPO at the moment of a site loss: a writer paced at 100 MB/s (50 MB/s with `--quick`)
//! writes 1 MiB blocks to the joined host's VM until replication is in a steady state (the
//! server's reported RPO no longer growing); then the host's agent is killed with SIGKILL at
//! an instant T, and once the server has noticed the host is gone the item is failed over to
//! `latest` (the newest point the replica holds).
//!
//! Two figures of the seconds of acknowledged writes the chosen point leaves out: the one the
//! failover reports (its "Select recovery point" step and `failover-writes-lost` event,
//! counted up to the newest write the server heard of), and the writer's own record: T minus
//! the last write it had acknowledged at the point's time. The baseline is the server's
//! reported RPO just before the kill.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use ferry_nbd::NbdClient;
use ferry_types::Timestamp;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::procs::{Server, wait_until};
use super::{Figure, MB, MIB, Plan, Pool, Sites, Target, progress, replication, wait_host_lost};
use crate::client::Client;

/// The most seconds of writes a site loss may cost.
const TARGET: f64 = 2.0;
const STEP: &str = "Select recovery point";
/// How often the server's RPO is sampled while waiting for a steady state.
const SAMPLE: Duration = Duration::from_millis(250);
/// The RPO is steady when its maximum over the last window is no more than this above its
/// maximum over the window before.
const WINDOW: f64 = 3.0;
const GROWTH: f64 = 0.5;

/// The joined host's protected VM.
pub struct Site {
    pub item: String,
    /// Its disk's NBD URI on the joined host, and the disk's size.
    pub uri: String,
    pub disk: u64,
    /// The item's crash-consistent interval.
    pub point_every: f64,
}

pub async fn run(
    sites: &mut Sites,
    site: Site,
    plan: Plan,
    pool: &Arc<Pool>,
) -> Result<Vec<Figure>> {
    let rate = if plan.quick { 50.0 } else { 100.0 };
    let name = format!("sites_rpo_at_site_loss_writing_{rate:.0}mb_s");
    let Site {
        item,
        uri,
        disk,
        point_every,
    } = site;
    let writer = Writer::start(&uri, rate, disk, pool.clone())
        .await
        .context("start the paced writer")?;
    let warmup = if plan.quick { 5.0 } else { 15.0 };
    let rpo_before = steady(sites, &writer, &item, warmup, warmup + 30.0).await?;

    // The site loss.
    let agent = &mut sites.agent;
    agent.proc.kill9()?;
    let t = epoch(SystemTime::now());
    agent.proc.wait_exit().await?;
    let acks = writer.finish().await?;
    let after_kill = acks.iter().filter(|a| **a > t).count();
    progress(format!(
        "sites: {} killed at T; the writer had {} writes ({:.0} MB) acknowledged, at {:.1} MB/s \
         ({after_kill} acknowledged after T)",
        agent.name,
        acks.len(),
        acks.len() as f64 * MIB as f64 / MB,
        achieved(&acks)
    ));

    let host = agent.name.clone();
    let failed_over = fail_over(&sites.client, &mut sites.server, &host, &item).await?;
    let point = failed_over.point_time;
    let kept = acks.iter().filter(|a| **a <= point).count();
    // With no write of the writer in the point, everything since the point is left out.
    let last_in_point = acks[..kept].last().copied().unwrap_or(point);
    let by_writer = t - last_in_point;
    let left_out = acks.len() - kept;
    progress(format!(
        "sites: point {} at T-{:.2} s; the server reports {:.2} s of writes left out, the \
         writer's record {by_writer:.2} s ({left_out} writes, {:.0} MB acknowledged after \
         the point's last one); the server cannot know what the host wrote after its last \
         report (a heartbeat, 2 s)",
        failed_over.point_id,
        t - point,
        failed_over.reported_lost,
        left_out as f64 * MIB as f64 / MB,
    ));
    let baseline =
        format!("server-reported RPO just before the kill (a point every {point_every} s)");
    Ok(vec![
        Figure::new(
            &name,
            failed_over.reported_lost,
            "s",
            &baseline,
            rpo_before,
            Target::AtMost(TARGET),
        ),
        Figure::new(
            &format!("{name}_writer_record"),
            by_writer,
            "s",
            &baseline,
            rpo_before,
            Target::AtMost(TARGET),
        ),
    ])
}

/// Seconds since the epoch.
fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// MB/s over the acknowledgements (1 MiB each).
fn achieved(acks: &[f64]) -> f64 {
    match (acks.first(), acks.last()) {
        (Some(a), Some(b)) if b > a => (acks.len() - 1) as f64 * MIB as f64 / MB / (b - a),
        _ => 0.0,
    }
}

/// 1 MiB writes paced at a rate, round the disk, each acknowledgement's time recorded; it
/// stops at its first error (the agent killed) or when told to.
struct Writer {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<f64>, Option<String>)>,
}

impl Writer {
    async fn start(uri: &str, mb_per_s: f64, disk: u64, pool: Arc<Pool>) -> Result<Writer> {
        let mut c = NbdClient::connect_uri(uri)
            .await
            .with_context(|| format!("connect to {uri}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_secs_f64(MIB as f64 / (mb_per_s * MB));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut buf = vec![0u8; MIB as usize];
            let start = tokio::time::Instant::now();
            let blocks = disk / MIB;
            for n in 0u32.. {
                if stopped.load(Ordering::Relaxed) {
                    return (acks, None);
                }
                tokio::time::sleep_until(start + every * n).await;
                pool.fill((5 << 40) + u64::from(n), &mut buf);
                if let Err(e) = c.write(u64::from(n) % blocks * MIB, &buf, false).await {
                    return (acks, Some(e.to_string()));
                }
                acks.push(epoch(SystemTime::now()));
            }
            (acks, None)
        });
        Ok(Writer { stop, task })
    }

    /// Fails when the writer has stopped (at an error: nothing was killed yet).
    fn check(&self) -> Result<()> {
        if self.task.is_finished() {
            bail!("the writer stopped before the site loss (see its error below)");
        }
        Ok(())
    }

    /// Waits for the writer to stop at its first failed write (up to 10 s); returns the
    /// acknowledgement times.
    async fn finish(self) -> Result<Vec<f64>> {
        let task = self.task;
        let (acks, error) = match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(r) => r.context("the writer task")?,
            Err(_) => {
                self.stop.store(true, Ordering::Relaxed);
                bail!("the writer was still writing 10 s after the agent was killed");
            }
        };
        if error.is_none() {
            bail!("the writer stopped without an error while its agent was killed");
        }
        Ok(acks)
    }
}

/// Waits at least `warmup` seconds, then until the item's reported RPO stops growing (see
/// [`GROWTH`]); after `deadline` seconds it goes on, saying so. Returns the last RPO seen.
async fn steady(
    sites: &mut Sites,
    writer: &Writer,
    item: &str,
    warmup: f64,
    deadline: f64,
) -> Result<f64> {
    let start = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    loop {
        let rep = replication(&sites.client, item).await?;
        let at = start.elapsed().as_secs_f64();
        if rep["state"] != "protected" {
            bail!("{item} left the protected state while written: {rep}");
        }
        if let Some(rpo) = rep["rpo_seconds"].as_f64() {
            samples.push((at, rpo));
        }
        let max_in = |from: f64, to: f64| {
            samples
                .iter()
                .filter(|(t, _)| *t > from && *t <= to)
                .map(|(_, r)| *r)
                .fold(f64::NAN, f64::max)
        };
        let (last, before) = (
            max_in(at - WINDOW, at),
            max_in(at - 2.0 * WINDOW, at - WINDOW),
        );
        if at >= warmup && last <= before + GROWTH {
            progress(format!(
                "sites: replication steady after {at:.0} s of writes: RPO at most {last:.2} s \
                 over the last {WINDOW} s ({before:.2} s over the {WINDOW} s before)"
            ));
            return Ok(samples.last().map_or(0.0, |s| s.1));
        }
        if at >= deadline {
            progress(format!(
                "sites: WARNING: replication not steady after {at:.0} s of writes (RPO at \
                 most {last:.2} s over the last {WINDOW} s, {before:.2} s before); the site \
                 is lost anyway"
            ));
            return Ok(samples.last().map_or(0.0, |s| s.1));
        }
        sites.check()?;
        writer.check()?;
        tokio::time::sleep(SAMPLE).await;
    }
}

/// What the failover reported.
struct FailedOver {
    point_id: String,
    /// The point's time, seconds since the epoch.
    point_time: f64,
    /// Seconds of writes it says the point leaves out.
    reported_lost: f64,
}

/// Waits until the server holds `host` lost, fails `item` over to `latest`, waits for the
/// job, and reads what it reported.
async fn fail_over(c: &Client, server: &mut Server, host: &str, item: &str) -> Result<FailedOver> {
    wait_host_lost(c, server, host).await?;
    let (group, vm) = item.split_once('/').unwrap_or((item, ""));
    let body = serde_json::json!({"recovery_point": "latest", "shutdown_source": false});
    let job = c
        .post(&format!("/v1/groups/{group}/vms/{vm}/failover"), &body)
        .await
        .with_context(|| format!("failover run {item} --recovery-point latest"))?;
    let id = job["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("no job id in the failover answer {job}"))?;
    let job: Value = wait_until(
        &format!("failover job {id} of {item} to end"),
        Duration::from_secs(300),
        || server.proc.check(),
        || async {
            let job = c
                .get(&format!("/v1/jobs/{id}"))
                .await
                .with_context(|| format!("job show {id}"))?;
            Ok((job["state"] != "running").then_some(job))
        },
    )
    .await?;
    if job["state"] != "succeeded" {
        bail!("failover job {id} of {item} did not succeed: {job}");
    }
    let detail = job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == STEP)
        .and_then(|s| s["detail"].as_str())
        .ok_or_else(|| anyhow!("failover job {id} has no {STEP:?} step with a detail: {job}"))?;
    let reported_lost = seconds_left_out(detail)
        .ok_or_else(|| anyhow!("no seconds of writes left out in the {STEP:?} step: {detail:?}"))?;
    let events = c
        .get(&format!(
            "/v1/events?target={}&kind=failover-writes-lost",
            url::form_urlencoded::byte_serialize(item.as_bytes()).collect::<String>()
        ))
        .await
        .context("list the failover-writes-lost events")?;
    let event = events
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["message"].as_str())
        .ok_or_else(|| anyhow!("no failover-writes-lost event of {item}: {events}"))?;
    if seconds_left_out(event) != Some(reported_lost) {
        bail!("the failover-writes-lost event ({event:?}) and the job's step ({detail:?}) differ");
    }
    let rep = replication(c, item).await?;
    let point_id = rep["failover"]["point"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no failover point in the replication of {item}: {rep}"))?
        .to_string();
    let path = format!("/v1/groups/{group}/vms/{vm}/recovery-points");
    let points = c
        .get(&path)
        .await
        .with_context(|| format!("recovery-point list {item}"))?;
    let time = points
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"] == point_id.as_str())
        .and_then(|p| p["time"].as_str())
        .ok_or_else(|| anyhow!("point {point_id} is not in recovery-point list {item}"))?;
    let point_time = Timestamp::parse_rfc3339(time)
        .map(|t| epoch(t.to_system()))
        .ok_or_else(|| anyhow!("point {point_id}'s time {time:?} is not RFC 3339"))?;
    Ok(FailedOver {
        point_id,
        point_time,
        reported_lost,
    })
}

/// X from `... the point leaves out X s of writes ...`.
fn seconds_left_out(text: &str) -> Option<f64> {
    text.split("leaves out ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seconds_left_out_from_the_failover_detail() {
        let d = "pt-00000042 (crash-consistent, 2026-12-03T11:00:00.000000Z); source host east-1 \
                 unreachable since 2026-12-03T11:00:01Z: the point leaves out 1.3 s of writes \
                 before the loss (the newest record known of the stream was at ...)";
        assert_eq!(seconds_left_out(d), Some(1.3));
        assert_eq!(seconds_left_out("pt-1 (crash-consistent, t)"), None);
    }

    #[test]
    fn the_achieved_rate_counts_the_gaps_between_acknowledgements() {
        let acks: Vec<f64> = (0..11).map(|i| f64::from(i) * 0.01).collect();
        assert!((achieved(&acks) - 10.0 * MIB as f64 / MB / 0.1).abs() < 1e-6);
        assert_eq!(achieved(&[1.0]), 0.0);
    }
}
