//! What to run: the VM's disks, how it boots and where its runtime files live.

use std::path::PathBuf;

/// How long qemu keeps a disk's requests waiting while it reconnects to a restarted NBD server
/// before failing them to the guest.
pub const NBD_RECONNECT_DELAY_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// For logs and qemu's `-name`.
    pub name: String,
    /// In order: disk 0 is the guest's first virtio disk (`/dev/vda`).
    pub disks: Vec<DiskAttachment>,
    pub boot: Boot,
    /// Guest memory; [`VmSpec::new`] sets 256.
    pub memory_mib: u32,
    /// `"10.1.0.4/24"`: passed as `ferry.ip=` when booting a kernel.
    pub ip: Option<String>,
    /// Runtime directory: console.log, qmp.sock, qga.sock, qemu.pid, qemu.args, qemu.log.
    pub dir: PathBuf,
}

impl VmSpec {
    /// A spec with no disks, no IP and 256 MiB of memory.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>, boot: Boot) -> Self {
        VmSpec {
            name: name.into(),
            disks: Vec::new(),
            boot,
            memory_mib: 256,
            ip: None,
            dir: dir.into(),
        }
    }
}

/// A disk served over NBD on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAttachment {
    pub socket: PathBuf,
    pub export: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot; the kernel command line is `console=ttyS0 panic=-1`, then
    /// `ferry.ip=` when [`VmSpec::ip`] is set, then `append`.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
    /// Firmware boots disk 0.
    Disk,
}
