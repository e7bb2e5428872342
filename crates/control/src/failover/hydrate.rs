//! Instant serving after a failover: the target VM boots from disks that are still being
//! restored from the recovery point. The agent fetches every block the VM touches first from
//! the replica on demand and the rest in the background (`crates/agent/src/hydrate.rs`); this
//! side supplies the blocks, pins the point against retention while it is needed, shows the
//! progress on the VM, and waits for it where a whole disk is needed (reprotect).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::command::DiskWire;
use ferry_agent::hydrate::{BlockSource, BoxFuture, Fetched};
use ferry_format::map::ChunkRef;
use ferry_format::point::PointRecord;
use ferry_replica::{PointSelector, ReplicaLayout, points};
use tokio::sync::OnceCell;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::model::{Replication, Severity, Vm, VmHydration};
use crate::resources::key;

/// The blocks of one disk at one recovery point, read from the replica. The point's block map
/// is loaded at the first fetch (so a restarted server serves the disk before the replica
/// answers).
struct PointSource(Arc<Inner>);

struct Inner {
    layout: ReplicaLayout,
    point: PointSelector,
    disk: usize,
    map: OnceCell<Vec<ChunkRef>>,
}

impl BlockSource for PointSource {
    fn fetch(&self, blocks: Vec<u64>) -> BoxFuture<Fetched> {
        let inner = self.0.clone();
        Box::pin(async move {
            let map = inner
                .map
                .get_or_try_init(|| async {
                    let point = points::resolve(&inner.layout, &inner.point).await?;
                    ferry_replica::export::point_map(&inner.layout, &point, inner.disk).await
                })
                .await
                .map_err(|e| e.to_string())?;
            ferry_replica::export::read_blocks(&inner.layout, inner.disk, map, &blocks)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl Control {
    /// The source of each disk of a VM that is still hydrating (`None` for the others).
    pub(crate) fn hydration_sources(&self, vm: &Vm) -> Result<Vec<Option<Arc<dyn BlockSource>>>> {
        let Some(h) = &vm.hydration else {
            return Ok(vec![None; vm.disks.len()]);
        };
        if let Some(path) = h
            .recovery_point
            .strip_prefix(crate::resources::IMAGE_PREFIX)
        {
            // The first disk, from an image file.
            let mut sources = vec![None; vm.disks.len()];
            if let Some(first) = sources.first_mut() {
                let image = crate::image::ImageBlocks { path: path.into() };
                *first = Some(Arc::new(image) as Arc<dyn BlockSource>);
            }
            return Ok(sources);
        }
        let (g, v) = h.item.split_once('/').unwrap_or_default();
        let rep = self.replication(g, v)?;
        let layout = self.layout(&rep)?;
        let point = PointSelector::parse(&h.recovery_point).ok_or_else(|| {
            ControlError::Internal(format!(
                "VM hydrates from an invalid point {:?}",
                h.recovery_point
            ))
        })?;
        Ok(vm
            .disks
            .iter()
            .map(|d| {
                let inner = Inner {
                    layout: layout.clone(),
                    point: point.clone(),
                    disk: d.index,
                    map: OnceCell::new(),
                };
                Some(Arc::new(PointSource(Arc::new(inner))) as Arc<dyn BlockSource>)
            })
            .collect())
    }

    /// Make the disks of `vm` empty images to be hydrated from `point` of `rep`'s replica, and
    /// record that on the VM (not yet served).
    pub(crate) async fn prepare_hydration(
        &self,
        rep: &Replication,
        point: &PointRecord,
        vm: &mut Vm,
    ) -> Result<()> {
        let layout = self.layout(rep)?;
        let vm_key = key(&vm.group, &vm.name);
        let point_id = points::point_id(point.seq);
        self.forget_restores(&vm_key);
        match self.host_of(vm)? {
            // A joined host asks for the blocks of the point itself.
            host @ crate::hosts::Host::Joined(_) => {
                // Its disk requests are answered only once the VM records the point.
                vm.hydration = Some(VmHydration::new(rep.item_key(), point_id.clone()));
                self.db.put(Kind::Vm, &vm_key, vm)?;
                let wires: Vec<_> = crate::resources::disk_wires(vm)
                    .into_iter()
                    .map(|d| DiskWire { restore: None, ..d })
                    .collect();
                host.prepare_restore(&vm_key, &point_id, wires).await?;
            }
            crate::hosts::Host::Embedded(_) => {
                for d in &vm.disks {
                    let blocks = super::restore::present_blocks(&layout, point, d.index).await?;
                    ferry_agent::hydrate::prepare(d.image.as_ref(), d.size_bytes, &blocks)
                        .map_err(|e| {
                            ControlError::Internal(format!("prepare disk {}: {e}", d.index))
                        })?;
                }
            }
        }
        vm.hydration = Some(VmHydration::new(rep.item_key(), point_id));
        self.db.put(Kind::Vm, &vm_key, vm)
    }

    /// Fill in a hydrating VM's progress from its agent.
    pub(crate) fn fill_hydration(&self, vm: &mut Vm) {
        let Some(point) = vm.hydration.as_ref().map(|h| h.recovery_point.clone()) else {
            return;
        };
        let Some(disks) = self
            .host_of(vm)
            .ok()
            .and_then(|a| a.hydration(&key(&vm.group, &vm.name), &point))
        else {
            return;
        };
        let Some(h) = vm.hydration.as_mut() else {
            return;
        };
        let (mut total, mut done) = (0, 0);
        for p in disks.into_iter().flatten() {
            total += p.total_bytes;
            done += p.done_bytes;
            if p.error.is_some() {
                h.error = p.error;
            }
        }
        h.total_bytes = total;
        h.done_bytes = done;
        h.percent = if total == 0 {
            100.0
        } else {
            (done as f64 * 1000.0 / total as f64).floor() / 10.0
        };
    }

    /// The VMs whose disks are whole again lose their hydration mark (and an event says so).
    pub(crate) fn hydrations_done(&self) -> Result<()> {
        for mut vm in self.db.list::<Vm>(Kind::Vm)? {
            let Some(point) = vm.hydration.as_ref().map(|h| h.recovery_point.clone()) else {
                continue;
            };
            let vm_key = key(&vm.group, &vm.name);
            let Some(disks) = self.host_of(&vm)?.hydration(&vm_key, &point) else {
                continue;
            };
            if disks.iter().all(Option::is_none) {
                let point = vm
                    .hydration
                    .take()
                    .map(|h| h.recovery_point)
                    .unwrap_or_default();
                // Only the restore seen here: a failover to another point may have started
                // one since.
                let cleared = self.update_vm(&vm_key, |v| {
                    if v.hydration
                        .as_ref()
                        .is_some_and(|h| h.recovery_point == point)
                    {
                        v.hydration = None;
                    }
                    Ok(())
                })?;
                if cleared.hydration.is_some() {
                    continue;
                }
                self.forget_restores(&vm_key);
                self.event(
                    Severity::Info,
                    "hydration-complete",
                    &vm_key,
                    match point.strip_prefix(crate::resources::IMAGE_PREFIX) {
                        Some(image) => {
                            format!("the first disk of {vm_key} is filled from image {image}")
                        }
                        None => format!(
                            "every disk of {vm_key} is restored from recovery point {point}"
                        ),
                    },
                );
            }
        }
        Ok(())
    }

    /// The points that VMs still hydrate from, per item: retention keeps them.
    pub(crate) fn pinned_points(&self, item: &str) -> Result<Vec<String>> {
        Ok(self
            .db
            .list::<Vm>(Kind::Vm)?
            .into_iter()
            .filter_map(|v| v.hydration)
            .filter(|h| h.item == item)
            .map(|h| h.recovery_point)
            .collect())
    }

    /// Refuse to go on while a VM that stays (not a test failover's, which goes with the item)
    /// still hydrates from `item`'s replica.
    pub(crate) fn refuse_if_hydrating_from(&self, item: &str, what: &str) -> Result<()> {
        for mut vm in self.db.list::<Vm>(Kind::Vm)? {
            let test_vm = vm.created_by.as_deref() == Some("test-failover");
            if !test_vm && vm.hydration.as_ref().is_some_and(|h| h.item == item) {
                self.fill_hydration(&mut vm);
                let pct = vm.hydration.as_ref().map_or(0.0, |h| h.percent);
                return Err(ControlError::conflict(format!(
                    "cannot {what}: VM {}/{} still restores its disks from this item's replica ({pct}% done); wait until `ferry vm show` no longer lists a hydration",
                    vm.group, vm.name
                )));
            }
        }
        Ok(())
    }

    /// Wait until a VM's disks are whole, calling `progress` with the bytes restored, of how
    /// many, and the percent; fails when nothing moves for `stall`.
    pub(crate) async fn wait_hydrated(
        &self,
        group: &str,
        name: &str,
        stall: Duration,
        mut progress: impl FnMut(u64, u64, f64),
    ) -> Result<()> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let vm = self.vm(group, name)?;
            let Some(h) = vm.hydration else {
                return Ok(());
            };
            progress(h.done_bytes, h.total_bytes, h.percent);
            if h.done_bytes != last.0 {
                last = (h.done_bytes, Instant::now());
            } else if last.1.elapsed() > stall {
                return Err(ControlError::Internal(format!(
                    "the disks of VM {group}/{name} stopped restoring at {}%{}",
                    h.percent,
                    h.error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
