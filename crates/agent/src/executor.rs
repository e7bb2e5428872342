//! Carrying out the control plane's [`Command`]s on a host's [`AgentHost`], and the host's
//! [`Report`]. The server's own agent and a joined host's agent run the same code; only the way
//! the commands arrive differs.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_storage::{DynStore, Key};

use crate::command::{
    CacheWire, Command, DiskWire, Outcome, Report, VmReport, WireError, parse_seed,
};
use crate::host::{AgentHost, DiskSpec, ReplicationConfig};

/// Opens the cache account a stream ships to (the agent's own credentials apply).
pub type OpenStore = Arc<dyn Fn(&str) -> Result<DynStore, String> + Send + Sync>;

/// A host's agent as the control plane drives it.
pub struct Executor {
    host: Arc<AgentHost>,
    /// Relative image paths are under here; an absolute one is taken as it is only when
    /// `absolute_images` (the server's own agent, whose paths the server chose).
    root: PathBuf,
    absolute_images: bool,
    open_store: OpenStore,
    version: String,
}

impl Executor {
    pub fn new(
        host: Arc<AgentHost>,
        root: PathBuf,
        absolute_images: bool,
        open_store: OpenStore,
        version: String,
    ) -> Self {
        Executor {
            host,
            root,
            absolute_images,
            open_store,
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
                            ..DiskSpec::plain(self.image_path(d)?, d.size_bytes)
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                blocking(move || host.attach_vm(&vm, &specs)).await?;
            }
            Command::DetachVm { vm } => host.detach_vm(&vm).await,
            Command::DeleteVm { vm, disks } => {
                let paths = disks
                    .iter()
                    .map(|d| self.image_path(d))
                    .collect::<Result<Vec<_>, _>>()?;
                host.detach_vm(&vm).await;
                host.forget_replication(&vm).await?;
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
                    cache: self.cache(&cache)?,
                    stream_config: (&config).into(),
                    crash_consistent_every: Duration::from_millis(crash_consistent_every_ms),
                    seed,
                    resync_from,
                };
                blocking(move || host.start_replication(&vm, cfg)).await?;
            }
            Command::StopStream { vm } => host.stop_replication(&vm).await,
            Command::ForgetStream { vm } => host.forget_replication(&vm).await?,
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
                let r = VmReport {
                    held: self.host.held(&vm),
                    replication: self.host.status(&vm),
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
            vms,
        }
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

    fn cache(&self, c: &CacheWire) -> Result<DynStore, WireError> {
        let store = (self.open_store)(&c.url).map_err(|message| WireError::Other { message })?;
        let prefix = Key::parse(&c.prefix).map_err(|e| WireError::Other {
            message: format!("cache prefix {:?}: {e}", c.prefix),
        })?;
        Ok(ferry_storage::scoped(store, prefix))
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
