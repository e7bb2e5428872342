//! Creating, listing and deleting the plain resources: groups, networks, storage accounts,
//! availability sets and policies (VMs: [`crate::vms`]).

use ferry_types::ResourceName;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::ipam;
use crate::model::*;
use crate::requests::*;
pub(crate) use crate::vms::{IMAGE_PREFIX, disk_wires, image_path};

/// Disks are sized in whole MiB (as cloud disks are), so blocks of the replica fit exactly.
pub(crate) const DISK_ALIGN: u64 = 1 << 20;
/// The largest disk (as the largest cloud disks; well within what a file system takes).
pub(crate) const DISK_MAX: u64 = 64 << 40;

/// The longest duration a setting may have: 30 days.
const MAX_SECONDS: f64 = 30.0 * 86_400.0;

/// A duration setting `what` of `v` seconds: finite, not negative, at most 30 days.
fn bounded_seconds(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
        Ok(v)
    } else {
        Err(ControlError::invalid(format!(
            "{what} ({v} s) must be between 0 and 30 days (2592000 s)"
        )))
    }
}

pub(crate) fn valid_name(s: &str, what: &str) -> Result<String> {
    ResourceName::new(s)
        .map(|n| n.to_string())
        .map_err(|e| ControlError::invalid(format!("{what}: {e}")))
}

pub(crate) fn key(group: &str, name: &str) -> String {
    format!("{group}/{name}")
}

impl Control {
    pub fn regions(&self) -> Vec<Region> {
        self.cfg
            .regions
            .iter()
            .map(|r| Region { name: r.clone() })
            .collect()
    }

    pub fn create_group(&self, req: CreateGroup) -> Result<Group> {
        let name = valid_name(&req.name, "group name")?;
        self.check_region(&req.region)?;
        let g = Group {
            name: name.clone(),
            region: req.region,
        };
        self.db.insert(Kind::Group, &name, &g, "group")?;
        Ok(g)
    }

    pub fn group(&self, group: &str) -> Result<Group> {
        self.db
            .get(Kind::Group, group)?
            .ok_or_else(|| ControlError::not_found(format!("group {group} does not exist; create it with `ferry group create {group} --region REGION`")))
    }

    pub fn groups(&self) -> Result<Vec<Group>> {
        self.db.list(Kind::Group)
    }

    pub fn create_network(&self, group: &str, req: CreateNetwork) -> Result<Network> {
        let g = self.group(group)?;
        let name = valid_name(&req.name, "network name")?;
        let space = ipam::parse_cidr(&req.address_space, "the address space")?;
        if req.subnets.is_empty() {
            return Err(ControlError::invalid(
                "a network needs at least one subnet (--subnet NAME=CIDR)",
            ));
        }
        let mut subnets: Vec<Subnet> = Vec::new();
        let mut nets = Vec::new();
        for s in req.subnets {
            let sname = valid_name(&s.name, "subnet name")?;
            let net = ipam::parse_cidr(&s.cidr, &format!("subnet {sname}"))?;
            if !space.contains(&net) {
                return Err(ControlError::invalid(format!(
                    "subnet {sname} ({net}) is outside the address space {space}"
                )));
            }
            if let Some((other, _)) = nets.iter().find(|(_, n): &&(String, ipnet::IpNet)| {
                n.contains(&net.network()) || net.contains(&n.network())
            }) {
                return Err(ControlError::invalid(format!(
                    "subnet {sname} ({net}) overlaps subnet {other}"
                )));
            }
            if subnets.iter().any(|x| x.name == sname) {
                return Err(ControlError::invalid(format!(
                    "subnet {sname} is given twice"
                )));
            }
            nets.push((sname.clone(), net));
            subnets.push(Subnet {
                name: sname,
                cidr: net.to_string(),
            });
        }
        let n = Network {
            group: g.name.clone(),
            name: name.clone(),
            region: g.region,
            address_space: space.to_string(),
            subnets,
            owner: None,
        };
        self.db
            .insert(Kind::Network, &key(group, &name), &n, "network")?;
        Ok(n)
    }

    pub fn network(&self, group: &str, net: &str) -> Result<Network> {
        self.db
            .get(Kind::Network, &key(group, net))?
            .ok_or_else(|| ControlError::not_found(format!("network {group}/{net} does not exist")))
    }

    pub fn networks(&self) -> Result<Vec<Network>> {
        self.db.list(Kind::Network)
    }

