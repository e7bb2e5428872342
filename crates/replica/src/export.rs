//! Reading a disk as it was at a recovery point.

use bytes::Bytes;
use ferry_format::point::PointRecord;
use futures::{Stream, StreamExt};

use crate::blocks::load_map;
use crate::chunks::read_chunk;
use crate::{ReplicaError, ReplicaLayout};

/// Chunks fetched at once while exporting.
const PARALLEL: usize = 16;

/// The disk's bytes at the point, block by block in order (zero blocks as zeroes), fetching
/// chunks in parallel.
pub async fn disk_bytes(
    layout: &ReplicaLayout,
    point: &PointRecord,
    disk: usize,
) -> Result<impl Stream<Item = Result<Bytes, ReplicaError>> + Send + 'static, ReplicaError> {
    let dm = point.disks.get(disk).ok_or(ReplicaError::UnknownDisk {
        disk,
        count: point.disks.len(),
    })?;
    let map = load_map(layout, disk, dm).await?;
    let layout = layout.clone();
    Ok(futures::stream::iter(map)
        .map(move |r| {
            let layout = layout.clone();
            async move { read_chunk(&layout, disk, &r).await.map(Bytes::from) }
        })
        .buffered(PARALLEL))
}

/// Write the disk at the point to a local file (sparse: zero blocks are skipped).
pub async fn to_file(
    layout: &ReplicaLayout,
    point: &PointRecord,
    disk: usize,
    path: &std::path::Path,
) -> Result<u64, ReplicaError> {
    use std::os::unix::fs::FileExt;
    let size = point.disks.get(disk).map(|d| d.size).unwrap_or(0);
    let file = std::fs::File::create(path)
        .map_err(|e| ReplicaError::Internal(format!("create {}: {e}", path.display())))?;
    file.set_len(size)
        .map_err(|e| ReplicaError::Internal(format!("size {}: {e}", path.display())))?;
    let mut stream = Box::pin(disk_bytes(layout, point, disk).await?);
    let mut offset = 0u64;
    while let Some(block) = stream.next().await {
        let block = block?;
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(&block, offset)
                .map_err(|e| ReplicaError::Internal(format!("write {}: {e}", path.display())))?;
        }
        offset += block.len() as u64;
    }
    Ok(offset)
}
