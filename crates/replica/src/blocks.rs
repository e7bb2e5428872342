//! One disk of the replica as the processor holds it: the block map in memory, the blocks
//! changed since the last durable record, and the chunks it already stores (for dedup).

use std::collections::{BTreeSet, HashMap};

use ferry_format::map::ChunkRef;
use ferry_format::point::{DiskMap, MapRoot};
use ferry_format::segment::Op;
use ferry_format::{BLOCK_SIZE, Digest};

use crate::tree::{self, MapTree};
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
    pub tree: MapTree,
    pub dirty: HashMap<u64, Block>,
    pub known: HashMap<Digest, ChunkRef>,
}

impl DiskState {
    /// A disk that reads as zeroes (its map needs no stored node).
    pub fn empty(index: usize, size: u64) -> Self {
        let blocks = tree::blocks_of(size);
        DiskState {
            index,
            size,
            map: vec![ChunkRef::ZERO; blocks as usize],
            tree: MapTree::empty(blocks),
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
        let (map, tree) = tree::load(layout, index, disk).await?;
        let known = map
            .iter()
            .filter(|r| !r.is_zero())
            .map(|r| (r.hash, *r))
            .collect();
        Ok(DiskState {
            index,
            size: disk.size,
            map,
            tree,
            dirty: HashMap::new(),
            known,
        })
    }

    /// True when changes are held that no stored page reflects yet.
    pub fn needs_flush(&self) -> bool {
        !self.dirty.is_empty() || self.tree.is_dirty()
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
            self.tree.mark(b);
            if !r.is_zero() {
                self.known.insert(r.hash, r);
            }
        }
    }

    /// Encode every map node changed since the last call; returns the new nodes to store.
    pub fn encode_dirty_nodes(&mut self) -> Result<Vec<(Digest, Vec<u8>)>, ReplicaError> {
        self.tree.encode(&self.map)
    }

    pub fn disk_map(&self) -> DiskMap {
        DiskMap {
            size: self.size,
            map: MapRoot::Tree(self.tree.root()),
        }
    }
}

/// Load a disk map into one flat list of block references.
pub(crate) async fn load_map(
    layout: &ReplicaLayout,
    disk: usize,
    dm: &DiskMap,
) -> Result<Vec<ChunkRef>, ReplicaError> {
    Ok(tree::load(layout, disk, dm).await?.0)
}

fn extent(op: &Op) -> (u64, u64) {
    match op {
        Op::Write { offset, data } => (*offset, data.len() as u64),
        Op::Zero { offset, len } | Op::Trim { offset, len } => (*offset, *len),
        Op::Marker(_) => (0, 0),
    }
}