    /// The default URL of an account: a directory under the data dir.
    pub(crate) fn default_account_url(&self, region: &str, group: &str, account: &str) -> String {
        let dir = self
            .cfg
            .data
            .join("regions")
            .join(region)
            .join("storage")
            .join(group)
            .join(account);
        format!("file://{}", dir.display())
    }

    pub fn create_storage(&self, group: &str, req: CreateStorage) -> Result<StorageAccount> {
        let g = self.group(group)?;
        let name = valid_name(&req.name, "storage account name")?;
        // Nothing is created for a refused request: the name and the URL are checked first.
        if self
            .db
            .get::<StorageAccount>(Kind::Storage, &key(group, &name))?
            .is_some()
        {
            return Err(ControlError::conflict(format!(
                "storage account {group}/{name} already exists"
            )));
        }
        let url = match req.url {
            Some(u) => self.cfg.confine.check_storage_url(&self.cfg.data, &u)?,
            None => self.default_account_url(&g.region, group, &name),
        };
        self.stores.get(&url)?;
        let a = StorageAccount {
            group: g.name,
            name: name.clone(),
            region: g.region,
            url,
        };
        self.db
            .insert(Kind::Storage, &key(group, &name), &a, "storage account")?;
        Ok(a)
    }

    pub fn storage(&self, group: &str, account: &str) -> Result<StorageAccount> {
        self.db.get(Kind::Storage, &key(group, account))?.ok_or_else(|| {
            ControlError::not_found(format!(
                "storage account {group}/{account} does not exist; create it with `ferry storage create {group}/{account}`"
            ))
        })
    }

    pub fn storage_accounts(&self) -> Result<Vec<StorageAccount>> {
        self.db.list(Kind::Storage)
    }

    pub fn create_availability_set(
        &self,
        group: &str,
        req: CreateAvailabilitySet,
    ) -> Result<AvailabilitySet> {
        let g = self.group(group)?;
        let name = valid_name(&req.name, "availability set name")?;
        let s = AvailabilitySet {
            group: g.name,
            name: name.clone(),
            region: g.region,
        };
        self.db.insert(
            Kind::AvailabilitySet,
            &key(group, &name),
            &s,
            "availability set",
        )?;
        Ok(s)
    }

    pub fn availability_set(&self, group: &str, set: &str) -> Result<AvailabilitySet> {
        self.db
            .get(Kind::AvailabilitySet, &key(group, set))?
            .ok_or_else(|| {
                ControlError::not_found(format!("availability set {group}/{set} does not exist"))
            })
    }

    pub fn availability_sets(&self) -> Result<Vec<AvailabilitySet>> {
        self.db.list(Kind::AvailabilitySet)
    }

