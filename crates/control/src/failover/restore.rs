//! The server's side of restoring a disk on a joined host ([`ferry_agent::restore`]): the host's
//! agent asks which blocks of the point hold data, then for their contents, for the VMs placed
//! on it that are being restored from that very point. Each disk's source (and so its point's
//! block map, loaded once) is kept while the restore goes on.

use std::sync::Arc;

use ferry_agent::hydrate::BlockSource;
use ferry_agent::restore::{BlocksRequest, Present, RestoreDisk};
use ferry_format::BLOCK_SIZE;
use ferry_replica::{PointSelector, points};

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::hosts::AgentIdentity;
use crate::model::Vm;

/// The most blocks one request may ask for (16 MiB).
pub const MAX_BLOCKS_PER_REQUEST: usize = 256;

impl Control {
    /// The VM of a restore request, when it is placed on the asking agent's host and is being
    /// restored from the point asked for.
    fn restoring_vm(&self, who: &AgentIdentity, d: &RestoreDisk) -> Result<Vm> {
        let (group, name) =
            d.vm.split_once('/')
                .ok_or_else(|| ControlError::invalid(format!("VM {:?} is not GROUP/NAME", d.vm)))?;
        let vm = self.vm(group, name)?;
        self.authorize_vm(who, &vm)?;
        match &vm.hydration {
            Some(h) if h.recovery_point == d.point => {}
            Some(h) => {
                return Err(ControlError::conflict(format!(
                    "VM {} is restored from {} now, not {}",
                    d.vm, h.recovery_point, d.point
                )));
            }
            None => {
                return Err(ControlError::conflict(format!(
                    "VM {} is not being restored from a recovery point",
                    d.vm
                )));
            }
        }
        if !vm.disks.iter().any(|x| x.index == d.disk) {
            return Err(ControlError::not_found(format!(
                "VM {} has no disk {}",
                d.vm, d.disk
            )));
        }
        Ok(vm)
    }

    /// `POST /v1/agent/restore/present`: which blocks of the disk hold data at the point.
    pub async fn restore_present(&self, who: &AgentIdentity, d: RestoreDisk) -> Result<Present> {
        let vm = self.restoring_vm(who, &d)?;
        if let Some(path) = d.point.strip_prefix(crate::resources::IMAGE_PREFIX) {
            if d.disk != 0 {
                return Ok(Present::default());
            }
            let len = std::fs::metadata(path)
                .map_err(|e| ControlError::Internal(format!("image {path}: {e}")))?
                .len();
            return Ok(Present::from_blocks(&crate::image::image_blocks(len)));
        }
        let item = vm
            .hydration
            .as_ref()
            .map(|h| h.item.clone())
            .unwrap_or_default();
        let (g, v) = item.split_once('/').unwrap_or_default();
        let rep = self.replication(g, v)?;
        let layout = self.layout(&rep)?;
        let selector = PointSelector::parse(&d.point).ok_or_else(|| {
            ControlError::invalid(format!("{:?} is not a recovery point id", d.point))
        })?;
        let point = points::resolve(&layout, &selector).await?;
        let blocks = present_blocks(&layout, &point, d.disk).await?;
        Ok(Present::from_blocks(&blocks))
    }

    /// `POST /v1/agent/restore/blocks`: the contents of some blocks of the disk at the point,
    /// in the body form of [`ferry_agent::restore::encode_blocks`].
    pub async fn restore_blocks(&self, who: &AgentIdentity, req: BlocksRequest) -> Result<Vec<u8>> {
        if req.blocks.len() > MAX_BLOCKS_PER_REQUEST {
            return Err(ControlError::invalid(format!(
                "{} blocks asked for at once; at most {MAX_BLOCKS_PER_REQUEST}",
                req.blocks.len()
            )));
        }
        let vm = self.restoring_vm(who, &req.disk)?;
        let size = vm
            .disks
            .iter()
            .find(|x| x.index == req.disk.disk)
            .map_or(0, |x| x.size_bytes);
        if let Some(b) = req.blocks.iter().find(|&&b| b >= size.div_ceil(BLOCK_SIZE)) {
            return Err(ControlError::invalid(format!(
                "block {b} is past the end of disk {} ({size} bytes)",
                req.disk.disk
            )));
        }
        let source = self.restore_source(&vm, &req.disk)?;
        let blocks = source
            .fetch(req.blocks)
            .await
            .map_err(|e| ControlError::Internal(format!("read the replica: {e}")))?;
        Ok(ferry_agent::restore::encode_blocks(&blocks))
    }

    fn restore_source(&self, vm: &Vm, d: &RestoreDisk) -> Result<Arc<dyn BlockSource>> {
        let mut restores = self.restores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = restores.get(d) {
            return Ok(s.clone());
        }
        let sources = self.hydration_sources(vm)?;
        let source = vm
            .disks
            .iter()
            .zip(sources)
            .find(|(x, _)| x.index == d.disk)
            .and_then(|(_, s)| s)
            .ok_or_else(|| ControlError::Internal(format!("no source for {d:?}")))?;
        restores.insert(d.clone(), source.clone());
        Ok(source)
    }

    /// Forget the sources of a VM's restores (it is whole again, or restored anew).
    pub(crate) fn forget_restores(&self, vm: &str) {
        self.restores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d, _| d.vm != vm);
    }
}

/// The blocks of a point's disk that hold data, ascending.
pub(crate) async fn present_blocks(
    layout: &ferry_replica::ReplicaLayout,
    point: &ferry_format::point::PointRecord,
    disk: usize,
) -> Result<Vec<u64>> {
    let map = ferry_replica::export::point_map(layout, point, disk).await?;
    Ok(map
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.is_zero())
        .map(|(i, _)| i as u64)
        .collect())
}
