//! Repairing damaged chunks from the source disks, at their old place.
//!
//! A damaged chunk is rebuilt from a source block that still hashes to it: the candidates are
//! the blocks the retained points read it at; a block overwritten since no longer matches. The
//! block is recompressed at the processor's zstd level — zstd is deterministic, so the same
//! input at the same level gives the same frame — and written back at the chunk's offset when
//! the length matches ([`pack::patch_chunk`] reseals the pack; the object is overwritten). A
//! lost pack is rebuilt ([`pack::rebuild`]) when every chunk the points use in it can be. A
//! pack whose trailer or index alone is damaged is resealed when its index still names every
//! chunk the points use. Map pages cannot be rebuilt from the source.
//!
//! The work is planned first (what can be rebuilt, from which block), then executed pack by
//! pack, and every repaired chunk is read back and checked.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_format::map::ChunkRef;
use ferry_format::pack::{self, PackEntry};
use ferry_format::{BLOCK_SIZE, Digest};
use ferry_storage::StoreError;
use futures::{StreamExt, TryStreamExt};

use super::{Damage, Outcome, PARALLEL, Scan, blocking, fetch_and_check};
use crate::{ReplicaError, ReplicaLayout};

const BS: usize = BLOCK_SIZE as usize;

/// Where a repair reads blocks as the source holds them now.
pub trait BlockSource: Send + Sync {
    /// Block `block` (64 KiB at `block × 64 KiB`) of disk `disk`, zero-padded past the end of
    /// the disk; `None` when it cannot be read. The caller checks the block's hash, so a read
    /// racing a write is harmless.
    fn read_block(&self, disk: usize, block: u64) -> Option<Vec<u8>>;
}

impl<F> BlockSource for F
where
    F: Fn(usize, u64) -> Option<Vec<u8>> + Send + Sync,
{
    fn read_block(&self, disk: usize, block: u64) -> Option<Vec<u8>> {
        self(disk, block)
    }
}

/// The source disks as raw image files, one per disk in order.
#[derive(Debug, Clone)]
pub struct ImageFiles(pub Vec<PathBuf>);

impl BlockSource for ImageFiles {
    fn read_block(&self, disk: usize, block: u64) -> Option<Vec<u8>> {
        let file = std::fs::File::open(self.0.get(disk)?).ok()?;
        let mut buf = vec![0u8; BS];
        let mut done = 0;
        while done < BS {
            match file.read_at(&mut buf[done..], block * BLOCK_SIZE + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(buf)
    }
}

/// A chunk rebuilt from the source: its reference and compressed bytes.
type Rebuilt = (ChunkRef, Vec<u8>);

/// What the repair will do, finding by finding (indexes into `Scan::findings`).
#[derive(Default)]
struct Plan {
    patches: BTreeMap<(usize, u64), Vec<(usize, Rebuilt)>>,
    rebuilds: Vec<(usize, usize, u64, Vec<Rebuilt>)>,
    reseals: Vec<(usize, usize, u64)>,
    refused: Vec<(usize, String)>,
}

pub(super) async fn run(
    layout: &ReplicaLayout,
    scan: &Scan,
    source: Arc<dyn BlockSource>,
    level: i32,
) -> Result<Vec<Outcome>, ReplicaError> {
    let plan = plan(scan, source, level).await?;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; scan.findings.len()];
    for (i, why) in plan.refused {
        outcomes[i] = Some(Outcome::Unrepairable(why));
    }
    for ((d, p), chunks) in plan.patches {
        for (i, o) in patch_pack(layout, d, p, chunks).await? {
            outcomes[i] = Some(o);
        }
    }
    for (i, d, p, chunks) in plan.rebuilds {
        outcomes[i] = Some(rebuild_pack(layout, d, p, chunks).await?);
    }
    for (i, d, p) in plan.reseals {
        let refs = scan.inv.pack_chunks(d, p);
        outcomes[i] = Some(reseal_pack(layout, d, p, &refs).await?);
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Unrepairable("not attempted".into())))
        .collect())
}

