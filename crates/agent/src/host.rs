//! The agent on one source host: the NBD listeners, the VMs whose disks it serves, and the
//! replication tasks of those that are protected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_format::segment::MarkerKind;
use ferry_nbd::{DynExport, Exports, NbdListener, TlsConfig};
use ferry_storage::DynStore;
use ferry_types::{Generation, Seq, StreamId};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catch_up::{self, CatchUpProgress};
use crate::disk::Disk;
use crate::hydrate::{self, BlockSource, Hydration, HydrationProgress};
use crate::initial_sync::{self, Progress, ProgressView};
use crate::stream::{Stream, StreamConfig, StreamStatus};
use crate::{AgentError, sealer};

/// One disk of a VM as the control plane describes it.
#[derive(Clone)]
pub struct DiskSpec {
    pub image: PathBuf,
    pub size: u64,
    /// Where the blocks of an image still being restored come from: when the image has a
    /// hydration bitmap ([`crate::hydrate::prepare`]), it is served at once and filled from
    /// this source on demand and in the background.
    pub hydrate_from: Option<Arc<dyn BlockSource>>,
    /// The VM is replicated and its stream is about to start: its writes wait for the stream,
    /// for at most this long ([`crate::hold`]).
    pub hold: Option<Duration>,
}

impl DiskSpec {
    /// A disk served from its image alone.
    pub fn plain(image: impl Into<PathBuf>, size: u64) -> DiskSpec {
        DiskSpec {
            image: image.into(),
            size,
            hydrate_from: None,
            hold: None,
        }
    }
}

/// What the control plane asks of a protected VM's stream.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub stream: StreamId,
    pub generation: Generation,
    /// The cache account, confined to this VM's own prefix.
    pub cache: DynStore,
    pub stream_config: StreamConfig,
    /// Cadence of crash-consistent markers.
    pub crash_consistent_every: Duration,
    /// Digests of the replica's blocks when it was seeded (a reprotect): the initial copy
    /// then sends only the blocks that differ.
    pub seed: Option<Arc<Vec<Vec<ferry_format::Digest>>>>,
    /// A repair: this (new) generation's stream continues the replica at this sequence, and
    /// starts by comparing every block with `seed`, sending the ones that differ.
    pub resync_from: Option<Seq>,
}

/// What a VM's replication looks like from the agent.
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VmStatus {
    pub stream: StreamStatus,
    pub initial_sync: ProgressView,
    /// Bytes of dirty blocks copied by catch-ups after the ship buffer overflowed, and how
    /// many catch-ups completed, since the agent started.
    pub catch_up_copied_bytes: u64,
    pub catch_ups_completed: u64,
}

struct Replication {
    stream: Arc<Stream>,
    progress: Arc<Progress>,
    catch_up: Arc<CatchUpProgress>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Vm {
    disks: Vec<Arc<Disk>>,
    replication: Option<Replication>,
    /// The background hydration of disks restored from a recovery point.
    hydration: Option<(watch::Sender<bool>, Vec<JoinHandle<()>>)>,
}

/// Who may reach the host's NBD exports.
#[derive(Debug, Clone, Default)]
pub struct NbdAccess {
    /// The group of the unix socket (mode 0660): its members, and the agent's user, may use
    /// every export. Default: the process's effective group.
    pub socket_group: Option<u32>,
    /// Serve the exports over TCP as well, only with TLS. Default: no TCP at all.
    pub tcp: Option<NbdTcp>,
}

/// A TLS-only TCP listener for the host's exports.
#[derive(Debug, Clone)]
pub struct NbdTcp {
    /// The address to listen on: a fixed port, so clients find it after a restart.
    pub listen: SocketAddr,
    pub tls: TlsConfig,
}

/// The agent of one host.
pub struct AgentHost {
    root: PathBuf,
    exports: Arc<Exports>,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    vms: Mutex<HashMap<String, Vm>>,
    /// Held while a VM is being attached.
    attaching: Mutex<()>,
    _shutdown: watch::Sender<bool>,
}

impl AgentHost {
    /// Start the host's NBD listener: a unix socket under `root`, mode 0660, in the process's
    /// own group; no TCP.
    pub async fn start(root: &Path) -> Result<Arc<AgentHost>, AgentError> {
        Self::start_with(root, &NbdAccess::default()).await
    }

