//! The qemu compute provider: runs a VM as a detached `qemu-system-x86_64` process whose disks
//! are NBD exports on unix sockets (served by the mobility agent on the source, by the replica on
//! a failover), and talks to it through files in the VM's runtime directory.
//!
//! Everything about a running VM lives in its [`VmSpec::dir`]: `qemu.pid`, `qemu.args` (the
//! exact command line), `qemu.log` (qemu's own stderr), `console.log` (the guest's serial
//! console), `qmp.sock` (QMP, used to power the VM down) and `qga.sock` (the guest agent's
//! virtio-serial port, used to freeze and thaw the guest's filesystems for app-consistent
//! recovery points). Because the directory is the whole state, a restarted control plane finds
//! its VMs again with [`is_running`] and can [`stop`], [`freeze`] or read the [`console`] of a VM
//! it did not start itself. qemu runs in its own process group, so it outlives its starter.
//!
//! Disks are attached as `-blockdev` nbd nodes with a `reconnect-delay`, so the guest rides out
//! a restart of the NBD server; guest flushes reach the server (`cache.direct`, write cache on).

mod agent;
mod console;
mod error;
mod process;
mod qemu;
mod qmp;
mod spec;

pub use agent::{FreezeStatus, freeze, freeze_status, thaw};
pub use console::{console, wait_console};
pub use error::ComputeError;
pub use process::{StopOutcome, is_running, kill, stop};
pub use qemu::{Accel, Qemu, RunningVm};
pub use spec::{Boot, DiskAttachment, NBD_RECONNECT_DELAY_SECS, VmSpec};
