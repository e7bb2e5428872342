//! Seeding an empty replica from disks the item came from (a reprotect): a checkpoint at
//! sequence 0 from which processing starts, so the stream only has to carry the blocks that
//! differ. The disks are local images (the server's own agent), an agent's upload (a joined
//! host's surviving disks, [`SeedSource`]), or none at all (every block zero).

use ferry_format::BLOCK_SIZE;
use ferry_format::point::PointKind;
use ferry_types::{Generation, Timestamp};

use super::Processor;
use crate::ReplicaError;
use crate::points;

/// Blocks read from a seed before they are packed and stored.
pub const SEED_BATCH: u64 = 64 << 20;

/// The non-zero blocks of a range of a disk, by block number.
pub type SeedBlocks = Vec<(u64, Vec<u8>)>;

/// Where a seed's blocks come from, asked range by range in order: every disk from offset 0,
/// [`SEED_BATCH`] bytes at a time (less at the end).
pub trait SeedSource: Send {
    fn next(
        &mut self,
        disk: usize,
        offset: u64,
        len: u64,
    ) -> impl std::future::Future<Output = Result<SeedBlocks, ReplicaError>> + Send;
}

/// Local images, read off the async workers.
struct Images<'a>(&'a [std::path::PathBuf]);

impl SeedSource for Images<'_> {
    async fn next(
        &mut self,
        disk: usize,
        offset: u64,
        len: u64,
    ) -> Result<SeedBlocks, ReplicaError> {
        let path = self.0[disk].clone();
        tokio::task::spawn_blocking(move || read_nonzero(&path, offset, len))
            .await
            .map_err(|e| ReplicaError::Internal(format!("read seed image: {e}")))?
    }
}

/// No disks: every block zero.
struct Empty;

impl SeedSource for Empty {
    async fn next(&mut self, _: usize, _: u64, _: u64) -> Result<SeedBlocks, ReplicaError> {
        Ok(Vec::new())
    }
}

impl Processor {
    /// Seed an empty replica with the contents of local disk images. A replica that already
    /// has a record is left as it is (seeding again after a restart is a no-op).
    pub async fn seed(
        &self,
        images: &[std::path::PathBuf],
        generation: Generation,
    ) -> Result<(), ReplicaError> {
        if images.len() != self.disk_sizes.len() {
            return Err(ReplicaError::Internal(format!(
                "{} seed images for {} disks",
                images.len(),
                self.disk_sizes.len()
            )));
        }
        self.seed_from(&mut Images(images), generation).await
    }

    /// Seed the replica with empty disks, when no disk of the target is at hand: the source's
    /// copy then sends every block that holds data.
    pub async fn seed_empty(&self, generation: Generation) -> Result<(), ReplicaError> {
        self.seed_from(&mut Empty, generation).await
    }

    /// Seed the replica from `source`. A no-op once the replica has a point.
    pub async fn seed_from(
        &self,
        source: &mut impl SeedSource,
        generation: Generation,
    ) -> Result<(), ReplicaError> {
        if points::latest_record(&self.layout).await?.is_some() {
            return Ok(());
        }
        let mut pos = self.empty_position(Timestamp::now(), generation);
        for d in 0..self.disk_sizes.len() {
            let size = self.disk_sizes[d];
            let mut offset = 0;
            while offset < size {
                let len = (size - offset).min(SEED_BATCH);
                let blocks = source.next(d, offset, len).await?;
                for (b, data) in blocks {
                    if b * BLOCK_SIZE < offset || b * BLOCK_SIZE >= offset + len {
                        return Err(ReplicaError::Internal(format!(
                            "the seed gave block {b} for bytes {offset}..{} of disk {d}",
                            offset + len
                        )));
                    }
                    pos.disks[d]
                        .dirty
                        .insert(b, crate::blocks::Block::Data(data));
                }
                self.flush(&mut pos).await?;
                offset += len;
            }
        }
        self.publish(&mut pos, PointKind::Checkpoint, None).await
    }
}

/// The non-zero 64 KiB blocks of `len` bytes of an image from `offset`, by block number.
fn read_nonzero(
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<Vec<(u64, Vec<u8>)>, ReplicaError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)
        .map_err(|e| ReplicaError::Internal(format!("open seed image {}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(BLOCK_SIZE) as usize;
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        file.read_exact_at(&mut buf[..n], at).map_err(|e| {
            ReplicaError::Internal(format!("read seed image {}: {e}", path.display()))
        })?;
        if buf.iter().any(|&b| b != 0) {
            out.push((at / BLOCK_SIZE, buf));
        }
        at += n as u64;
    }
    Ok(out)
}
