//! Finding a VM's qemu process from its directory and stopping it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ComputeError;
use crate::qmp::Qmp;

pub(crate) const PID_FILE: &str = "qemu.pid";
/// How long a SIGKILLed qemu may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often [`stop`] presses the power button again.
const POWERDOWN_REPEAT: Duration = Duration::from_secs(3);

/// How [`stop`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOutcome {
    /// The guest shut down on the ACPI power button within the grace period (or no VM ran).
    pub graceful: bool,
    /// No VM was running, nothing was done.
    pub already_stopped: bool,
}

/// Whether the qemu recorded in `dir/qemu.pid` is alive: the process exists, is not a zombie and
/// its command line names `dir` (a recycled pid is not mistaken for the VM).
pub fn is_running(dir: &Path) -> bool {
    running_pid(dir).is_some()
}

pub(crate) fn running_pid(dir: &Path) -> Option<u32> {
    let dir = resolve(dir);
    let pid: u32 = fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    pid_is_vm(pid, &dir).then_some(pid)
}

fn pid_is_vm(pid: u32, dir: &Path) -> bool {
    // A zombie's cmdline is empty, so an exited but unreaped qemu counts as stopped.
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

fn resolve(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Stops the VM: QMP `system_powerdown` (the guest's ACPI power button), up to `grace` for qemu to
/// exit, then SIGKILL. Stopping a VM that is not running is Ok.
pub async fn stop(dir: &Path, grace: Duration) -> Result<StopOutcome, ComputeError> {
    let dir = resolve(dir);
    let Some(pid) = running_pid(&dir) else {
        return Ok(StopOutcome {
            graceful: true,
            already_stopped: true,
        });
    };
    // A press that arrives before the guest listens for the button is lost, so press again
    // every few seconds until qemu exits or the grace period ends.
    let powerdown = async {
        let mut qmp = Qmp::connect(&dir).await?;
        loop {
            if let Err(e) = qmp.execute("system_powerdown").await {
                // qemu closes QMP when it exits mid-command.
                return if pid_is_vm(pid, &dir) { Err(e) } else { Ok(()) };
            }
            if wait_exit(pid, &dir, POWERDOWN_REPEAT).await {
                return Ok::<_, ComputeError>(());
            }
        }
    };
    match tokio::time::timeout(grace, powerdown).await {
        Ok(Ok(())) => {
            let _ = fs::remove_file(dir.join(PID_FILE));
            tracing::info!(pid, dir = %dir.display(), "VM powered down");
            return Ok(StopOutcome {
                graceful: true,
                already_stopped: false,
            });
        }
        Ok(Err(e)) => {
            tracing::warn!(pid, dir = %dir.display(), error = %e, "system_powerdown failed; killing qemu")
        }
        Err(_) => {
            tracing::warn!(pid, dir = %dir.display(), ?grace, "guest did not power down; killing qemu")
        }
    }
    kill_pid(pid);
    if !wait_exit(pid, &dir, KILL_WAIT).await {
        return Err(ComputeError::Qmp {
            dir,
            reason: format!("qemu pid {pid} survived SIGKILL for {KILL_WAIT:?}"),
        });
    }
    let _ = fs::remove_file(dir.join(PID_FILE));
    Ok(StopOutcome {
        graceful: false,
        already_stopped: false,
    })
}

/// SIGKILLs the VM's qemu at once, without waiting; for cleanup paths that cannot await.
/// Returns whether a VM was running.
pub fn kill(dir: &Path) -> bool {
    match running_pid(dir) {
        Some(pid) => {
            kill_pid(pid);
            true
        }
        None => false,
    }
}

async fn wait_exit(pid: u32, dir: &Path, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !pid_is_vm(pid, dir) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unsafe_code)]
pub(crate) fn kill_pid(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid > 0 names a single
    // process (never a group) because it came from a u32 that fits pid_t and pid files hold no 0.
    if pid > 0 {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
