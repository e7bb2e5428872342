//! Creating, serving, listing and deleting VMs: their disks' images (on the server's own agent
//! or on a joined host), their NBD addresses, and their removal wherever they live.

use std::net::IpAddr;
use std::sync::Arc;

use ferry_agent::{AgentHost, DiskSpec};
use ferry_types::Timestamp;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::ipam;
use crate::model::*;
use crate::requests::*;
use crate::resources::{DISK_ALIGN, DISK_MAX, key, valid_name};

impl Control {
    /// The VM `GROUP/NAME`.
    pub(crate) fn vm_by_key(&self, vm_key: &str) -> Result<Vm> {
        let (group, vm) = vm_key.split_once('/').unwrap_or((vm_key, ""));
        self.vm(group, vm)
    }

    pub fn vm(&self, group: &str, vm: &str) -> Result<Vm> {
        let mut v: Vm = self.db.get(Kind::Vm, &key(group, vm))?.ok_or_else(|| {
            ControlError::not_found(format!(
                "VM {group}/{vm} does not exist; see `ferry vm list`"
            ))
        })?;
        self.fill_uris(&mut v);
        self.fill_hydration(&mut v);
        Ok(v)
    }

    pub fn vms(&self) -> Result<Vec<Vm>> {
        let mut vms: Vec<Vm> = self.db.list(Kind::Vm)?;
        for v in &mut vms {
            self.fill_uris(v);
            self.fill_hydration(v);
        }
        Ok(vms)
    }

    fn fill_uris(&self, v: &mut Vm) {
        // A joined host's socket is on that host, in its agent's data directory (as it
        // reported it).
        let (socket, tcp) = match &v.host {
            None => match self.embedded.get(&v.region) {
                Some(e) => (
                    e.host().nbd_socket().display().to_string(),
                    e.host().nbd_tcp().map(|a| a.to_string()),
                ),
                None => return,
            },
            Some(h) => match self.joined_host_if_known(h) {
                Some(r) => r.nbd(),
                None => return,
            },
        };
        if socket.is_empty() {
            return;
        }
        let vm_key = key(&v.group, &v.name);
        for d in &mut v.disks {
            let export = AgentHost::export_name(&vm_key, d.index);
            d.nbd_uri = format!("nbd+unix:///{export}?socket={socket}");
            d.nbd_tcp_uri = tcp
                .as_ref()
                .map(|addr| format!("nbds://{addr}/{export}"))
                .unwrap_or_default();
        }
    }