    /// Start the host's NBD listeners: the unix socket `root/nbd.sock` (mode 0660, group
    /// `access.socket_group`), and a TLS-only TCP listener when `access.tcp` asks for one.
    pub async fn start_with(root: &Path, access: &NbdAccess) -> Result<Arc<AgentHost>, AgentError> {
        std::fs::create_dir_all(root).map_err(AgentError::io("create agent directory", root))?;
        let exports = Arc::new(Exports::new());
        let (tx, rx) = watch::channel(false);
        let socket = root.join("nbd.sock");
        let unix = NbdListener::bind_unix_for_group(&socket, access.socket_group)?;
        let tcp = match &access.tcp {
            None => None,
            Some(t) => Some(NbdListener::bind_tcp_tls(t.listen, t.tls.clone()).await?),
        };
        let tcp_addr = tcp.as_ref().and_then(NbdListener::local_addr);
        tokio::spawn(unix.serve(exports.clone(), rx.clone()));
        if let Some(tcp) = tcp {
            tokio::spawn(tcp.serve(exports.clone(), rx));
        }
        Ok(Arc::new(AgentHost {
            root: root.to_path_buf(),
            exports,
            socket,
            tcp: tcp_addr,
            vms: Mutex::new(HashMap::new()),
            attaching: Mutex::new(()),
            _shutdown: tx,
        }))
    }

    pub fn nbd_socket(&self) -> &Path {
        &self.socket
    }

