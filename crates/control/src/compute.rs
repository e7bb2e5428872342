//! Realising VMs: `qemu` boots them on this host with their disks on the region's agent;
//! `external` only serves their disks over NBD for the user's own hypervisor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::AgentHost;
use ferry_compute::{Boot as QemuBoot, DiskAttachment, Qemu, VmSpec};

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::hosts::Host;
use crate::model::{Vm, VmState};
use crate::resources::key;

/// How long a guest has to power down before it is stopped hard.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// A qemu guest's memory.
const MEMORY_MIB: u32 = 256;

/// Compute providers a VM can use.
pub const PROVIDERS: &[&str] = &["external", "qemu"];

impl From<ferry_compute::ComputeError> for ControlError {
    fn from(e: ferry_compute::ComputeError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl Control {
    /// Where a VM's runtime files live (console log, monitor sockets, pid file).
    pub(crate) fn vm_dir(&self, vm: &Vm) -> PathBuf {
        self.cfg
            .data
            .join("regions")
            .join(&vm.region)
            .join("vms")
            .join(&vm.group)
            .join(&vm.name)
    }

    fn qemu(&self) -> Result<Qemu> {
        Qemu::detect().map_err(|e| ControlError::invalid(e.to_string()))
    }

    /// Boot the VM unless it runs (qemu); a no-op for external compute.
    pub(crate) async fn power_on(&self, vm: &Vm) -> Result<()> {
        if vm.compute != "qemu" {
            return Ok(());
        }
        let ip = vm.nics.first().map(|n| self.ip_with_prefix(vm, n));
        let host = self.host_of(vm)?;
        let Some(socket) = host.nbd_socket() else {
            // A joined host boots it itself, from the disks its agent serves.
            return host
                .run(ferry_agent::command::Command::StartVm {
                    vm: key(&vm.group, &vm.name),
                    disks: vm.disks.iter().map(|d| d.index).collect(),
                    boot: ferry_agent::command::BootWire {
                        kernel: vm.boot.kernel.clone(),
                        initrd: vm.boot.initrd.clone(),
                        append: vm.boot.append.clone(),
                    },
                    memory_mib: MEMORY_MIB,
                    ip,
                })
                .await;
        };
        let dir = self.vm_dir(vm);
        if ferry_compute::is_running(&dir) {
            return Ok(());
        }
        let vm_key = key(&vm.group, &vm.name);
        let boot = match &vm.boot.kernel {
            Some(k) => QemuBoot::Kernel {
                kernel: k.into(),
                initrd: vm.boot.initrd.as_ref().map(Into::into),
                append: vm.boot.append.clone().unwrap_or_default(),
            },
            None => QemuBoot::Disk,
        };
        let spec = VmSpec {
            name: vm_key.clone(),
            disks: vm
                .disks
                .iter()
                .map(|d| DiskAttachment {
                    socket: socket.clone(),
                    export: AgentHost::export_name(&vm_key, d.index),
                })
                .collect(),
            boot,
            memory_mib: MEMORY_MIB,
            ip,
            dir,
        };
        self.qemu()?.start(&spec).await?;
        Ok(())
    }

    /// Stop the VM: ask the guest to power down, then stop it hard after `STOP_GRACE`.
    /// Returns whether the guest powered down by itself.
    pub(crate) async fn power_off(&self, vm: &Vm) -> Result<bool> {
        if vm.compute != "qemu" {
            return Ok(true);
        }
        let host = self.host_of(vm)?;
        if let Host::Joined(h) = &host {
            if !h.alive() {
                // Its guest went with its host; nothing is left to stop.
                tracing::warn!(vm = %key(&vm.group, &vm.name), host = %h.name, "the VM's host is lost: taken as stopped");
                return Ok(false);
            }
            host.run(ferry_agent::command::Command::StopVm {
                vm: key(&vm.group, &vm.name),
                grace_ms: ferry_agent::command::millis(STOP_GRACE),
            })
            .await?;
            return Ok(true);
        }
        let out = ferry_compute::stop(&self.vm_dir(vm), STOP_GRACE).await?;
        Ok(out.graceful)
    }

    fn ip_with_prefix(&self, vm: &Vm, nic: &crate::model::Nic) -> String {
        let prefix = self
            .network(&vm.group, &nic.network)
            .ok()
            .and_then(|n| n.subnets.into_iter().find(|s| s.name == nic.subnet))
            .and_then(|s| s.cidr.split_once('/').map(|(_, p)| p.to_string()))
            .unwrap_or_else(|| "32".into());
        format!("{}/{prefix}", nic.private_ip)
    }

    /// `ferry vm start`. A VM an operation on a replicated item works with is left to it.
    pub async fn start_vm(self: &Arc<Self>, group: &str, name: &str) -> Result<Vm> {
        self.refuse_if_vm_busy(&key(group, name), "start")?;
        self.set_power(&key(group, name), VmState::Running).await
    }

    /// `ferry vm stop`.
    pub async fn stop_vm(self: &Arc<Self>, group: &str, name: &str) -> Result<Vm> {
        self.refuse_if_vm_busy(&key(group, name), "stop")?;
        self.set_power(&key(group, name), VmState::Stopped).await
    }

    /// A 409 when an item's running job works with the VM.
    pub(crate) fn refuse_if_vm_busy(&self, vm_key: &str, what: &str) -> Result<()> {
        match self.vm_busy(vm_key)? {
            Some((item, job)) => Err(ControlError::conflict(format!(
                "cannot {what} VM {vm_key}: job {} ({}) of the replicated item {item} works \
                 with it; wait for it with `ferry job show {} --wait`",
                job.id, job.kind, job.id
            ))),
            None => Ok(()),
        }
    }

    /// Start or stop a VM, under its lock (a second request waits its turn), and record it.
    /// Stopping asks the guest to power down and stops it hard after [`STOP_GRACE`].
    pub(crate) async fn set_power(&self, vm_key: &str, to: VmState) -> Result<Vm> {
        let _vm = self.lock_vm(vm_key).await;
        let vm = self.vm_by_key(vm_key)?;
        match to {
            VmState::Running => {
                self.attach_vm(&vm).await?;
                self.power_on(&vm).await?;
            }
            VmState::Stopped => {
                if !self.power_off(&vm).await? {
                    tracing::warn!(vm = %vm_key, "the guest did not power down in time; stopped it hard");
                }
            }
        }
        self.update_vm(vm_key, |v| {
            v.state = to;
            Ok(())
        })
    }

    /// Change a VM's record in one transaction.
    pub(crate) fn update_vm(
        &self,
        vm_key: &str,
        f: impl FnOnce(&mut Vm) -> Result<()>,
    ) -> Result<Vm> {
        self.db.transact(|tx| {
            let mut vm: Vm = tx
                .get(Kind::Vm, vm_key)?
                .ok_or_else(|| ControlError::not_found(format!("VM {vm_key} does not exist")))?;
            f(&mut vm)?;
            tx.put(Kind::Vm, vm_key, &vm)?;
            Ok(vm)
        })
    }

    /// `ferry vm console`: the serial console so far.
    pub async fn vm_console(&self, group: &str, name: &str) -> Result<String> {
        let vm = self.vm(group, name)?;
        if vm.compute != "qemu" {
            return Err(ControlError::invalid(format!(
                "VM {group}/{name} runs on external compute; its console is on your hypervisor"
            )));
        }
        if let host @ Host::Joined(_) = self.host_of(&vm)? {
            let asked = ferry_agent::command::Command::Console {
                vm: key(group, name),
            };
            return match host.call(asked).await? {
                ferry_agent::command::Outcome::Console { text } => Ok(text),
                other => Err(ControlError::Internal(format!(
                    "the host answered a console request with {other:?}"
                ))),
            };
        }
        match ferry_compute::console(&self.vm_dir(&vm)) {
            Ok(text) => Ok(text),
            Err(_) => Ok(String::new()),
        }
    }

    /// After a restart: boot every qemu VM of the server's own agents that should run and
    /// does not (a joined host's, when its agent links: `reconcile_host`).
    pub(crate) async fn reconcile_compute(&self) {
        let Ok(vms) = self.db.list::<Vm>(Kind::Vm) else {
            return;
        };
        for vm in vms
            .iter()
            .filter(|v| v.compute == "qemu" && v.state == VmState::Running && v.host.is_none())
        {
            if let Err(e) = self.power_on(vm).await {
                tracing::error!(vm = %key(&vm.group, &vm.name), error = %e, "boot a VM that should be running");
            }
        }
    }
}
