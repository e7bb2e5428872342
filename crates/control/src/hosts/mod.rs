//! The hosts whose agents serve the VMs: the server's own agent per region (embedded), and
//! agents that joined from their hosts ([`identity`]: join tokens, credentials, revocation)
//! and dialled in ([`link`]). The control plane drives both through [`Host`], with the same
//! [`ferry_agent::command::Command`]s.

mod host;
pub(crate) mod identity;
pub(crate) mod link;
mod remote;

pub(crate) use host::Host;
pub use identity::{AgentIdentity, AgentRecord, CreateJoinToken, JoinRequest, JoinToken, Joined};
pub(crate) use remote::RemoteHost;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::Replication;

impl Control {
    /// The agent serving the VM an item replicates from now.
    pub(crate) fn source_host(&self, rep: &Replication) -> Result<Host> {
        self.host_of(&self.source_vm(rep)?)
    }

    /// The item's stream as its source agent last saw it.
    pub(crate) fn source_status(&self, rep: &Replication) -> Option<ferry_agent::VmStatus> {
        self.source_host(rep).ok()?.status(&rep.source_key())
    }
}

impl Control {
    /// Where a new VM of `region` goes: the host asked for (joined, in the region, alive), or
    /// the region's live joined host with the most free space; none (the server's own agent)
    /// when no host of the region is live.
    pub(crate) fn place(&self, region: &str, wanted: Option<&str>) -> Result<Option<String>> {
        let joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = wanted {
            let Some(h) = joined.get(name) else {
                return Err(ControlError::not_found(format!(
                    "host {name} has not joined; see `ferry host list`"
                )));
            };
            if h.region != region {
                return Err(ControlError::invalid(format!(
                    "host {name} is in region {}, and the VM's group is in region {region}",
                    h.region
                )));
            }
            if !h.alive() {
                return Err(ControlError::conflict(format!(
                    "host {name} is not connected; start its agent, or place the VM elsewhere"
                )));
            }
            return Ok(Some(name.to_string()));
        }
        let best = joined
            .values()
            .filter(|h| h.region == region && h.alive())
            .max_by_key(|h| h.free_bytes());
        match best {
            Some(h) => Ok(Some(h.name.clone())),
            None if self.embedded.contains_key(region) => Ok(None),
            None => Err(ControlError::conflict(format!(
                "region {region} has no live host: start a host's agent there (`ferry agent`)"
            ))),
        }
    }
}

impl Control {
    /// Move a VM whose joined host is lost (not heard from within the heartbeat timeout) to a
    /// live host of its region, for an operation about to write all its disks anew (a reprotect's
    /// target, a failback): its record names the new host and image paths; what the lost host
    /// held of it is abandoned. Returns the VM as it is now.
    pub(crate) fn rehome_if_lost(&self, vm: &crate::model::Vm) -> Result<crate::model::Vm> {
        let Some(old) = vm.host.clone() else {
            return Ok(vm.clone());
        };
        let lost = {
            let joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
            joined.get(&old).is_none_or(|h| !h.alive())
        };
        if !lost {
            return Ok(vm.clone());
        }
        let new = self.place(&vm.region, None).map_err(|_| {
            ControlError::conflict(format!(
                "VM {}/{} is on host {old}, which is lost, and region {} has no live host to                  take it: start a host's agent there (`ferry agent`) and try again",
                vm.group, vm.name, vm.region
            ))
        })?;
        tracing::info!(vm = %format!("{}/{}", vm.group, vm.name), from = %old, to = ?new, "a VM leaves its lost host");
        let vm_key = crate::resources::key(&vm.group, &vm.name);
        self.update_vm(&vm_key, |v| {
            for d in &mut v.disks {
                d.image = crate::resources::image_path(
                    &self.cfg.data,
                    &v.region,
                    new.as_deref(),
                    &v.group,
                    &v.name,
                    d.index,
                )
                .display()
                .to_string();
            }
            v.host = new.clone();
            Ok(())
        })
    }
}

/// A host as `ferry host list` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HostView {
    /// The joined host's name; `server/<region>` for the server's own agent of a region.
    pub name: String,
    pub region: String,
    /// `joined` (its own agent dialled in) or `embedded` (the server's own agent).
    pub kind: String,
    pub connected: bool,
    /// Heard from within the heartbeat timeout (always for the server's own agent).
    pub alive: bool,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<ferry_types::Timestamp>,
    pub free_bytes: u64,
    /// The VMs placed on it.
    pub vms: Vec<String>,
    /// How many of them have a running stream.
    pub streams: usize,
}

impl Control {
    /// Every host: the server's own agent of each region, and every joined host.
    pub fn hosts(&self) -> Result<Vec<HostView>> {
        let vms = self.db.list::<crate::model::Vm>(crate::db::Kind::Vm)?;
        let placed = |host: Option<&str>, region: &str| -> Vec<String> {
            vms.iter()
                .filter(|v| v.host.as_deref() == host && (host.is_some() || v.region == region))
                .map(|v| crate::resources::key(&v.group, &v.name))
                .collect()
        };
        let mut out = Vec::new();
        for (region, exec) in &self.embedded {
            let vms = placed(None, region);
            let streams = vms
                .iter()
                .filter(|v| exec.host().status(v).is_some())
                .count();
            out.push(HostView {
                name: format!("server/{region}"),
                region: region.clone(),
                kind: "embedded".into(),
                connected: true,
                alive: true,
                version: env!("CARGO_PKG_VERSION").into(),
                last_heartbeat: None,
                free_bytes: 0,
                vms,
                streams,
            });
        }
        let joined: Vec<_> = self
            .joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for h in joined {
            let vms = placed(Some(&h.name), &h.region);
            let streams = vms
                .iter()
                .filter(|v| h.vm_report(v).is_some_and(|r| r.replication.is_some()))
                .count();
            out.push(HostView {
                name: h.name.clone(),
                region: h.region.clone(),
                kind: "joined".into(),
                connected: h.connected(),
                alive: h.alive(),
                version: h.version(),
                last_heartbeat: h.last_seen(),
                free_bytes: h.free_bytes(),
                vms,
                streams,
            });
        }
        out.sort_by(|a, b| (&a.region, &a.name).cmp(&(&b.region, &b.name)));
        Ok(out)
    }
}

impl Control {
    /// The item's joined source host and when it was last heard from, when it is not alive.
    pub(crate) fn source_host_lost(
        &self,
        rep: &Replication,
    ) -> Option<(String, Option<ferry_types::Timestamp>)> {
        match self.source_host(rep).ok()? {
            Host::Joined(h) if !h.alive() => Some((h.name.clone(), h.last_seen())),
            _ => None,
        }
    }
}
