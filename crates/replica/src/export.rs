//! Reading a disk as it was at a recovery point.

use bytes::Bytes;
use ferry_format::BLOCK_SIZE;
use ferry_format::map::ChunkRef;
use ferry_format::point::PointRecord;
use futures::{Stream, StreamExt, TryStreamExt};

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

/// The block map of a disk at a point: one reference per 64 KiB block (zero blocks included).
pub async fn point_map(
    layout: &ReplicaLayout,
    point: &PointRecord,
    disk: usize,
) -> Result<Vec<ChunkRef>, ReplicaError> {
    let dm = point.disks.get(disk).ok_or(ReplicaError::UnknownDisk {
        disk,
        count: point.disks.len(),
    })?;
    load_map(layout, disk, dm).await
}

/// The contents of some blocks of a disk whose map is `map`, checked against their digests:
/// one ranged read per pack, packs fetched in parallel, each unpacked on a blocking thread.
/// Zero blocks come back as zeroes.
pub async fn read_blocks(
    layout: &ReplicaLayout,
    disk: usize,
    map: &[ChunkRef],
    blocks: &[u64],
) -> Result<Vec<(u64, Vec<u8>)>, ReplicaError> {
    let mut by_pack: std::collections::BTreeMap<u64, Vec<(u64, ChunkRef)>> = Default::default();
    let mut out = Vec::with_capacity(blocks.len());
    for &b in blocks {
        let r = map.get(b as usize).ok_or_else(|| {
            ReplicaError::Internal(format!("block {b} is past the end of disk {disk}"))
        })?;
        if r.is_zero() {
            out.push((b, vec![0; BLOCK_SIZE as usize]));
        } else {
            by_pack.entry(r.pack).or_default().push((b, *r));
        }
    }
    let fetched: Vec<Vec<(u64, Vec<u8>)>> = futures::stream::iter(by_pack)
        .map(|(pack, chunks)| async move { unpack(layout, disk, pack, chunks).await })
        .buffer_unordered(PACKS_AT_ONCE)
        .try_collect()
        .await?;
    out.extend(fetched.into_iter().flatten());
    Ok(out)
}

/// Fetch the range of one pack that holds `chunks`, then check and decompress each.
async fn unpack(
    layout: &ReplicaLayout,
    disk: usize,
    pack: u64,
    chunks: Vec<(u64, ChunkRef)>,
) -> Result<Vec<(u64, Vec<u8>)>, ReplicaError> {
    let start = chunks
        .iter()
        .map(|(_, r)| r.offset as u64)
        .min()
        .unwrap_or(0);
    let end = chunks
        .iter()
        .map(|(_, r)| r.offset as u64 + r.len as u64)
        .max()
        .unwrap_or(0);
    let key = layout.pack_key(disk, pack);
    let bytes = layout.disks[disk].get_range(&key, start..end).await?;
    tokio::task::spawn_blocking(move || {
        chunks
            .into_iter()
            .map(|(block, r)| {
                let at = (r.offset as u64 - start) as usize;
                let z = &bytes[at..at + r.len as usize];
                ferry_format::pack::open_chunk(z, &r.hash, BLOCK_SIZE as usize)
                    .map(|data| (block, data))
                    .map_err(ReplicaError::format(format!("chunk in {key}")))
            })
            .collect()
    })
    .await
    .map_err(|e| ReplicaError::Internal(format!("unpack {pack:016x}: {e}")))?
}

/// Packs fetched (and unpacked) at once while writing a file.
const PACKS_AT_ONCE: usize = 4;

/// Write the disk at the point to a local file (sparse: zero blocks are skipped). Chunks are
/// read pack by pack (one ranged read covering a pack's chunks), several packs at once, and
/// each pack is checked, decompressed and written on a blocking thread, so hydration uses
/// every core and few requests.
pub async fn to_file(
    layout: &ReplicaLayout,
    point: &PointRecord,
    disk: usize,
    path: &std::path::Path,
) -> Result<u64, ReplicaError> {
    let dm = point.disks.get(disk).ok_or(ReplicaError::UnknownDisk {
        disk,
        count: point.disks.len(),
    })?;
    let size = dm.size;
    let map = load_map(layout, disk, dm).await?;
    let file = std::fs::File::create(path)
        .map_err(|e| ReplicaError::Internal(format!("create {}: {e}", path.display())))?;
    file.set_len(size)
        .map_err(|e| ReplicaError::Internal(format!("size {}: {e}", path.display())))?;
    let file = std::sync::Arc::new(file);
    let mut by_pack: std::collections::BTreeMap<u64, Vec<(u64, ChunkRef)>> = Default::default();
    for (block, r) in map.iter().enumerate() {
        if !r.is_zero() {
            by_pack.entry(r.pack).or_default().push((block as u64, *r));
        }
    }
    futures::stream::iter(by_pack)
        .map(|(pack, chunks)| {
            let (layout, file, path) = (layout.clone(), file.clone(), path.to_path_buf());
            async move { write_pack(&layout, disk, pack, chunks, file, path).await }
        })
        .buffer_unordered(PACKS_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(size)
}

/// Fetch, check and decompress the chunks of one pack, then write each at its block.
async fn write_pack(
    layout: &ReplicaLayout,
    disk: usize,
    pack: u64,
    chunks: Vec<(u64, ChunkRef)>,
    file: std::sync::Arc<std::fs::File>,
    path: std::path::PathBuf,
) -> Result<(), ReplicaError> {
    use std::os::unix::fs::FileExt;
    let blocks = unpack(layout, disk, pack, chunks).await?;
    tokio::task::spawn_blocking(move || {
        for (block, data) in blocks {
            file.write_all_at(&data, block * BLOCK_SIZE)
                .map_err(|e| ReplicaError::Internal(format!("write {}: {e}", path.display())))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ReplicaError::Internal(format!("write {pack:016x}: {e}")))?
}
