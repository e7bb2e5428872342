//! WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE through a replicated disk (libnbd's nbdsh as the
//! client): the image keeps its blocks, and the stream records the zeroes as it does without
//! the flag.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use ferry_agent::stream::StreamConfig;
use ferry_agent::{AgentHost, DiskSpec, ReplicationConfig};
use ferry_types::{Generation, StreamId};

const VM: &str = "rg1/vm1";
const MIB: u64 = 1 << 20;

type Result<T = ()> = anyhow::Result<T>;

fn config(dir: &std::path::Path) -> Result<ReplicationConfig> {
    let cache = ferry_storage::open(&format!("file://{}", dir.join("cache").display()))?;
    Ok(ReplicationConfig {
        stream: StreamId([7; 16]),
        generation: Generation(1),
        cache,
        stream_config: StreamConfig::default(),
        crash_consistent_every: Duration::from_secs(60),
        seed: None,
        resync_from: None,
    })
}

fn recorded(host: &AgentHost) -> u64 {
    host.status(VM)
        .map(|s| s.stream.bytes_changed_per_disk[0])
        .unwrap_or(0)
}

/// Runs `script` in nbdsh (the system python3's libnbd binding); its stdout.
async fn nbdsh(script: &str) -> Result<String> {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("nbdsh")
        .args(["-c", script])
        .env("PATH", path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("run nbdsh (scripts/install-test-tools installs it): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "nbdsh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hole_zeroes_keep_the_image_allocated_and_are_recorded() -> Result {
    let dir = tempfile::tempdir()?;
    let host = AgentHost::start(&dir.path().join("agent")).await?;
    let image = dir.path().join("d0.raw");
    host.attach_vm(VM, &[DiskSpec::plain(&image, 4 * MIB)])?;
    host.start_replication(VM, config(dir.path())?)?;
    tokio::time::timeout(Duration::from_secs(30), async {
        while host
            .status(VM)
            .is_none_or(|s| s.stream.initial_sync_done_seq.is_none())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let before = recorded(&host);
    let url = format!(
        "nbd+unix:///{}?socket={}",
        AgentHost::export_name(VM, 0),
        host.nbd_socket().display()
    );
    let script = format!(
        r#"
h.connect_uri({url:?})
h.pwrite(b"\xff" * {MIB}, 0)
h.flush()
h.zero({MIB}, 0, nbd.CMD_FLAG_NO_HOLE)
h.flush()
assert h.pread({MIB}, 0) == bytes({MIB})
"#
    );
    nbdsh(&script).await?;
    let after = std::fs::metadata(&image)?.blocks();
    assert!(
        after >= 2048,
        "1 MiB written is 2048 sectors; the image has {after}"
    );
    assert_eq!(
        recorded(&host) - before,
        2 * MIB,
        "the write and the zeroes are both in the stream"
    );
    assert!(
        std::fs::read(&image)?[..MIB as usize]
            .iter()
            .all(|b| *b == 0)
    );
    // Without NO_HOLE the agent punches the range (and records it the same).
    let script = format!("h.connect_uri({url:?})\nh.zero({MIB}, 0)\nh.flush()\n");
    nbdsh(&script).await?;
    assert!(std::fs::metadata(&image)?.blocks() < after);
    assert_eq!(recorded(&host) - before, 3 * MIB);
    host.stop_replication(VM).await;
    Ok(())
}
