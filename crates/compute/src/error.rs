//! Errors the compute provider reports to its callers.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(
        "qemu-system-x86_64 is not on PATH: run scripts/install-test-tools (installs \
         qemu-system-x86 from bookworm-backports)"
    )]
    QemuMissing,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a VM already runs in {dir} (pid {pid}): stop it first or use another directory")]
    AlreadyRunning { dir: PathBuf, pid: u32 },
    #[error("VM spec: {0}")]
    InvalidSpec(String),
    #[error("qemu for {dir} did not start: {reason}; qemu said: {log}")]
    StartFailed {
        dir: PathBuf,
        reason: String,
        log: String,
    },
    #[error("QMP of the VM in {dir}: {reason}")]
    Qmp { dir: PathBuf, reason: String },
    #[error("no VM runs in {0}")]
    NotRunning(PathBuf),
    #[error(
        "the guest agent of the VM in {dir} did not answer within {timeout:?}: is qemu-ga running \
         in the guest on port org.qemu.guest_agent.0?"
    )]
    GuestAgentTimeout { dir: PathBuf, timeout: Duration },
    #[error("the guest agent of the VM in {dir} refused {command}: {class}: {desc}")]
    GuestAgent {
        dir: PathBuf,
        command: &'static str,
        class: String,
        desc: String,
    },
    #[error("the guest agent of the VM in {dir} answered {command} with {reply}")]
    GuestAgentProtocol {
        dir: PathBuf,
        command: &'static str,
        reply: String,
    },
    #[error(
        "console of the VM in {dir} did not show {needle:?} within {waited:?}; its tail:\n{tail}"
    )]
    ConsoleTimeout {
        dir: PathBuf,
        needle: String,
        waited: Duration,
        tail: String,
    },
    #[error("the VM in {dir} exited before its console showed {needle:?}; its tail:\n{tail}")]
    VmExited {
        dir: PathBuf,
        needle: String,
        tail: String,
    },
}

impl ComputeError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ComputeError::Io { what, path, source }
    }

    /// Whether trying the same call again later can succeed (a busy or still-booting guest),
    /// as opposed to a missing binary, a bad spec or a refusal.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ComputeError::GuestAgentTimeout { .. }
                | ComputeError::ConsoleTimeout { .. }
                | ComputeError::Qmp { .. }
        )
    }
}
