//! Seeding a reverse replica from the disks a joined host kept (its site came back): the server
//! cannot read them, so it asks the host's agent to send them (`upload-disks`), range by range
//! in order (`POST /v1/agent/seed/blocks`), and feeds them to the processor's seed as they
//! come. The agent never writes the replica.

use std::time::Duration;

use ferry_agent::command::Command;
use ferry_agent::restore::{SEED_CHUNK, SeedRange, decode_blocks};
use ferry_format::BLOCK_SIZE;
use ferry_replica::{Processor, ReplicaError, SeedBlocks, SeedSource};
use ferry_types::Generation;
use tokio::sync::mpsc;

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::hosts::{AgentIdentity, Host};
use crate::model::Vm;
use crate::resources::key;

/// How long the seed waits for the next range before it gives up.
const STALL: Duration = Duration::from_secs(60);

/// A seed waiting for a host's ranges.
pub(crate) struct Upload {
    vm: String,
    tx: mpsc::Sender<(SeedRange, SeedBlocks)>,
}

/// The ranges as they arrive, in the order the processor asks for them.
struct Uploaded {
    rx: mpsc::Receiver<(SeedRange, SeedBlocks)>,
    host: String,
}

impl SeedSource for Uploaded {
    async fn next(
        &mut self,
        disk: usize,
        offset: u64,
        len: u64,
    ) -> std::result::Result<SeedBlocks, ReplicaError> {
        let mut out = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let next = tokio::time::timeout(STALL, self.rx.recv()).await;
            let Ok(Some((range, blocks))) = next else {
                return Err(ReplicaError::Internal(format!(
                    "host {} stopped sending disk {disk} at byte {at}",
                    self.host
                )));
            };
            if range.disk != disk || range.offset != at || at + range.len > offset + len {
                return Err(ReplicaError::Internal(format!(
                    "host {} sent bytes {}..{} of disk {}, not those from {at} of disk {disk}",
                    self.host,
                    range.offset,
                    range.offset + range.len,
                    range.disk
                )));
            }
            at += range.len;
            out.extend(blocks);
        }
        Ok(out)
    }
}

impl Control {
    /// Seed `processor`'s replica from the disks of `vm` on its joined host `host`. `false`
    /// (nothing seeded) when the disks are not there.
    pub(crate) async fn seed_from_host(
        &self,
        processor: &Processor,
        host: &Host,
        host_name: &str,
        vm: &Vm,
        generation: Generation,
    ) -> Result<bool> {
        let vm_key = key(&vm.group, &vm.name);
        // Its disks must not change while they are read: the host stops serving them (the VM
        // is stopped, and its disks are the reverse target's now).
        host.detach_vm(&vm_key).await?;
        let upload: u64 = rand::random();
        let (tx, rx) = mpsc::channel(4);
        self.uploads().insert(
            upload,
            Upload {
                vm: vm_key.clone(),
                tx,
            },
        );
        let asked = host
            .run(Command::UploadDisks {
                vm: vm_key.clone(),
                upload,
                disks: crate::resources::disk_wires(vm),
            })
            .await;
        let result = match asked {
            Err(ControlError::Internal(m)) if m.contains("is not on this host") => Ok(false),
            Err(e) => Err(e),
            Ok(()) => {
                let mut source = Uploaded {
                    rx,
                    host: host_name.to_string(),
                };
                processor
                    .seed_from(&mut source, generation)
                    .await
                    .map(|()| true)
                    .map_err(Into::into)
            }
        };
        self.uploads().remove(&upload);
        result
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Upload>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `POST /v1/agent/seed/blocks`: a range of a disk from the host of the VM being seeded
    /// from; it waits while the seed is behind.
    pub async fn seed_blocks(
        &self,
        who: &AgentIdentity,
        range: SeedRange,
        body: &[u8],
    ) -> Result<()> {
        let (vm, tx) = {
            let uploads = self.uploads();
            let u = uploads.get(&range.upload).ok_or_else(|| {
                ControlError::not_found(format!(
                    "no seed is waiting for upload {}; it ended or was given up",
                    range.upload
                ))
            })?;
            (u.vm.clone(), u.tx.clone())
        };
        self.authorize_vm(who, &self.vm_by_key(&vm)?)?;
        if range.len == 0 || range.len > SEED_CHUNK || !range.offset.is_multiple_of(BLOCK_SIZE) {
            return Err(ControlError::invalid(format!(
                "a seed range is 1 to {SEED_CHUNK} bytes from a block boundary; got {} bytes at {}",
                range.len, range.offset
            )));
        }
        let first = range.offset / BLOCK_SIZE;
        let asked: Vec<u64> = (first..(range.offset + range.len).div_ceil(BLOCK_SIZE)).collect();
        let blocks =
            decode_blocks(body, &asked, BLOCK_SIZE as usize).map_err(ControlError::invalid)?;
        tx.send_timeout((range, blocks), STALL)
            .await
            .map_err(|_| ControlError::conflict("the seed stopped waiting for this upload"))
    }
}