    pub async fn create_vm(self: &Arc<Self>, group: &str, req: CreateVm) -> Result<Vm> {
        let g = self.group(group)?;
        let vm_name = valid_name(&req.name, "VM name")?;
        let vm_key = key(group, &vm_name);
        // Two creations of one name: the second waits, then finds the first.
        let _vm = self.lock_vm(&vm_key).await;
        if self.db.get::<Vm>(Kind::Vm, &vm_key)?.is_some() {
            return Err(ControlError::conflict(format!(
                "VM {vm_key} already exists"
            )));
        }
        let compute = req.compute.clone().unwrap_or_else(|| "external".into());
        if !crate::compute::PROVIDERS.contains(&compute.as_str()) {
            return Err(ControlError::invalid(format!(
                "unknown compute {compute:?}: use --compute qemu (ferry boots the VM) or external (attach the disks' NBD exports to your own hypervisor)"
            )));
        }
        // Boot files, like images, are read only from the import directory.
        let boot_file = |f: &Option<String>, flag: &str| -> Result<Option<String>> {
            let Some(f) = f else { return Ok(None) };
            let path = self.cfg.confine.import_path(f, flag)?;
            if !path.is_file() {
                return Err(ControlError::invalid(format!(
                    "{flag} {f:?} is not a regular file"
                )));
            }
            Ok(Some(path.display().to_string()))
        };
        let boot = crate::model::Boot {
            kernel: boot_file(&req.kernel, "--kernel")?,
            initrd: boot_file(&req.initrd, "--initrd")?,
            append: req.append.clone(),
        };
        if boot.kernel.is_none() && (boot.initrd.is_some() || boot.append.is_some()) {
            return Err(ControlError::invalid("--initrd and --append need --kernel"));
        }
        if compute == "qemu" && boot.kernel.is_none() && req.image.is_none() {
            return Err(ControlError::invalid(
                "a qemu VM boots a kernel (--kernel FILE [--initrd FILE] [--append ARGS]) or a bootable disk (--image FILE)",
            ));
        }
        if req.disks.is_empty() {
            return Err(ControlError::invalid(
                "a VM needs at least one disk (--disk SIZE[@ACCOUNT])",
            ));
        }
        let net = self.network(group, &req.network)?;
        let subnet = net
            .subnets
            .iter()
            .find(|s| s.name == req.subnet)
            .ok_or_else(|| {
                ControlError::not_found(format!(
                    "subnet {} does not exist in network {group}/{}",
                    req.subnet, req.network
                ))
            })?;
        if let Some(set) = &req.availability_set
            && self
                .db
                .get::<AvailabilitySet>(Kind::AvailabilitySet, &key(group, set))?
                .is_none()
        {
            return Err(ControlError::not_found(format!(
                "availability set {group}/{set} does not exist"
            )));
        }
        let accounts: Vec<StorageAccount> = self
            .storage_accounts()?
            .into_iter()
            .filter(|a| a.group == group)
            .collect();
        let host = self.place(&g.region, req.host.as_deref())?;
        let mut disks = Vec::new();
        for (i, d) in req.disks.iter().enumerate() {
            if d.size_bytes == 0 {
                return Err(ControlError::invalid(format!(
                    "disk {i}: size must be larger than zero"
                )));
            }
            if d.size_bytes % DISK_ALIGN != 0 {
                return Err(ControlError::invalid(format!(
                    "disk {i}: size must be a whole number of MiB"
                )));
            }
            if d.size_bytes > DISK_MAX {
                return Err(ControlError::invalid(format!(
                    "disk {i}: {} bytes is larger than the largest disk, 64 TiB",
                    d.size_bytes
                )));
            }
            let storage = match &d.storage {
                Some(a) => self.storage(group, a)?.name,
                None => self.default_disk_account(group, &g.region, &accounts, i)?,
            };
            let image = image_path(
                &self.cfg.data,
                &g.region,
                host.as_deref(),
                group,
                &vm_name,
                i,
            );
            disks.push(VmDisk {
                index: i,
                size_bytes: d.size_bytes,
                storage,
                image: image.display().to_string(),
                nbd_uri: String::new(),
                nbd_tcp_uri: String::new(),
            });
        }
        let cidr = ipam::parse_cidr(&subnet.cidr, "subnet")?;
        let wanted = req
            .ip
            .as_deref()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| ControlError::invalid(format!("invalid IP address {s:?}")))
            })
            .transpose()?;
        let used = self.used_ips(group, &req.network)?;
        let ip = ipam::choose(&cidr, &used, wanted, false)?;
        for (script, what) in [
            (&req.pre_freeze_script, "pre-freeze"),
            (&req.post_thaw_script, "post-thaw"),
        ] {
            if let Some(name) = script {
                self.cfg.confine.check_script(name, what)?;
            }
        }
        let image = req
            .image
            .as_deref()
            .map(|img| {
                let path = self.cfg.confine.import_path(img, "--image")?;
                crate::image::Image::open(&path.display().to_string(), disks[0].size_bytes)
            })
            .transpose()?;
        let vm = Vm {
            group: group.to_string(),
            name: vm_name.clone(),
            region: g.region.clone(),
            host,
            state: VmState::Running,
            compute,
            boot,
            app_consistency: crate::model::AppConsistency {
                pre_freeze: req.pre_freeze_script.clone(),
                post_thaw: req.post_thaw_script.clone(),
            },
            availability_set: req.availability_set.clone(),
            disks,
            nics: vec![Nic {
                network: req.network.clone(),
                subnet: req.subnet.clone(),
                private_ip: ip.to_string(),
            }],
            created_by: None,
            owner: None,
            created: Timestamp::now(),
            hydration: None,
        };
        let mut vm = vm;
        // A creation that fails leaves no image behind.
        match image {
            // A joined host's first disk is filled from the image on the server while it is
            // already served, as a restored disk is ([`crate::failover`]).
            Some(image) if vm.host.is_some() => {
                vm.hydration = Some(crate::model::VmHydration::new(
                    String::new(),
                    format!("{IMAGE_PREFIX}{}", image.path()),
                ));
            }
            Some(image) => {
                let disk = &vm.disks[0];
                let seeded = image
                    .seed(disk.image.as_ref(), disk.size_bytes, crate::image::STALL)
                    .await;
                if let Err(e) = seeded {
                    self.remove_vm_files(&vm);
                    return Err(e);
                }
            }
            None => {}
        }
        self.db.insert(Kind::Vm, &vm_key, &vm, "VM")?;
        if let Some(h) = &vm.hydration {
            let first = disk_wires(&vm).into_iter().take(1).collect();
            let host = self.host_of(&vm)?;
            if let Err(e) = host
                .prepare_restore(&vm_key, &h.recovery_point, first)
                .await
            {
                self.discard_created(&vm).await;
                return Err(e);
            }
        }
        if let Err(e) = self.attach_vm(&vm).await {
            self.discard_created(&vm).await;
            return Err(e);
        }
        if let Err(e) = self.power_on(&vm).await {
            self.host_of(&vm)?.detach_vm(&vm_key).await?;
            self.discard_created(&vm).await;
            return Err(e);
        }
        self.vm(group, &vm_name)
    }

    /// The account of a disk that names none: the group's first account that is not a cache
    /// account (the default cache of the region, or one a replication uses as its cache).
    fn default_disk_account(
        &self,
        group: &str,
        region: &str,
        accounts: &[StorageAccount],
        disk: usize,
    ) -> Result<String> {
        let caches: Vec<String> = self
            .db
            .list::<Replication>(Kind::Replication)?
            .into_iter()
            .map(|r| r.target.cache_storage)
            .collect();
        let default_cache = format!("cache-{region}");
        let is_cache =
            |a: &StorageAccount| a.name == default_cache || caches.contains(&key(group, &a.name));
        if let Some(a) = accounts.iter().find(|a| !is_cache(a)) {
            return Ok(a.name.clone());
        }
        Err(ControlError::invalid(match accounts.first() {
            None => format!(
                "disk {disk}: group {group} has no storage account; create one with `ferry storage create {group}/ACCOUNT`"
            ),
            Some(a) => format!(
                "disk {disk}: the only storage accounts of group {group} are cache accounts (e.g. {}); name one with --disk SIZE@ACCOUNT or create one with `ferry storage create {group}/ACCOUNT`",
                a.name
            ),
        }))
    }

    pub(crate) fn used_ips(&self, group: &str, network: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .db
            .list::<Vm>(Kind::Vm)?
            .iter()
            .filter(|v| v.group == group)
            .flat_map(|v| v.nics.iter())
            .filter(|n| n.network == network)
            .filter_map(|n| n.private_ip.parse().ok())
            .collect())
    }

    pub(crate) async fn attach_vm(&self, vm: &Vm) -> Result<()> {
        let agent = self.host_of(vm)?;
        let sources = self.hydration_sources(vm)?;
        let vm_key = key(&vm.group, &vm.name);
        // A replicated VM's writes wait for its stream, which starts a moment later.
        let replicated = self
            .db
            .list::<Replication>(Kind::Replication)?
            .iter()
            .any(|r| r.source_key() == vm_key && r.state.is_replicating());
        let hold = replicated.then_some(self.cfg.stream.start_hold);
        let specs: Vec<DiskSpec> = vm
            .disks
            .iter()
            .zip(sources)
            .map(|(d, source)| DiskSpec {
                image: d.image.clone().into(),
                size: d.size_bytes,
                hydrate_from: source,
                hold,
            })
            .collect();
        // It may apply the stream logs to the images again first (after an unclean stop).
        agent.attach_vm(&vm_key, &specs, disk_wires(vm)).await
    }

    /// `ferry vm delete`. Under the VM's lock: no replication of it can start meanwhile.
    pub async fn delete_vm(&self, group: &str, vm: &str) -> Result<()> {
        let vm_key = key(group, vm);
        let _vm = self.lock_vm(&vm_key).await;
        let v = self.vm(group, vm)?;
        for rep in self.db.list::<Replication>(Kind::Replication)? {
            if rep.item_key() == vm_key {
                return Err(ControlError::conflict(format!(
                    "VM {vm_key} is replicated; disable replication first with `ferry replication disable {vm_key}`"
                )));
            }
            if let Some(role) = crate::operations::role_of(&rep, &vm_key) {
                return Err(ControlError::conflict(format!(
                    "VM {vm_key} is the {role} of the replicated item {} (state {}); {}",
                    rep.item_key(),
                    rep.state,
                    if role == "test VM" {
                        format!(
                            "clean it up with `ferry failover test-cleanup {}`",
                            rep.item_key()
                        )
                    } else {
                        format!(
                            "disable replication first with `ferry replication disable {}`",
                            rep.item_key()
                        )
                    }
                )));
            }
        }
        self.remove_vm_locked(&v).await
    }

    /// Stop a VM, stop serving its disks, delete its images and its record.
    pub(crate) async fn remove_vm(&self, v: &Vm) -> Result<()> {
        let _vm = self.lock_vm(&key(&v.group, &v.name)).await;
        self.remove_vm_locked(v).await
    }

    /// [`Control::remove_vm`], the VM's lock held.
    async fn remove_vm_locked(&self, v: &Vm) -> Result<()> {
        let vm_key = key(&v.group, &v.name);
        self.power_off(v).await?;
        let host = self.host_of(v)?;
        if let crate::hosts::Host::Joined(_) = host {
            // Its images are on its host: the agent deletes them.
            host.delete_vm(&vm_key, disk_wires(v)).await?;
            self.db.delete(Kind::Vm, &vm_key)?;
            return Ok(());
        }
        host.detach_vm(&vm_key).await?;
        self.db.delete(Kind::Vm, &vm_key)?;
        self.remove_vm_files(v);
        Ok(())
    }

    /// Undo a creation that failed: its record, and its images wherever they are.
    async fn discard_created(&self, v: &Vm) {
        let vm_key = key(&v.group, &v.name);
        let _ = self.db.delete(Kind::Vm, &vm_key);
        if v.host.is_some() {
            if let Ok(host) = self.host_of(v)
                && let Err(e) = host.delete_vm(&vm_key, disk_wires(v)).await
            {
                tracing::warn!(vm = %vm_key, error = %e, "remove a VM whose creation failed from its host");
            }
        } else {
            self.remove_vm_files(v);
        }
    }

    /// Delete a VM's images and its runtime directory (no longer served) on the server's own
    /// agent; a joined host's are on that host.
    fn remove_vm_files(&self, v: &Vm) {
        if v.host.is_some() {
            return;
        }
        // Removing a large image can take a while.
        ferry_types::blocking::off_worker(|| {
            for d in &v.disks {
                let _ = std::fs::remove_file(&d.image);
                let _ = std::fs::remove_file(ferry_agent::hydrate::bitmap_path(d.image.as_ref()));
                // The VM's own directory of images, once empty (never a shared one).
                if let Some(dir) = std::path::Path::new(&d.image).parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            let _ = std::fs::remove_dir_all(self.vm_dir(v));
        });
    }
}

/// A hydration's `recovery_point` that names an image file on the server (a VM created from
/// `--image` on a joined host) rather than a point of a replica.
pub(crate) const IMAGE_PREFIX: &str = "image:";

/// Where disk `index` of VM `group/name` lives: on a joined host, under its agent's data
/// directory (relative); on the server's own agent of `region`, under the server's.
pub(crate) fn image_path(
    data: &std::path::Path,
    region: &str,
    host: Option<&str>,
    group: &str,
    name: &str,
    index: usize,
) -> std::path::PathBuf {
    let base = match host {
        Some(_) => std::path::PathBuf::from("disks"),
        None => data.join("regions").join(region).join("disks"),
    };
    base.join(group).join(name).join(format!("disk{index}.raw"))
}

/// A VM's disks as its agent is told of them.
pub(crate) fn disk_wires(vm: &Vm) -> Vec<ferry_agent::command::DiskWire> {
    vm.disks
        .iter()
        .map(|d| ferry_agent::command::DiskWire {
            index: d.index,
            image: d.image.clone(),
            size_bytes: d.size_bytes,
            restore: vm.hydration.as_ref().map(|h| h.recovery_point.clone()),
        })
        .collect()
}