async fn plan(scan: &Scan, source: Arc<dyn BlockSource>, level: i32) -> Result<Plan, ReplicaError> {
    let mut plan = Plan::default();
    let damaged: Vec<(usize, (usize, ChunkRef))> = scan
        .findings
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f.damage {
            Damage::Chunk(d, r) => Some((i, (d, r))),
            _ => None,
        })
        .collect();
    let chunks: Vec<(usize, ChunkRef)> = damaged.iter().map(|(_, c)| *c).collect();
    let rebuilt = rebuild_chunks(scan, &source, level, chunks).await?;
    for ((i, (d, r)), z) in damaged.into_iter().zip(rebuilt) {
        match z {
            Ok(z) => plan
                .patches
                .entry((d, r.pack))
                .or_default()
                .push((i, (r, z))),
            Err(why) => plan.refused.push((i, why)),
        }
    }
    for (i, f) in scan.findings.iter().enumerate() {
        match f.damage {
            Damage::Page(..) => plan.refused.push((
                i,
                "a map page cannot be rebuilt from the source; the points that name it cannot \
                 be restored, fail over from another point"
                    .into(),
            )),
            Damage::PackMissing(d, p) => {
                let refs = scan.inv.pack_chunks(d, p);
                let chunks: Vec<(usize, ChunkRef)> = refs.iter().map(|r| (d, *r)).collect();
                let rebuilt = rebuild_chunks(scan, &source, level, chunks).await?;
                match lost_pack_plan(refs, rebuilt) {
                    Ok(chunks) => plan.rebuilds.push((i, d, p, chunks)),
                    Err(why) => plan.refused.push((i, why)),
                }
            }
            Damage::PackFrame(d, p) => plan.reseals.push((i, d, p)),
            Damage::Chunk(..) => {}
        }
    }
    Ok(plan)
}

/// A lost pack can be rebuilt only when every chunk the points use in it can be.
fn lost_pack_plan(
    refs: Vec<ChunkRef>,
    rebuilt: Vec<Result<Vec<u8>, String>>,
) -> Result<Vec<Rebuilt>, String> {
    let n = refs.len();
    let failed: Vec<&String> = rebuilt.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(why) = failed.first() {
        return Err(format!(
            "{} of the {n} chunks the points use in this pack cannot be rebuilt from the \
             source (first: {why})",
            failed.len()
        ));
    }
    Ok(refs
        .into_iter()
        .zip(rebuilt.into_iter().flatten())
        .collect())
}

/// Rebuild chunks from the source, in parallel; one result per chunk, in order.
async fn rebuild_chunks(
    scan: &Scan,
    source: &Arc<dyn BlockSource>,
    level: i32,
    chunks: Vec<(usize, ChunkRef)>,
) -> Result<Vec<Result<Vec<u8>, String>>, ReplicaError> {
    futures::stream::iter(chunks)
        .map(|(disk, r)| {
            let source = source.clone();
            let blocks: Vec<u64> = scan
                .inv
                .chunks
                .get(&(disk, r))
                .map(|u| u.positions.iter().copied().collect())
                .unwrap_or_default();
            blocking(move || rebuild_chunk(&*source, disk, &r, &blocks, level))
        })
        .buffered(PARALLEL)
        .try_collect()
        .await
}

/// Find a source block that hashes to the chunk and recompress it to the chunk's exact length.
fn rebuild_chunk(
    source: &dyn BlockSource,
    disk: usize,
    r: &ChunkRef,
    blocks: &[u64],
    level: i32,
) -> Result<Vec<u8>, String> {
    let mut readable = false;
    let raw = blocks.iter().find_map(|&b| {
        let raw = source.read_block(disk, b)?;
        readable = true;
        (Digest::of(&raw) == r.hash).then_some(raw)
    });
    let Some(raw) = raw else {
        return Err(if readable {
            format!(
                "the source no longer holds this data: block{} {} of disk {disk} changed since",
                if blocks.len() > 1 { "s" } else { "" },
                block_list(blocks)
            )
        } else {
            format!("source disk {disk} cannot be read; check that its image is reachable")
        });
    };
    let z = pack::compress_chunk(&raw, level).map_err(|e| e.to_string())?;
    if z.len() != r.len as usize {
        return Err(format!(
            "recompressing the source block gives {} bytes where the pack holds {}; the chunk \
             was written with other compression settings and cannot be rebuilt in place",
            z.len(),
            r.len
        ));
    }
    Ok(z)
}

