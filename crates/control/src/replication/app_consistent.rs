//! App-consistent points: on the policy's cadence the guest is quiesced (qemu guest agent
//! `guest-fsfreeze-freeze` for `--compute qemu`, the VM's own pre-freeze script for
//! `external`), a marker goes into the stream at the quiesced instant, and the guest is thawed.
//! A guest that does not answer in time yields a crash-consistent point and a warning, never a
//! hang: the freeze has a deadline, and the thaw always runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::command::{Command, MarkWire, millis};
use ferry_types::Timestamp;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{ItemState, Replication, Vm};
use crate::resources::key;

/// How long the guest has to quiesce (and to thaw).
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the last attempt of an item gave, for health.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub at: Instant,
    pub when: Timestamp,
    /// Why the point was only crash-consistent, if it was.
    pub warning: Option<String>,
}

impl Control {
    /// Start an app-consistent point for every protected item whose cadence is due.
    pub(crate) fn app_consistent_due(self: &Arc<Self>, reps: &[Replication]) {
        // An operation on the item (a failover stopping the VM) goes first.
        let idle = |r: &&Replication| self.busy_with(&r.item_key()).is_ok_and(|j| j.is_none());
        for rep in reps
            .iter()
            .filter(|r| r.state == ItemState::Protected)
            .filter(idle)
        {
            let Ok(policy) = self.policy(&rep.policy) else {
                continue;
            };
            let every = Duration::from_secs(policy.app_consistent_every_seconds.max(1));
            let item = rep.item_key();
            {
                let mut attempts = self.app_attempts.lock().unwrap_or_else(|p| p.into_inner());
                // The first attempt comes one period after the item is first seen protected.
                let due = attempts.get(&item).is_some_and(|a| a.at.elapsed() >= every);
                if !due && attempts.contains_key(&item) {
                    continue;
                }
                attempts.insert(
                    item.clone(),
                    Attempt {
                        at: Instant::now(),
                        when: Timestamp::now(),
                        warning: None,
                    },
                );
                if !due {
                    continue;
                }
            }
            let (control, rep) = (self.clone(), rep.clone());
            tokio::spawn(async move {
                let warning = control.app_consistent_point(&rep).await.err();
                if let Some(w) = &warning {
                    tracing::warn!(item = %item, warning = %w, "app-consistent point fell back to crash-consistent");
                }
                let mut attempts = control
                    .app_attempts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(a) = attempts.get_mut(&item) {
                    a.warning = warning.map(|w| w.to_string());
                }
            });
        }
    }

    /// Quiesce, mark, thaw. On a quiesce failure a crash-consistent marker is cut instead and
    /// the failure is returned as the warning.
    pub(crate) async fn app_consistent_point(&self, rep: &Replication) -> Result<()> {
        let vm = self.source_vm(rep)?;
        let agent = self.source_host(rep)?;
        let source = rep.source_key();
        // Not while the VM is being started or stopped.
        let _vm = self.lock_vm(&source).await;
        match self.quiesce(&vm).await {
            Ok(()) => {
                // A marker syncs the stream's logs.
                let marked = agent
                    .mark(&source, rep.generation, MarkWire::AppConsistent)
                    .await;
                let thawed = self.unquiesce(&vm).await;
                marked?;
                thawed
            }
            Err(e) => {
                self.unquiesce(&vm).await.ok();
                agent
                    .mark(&source, rep.generation, MarkWire::CrashConsistent)
                    .await?;
                Err(ControlError::Internal(format!(
                    "the guest of {source} did not quiesce ({e}); the point is crash-consistent"
                )))
            }
        }
    }

    async fn quiesce(&self, vm: &Vm) -> Result<()> {
        match vm.compute.as_str() {
            "qemu" => match self.host_of(vm)? {
                host @ crate::hosts::Host::Joined(_) => {
                    host.run(Command::Freeze {
                        vm: key(&vm.group, &vm.name),
                        timeout_ms: millis(QUIESCE_TIMEOUT),
                    })
                    .await
                }
                crate::hosts::Host::Embedded(_) => {
                    ferry_compute::freeze(&self.vm_dir(vm), QUIESCE_TIMEOUT).await?;
                    Ok(())
                }
            },
            _ => {
                let script = vm.app_consistency.pre_freeze.as_deref();
                run_script(&self.cfg.confine, vm, script, "pre-freeze").await
            }
        }
    }

    async fn unquiesce(&self, vm: &Vm) -> Result<()> {
        match vm.compute.as_str() {
            "qemu" => match self.host_of(vm)? {
                host @ crate::hosts::Host::Joined(_) => {
                    host.run(Command::Thaw {
                        vm: key(&vm.group, &vm.name),
                        timeout_ms: millis(QUIESCE_TIMEOUT),
                    })
                    .await
                }
                crate::hosts::Host::Embedded(_) => {
                    ferry_compute::thaw(&self.vm_dir(vm), QUIESCE_TIMEOUT).await?;
                    Ok(())
                }
            },
            _ => {
                let script = vm.app_consistency.post_thaw.as_deref();
                run_script(&self.cfg.confine, vm, script, "post-thaw").await
            }
        }
    }

    /// The warning of the item's last app-consistent attempt, if it fell back.
    pub(crate) fn app_consistent_warning(&self, item: &str) -> Option<(Timestamp, String)> {
        let attempts = self.app_attempts.lock().unwrap_or_else(|p| p.into_inner());
        let a = attempts.get(item)?;
        a.warning.clone().map(|w| (a.when, w))
    }
}

/// Run a VM's quiesce script, a file in the scripts directory read by the server and run by
/// `sh` as the scripts user (when the server runs as root), in `/`, with only `PATH` and
/// `FERRY_VM=GROUP/VM` in its environment, under a deadline. No script: there is nothing to
/// quiesce, which is not app-consistent.
async fn run_script(
    confine: &crate::confine::Confinement,
    vm: &Vm,
    script: Option<&str>,
    what: &str,
) -> Result<()> {
    let Some(script) = script else {
        return Err(ControlError::invalid(format!(
            "VM {}/{} has no {what} script (set one with `ferry vm create --{what}-script`)",
            vm.group, vm.name
        )));
    };
    let path = confine.script_path(script, what)?;
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
        ControlError::Internal(format!("read the {what} script {}: {e}", path.display()))
    })?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(text)
        .arg(script)
        .current_dir("/")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("FERRY_VM", format!("{}/{}", vm.group, vm.name))
        .kill_on_drop(true);
    // Setting the uid also drops the supplementary groups (std calls setgroups(0) first).
    if let Some((uid, gid)) = confine.script_identity()? {
        command.uid(uid).gid(gid);
    }
    let mut child = command
        .spawn()
        .map_err(|e| ControlError::Internal(format!("run the {what} script: {e}")))?;
    match tokio::time::timeout(QUIESCE_TIMEOUT, child.wait()).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(ControlError::Internal(format!(
            "the {what} script exited with {st}"
        ))),
        Ok(Err(e)) => Err(ControlError::Internal(format!("the {what} script: {e}"))),
        Err(_) => Err(ControlError::Internal(format!(
            "the {what} script did not finish within {} s",
            QUIESCE_TIMEOUT.as_secs()
        ))),
    }
}
