//! Carrying out the control plane's [`Command`]s on a host's [`AgentHost`], and the host's
//! [`Report`]. The server's own agent and a joined host's agent run the same code; only the way
//! the commands arrive differs.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_storage::{DynStore, Key, Renewable};

use crate::command::{
    CacheWire, Command, DiskWire, Outcome, Report, VmReport, WireError, parse_seed,
};
use crate::host::{AgentHost, DiskSpec, ReplicationConfig};
use crate::hydrate::BlockSource;
use crate::restore::{RestoreDisk, ServerBlocks};

/// Opens the cache account a stream ships to: with the shared access signature the server
/// sent when there is one, else with the agent's own credentials.
pub type OpenStore = Arc<dyn Fn(&str, Option<&str>) -> Result<DynStore, String> + Send + Sync>;

/// A stream's cache account: its URL and prefix, and the store its stream ships through.
type StreamCache = (String, String, Arc<Renewable>);

/// A host's agent as the control plane drives it.
pub struct Executor {
    host: Arc<AgentHost>,
    /// Relative image paths are under here; an absolute one is taken as it is only when
    /// `absolute_images` (the server's own agent, whose paths the server chose).
    root: PathBuf,
    absolute_images: bool,
    open_store: OpenStore,
    /// Where restored disks come from (a joined host: the server); `None` for the server's own
    /// agent, whose restores the server serves directly.
    restore: Option<Arc<dyn ServerBlocks>>,
    /// The point each VM's disks were last attached to be restored from.
    restored_from: Mutex<HashMap<String, String>>,
    /// Each VM's cache account as its stream ships to it; a start-stream sent again with a
    /// fresh SAS renews it under the running stream.
    caches: Mutex<HashMap<String, StreamCache>>,
    version: String,
}

impl Executor {
    pub fn new(
        host: Arc<AgentHost>,
        root: PathBuf,
        absolute_images: bool,
        open_store: OpenStore,
        restore: Option<Arc<dyn ServerBlocks>>,
        version: String,
    ) -> Self {
        Executor {
            host,
            root,
            absolute_images,
            open_store,
            restore,
            restored_from: Mutex::default(),
            caches: Mutex::default(),
            version,
        }
    }

    pub fn host(&self) -> &Arc<AgentHost> {
        &self.host
    }

    /// Carry out one command. Blocking parts (a redo, a stream's start, a marker's sync) run
    /// off the async workers.
    pub async fn execute(&self, command: Command) -> Outcome {
        match self.run(command).await {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed { error },
        }
    }

