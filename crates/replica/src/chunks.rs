//! Chunks: reading one by reference, and packing new ones into pack objects.

use bytes::Bytes;
use ferry_format::map::ChunkRef;
use ferry_format::pack::{self, PackBuilder};
use ferry_format::{BLOCK_SIZE, Digest};

use crate::{ReplicaError, ReplicaLayout};

/// Fetch and check one chunk (a ranged read of its pack).
pub(crate) async fn read_chunk(
    layout: &ReplicaLayout,
    disk: usize,
    r: &ChunkRef,
) -> Result<Vec<u8>, ReplicaError> {
    if r.is_zero() {
        return Ok(vec![0; BLOCK_SIZE as usize]);
    }
    let key = layout.pack_key(disk, r.pack);
    let start = r.offset as u64;
    let z = layout.disks[disk]
        .get_range(&key, start..start + r.len as u64)
        .await?;
    let hash = r.hash;
    tokio::task::spawn_blocking(move || pack::open_chunk(&z, &hash, BLOCK_SIZE as usize))
        .await
        .map_err(|e| ReplicaError::Internal(format!("decompress chunk: {e}")))?
        .map_err(ReplicaError::format(format!("chunk in {key}")))
}

/// A pack being filled; finished packs are handed back for upload.
pub(crate) struct Packer {
    current: Option<PackBuilder>,
    target: usize,
    pub finished: Vec<(u64, Bytes)>,
}

impl Packer {
    pub fn new(target: usize) -> Self {
        Packer {
            current: None,
            target,
            finished: Vec::new(),
        }
    }

    /// Compress `raw` (hash `hash`) into the current pack; returns its reference.
    pub fn add(&mut self, hash: Digest, raw: &[u8], level: i32) -> Result<ChunkRef, ReplicaError> {
        let z = pack::compress_chunk(raw, level).map_err(ReplicaError::format("compress chunk"))?;
        let b = self
            .current
            .get_or_insert_with(|| PackBuilder::new(rand_id()));
        let e = b.push_compressed(hash, &z, raw.len() as u32);
        let r = ChunkRef {
            hash,
            pack: b.id(),
            offset: e.offset,
            len: e.len,
        };
        if b.len() >= self.target {
            self.seal();
        }
        Ok(r)
    }

    /// Finish the current pack, if any.
    pub fn seal(&mut self) {
        if let Some(b) = self.current.take() {
            let id = b.id();
            self.finished.push((id, Bytes::from(b.finish())));
        }
    }
}

fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    u64::from_le_bytes(b)
}
