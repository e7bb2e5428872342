//! A handle on the agent that serves a VM: the server's own (embedded) agent of its region, or
//! the agent of the joined host it is placed on. Both take the same commands.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_agent::command::{Command, DiskWire, MarkWire, Outcome, WireError};
use ferry_agent::executor::Executor;
use ferry_agent::{DiskSpec, VmStatus};
use ferry_types::{Generation, Seq};

use super::RemoteHost;
use crate::error::{ControlError, Result};

#[derive(Clone)]
pub(crate) enum Host {
    Embedded(Arc<Executor>),
    Joined(Arc<RemoteHost>),
}

impl Host {
    pub async fn call(&self, command: Command) -> std::result::Result<Outcome, WireError> {
        let outcome = match self {
            Host::Embedded(e) => e.execute(command).await,
            Host::Joined(h) => h.call(command).await,
        };
        match outcome {
            Outcome::Failed { error } => Err(error),
            done => Ok(done),
        }
    }

    pub async fn run(&self, command: Command) -> Result<()> {
        self.call(command).await.map(drop).map_err(Into::into)
    }

    /// Serve a VM's disks. The server's own agent reads a restored disk's blocks (`hydrate_from`)
    /// from the replica itself; a joined host asks the server for them.
    pub async fn attach_vm(
        &self,
        vm: &str,
        disks: &[DiskSpec],
        images: Vec<DiskWire>,
    ) -> Result<()> {
        match self {
            Host::Embedded(e) if disks.iter().any(|d| d.hydrate_from.is_some()) => {
                let (host, vm, disks) = (e.host().clone(), vm.to_string(), disks.to_vec());
                ferry_types::blocking::off_worker(|| host.attach_vm(&vm, &disks))?;
                Ok(())
            }
            _ => {
                let hold_ms = disks
                    .iter()
                    .find_map(|d| d.hold)
                    .map(ferry_agent::command::millis);
                self.run(Command::AttachVm {
                    vm: vm.to_string(),
                    disks: images,
                    hold_ms,
                })
                .await
            }
        }
    }

    /// Have a joined host make a detached VM's disks empty images to be restored from `point`
    /// (the server's own agent's are prepared by the server: see `prepare_hydration`).
    pub async fn prepare_restore(&self, vm: &str, point: &str, disks: Vec<DiskWire>) -> Result<()> {
        self.run(Command::PrepareRestore {
            vm: vm.into(),
            point: point.into(),
            disks,
        })
        .await?;
        if let Host::Joined(h) = self {
            h.restore_prepared(vm);
        }
        Ok(())
    }

    pub async fn detach_vm(&self, vm: &str) -> Result<()> {
        self.run(Command::DetachVm { vm: vm.into() }).await
    }

    pub async fn delete_vm(&self, vm: &str, disks: Vec<DiskWire>) -> Result<()> {
        self.run(Command::DeleteVm {
            vm: vm.into(),
            disks,
        })
        .await
    }

    pub async fn stop_replication(&self, vm: &str) -> Result<()> {
        self.run(Command::StopStream { vm: vm.into() }).await
    }

    pub async fn forget_replication(&self, vm: &str) -> Result<()> {
        self.run(Command::ForgetStream { vm: vm.into() }).await
    }

    pub async fn release_vm(&self, vm: &str) -> Result<()> {
        self.run(Command::ReleaseVm { vm: vm.into() }).await
    }

    pub async fn mark(&self, vm: &str, generation: Generation, kind: MarkWire) -> Result<Seq> {
        let outcome = self
            .call(Command::Mark {
                vm: vm.into(),
                generation,
                kind,
            })
            .await?;
        match outcome {
            Outcome::Marked { seq } => Ok(seq),
            other => Err(ControlError::Internal(format!(
                "the agent answered a marker with {other:?}"
            ))),
        }
    }

    /// A VM's stream as the agent last saw it (embedded: now; joined: its last heartbeat).
    pub fn status(&self, vm: &str) -> Option<VmStatus> {
        match self {
            Host::Embedded(e) => e.host().status(vm),
            Host::Joined(h) => h.vm_report(vm)?.replication,
        }
    }

    /// How far each disk's restore from `point` has come (`None`: not known yet); a disk that
    /// is whole has no entry, and a VM whose disks are all whole may have an empty list.
    pub fn hydration(
        &self,
        vm: &str,
        point: &str,
    ) -> Option<Vec<Option<ferry_agent::hydrate::HydrationProgress>>> {
        match self {
            Host::Embedded(e) => e.host().hydration(vm),
            Host::Joined(h) => {
                let r = h.vm_report_since_restore(vm)?;
                if r.restored_from.as_deref() != Some(point) {
                    return None;
                }
                Some(r.hydration.unwrap_or_default())
            }
        }
    }

    /// The unix socket a local hypervisor reaches the disks by (the server's own agent only).
    pub fn nbd_socket(&self) -> Option<PathBuf> {
        match self {
            Host::Embedded(e) => Some(e.host().nbd_socket().to_path_buf()),
            Host::Joined(_) => None,
        }
    }

    /// Whether the host can take commands now.
    pub fn reachable(&self) -> bool {
        match self {
            Host::Embedded(_) => true,
            Host::Joined(h) => h.connected() && h.alive(),
        }
    }
}

impl From<WireError> for ControlError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::CatchingUp { .. } | WireError::Stale { .. } => {
                ControlError::Conflict(e.to_string())
            }
            WireError::Refused { message } => ControlError::Invalid(message),
            e => ControlError::Internal(e.to_string()),
        }
    }
}
