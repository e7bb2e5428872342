//! `ferry bench`: figures beside baselines measured in the same run.
//!
//! Everything runs in-process (agent, stream, sealer, processor) on local `file://` stores in a
//! fresh temporary directory, removed at the end, but the `sites` section, which starts this
//! executable as a `ferry server` and a joined `ferry agent` (on loopback, killed at the end).
//! External tools: `qemu-img` and `qemu-nbd`. `--only` runs some sections ([`BenchSection`])
//! alone.

mod churn;
mod data;
mod failover;
mod initial;
mod nbd_write;
mod repair;
mod rig;
mod sites;
mod storage;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::args::{BenchSection, Output};
use crate::output::outln;

/// Bytes per MB (figures are decimal: MB/s, GB/s).
pub const MB: f64 = 1e6;
pub const MIB: u64 = 1 << 20;

/// One measured figure beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: String,
    pub baseline_value: f64,
    pub ratio: f64,
    #[serde(skip)]
    pub target: Target,
}

/// What a figure should reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    None,
    AtLeast(f64),
    AtMost(f64),
    RatioAtLeast(f64),
}

impl Figure {
    pub fn new(
        name: &str,
        value: f64,
        unit: &str,
        baseline: &str,
        baseline_value: f64,
        target: Target,
    ) -> Figure {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            0.0
        };
        Figure {
            name: name.into(),
            value: round(value),
            unit: unit.into(),
            baseline: baseline.into(),
            baseline_value: round(baseline_value),
            ratio: round(ratio),
            target,
        }
    }

    fn verdict(&self) -> String {
        let (text, met) = match self.target {
            Target::None => return format!("{}: no target (reported only)", self.name),
            Target::AtLeast(t) => (format!(">= {t} {}", self.unit), self.value >= t),
            Target::AtMost(t) => (format!("<= {t} {}", self.unit), self.value <= t),
            Target::RatioAtLeast(r) => (format!(">= {r} x {}", self.baseline), self.ratio >= r),
        };
        let v = if met { "MET" } else { "MISSED" };
        format!(
            "{}: target {text}: {v} ({} {})",
            self.name, self.value, self.unit
        )
    }
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 100.0).round() / 100.0
    }
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, stamped with the seconds since the run started.
pub fn progress(msg: impl AsRef<str>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench [{t:5.1}s] {}", msg.as_ref());
}

/// A directory removed (with everything in it) when dropped.
pub struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir> {
        let name = format!(
            "ferry-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        let path = path.canonicalize()?;
        Ok(WorkDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sizes and durations of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    /// Disk size of the NBD write and initial replication figures.
    pub disk: u64,
}

pub async fn run(quick: bool, only: &[BenchSection], out: Output) -> Result<()> {
    let started = *STARTED.get_or_init(Instant::now);
    let work = WorkDir::create()?;
    progress(format!(
        "working in {} ({})",
        work.path().display(),
        if quick { "quick" } else { "full" }
    ));
    let plan = Plan {
        quick,
        disk: if quick { 256 * MIB } else { 1024 * MIB },
    };
    let result = measure(work.path(), plan, only).await;
    drop(work);
    let figures = result?;
    progress(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    match out {
        Output::Json | Output::Yaml => {
            crate::output::print(out, &serde_json::to_value(&figures)?, &[])
        }
        Output::Table => print_table(&figures),
    }
    Ok(())
}

/// Runs the sections asked for (every one when `only` is empty), in their usual order.
async fn measure(dir: &Path, plan: Plan, only: &[BenchSection]) -> Result<Vec<Figure>> {
    use BenchSection::*;
    let wanted = |s: BenchSection| only.is_empty() || only.contains(&s);
    let rig = if [Nbd, Churn, Initial].into_iter().any(wanted) {
        Some(rig::Rig::start(dir).await?)
    } else {
        None
    };
    let pool = std::sync::Arc::new(data::Pool::new(64 * MIB as usize));
    let mut figures = Vec::new();
    if let Some(rig) = rig.as_ref().filter(|_| wanted(Nbd)) {
        figures.extend(
            nbd_write::run(rig, plan)
                .await
                .context("agent NBD write figures")?,
        );
    }
    if let Some(rig) = rig.as_ref().filter(|_| wanted(Churn)) {
        figures.extend(
            churn::run(rig, plan, &pool)
                .await
                .context("sustained churn figure")?,
        );
    }
    if let Some(rig) = rig.as_ref().filter(|_| wanted(Initial)) {
        figures.extend(
            initial::run(rig, plan, &pool)
                .await
                .context("initial replication figures")?,
        );
    }
    if wanted(Failover) {
        figures.extend(
            failover::run(dir, plan, &pool)
                .await
                .context("failover and reprotect figures")?,
        );
    }
    if wanted(Storage) {
        figures.extend(
            storage::run(dir, plan, &pool)
                .await
                .context("storage efficiency figures")?,
        );
    }
    if wanted(Repair) {
        figures.extend(
            repair::run(dir, plan, &pool)
                .await
                .context("repair figures")?,
        );
    }
    if wanted(Sites) {
        figures.extend(
            sites::run(dir, plan, &pool)
                .await
                .context("separate processes figures")?,
        );
    }
    Ok(figures)
}

fn print_table(figures: &[Figure]) {
    let head = [
        "NAME",
        "VALUE",
        "UNIT",
        "BASELINE",
        "BASELINE VALUE",
        "RATIO",
    ];
    let mut rows = vec![head.map(String::from).to_vec()];
    for f in figures {
        rows.push(vec![
            f.name.clone(),
            f.value.to_string(),
            f.unit.clone(),
            f.baseline.clone(),
            f.baseline_value.to_string(),
            format!("{:.2}", f.ratio),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    }
    outln!();
    for f in figures {
        outln!("{}", f.verdict());
    }
}
