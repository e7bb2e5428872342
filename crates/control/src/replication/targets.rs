//! The target resources an item replicates into, derived from the source with `-asr` names
//! (each overridable, each reused when it exists), created in one transaction.

use std::collections::BTreeMap;

use crate::control::Control;
use crate::db::{Kind, encode};
use crate::error::{ControlError, Result};
use crate::model::*;
use crate::requests::EnableReplication;
use crate::resources::{key, valid_name as name};

const SUFFIX: &str = "-asr";

fn derived(given: &Option<String>, source: &str, what: &str) -> Result<String> {
    match given {
        Some(g) => name(g, what),
        None => Ok(ferry_types::ResourceName::new(source)
            .map_err(|e| ControlError::Internal(e.to_string()))?
            .with_suffix(SUFFIX)
            .to_string()),
    }
}

impl Control {
    pub(crate) fn create_targets(&self, vm: &Vm, req: &EnableReplication) -> Result<Target> {
        let region = req.target_region.clone();
        let mut new: Vec<(Kind, String, String)> = Vec::new();

        let group = derived(&req.target_group, &vm.group, "target group")?;
        match self.db.get::<Group>(Kind::Group, &group)? {
            Some(g) if g.region != region => {
                return Err(ControlError::invalid(format!(
                    "target group {group} is in region {}, not {region}; pick another with --target-group",
                    g.region
                )));
            }
            Some(_) => {}
            None => new.push((
                Kind::Group,
                group.clone(),
                encode(&Group {
                    name: group.clone(),
                    region: region.clone(),
                }),
            )),
        }

        let nic = vm
            .nics
            .first()
            .ok_or_else(|| ControlError::invalid("the VM has no NIC"))?;
        let src_net = self.network(&vm.group, &nic.network)?;
        let network = derived(&req.target_network, &src_net.name, "target network")?;
        let subnet = req
            .target_subnet
            .clone()
            .unwrap_or_else(|| nic.subnet.clone());
        match self
            .db
            .get::<Network>(Kind::Network, &key(&group, &network))?
        {
            Some(n) => {
                if !n.subnets.iter().any(|s| s.name == subnet) {
                    return Err(ControlError::invalid(format!(
                        "target network {group}/{network} has no subnet {subnet}; pick one with --target-subnet"
                    )));
                }
            }
            None => {
                if !src_net.subnets.iter().any(|s| s.name == subnet) {
                    return Err(ControlError::invalid(format!(
                        "target subnet {subnet} would not exist in the new network {group}/{network} (copied from {}/{})",
                        vm.group, src_net.name
                    )));
                }
                let n = Network {
                    group: group.clone(),
                    name: network.clone(),
                    region: region.clone(),
                    address_space: src_net.address_space.clone(),
                    subnets: src_net.subnets.clone(),
                    owner: None,
                };
                new.push((Kind::Network, key(&group, &network), encode(&n)));
            }
        }
        for (from, to) in [
            (key(&vm.group, &src_net.name), key(&group, &network)),
            (key(&group, &network), key(&vm.group, &src_net.name)),
        ] {
            let m = NetworkMapping {
                source: from.clone(),
                target: to.clone(),
            };
            new.push((Kind::NetworkMapping, format!("{from}->{to}"), encode(&m)));
        }

        let availability_set = match &vm.availability_set {
            Some(set) => {
                let t = derived(&req.target_availability_set, set, "target availability set")?;
                let s = AvailabilitySet {
                    group: group.clone(),
                    name: t.clone(),
                    region: region.clone(),
                };
                new.push((Kind::AvailabilitySet, key(&group, &t), encode(&s)));
                Some(t)
            }
            None => req.target_availability_set.clone(),
        };

        let mut storage = BTreeMap::new();
        for d in &vm.disks {
            if storage.contains_key(&d.storage) {
                continue;
            }
            let t = derived(
                &req.target_storage.get(&d.storage).cloned(),
                &d.storage,
                "target storage account",
            )?;
            if self
                .db
                .get::<StorageAccount>(Kind::Storage, &key(&group, &t))?
                .is_none()
            {
                let url = self.default_account_url(&region, &group, &t);
                self.stores.get(&url)?;
                let a = StorageAccount {
                    group: group.clone(),
                    name: t.clone(),
                    region: region.clone(),
                    url,
                };
                new.push((Kind::Storage, key(&group, &t), encode(&a)));
            }
            storage.insert(d.storage.clone(), t);
        }
        if let Some(unknown) = req
            .target_storage
            .keys()
            .find(|k| !storage.contains_key(*k))
        {
            return Err(ControlError::invalid(format!(
                "--target-storage names {unknown}, which holds none of the VM's disks"
            )));
        }

        let cache = match &req.cache_storage {
            Some(c) => name(c, "cache storage account")?,
            None => format!("cache-{}", vm.region),
        };
        match self
            .db
            .get::<StorageAccount>(Kind::Storage, &key(&vm.group, &cache))?
        {
            Some(a) if a.region != vm.region => {
                return Err(ControlError::invalid(format!(
                    "cache account {}/{cache} must be in the VM's region {}",
                    vm.group, vm.region
                )));
            }
            Some(_) => {}
            None => {
                let url = self.default_account_url(&vm.region, &vm.group, &cache);
                self.stores.get(&url)?;
                let a = StorageAccount {
                    group: vm.group.clone(),
                    name: cache.clone(),
                    region: vm.region.clone(),
                    url,
                };
                new.push((Kind::Storage, key(&vm.group, &cache), encode(&a)));
            }
        }

        self.db.insert_missing(&new)?;
        Ok(Target {
            region,
            group,
            network,
            subnet,
            availability_set,
            cache_storage: key(&vm.group, &cache),
            storage,
        })
    }
}