    /// The TLS-only TCP address, when one is configured.
    pub fn nbd_tcp(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The NBD export name of a VM's disk.
    pub fn export_name(vm: &str, disk: usize) -> String {
        format!("{}.disk{disk}", vm.replace('/', "."))
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vm>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve a VM's disks (creating missing images). Serving an attached VM again is a no-op.
    ///
    /// If the VM's stream stopped without a clean shutdown, its logged changes are first made
    /// again on the images ([`crate::redo`]), before anything can read them. That may read and
    /// write up to the ship buffer's worth of logs: call it off the async workers.
    pub fn attach_vm(&self, vm: &str, disks: &[DiskSpec]) -> Result<(), AgentError> {
        // One attach at a time, so no redo runs on disks another attach has started serving;
        // the VMs' table is not locked meanwhile (a redo can take a while).
        let _attaching = self.attaching.lock().unwrap_or_else(|p| p.into_inner());
        if self.vms().contains_key(vm) {
            return Ok(());
        }
        let specs = disks;
        let disks = specs
            .iter()
            .enumerate()
            .map(|(i, d)| Disk::open_or_create(&d.image, d.size, i as u16).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        crate::redo::after_unclean_stop(&self.stream_dir(vm), &disks);
        let mut hydrating = Vec::new();
        for (d, spec) in disks.iter().zip(specs) {
            let Some(source) = &spec.hydrate_from else {
                continue;
            };
            let runtime = tokio::runtime::Handle::current();
            if let Some(h) = Hydration::open(&spec.image, spec.size, source.clone(), runtime)? {
                let h = Arc::new(h);
                d.set_hydration(Some(h.clone()));
                hydrating.push((d.clone(), h));
            }
        }
        for (d, spec) in disks.iter().zip(specs) {
            if let Some(deadline) = spec.hold {
                d.hold(deadline, &self.stream_dir(vm));
            }
        }
        let hydration = (!hydrating.is_empty()).then(|| {
            let (tx, rx) = watch::channel(false);
            let tasks = hydrating
                .into_iter()
                .map(|(d, h)| tokio::spawn(hydrate::run(d, h, rx.clone())))
                .collect();
            (tx, tasks)
        });
        let mut vms = self.vms();
        for d in &disks {
            self.exports.insert(
                Self::export_name(vm, d.index() as usize),
                d.clone() as DynExport,
            );
        }
        vms.insert(
            vm.to_string(),
            Vm {
                disks,
                replication: None,
                hydration,
            },
        );
        Ok(())
    }

    /// Stop serving a VM (its replication stops too). Its images stay on disk.
    pub async fn detach_vm(&self, vm: &str) {
        self.stop_replication(vm).await;
        let Some(v) = self.vms().remove(vm) else {
            return;
        };
        for d in &v.disks {
            self.exports
                .remove(&Self::export_name(vm, d.index() as usize));
        }
        if let Some((stop, tasks)) = v.hydration {
            let _ = stop.send(true);
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    /// How far the hydration of each disk of a VM has come (`None` for a disk that is whole);
    /// `None` when the VM is not served.
    pub fn hydration(&self, vm: &str) -> Option<Vec<Option<HydrationProgress>>> {
        let vms = self.vms();
        let v = vms.get(vm)?;
        Some(
            v.disks
                .iter()
                .map(|d| d.hydration().map(|h| h.progress(d.size())))
                .collect(),
        )
    }

    /// Start (or resume after a restart) a VM's write stream: attach it to the disks, start the
    /// sealer and the marker cadence, and run the initial copy unless it already finished.
    pub fn start_replication(&self, vm: &str, cfg: ReplicationConfig) -> Result<(), AgentError> {
        let mut vms = self.vms();
        let entry = vms
            .get_mut(vm)
            .ok_or_else(|| AgentError::UnknownVm(vm.to_string()))?;
        if entry
            .replication
            .as_ref()
            .is_some_and(|r| r.stream.id() == cfg.stream)
        {
            return Ok(());
        }
        let dir = self.stream_dir(vm);
        let stream = Stream::open_at(
            &dir,
            cfg.stream,
            cfg.generation,
            cfg.stream_config.clone(),
            cfg.resync_from,
        )?;
        stream.set_disk_sizes(entry.disks.iter().map(|d| d.size()).collect());
        let images: Vec<&Path> = entry.disks.iter().map(|d| d.path()).collect();
        let trusted = crate::hold::check(&dir, stream.initial_sync_done())
            .and_then(|()| stream.check_stopped(&images));
        if let Err(e) = trusted {
            if matches!(e, AgentError::TrackingLost { .. }) {
                // The stream cannot continue; a repair compares every block. The VM goes on.
                for d in &entry.disks {
                    d.release();
                }
            }
            return Err(e);
        }
        for d in &entry.disks {
            d.attach(Some(stream.clone()));
        }
        let (tx, rx) = watch::channel(false);
        let progress = Arc::new(Progress::default());
        let mut tasks = vec![tokio::spawn(sealer::run(
            stream.clone(),
            cfg.cache.clone(),
            rx.clone(),
        ))];
        tasks.push(tokio::spawn(mark_every(
            stream.clone(),
            cfg.crash_consistent_every,
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::alive::run(dir.clone(), rx)));
        let catch_up = Arc::new(CatchUpProgress::default());
        {
            let (disks, s, p, c) = (
                entry.disks.clone(),
                stream.clone(),
                progress.clone(),
                catch_up.clone(),
            );
            tasks.push(tokio::task::spawn_blocking(move || {
                if let Err(e) = catch_up::run(&disks, &s, &c, &p.cancelled) {
                    tracing::error!(error = %e, "catch-up after the ship buffer overflowed");
                    s.set_error(Some(format!(
                        "catch-up after the ship buffer overflowed: {e}"
                    )));
                }
            }));
        }
        if !stream.initial_sync_done() {
            let (disks, s, p) = (entry.disks.clone(), stream.clone(), progress.clone());
            let seed = cfg.seed.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let copied = initial_sync::run(&disks, &s, &p, seed.as_deref().map(|v| &v[..]));
                let done = match copied {
                    Ok(Some(_)) if s.resyncing() => s.finish_resync(),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::error!(error = %e, "initial replication");
                    s.set_error(Some(format!("initial replication: {e}")));
                }
            }));
        } else {
            if stream.resyncing() {
                // Stopped after the resync's copy but before its window closed.
                stream.finish_resync()?;
            }
            let total = entry
                .disks
                .iter()
                .map(|d| ferry_nbd::Export::size(d.as_ref()))
                .sum();
            progress
                .total_bytes
                .store(total, std::sync::atomic::Ordering::Relaxed);
            progress
                .scanned_bytes
                .store(total, std::sync::atomic::Ordering::Relaxed);
        }
        entry.replication = Some(Replication {
            stream,
            progress,
            catch_up,
            shutdown: tx,
            tasks,
        });
        Ok(())
    }

    /// Stop a VM's stream: detach it from the disks and stop its tasks. Logs stay on disk,
    /// with the images' stamps: a write the disks take while the stream is stopped is seen
    /// at the next start.
    pub async fn stop_replication(&self, vm: &str) {
        self.stop(vm, None).await
    }

    /// Stop a VM's stream; with `hold`, the VM's later writes wait (for at most that long)
    /// instead of reaching the images unrecorded after their stamps are taken.
    async fn stop(&self, vm: &str, hold: Option<Duration>) {
        let dir = self.stream_dir(vm);
        let (rep, disks) = {
            let mut vms = self.vms();
            let Some(entry) = vms.get_mut(vm) else { return };
            for d in &entry.disks {
                match hold {
                    Some(deadline) if entry.replication.is_some() => d.hold(deadline, &dir),
                    _ => d.release(),
                }
            }
            (entry.replication.take(), entry.disks.clone())
        };
        let Some(r) = rep else { return };
        // Between writes: a write in progress may be fetching a block of a restoring disk
        // through this runtime, so the wait for it is not on one of its workers.
        let (stream, images) = (r.stream.clone(), disks.clone());
        let detached = tokio::task::spawn_blocking(move || {
            for d in &disks {
                d.detach_from(&stream);
            }
        });
        if let Err(e) = detached.await {
            tracing::error!(vm, error = %e, "detach the stream from the disks");
        }
        let paths: Vec<&Path> = images.iter().map(|d| d.path()).collect();
        if let Err(e) = ferry_types::blocking::off_worker(|| r.stream.record_stop(&paths)) {
            tracing::warn!(vm, error = %e, "record the disk images' stamps at stop");
        }
        r.progress
            .cancelled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = r.shutdown.send(true);
        for t in r.tasks {
            let _ = t.await;
        }
    }

    /// Stop every stream (a clean shutdown of the host). Writes made from now on wait, for at
    /// most `hold`, for the streams to start again (in the next process, after a reconnect):
    /// none reaches an image unrecorded after its stamp is taken.
    pub async fn stop_all(&self, hold: Duration) {
        let vms: Vec<String> = self.vms().keys().cloned().collect();
        for vm in vms {
            self.stop(&vm, Some(hold)).await;
        }
    }

    /// Let a VM's held writes go without a stream: its item will not start now (a reprotect
    /// still seeding, a repair to come), and what starts later copies every block.
    pub fn release_vm(&self, vm: &str) {
        if let Some(v) = self.vms().get(vm) {
            for d in &v.disks {
                d.release();
            }
        }
    }

    /// True while a VM's writes wait for its stream.
    pub fn held(&self, vm: &str) -> bool {
        self.vms()
            .get(vm)
            .is_some_and(|v| v.disks.iter().any(|d| d.is_held()))
    }

    fn stream_dir(&self, vm: &str) -> PathBuf {
        self.root.join("streams").join(vm.replace('/', "."))
    }

    /// Stop a VM's stream and delete its local logs.
    pub async fn forget_replication(&self, vm: &str) -> Result<(), AgentError> {
        self.stop_replication(vm).await;
        let dir = self.stream_dir(vm);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(AgentError::io("remove stream logs", &dir)(e))
            }
            _ => Ok(()),
        }
    }

    /// Put a marker in a VM's stream now; returns its sequence. It syncs the stream's logs:
    /// call it off the async workers. The host's table of VMs is not locked meanwhile.
    pub fn mark(&self, vm: &str, kind: MarkerKind) -> Result<Seq, AgentError> {
        let stream = self
            .vms()
            .get(vm)
            .and_then(|v| v.replication.as_ref())
            .map(|r| r.stream.clone())
            .ok_or_else(|| AgentError::UnknownVm(vm.to_string()))?;
        stream.mark(kind)
    }

    /// The generation of a VM's running stream.
    pub fn generation(&self, vm: &str) -> Option<Generation> {
        let vms = self.vms();
        Some(vms.get(vm)?.replication.as_ref()?.stream.generation())
    }

    /// The VMs this host serves.
    pub fn vm_names(&self) -> Vec<String> {
        self.vms().keys().cloned().collect()
    }

    pub fn status(&self, vm: &str) -> Option<VmStatus> {
        let vms = self.vms();
        let entry = vms.get(vm)?;
        let rep = entry.replication.as_ref()?;
        let mut stream = rep.stream.status();
        let disks = entry.disks.len().max(stream.bytes_changed_per_disk.len());
        stream.bytes_changed_per_disk.resize(disks, 0);
        Some(VmStatus {
            stream,
            initial_sync: rep.progress.view(),
            catch_up_copied_bytes: rep
                .catch_up
                .copied_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            catch_ups_completed: rep
                .catch_up
                .completed
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

async fn mark_every(stream: Arc<Stream>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if stream.unordered_since().is_some() {
            // No point inside a catch-up window; the catch-up-done marker will be one.
            continue;
        }
        // The marker is durable when cut (an fsync of the unsynced logs): not on a worker of
        // the runtime, which also serves the disks' NBD connections.
        let s = stream.clone();
        let marked = tokio::task::spawn_blocking(move || s.mark(MarkerKind::CrashConsistent));
        let result = match marked.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "cut crash-consistent marker");
                continue;
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cut crash-consistent marker");
            stream.set_error(Some(e.to_string()));
        }
    }
}
