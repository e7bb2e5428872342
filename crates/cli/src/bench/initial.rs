//! Figure 3: initial replication end to end, from starting the stream on a disk that already
//! holds data to the processor publishing the first recovery point.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::data::{self, Pool};
use super::rig::{Rig, wait_for};
use super::{Figure, MB, MIB, Plan, Target, progress};

const BASELINE: &str = "raw sequential read of the same file (page cache)";

pub async fn run(rig: &Rig, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let cases = [
        ("initial_replication_random", 1, Target::None),
        (
            "initial_replication_mostly_zero",
            50,
            Target::AtLeast(1000.0),
        ),
    ];
    let mut figures = Vec::new();
    for (name, every, target) in cases {
        let dir = rig.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let image = dir.join("disk0.img");
        let (path, p2) = (image.clone(), pool.clone());
        let size = plan.disk;
        tokio::task::spawn_blocking(move || fill_image(&path, size, every, &p2)).await??;
        let path = image.clone();
        let baseline = tokio::task::spawn_blocking(move || data::read_file(&path)).await??;
        let vm = format!("bench/{name}");
        rig.attach(&vm, &[(image, size)])?;
        let t = Instant::now();
        let p = rig.protect(&vm, Some(vec![size]))?;
        let waited = wait_for("the first recovery point", Duration::from_secs(600), || {
            Ok(p.processor()?.initial_sync_seq)
        })
        .await;
        let secs = t.elapsed().as_secs_f64();
        let sent = rig
            .status(&vm)
            .map(|s| s.initial_sync.sent_bytes)
            .unwrap_or(0);
        rig.release(p).await;
        let _ = std::fs::remove_dir_all(&dir);
        waited?;
        let rate = size as f64 / MB / secs;
        progress(format!(
            "{name}: {} MiB disk ({} MiB non-zero) replicated in {secs:.2} s = {rate:.0} MB/s; raw read {baseline:.0} MB/s",
            size / MIB,
            sent / MIB
        ));
        figures.push(Figure::new(name, rate, "MB/s", BASELINE, baseline, target));
    }
    Ok(figures)
}

/// Creates a sparse image of `size` bytes and writes a distinct random 1 MiB block at every
/// `every`-th MiB (every MiB when 1), so 1/`every` of it is data and the rest zero.
fn fill_image(path: &Path, size: u64, every: u64, pool: &Pool) -> Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let mut buf = vec![0u8; MIB as usize];
    for i in (0..size / MIB).filter(|i| i % every == every / 2) {
        pool.fill((2 << 40) + i, &mut buf);
        f.write_all_at(&buf, i * MIB)?;
    }
    Ok(())
}