    async fn run(&self, command: Command) -> Result<Outcome, WireError> {
        let host = self.host.clone();
        match command {
            Command::AttachVm { vm, disks, hold_ms } => {
                let specs = disks
                    .iter()
                    .map(|d| {
                        Ok(DiskSpec {
                            hold: hold_ms.map(Duration::from_millis),
                            hydrate_from: self.restore_source(&vm, d)?,
                            ..DiskSpec::plain(self.image_path(d)?, d.size_bytes)
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                let point = disks.iter().find_map(|d| d.restore.clone());
                let name = vm.clone();
                blocking(move || host.attach_vm(&name, &specs)).await?;
                let mut restored = self.restored();
                match point {
                    Some(p) => restored.insert(vm, p),
                    None => restored.remove(&vm),
                };
            }
            Command::DetachVm { vm } => {
                host.detach_vm(&vm).await;
                self.restored().remove(&vm);
            }
            Command::PrepareRestore { vm, point, disks } => {
                self.prepare_restore(&vm, &point, &disks).await?
            }
            Command::UploadDisks { vm, upload, disks } => self.upload_disks(&vm, upload, &disks)?,
            Command::DeleteVm { vm, disks } => {
                let paths = disks
                    .iter()
                    .map(|d| self.image_path(d))
                    .collect::<Result<Vec<_>, _>>()?;
                host.detach_vm(&vm).await;
                self.restored().remove(&vm);
                host.forget_replication(&vm).await?;
                self.caches().remove(&vm);
                blocking(move || {
                    for p in &paths {
                        remove_if_present(p)?;
                        remove_if_present(&crate::hydrate::bitmap_path(p))?;
                        if let Some(dir) = p.parent() {
                            let _ = std::fs::remove_dir(dir);
                        }
                    }
                    Ok::<_, WireError>(())
                })
                .await?;
            }
            Command::StartStream {
                vm,
                stream,
                generation,
                cache,
                config,
                crash_consistent_every_ms,
                seed,
                resync_from,
            } => {
                let seed = seed
                    .map(|s| parse_seed(&s).map(Arc::new))
                    .transpose()
                    .map_err(|message| WireError::Other { message })?;
                let cfg = ReplicationConfig {
                    stream,
                    generation,
                    cache: self.cache(&vm, &cache)?,
                    stream_config: (&config).into(),
                    crash_consistent_every: Duration::from_millis(crash_consistent_every_ms),
                    seed,
                    resync_from,
                };
                blocking(move || host.start_replication(&vm, cfg)).await?;
            }
            Command::StopStream { vm } => host.stop_replication(&vm).await,
            Command::ForgetStream { vm } => {
                host.forget_replication(&vm).await?;
                self.caches().remove(&vm);
            }
            Command::ReleaseVm { vm } => host.release_vm(&vm),
            Command::Mark {
                vm,
                generation,
                kind,
            } => {
                match host.generation(&vm) {
                    Some(g) if g != generation => {
                        return Err(WireError::Stale {
                            message: format!(
                                "the stream of VM {vm} is at generation {g}; a marker for \
                                 generation {generation} was refused"
                            ),
                        });
                    }
                    _ => {}
                }
                let seq = blocking(move || host.mark(&vm, kind.into())).await?;
                return Ok(Outcome::Marked { seq });
            }
            Command::StartVm {
                vm,
                disks,
                boot,
                memory_mib,
                ip,
            } => {
                crate::guests::start(&host, &self.root, &vm, &disks, &boot, memory_mib, ip).await?
            }
            Command::StopVm { vm, grace_ms } => {
                crate::guests::stop(&self.root, &vm, Duration::from_millis(grace_ms)).await?
            }
            Command::Freeze { vm, timeout_ms } => {
                crate::guests::freeze(&self.root, &vm, Duration::from_millis(timeout_ms)).await?
            }
            Command::Thaw { vm, timeout_ms } => {
                crate::guests::thaw(&self.root, &vm, Duration::from_millis(timeout_ms)).await?
            }
            Command::Console { vm } => {
                let text = crate::guests::console(&self.root, &vm)?;
                return Ok(Outcome::Console { text });
            }
        }
        Ok(Outcome::Done)
    }

    /// Every VM this host serves, with its stream's state: the heartbeat's body.
    pub fn report(&self) -> Report {
        let vms = self
            .host
            .vm_names()
            .into_iter()
            .map(|vm| {
                let hydration = self
                    .host
                    .hydration(&vm)
                    .filter(|disks| disks.iter().any(Option::is_some));
                let r = VmReport {
                    held: self.host.held(&vm),
                    replication: self.host.status(&vm),
                    restored_from: self.restored().get(&vm).cloned(),
                    hydration,
                };
                (vm, r)
            })
            .collect();
        let free_bytes = nix::sys::statvfs::statvfs(&self.root)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0);
        Report {
            version: self.version.clone(),
            free_bytes,
            nbd_socket: self.host.nbd_socket().display().to_string(),
            nbd_tcp: self.host.nbd_tcp().map(|a| a.to_string()),
            vms,
        }
    }

    fn restored(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.restored_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn point_blocks(&self) -> Result<&Arc<dyn ServerBlocks>, WireError> {
        self.restore.as_ref().ok_or_else(|| WireError::Other {
            message: "this agent restores no disk from a recovery point".into(),
        })
    }

    /// The source of a disk still being restored.
    fn restore_source(
        &self,
        vm: &str,
        d: &DiskWire,
    ) -> Result<Option<Arc<dyn BlockSource>>, WireError> {
        let Some(point) = &d.restore else {
            return Ok(None);
        };
        Ok(Some(self.point_blocks()?.source(RestoreDisk {
            vm: vm.to_string(),
            disk: d.index,
            point: point.clone(),
        })))
    }

    /// Make a detached VM's disks empty images that hydrate from `point`. Nothing is changed
    /// while the VM is served, or before every disk's list of blocks has arrived.
    async fn prepare_restore(
        &self,
        vm: &str,
        point: &str,
        disks: &[DiskWire],
    ) -> Result<(), WireError> {
        if self.host.vm_names().iter().any(|v| v == vm) {
            return Err(WireError::Other {
                message: format!("VM {vm} is served; detach it before its disks are restored"),
            });
        }
        let source = self.point_blocks()?;
        let mut plans = Vec::new();
        for d in disks {
            let present = source
                .present(RestoreDisk {
                    vm: vm.to_string(),
                    disk: d.index,
                    point: point.to_string(),
                })
                .await
                .map_err(|message| WireError::Other { message })?;
            let count = d.size_bytes.div_ceil(ferry_format::BLOCK_SIZE);
            let blocks = present.blocks(count).map_err(|e| WireError::Other {
                message: format!("disk {} of VM {vm} at {point}: {e}", d.index),
            })?;
            plans.push((self.image_path(d)?, d.size_bytes, blocks));
        }
        blocking(move || {
            for (image, size, blocks) in &plans {
                crate::hydrate::prepare(image, *size, blocks)?;
            }
            Ok::<_, crate::AgentError>(())
        })
        .await
    }

    /// Start sending a detached VM's disks to the server, range by range (see
    /// [`crate::restore`]); answers once they are found, and fails when one is missing.
    fn upload_disks(&self, vm: &str, upload: u64, disks: &[DiskWire]) -> Result<(), WireError> {
        if self.host.vm_names().iter().any(|v| v == vm) {
            return Err(WireError::Other {
                message: format!("VM {vm} is served; detach it before its disks are sent"),
            });
        }
        let mut images = Vec::new();
        for d in disks {
            let path = self.image_path(d)?;
            if !path.is_file() {
                return Err(WireError::Other {
                    message: format!("disk {} of VM {vm} is not on this host", d.index),
                });
            }
            images.push((d.index, path, d.size_bytes));
        }
        let server = self.point_blocks()?.clone();
        let vm = vm.to_string();
        tokio::spawn(async move {
            if let Err(e) = crate::seed_upload::send(server.as_ref(), upload, &images).await {
                tracing::warn!(%vm, error = %e, "sending the disks to the server failed");
            }
        });
        Ok(())
    }

    /// Where a disk's image is: under the agent's data directory, never outside it.
    fn image_path(&self, d: &DiskWire) -> Result<PathBuf, WireError> {
        let p = Path::new(&d.image);
        if p.is_absolute() {
            if self.absolute_images {
                return Ok(p.to_path_buf());
            }
            return Err(WireError::Other {
                message: format!(
                    "disk image {:?} must be a path under the agent's data directory",
                    d.image
                ),
            });
        }
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(WireError::Other {
                message: format!(
                    "disk image {:?} may not leave the agent's data directory",
                    d.image
                ),
            });
        }
        Ok(self.root.join(p))
    }

    /// The VM's cache account, confined to its stream's prefix. The same account and prefix
    /// as before (a start-stream sent again) is the same store, renewed with the credential
    /// just sent, so a running stream ships with it from its next call.
    fn cache(&self, vm: &str, c: &CacheWire) -> Result<DynStore, WireError> {
        let store = (self.open_store)(&c.url, c.sas.as_deref())
            .map_err(|message| WireError::Other { message })?;
        let prefix = Key::parse(&c.prefix).map_err(|e| WireError::Other {
            message: format!("cache prefix {:?}: {e}", c.prefix),
        })?;
        let store = ferry_storage::scoped(store, prefix);
        let mut caches = self.caches();
        match caches.get(vm) {
            Some((url, prefix, renewable)) if *url == c.url && *prefix == c.prefix => {
                renewable.renew(store);
                Ok(renewable.clone())
            }
            _ => {
                let renewable = Renewable::new(store);
                caches.insert(
                    vm.to_owned(),
                    (c.url.clone(), c.prefix.clone(), renewable.clone()),
                );
                Ok(renewable)
            }
        }
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamCache>> {
        self.caches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn remove_if_present(p: &Path) -> Result<(), WireError> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WireError::Other {
            message: format!("remove {}: {e}", p.display()),
        }),
        _ => Ok(()),
    }
}

/// Run blocking agent work off the async workers.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, WireError>
where
    T: Send + 'static,
    E: Into<WireError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(WireError::Other {
            message: format!("agent task failed: {e}"),
        }),
    }
}
