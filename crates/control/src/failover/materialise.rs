//! Turning a recovery point into a VM in the target region: its record first (so nothing is
//! ever created that the state does not track), then its disks, served at once by the region's
//! agent while they are restored from the replica on demand and in the background
//! ([`super::hydrate`]).

use std::net::IpAddr;

use ferry_format::point::PointRecord;
use ferry_types::Timestamp;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::ipam;
use crate::model::{Nic, Replication, Vm, VmDisk, VmState};
use crate::resources::key;

/// Where and how a failover places its VM.
pub(crate) struct Placement {
    pub group: String,
    pub name: String,
    pub network: String,
    pub subnet: String,
    pub availability_set: Option<String>,
    /// `failover` or `test-failover`.
    pub created_by: &'static str,
}

impl Control {
    /// Create (or, when it exists, overwrite the disks of) the VM at `place` from `point`. The
    /// VM is left stopped and served by its region's agent.
    pub(crate) async fn materialise(
        &self,
        rep: &Replication,
        point: &PointRecord,
        place: &Placement,
    ) -> Result<Vm> {
        let vm_key = key(&place.group, &place.name);
        // Nothing else starts, stops or deletes the VM while its disks are replaced.
        let _vm = self.lock_vm(&vm_key).await;
        let vm = match self.db.get::<Vm>(Kind::Vm, &vm_key)? {
            Some(existing) => {
                // Its disks are written anew: a VM whose host is lost goes to a live one.
                let existing = self.rehome_if_lost(&existing)?;
                self.power_off(&existing).await?;
                self.host_of(&existing)?.detach_vm(&vm_key).await?;
                existing
            }
            None => {
                let vm = self.plan_vm(rep, place)?;
                self.db.insert(Kind::Vm, &vm_key, &vm, "VM")?;
                crate::failpoint::hit("materialise-after-vm-record").await;
                vm
            }
        };
        if vm.disks.len() != point.disks.len() {
            return Err(ControlError::conflict(format!(
                "VM {vm_key} has {} disks but the recovery point has {}",
                vm.disks.len(),
                point.disks.len()
            )));
        }
        for (d, pd) in vm.disks.iter().zip(&point.disks) {
            if d.size_bytes != pd.size {
                return Err(ControlError::conflict(format!(
                    "disk {} of VM {vm_key} is {} bytes but the recovery point's is {}",
                    d.index, d.size_bytes, pd.size
                )));
            }
        }
        let mut vm = vm;
        self.prepare_hydration(rep, point, &mut vm).await?;
        vm.state = VmState::Stopped;
        self.db.put(Kind::Vm, &vm_key, &vm)?;
        self.attach_vm(&vm).await?;
        Ok(vm)
    }

    /// The record of a new VM at `place` shaped like the item's source VM.
    fn plan_vm(&self, rep: &Replication, place: &Placement) -> Result<Vm> {
        let (sg, sv) = rep
            .source_key()
            .split_once('/')
            .map(|(g, v)| (g.to_string(), v.to_string()))
            .unwrap_or_default();
        let source = self.vm(&sg, &sv)?;
        let group = self.group(&place.group)?;
        let net = self.network(&place.group, &place.network)?;
        let subnet = net
            .subnets
            .iter()
            .find(|s| s.name == place.subnet)
            .ok_or_else(|| {
                ControlError::not_found(format!(
                    "subnet {} does not exist in network {}/{}",
                    place.subnet, place.group, place.network
                ))
            })?;
        let cidr = ipam::parse_cidr(&subnet.cidr, "subnet")?;
        let wanted: Option<IpAddr> = source.nics.first().and_then(|n| n.private_ip.parse().ok());
        let used = self.used_ips(&place.group, &place.network)?;
        let ip = ipam::choose(&cidr, &used, wanted, true)?;
        // On a live host of the target region (the server's own agent when none is).
        let host = self.place(&group.region, None)?;
        let mut disks = Vec::new();
        for d in &source.disks {
            let storage = rep.target.storage.get(&d.storage).cloned().ok_or_else(|| {
                ControlError::Internal(format!(
                    "no target account is mapped for source account {}",
                    d.storage
                ))
            })?;
            let image = crate::resources::image_path(
                &self.cfg.data,
                &group.region,
                host.as_deref(),
                &place.group,
                &place.name,
                d.index,
            );
            disks.push(VmDisk {
                index: d.index,
                size_bytes: d.size_bytes,
                storage,
                image: image.display().to_string(),
                nbd_uri: String::new(),
                nbd_tcp_uri: String::new(),
            });
        }
        Ok(Vm {
            host,
            group: place.group.clone(),
            name: place.name.clone(),
            region: group.region,
            state: VmState::Stopped,
            compute: source.compute.clone(),
            boot: source.boot.clone(),
            app_consistency: source.app_consistency.clone(),
            availability_set: place.availability_set.clone(),
            disks,
            nics: vec![Nic {
                network: place.network.clone(),
                subnet: place.subnet.clone(),
                private_ip: ip.to_string(),
            }],
            created_by: Some(place.created_by.into()),
            owner: Some(rep.item_key()),
            created: Timestamp::now(),
            hydration: None,
        })
    }

    /// Boot a materialised VM and record it as running.
    pub(crate) async fn boot(&self, vm: &mut Vm) -> Result<()> {
        *vm = self
            .set_power(&key(&vm.group, &vm.name), VmState::Running)
            .await?;
        Ok(())
    }
}
