//! The server's side of a joined host's link: the agent opens a command stream, heartbeats
//! with its report, and answers each command. The server never connects to a host.

use std::sync::Arc;

use ferry_agent::command::{Answer, Envelope, Report};
use tokio::sync::mpsc;

use super::AgentIdentity;
use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::model::{Replication, Vm};
use crate::resources::key;

/// An open command stream; the host is marked disconnected when it is dropped.
pub(crate) struct Session {
    host: Arc<super::RemoteHost>,
    id: u64,
    pub commands: mpsc::UnboundedReceiver<Envelope>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.host.disconnect(self.id);
        tracing::info!(host = %self.host.name, "agent link closed");
    }
}

impl Control {
    /// A host's agent opened its command stream: its VMs are served and their streams started
    /// again (each command is idempotent, so a host that kept running loses nothing).
    pub(crate) fn host_connected(
        self: &Arc<Self>,
        who: &AgentIdentity,
        version: &str,
    ) -> Result<Session> {
        self.check_region(&who.region)?;
        let host = self.joined_host(&who.name, &who.region);
        if host.region != who.region {
            return Err(ControlError::conflict(format!(
                "host {} is in region {}, not {}",
                who.name, host.region, who.region
            )));
        }
        let (id, commands) = host.connect(version);
        tracing::info!(host = %who.name, region = %who.region, %version, "agent link opened");
        let control = self.clone();
        let name = who.name.clone();
        tokio::spawn(async move {
            if let Err(e) = control.reconcile_host(&name).await {
                tracing::warn!(host = %name, error = %e, "bring a joined host in line");
            }
        });
        Ok(Session { host, id, commands })
    }

    /// Serve every VM placed on `host` and start the streams of the items replicating from
    /// them.
    async fn reconcile_host(self: &Arc<Self>, host: &str) -> Result<()> {
        let vms: Vec<Vm> = self
            .db
            .list::<Vm>(Kind::Vm)?
            .into_iter()
            .filter(|v| v.host.as_deref() == Some(host))
            .collect();
        for vm in &vms {
            let _vm = self.lock_vm(&key(&vm.group, &vm.name)).await;
            self.attach_vm(vm).await?;
            // A guest that should run and does not (the host restarted) boots again; one that
            // kept running is left alone.
            if vm.compute == "qemu" && vm.state == crate::model::VmState::Running {
                self.power_on(vm).await?;
            }
        }
        for rep in self.db.list::<Replication>(Kind::Replication)? {
            if vms
                .iter()
                .any(|v| key(&v.group, &v.name) == rep.source_key())
            {
                self.ensure_running(&rep).await?;
            }
        }
        Ok(())
    }

    /// A heartbeat. A report that names a VM not placed on the host is refused whole (403),
    /// so one host cannot speak for another's VMs.
    pub(crate) fn host_report(&self, who: &AgentIdentity, report: Report) -> Result<()> {
        let vms = self.db.list::<Vm>(Kind::Vm)?;
        for name in report.vms.keys() {
            match vms.iter().find(|v| &key(&v.group, &v.name) == name) {
                Some(vm) => self.authorize_vm(who, vm)?,
                None => {
                    return Err(ControlError::forbidden(format!(
                        "agent {} reports VM {name}, which does not exist; it may act only on \
                         the VMs placed on it",
                        who.name
                    )));
                }
            }
        }
        self.joined_host(&who.name, &who.region).report(report);
        Ok(())
    }

    pub(crate) fn host_answer(&self, who: &AgentIdentity, answer: Answer) {
        self.joined_host(&who.name, &who.region).answer(answer);
    }
}
