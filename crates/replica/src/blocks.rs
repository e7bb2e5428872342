//! One disk of the replica as the processor holds it: the block map in memory, the blocks
//! changed since the last durable record, and the chunks it already stores (for dedup).

use std::collections::{BTreeSet, HashMap};

use ferry_format::map::{self, ChunkRef, ENTRIES_PER_PAGE};
use ferry_format::point::DiskMap;
use ferry_format::segment::Op;
use ferry_format::{BLOCK_SIZE, Digest};
use futures::{StreamExt, TryStreamExt};

use crate::{ReplicaError, ReplicaLayout};

const BS: usize = BLOCK_SIZE as usize;

/// A changed block's content.
pub(crate) enum Block {
    Zero,
    Data(Vec<u8>),
}

pub(crate) struct DiskState {
    pub index: usize,
    pub size: u64,
    pub map: Vec<ChunkRef>,
    pub pages: Vec<Digest>,
    dirty_pages: BTreeSet<usize>,
    pub dirty: HashMap<u64, Block>,
    pub known: HashMap<Digest, ChunkRef>,
}

impl DiskState {
    /// A disk that reads as zeroes and has no stored pages yet.
    pub fn empty(index: usize, size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK_SIZE) as usize;
        let npages = blocks.div_ceil(ENTRIES_PER_PAGE);
        DiskState {
            index,
            size,
            map: vec![ChunkRef::ZERO; blocks],
            pages: vec![Digest::ZERO; npages],
            dirty_pages: (0..npages).collect(),
            dirty: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Load a disk's map as a record names it.
    pub async fn load(
        layout: &ReplicaLayout,
        index: usize,
        disk: &DiskMap,
    ) -> Result<Self, ReplicaError> {
        let mut s = DiskState::empty(index, disk.size);
        if s.pages.len() != disk.pages.len() {
            return Err(ReplicaError::Internal(format!(
                "disk {index}: record names {} map pages, a {}-byte disk needs {}",
                disk.pages.len(),
                disk.size,
                s.pages.len()
            )));
        }
        let pages: Vec<Vec<ChunkRef>> = futures::stream::iter(disk.pages.iter().copied())
            .map(|d| load_page(layout, index, d))
            .buffered(16)
            .try_collect()
            .await?;
        for (p, entries) in pages.into_iter().enumerate() {
            let base = p * ENTRIES_PER_PAGE;
            let n = entries.len().min(s.map.len() - base);
            s.map[base..base + n].copy_from_slice(&entries[..n]);
        }
        s.pages = disk.pages.clone();
        s.dirty_pages.clear();
        for r in &s.map {
            if !r.is_zero() {
                s.known.insert(r.hash, *r);
            }
        }
        Ok(s)
    }

    /// True when changes are held that no stored page reflects yet.
    pub fn needs_flush(&self) -> bool {
        !self.dirty.is_empty() || !self.dirty_pages.is_empty()
    }

    /// Check that an operation fits this disk (done for a whole segment before applying any).
    pub fn check(&self, op: &Op) -> Result<(), String> {
        let (offset, len) = extent(op);
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(format!(
                "disk {}: extent {offset}+{len} is past the end of the {}-byte disk",
                self.index, self.size
            )),
        }
    }

    /// Blocks an operation changes only in part that must be read before it can apply.
    pub fn blocks_to_load(&self, op: &Op) -> Vec<u64> {
        let (offset, len) = extent(op);
        if len == 0 {
            return Vec::new();
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        [first, last]
            .into_iter()
            .filter(|&b| {
                let start = b * BLOCK_SIZE;
                let whole = offset <= start && offset + len >= start + BLOCK_SIZE;
                !whole && !self.dirty.contains_key(&b) && !self.map[b as usize].is_zero()
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    pub fn insert_loaded(&mut self, block: u64, data: Vec<u8>) {
        self.dirty.entry(block).or_insert(Block::Data(data));
    }

    /// Apply a write, zero or trim (trimmed ranges read as zeroes in the replica). Every
    /// partially changed block must be loaded first (see [`Self::blocks_to_load`]).
    pub fn apply(&mut self, op: &Op) {
        let (offset, len) = extent(op);
        let data = match op {
            Op::Write { data, .. } => Some(data.as_slice()),
            _ => None,
        };
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let b = pos / BLOCK_SIZE;
            let start = b * BLOCK_SIZE;
            let in_block = (pos - start) as usize;
            let n = ((start + BLOCK_SIZE).min(end) - pos) as usize;
            let src = data.map(|d| &d[(pos - offset) as usize..(pos - offset) as usize + n]);
            if n == BS && src.is_none() {
                self.dirty.insert(b, Block::Zero);
            } else {
                let current = self.dirty.remove(&b).unwrap_or(Block::Zero);
                let mut buf = match current {
                    Block::Data(v) => v,
                    Block::Zero => vec![0; BS],
                };
                match src {
                    Some(s) => buf[in_block..in_block + n].copy_from_slice(s),
                    None => buf[in_block..in_block + n].fill(0),
                }
                self.dirty.insert(b, Block::Data(buf));
            }
            pos += n as u64;
        }
    }

    /// Set new references for flushed blocks.
    pub fn commit_refs(&mut self, refs: Vec<(u64, ChunkRef)>) {
        for (b, r) in refs {
            self.map[b as usize] = r;
            self.dirty_pages.insert(b as usize / ENTRIES_PER_PAGE);
            if !r.is_zero() {
                self.known.insert(r.hash, r);
            }
        }
    }

    /// Encode every page changed since the last call; returns the new pages to store.
    pub fn encode_dirty_pages(&mut self) -> Result<Vec<(Digest, Vec<u8>)>, ReplicaError> {
        let mut out = Vec::new();
        for p in std::mem::take(&mut self.dirty_pages) {
            let base = p * ENTRIES_PER_PAGE;
            let end = (base + ENTRIES_PER_PAGE).min(self.map.len());
            let (bytes, digest) = map::encode(&self.map[base..end])
                .map_err(ReplicaError::format("encode map page"))?;
            if self.pages[p] != digest {
                self.pages[p] = digest;
                out.push((digest, bytes));
            }
        }
        Ok(out)
    }

    pub fn disk_map(&self) -> DiskMap {
        DiskMap {
            size: self.size,
            pages: self.pages.clone(),
        }
    }
}

async fn load_page(
    layout: &ReplicaLayout,
    disk: usize,
    digest: Digest,
) -> Result<Vec<ChunkRef>, ReplicaError> {
    let key = layout.page_key(disk, &digest);
    let bytes = layout.disks[disk].get(&key).await?;
    map::decode(&bytes, &digest).map_err(ReplicaError::format(format!("map page {key}")))
}

/// Load every page of a disk map into one flat list of block references.
pub(crate) async fn load_map(
    layout: &ReplicaLayout,
    disk: usize,
    dm: &DiskMap,
) -> Result<Vec<ChunkRef>, ReplicaError> {
    Ok(DiskState::load(layout, disk, dm).await?.map)
}

fn extent(op: &Op) -> (u64, u64) {
    match op {
        Op::Write { offset, data } => (*offset, data.len() as u64),
        Op::Zero { offset, len } | Op::Trim { offset, len } => (*offset, *len),
        Op::Marker(_) => (0, 0),
    }
}
