//! The in-process pipeline under test: one [`AgentHost`], and for each protected VM its stream
//! shipping to a local `file://` cache account and, optionally, a [`Processor`] applying it to
//! a local `file://` target account.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_agent::stream::StreamConfig;
use ferry_agent::{AgentHost, DiskSpec, ReplicationConfig, VmStatus};
use ferry_replica::{Processor, ProcessorConfig, ProcessorStatus, ReplicaLayout};
use ferry_storage::{DynStore, Key};
use ferry_types::{Generation, StreamId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Rig {
    pub dir: PathBuf,
    pub host: Arc<AgentHost>,
}

/// A VM whose stream runs (and whose processor runs, when asked for).
pub struct Protected {
    pub vm: String,
    pub processor: Option<Arc<Mutex<ProcessorStatus>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Rig {
    pub async fn start(dir: &Path) -> Result<Rig> {
        let host = AgentHost::start(&dir.join("agent"))
            .await
            .context("start the agent")?;
        Ok(Rig {
            dir: dir.to_path_buf(),
            host,
        })
    }

    /// Serves a VM's disks (images created sparse when missing).
    pub fn attach(&self, vm: &str, disks: &[(PathBuf, u64)]) -> Result<()> {
        let specs: Vec<DiskSpec> = disks
            .iter()
            .map(|(image, size)| DiskSpec::plain(image.clone(), *size))
            .collect();
        self.host
            .attach_vm(vm, &specs)
            .with_context(|| format!("attach {vm}"))?;
        Ok(())
    }

    /// `nbd+unix:///EXPORT?socket=...` of a VM's disk.
    pub fn url(&self, vm: &str, disk: usize) -> String {
        ferry_nbd::bench::unix_url(self.host.nbd_socket(), &AgentHost::export_name(vm, disk))
    }

    /// Starts the VM's stream (shipping to `DIR/cache`) and, with `disk_sizes`, a processor
    /// applying it to `DIR/target`.
    pub fn protect(&self, vm: &str, disk_sizes: Option<Vec<u64>>) -> Result<Protected> {
        let stream = StreamId::random();
        let cache_root = open_store(&self.dir.join("cache"))?;
        let cache = ferry_storage::scoped(
            cache_root,
            Key::from_segments(["streams", &stream.to_string()])?,
        );
        self.host
            .start_replication(
                vm,
                ReplicationConfig {
                    stream,
                    generation: Generation(1),
                    cache: cache.clone(),
                    stream_config: StreamConfig::default(),
                    crash_consistent_every: Duration::from_secs(5),
                    seed: None,
                    resync_from: None,
                },
            )
            .with_context(|| format!("start replication of {vm}"))?;
        let (stop, stopped) = watch::channel(false);
        let (mut processor, mut task) = (None, None);
        if let Some(sizes) = disk_sizes {
            let target = open_store(&self.dir.join("target"))?;
            let layout = ReplicaLayout::new(stream, target.clone(), vec![target; sizes.len()]);
            let p = Processor::new(layout, cache, sizes, ProcessorConfig::default());
            processor = Some(p.status());
            task = Some(tokio::spawn(p.run(stopped)));
        }
        Ok(Protected {
            vm: vm.into(),
            processor,
            stop,
            task,
        })
    }

    pub fn status(&self, vm: &str) -> Result<VmStatus> {
        let s = self
            .host
            .status(vm)
            .with_context(|| format!("{vm} is not replicating"))?;
        if let Some(e) = &s.stream.last_error {
            bail!("{vm}: stream error: {e}");
        }
        Ok(s)
    }

    /// Stops the processor and the stream, and stops serving the VM.
    pub async fn release(&self, p: Protected) {
        let _ = p.stop.send(true);
        if let Some(t) = p.task {
            let _ = t.await;
        }
        self.host.detach_vm(&p.vm).await;
    }
}

impl Protected {
    pub fn processor(&self) -> Result<ProcessorStatus> {
        let Some(s) = &self.processor else {
            bail!("{} has no processor", self.vm)
        };
        Ok(s.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn open_store(dir: &Path) -> Result<DynStore> {
    let url = format!("file://{}", dir.display());
    ferry_storage::open(&url).with_context(|| format!("open {url}"))
}

/// Polls `cond` every 20 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
