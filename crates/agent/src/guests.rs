//! The guests a host runs under qemu (`start-vm`, `stop-vm`, `console`, `freeze`, `thaw`), from the disks its own
//! agent serves on its unix socket. Each VM's runtime files (console log, monitor sockets, pid)
//! are in `DATA/vms/GROUP/NAME`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ferry_compute::{Boot, DiskAttachment, Qemu, VmSpec};

use crate::AgentHost;
use crate::command::{BootWire, WireError};

fn other(message: impl Into<String>) -> WireError {
    WireError::Other {
        message: message.into(),
    }
}

fn compute(e: ferry_compute::ComputeError) -> WireError {
    other(e.to_string())
}

/// Where a VM's runtime files are, under `root`.
pub fn vm_dir(root: &Path, vm: &str) -> Result<PathBuf, WireError> {
    let rel = Path::new(vm);
    if rel.components().count() != 2 || rel.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(other(format!("VM {vm:?} is not GROUP/NAME")));
    }
    Ok(root.join("vms").join(rel))
}

/// Boot `vm` unless it runs.
pub async fn start(
    host: &AgentHost,
    root: &Path,
    vm: &str,
    disks: &[usize],
    boot: &BootWire,
    memory_mib: u32,
    ip: Option<String>,
) -> Result<(), WireError> {
    let dir = vm_dir(root, vm)?;
    if ferry_compute::is_running(&dir) {
        return Ok(());
    }
    if !host.vm_names().iter().any(|v| v == vm) {
        return Err(WireError::UnknownVm { vm: vm.to_string() });
    }
    let boot = match &boot.kernel {
        Some(kernel) => {
            for f in [Some(kernel), boot.initrd.as_ref()].into_iter().flatten() {
                if !Path::new(f).is_file() {
                    return Err(other(format!(
                        "boot file {f} is not on this host: every host that may run the VM \
                         needs its boot files at the same path"
                    )));
                }
            }
            Boot::Kernel {
                kernel: kernel.into(),
                initrd: boot.initrd.as_ref().map(Into::into),
                append: boot.append.clone().unwrap_or_default(),
            }
        }
        None => Boot::Disk,
    };
    let spec = VmSpec {
        name: vm.to_string(),
        disks: disks
            .iter()
            .map(|&i| DiskAttachment {
                socket: host.nbd_socket().to_path_buf(),
                export: AgentHost::export_name(vm, i),
            })
            .collect(),
        boot,
        memory_mib,
        ip,
        dir,
    };
    let qemu = Qemu::detect().map_err(compute)?;
    qemu.start(&spec).await.map_err(compute)?;
    Ok(())
}

/// Power `vm` down, hard after `grace`; a no-op when it is not running.
pub async fn stop(root: &Path, vm: &str, grace: Duration) -> Result<(), WireError> {
    let dir = vm_dir(root, vm)?;
    if !ferry_compute::is_running(&dir) {
        return Ok(());
    }
    ferry_compute::stop(&dir, grace).await.map_err(compute)?;
    Ok(())
}

/// The serial console of `vm` so far.
pub fn console(root: &Path, vm: &str) -> Result<String, WireError> {
    ferry_compute::console(&vm_dir(root, vm)?).map_err(compute)
}

/// Freeze the guest's file systems through its guest agent.
pub async fn freeze(root: &Path, vm: &str, timeout: Duration) -> Result<(), WireError> {
    ferry_compute::freeze(&vm_dir(root, vm)?, timeout)
        .await
        .map_err(compute)
}

/// Thaw the guest's file systems.
pub async fn thaw(root: &Path, vm: &str, timeout: Duration) -> Result<(), WireError> {
    ferry_compute::thaw(&vm_dir(root, vm)?, timeout)
        .await
        .map_err(compute)
}