    pub fn create_policy(&self, req: CreatePolicy) -> Result<Policy> {
        let name = valid_name(&req.name, "policy name")?;
        let mut p = Policy::default_named(&name);
        if let Some(r) = req.retention_seconds {
            if r == 0 || r > MAX_SECONDS as u64 {
                return Err(ControlError::invalid(
                    "retention must be between 1 s and 30 days",
                ));
            }
            p.retention_seconds = r;
        }
        if let Some(c) = req.crash_consistent_every_seconds {
            if !(1.0..=86_400.0).contains(&c) {
                return Err(ControlError::invalid(
                    "the crash-consistent cadence must be between 1 s and 24 h",
                ));
            }
            p.crash_consistent_every_seconds = c;
        }
        if (p.retention_seconds as f64) < p.crash_consistent_every_seconds {
            return Err(ControlError::invalid(format!(
                "the retention ({} s) is shorter than the crash-consistent cadence ({} s): no \
                 point would be kept until the next; make the retention longer or the cadence \
                 shorter",
                p.retention_seconds, p.crash_consistent_every_seconds
            )));
        }
        if let Some(a) = req.app_consistent_every_seconds {
            if a == 0 || a > MAX_SECONDS as u64 {
                return Err(ControlError::invalid(
                    "the app-consistent cadence must be between 1 s and 30 days",
                ));
            }
            p.app_consistent_every_seconds = a;
        }
        for (ladder, given) in [
            (&mut p.thinning, &req.thinning),
            (&mut p.app_thinning, &req.app_thinning),
        ] {
            if let Some(g) = given {
                ferry_replica::retention::check_ladder(g).map_err(ControlError::invalid)?;
                if g.iter()
                    .any(|r| r.after_seconds.max(r.every_seconds) > MAX_SECONDS as u64)
                {
                    return Err(ControlError::invalid(
                        "a thinning rung's age and slot must be at most 30 days",
                    ));
                }
                *ladder = g.clone();
            }
        }
        for (value, what) in [
            (req.rpo_warning_seconds, "the RPO warning threshold"),
            (req.rpo_critical_seconds, "the RPO critical threshold"),
            (req.no_point_warning_seconds, "the no-point warning"),
        ] {
            if let Some(v) = value {
                bounded_seconds(v, what)?;
            }
        }
        p.rpo_warning_seconds = req.rpo_warning_seconds.unwrap_or(p.rpo_warning_seconds);
        p.rpo_critical_seconds = req.rpo_critical_seconds.unwrap_or(p.rpo_critical_seconds);
        if !(p.rpo_warning_seconds > 0.0 && p.rpo_warning_seconds < p.rpo_critical_seconds) {
            return Err(ControlError::invalid(format!(
                "the RPO warning threshold ({} s) must be above zero and below the critical one \
                 ({} s)",
                p.rpo_warning_seconds, p.rpo_critical_seconds
            )));
        }
        if let Some(n) = req.no_point_warning_seconds {
            if n < p.crash_consistent_every_seconds {
                return Err(ControlError::invalid(format!(
                    "the no-point warning ({n} s) must be at least the crash-consistent cadence \
                     ({} s), or every interval would warn",
                    p.crash_consistent_every_seconds
                )));
            }
            p.no_point_warning_seconds = Some(n);
        }
        p.journal_seconds = req.journal_seconds.unwrap_or(p.journal_seconds);
        if req.journal_seconds.is_none() {
            p.journal_seconds = p.journal_seconds.min(p.retention_seconds);
        }
        if p.journal_seconds > p.retention_seconds {
            return Err(ControlError::invalid(format!(
                "the journal window ({} s) cannot be longer than the retention ({} s)",
                p.journal_seconds, p.retention_seconds
            )));
        }
        self.db.insert(Kind::Policy, &name, &p, "policy")?;
        Ok(p)
    }

    pub fn policy(&self, name: &str) -> Result<Policy> {
        self.db.get(Kind::Policy, name)?.ok_or_else(|| {
            ControlError::not_found(format!(
                "policy {name} does not exist; create it with `ferry policy create {name}`"
            ))
        })
    }

    pub fn policies(&self) -> Result<Vec<Policy>> {
        self.db.list(Kind::Policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: serde_json::Value) -> CreatePolicy {
        serde_json::from_value(json).unwrap()
    }

    #[tokio::test]
    async fn policy_durations_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::start_without_regions(dir.path()).await.unwrap();
        for (body, says) in [
            (
                serde_json::json!({"name": "p", "retention_seconds": 60}),
                "shorter than the crash-consistent cadence",
            ),
            (
                serde_json::json!({"name": "p", "retention_seconds": 5, "crash_consistent_every_seconds": 10.0}),
                "shorter than the crash-consistent cadence",
            ),
            (
                serde_json::json!({"name": "p", "rpo_warning_seconds": 1e308}),
                "between 0 and 30 days",
            ),
            (
                serde_json::json!({"name": "p", "rpo_critical_seconds": 1e308}),
                "between 0 and 30 days",
            ),
            (
                serde_json::json!({"name": "p", "rpo_warning_seconds": -1.0}),
                "between 0 and 30 days",
            ),
            (
                serde_json::json!({"name": "p", "no_point_warning_seconds": 1e308}),
                "between 0 and 30 days",
            ),
            (
                serde_json::json!({"name": "p", "app_consistent_every_seconds": 1u64 << 60}),
                "between 1 s and 30 days",
            ),
            (
                serde_json::json!({"name": "p", "thinning": [{"after_seconds": 3600, "every_seconds": 1u64 << 60}]}),
                "at most 30 days",
            ),
        ] {
            let err = control.create_policy(policy(body.clone())).unwrap_err();
            assert!(matches!(err, ControlError::Invalid(_)), "{body}: {err:?}");
            assert!(err.to_string().contains(says), "{body}: {err}");
        }
        assert!(
            control.policies().unwrap().is_empty(),
            "a refused policy was stored"
        );
        control
            .create_policy(policy(serde_json::json!({
                "name": "ok", "retention_seconds": 20, "crash_consistent_every_seconds": 2.0,
                "rpo_warning_seconds": 60.0, "rpo_critical_seconds": 2592000.0
            })))
            .unwrap();
        control.shutdown().await;
    }
}