fn block_list(blocks: &[u64]) -> String {
    let shown: Vec<String> = blocks.iter().take(4).map(u64::to_string).collect();
    let more = if blocks.len() > 4 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// Patch rebuilt chunks into an existing pack, overwrite it, and read each chunk back.
async fn patch_pack(
    layout: &ReplicaLayout,
    disk: usize,
    pack_id: u64,
    chunks: Vec<(usize, Rebuilt)>,
) -> Result<Vec<(usize, Outcome)>, ReplicaError> {
    let key = layout.pack_key(disk, pack_id);
    let store = &layout.disks[disk];
    let data = match store.get(&key).await {
        Ok(d) => d,
        Err(StoreError::NotFound { .. }) => {
            let why = "the pack disappeared during the repair; run verify again";
            return Ok(chunks
                .into_iter()
                .map(|(i, _)| (i, Outcome::Unrepairable(why.into())))
                .collect());
        }
        Err(e) => return Err(e.into()),
    };
    let (data, patched, mut out) = blocking(move || {
        let mut data = data.to_vec();
        let (mut patched, mut out) = (Vec::new(), Vec::new());
        for (i, (r, z)) in chunks {
            match pack::patch_chunk(&data, &r.hash, r.offset, &z) {
                Ok(d) => {
                    data = d;
                    patched.push((i, r));
                }
                Err(e) => out.push((
                    i,
                    Outcome::Unrepairable(format!("cannot patch the pack in place: {e}")),
                )),
            }
        }
        (data, patched, out)
    })
    .await?;
    if patched.is_empty() {
        return Ok(out);
    }
    store.put(&key, Bytes::from(data)).await?;
    tracing::info!(%key, chunks = patched.len(), "repaired chunks in place from the source");
    for (i, r) in patched {
        out.push((i, recheck(layout, disk, &[r]).await?));
    }
    Ok(out)
}

/// Write a lost pack again from chunks rebuilt at their recorded places.
async fn rebuild_pack(
    layout: &ReplicaLayout,
    disk: usize,
    pack_id: u64,
    chunks: Vec<Rebuilt>,
) -> Result<Outcome, ReplicaError> {
    let refs: Vec<ChunkRef> = chunks.iter().map(|(r, _)| *r).collect();
    let entries: Vec<(PackEntry, Vec<u8>)> = chunks
        .into_iter()
        .map(|(r, z)| {
            let e = PackEntry {
                hash: r.hash,
                offset: r.offset,
                len: r.len,
                raw_len: BLOCK_SIZE as u32,
            };
            (e, z)
        })
        .collect();
    let data = match pack::rebuild(pack_id, &entries) {
        Ok(d) => d,
        Err(e) => {
            return Ok(Outcome::Unrepairable(format!(
                "cannot rebuild the pack: {e}"
            )));
        }
    };
    let key = layout.pack_key(disk, pack_id);
    match layout.disks[disk].put_new(&key, Bytes::from(data)).await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            return Ok(Outcome::Unrepairable(
                "the pack reappeared during the repair; run verify again".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%key, chunks = refs.len(), "rebuilt a lost pack from the source");
    recheck(layout, disk, &refs).await
}

/// Recompute the trailer of a pack whose chunks are intact, if its index names them all.
async fn reseal_pack(
    layout: &ReplicaLayout,
    disk: usize,
    pack_id: u64,
    refs: &[ChunkRef],
) -> Result<Outcome, ReplicaError> {
    let key = layout.pack_key(disk, pack_id);
    let data = layout.disks[disk].get(&key).await?;
    let sealed = match pack::reseal(&data) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Outcome::Unrepairable(format!(
                "the index is unreadable: {e}"
            )));
        }
    };
    let (_, entries) = pack::decode_index(&sealed)
        .map_err(|e| ReplicaError::Internal(format!("a resealed pack does not decode: {e}")))?;
    let named = |r: &ChunkRef| {
        entries
            .iter()
            .any(|e| e.hash == r.hash && e.offset == r.offset && e.len == r.len)
    };
    if let Some(r) = refs.iter().find(|r| !named(r)) {
        return Ok(Outcome::Unrepairable(format!(
            "the index is damaged: it no longer names chunk {} at {}+{}",
            r.hash, r.offset, r.len
        )));
    }
    layout.disks[disk].put(&key, Bytes::from(sealed)).await?;
    tracing::info!(%key, "resealed a pack whose chunks are intact");
    recheck(layout, disk, refs).await
}

/// Read repaired chunks back and check them.
async fn recheck(
    layout: &ReplicaLayout,
    disk: usize,
    refs: &[ChunkRef],
) -> Result<Outcome, ReplicaError> {
    for r in refs {
        if let (_, Some(e)) = fetch_and_check(layout, disk, r).await? {
            return Ok(Outcome::Unrepairable(format!(
                "still damaged after the repair: {e}"
            )));
        }
    }
    Ok(Outcome::Repaired)
}
