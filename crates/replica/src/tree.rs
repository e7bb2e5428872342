//! A disk's block map as a tree of content-addressed nodes in its target account
//! (`docs/formats/map-page.md`): loading it as a record names it, re-encoding the nodes above
//! changed blocks, and walking every node a record reaches.
//!
//! Records before version 3 name a flat list of pages instead; they load the same way, and the
//! next flush writes their map as a tree.

use std::collections::{BTreeSet, HashSet};

use ferry_format::map::{self, ChunkRef, FANOUT, FLAT_PAGE_ENTRIES, LEAF_ENTRIES, Node};
use ferry_format::point::{DiskMap, MapRoot};
use ferry_format::{BLOCK_SIZE, Digest};
use futures::{StreamExt, TryStreamExt};

use crate::{ReplicaError, ReplicaLayout};

/// Nodes fetched at once.
const PARALLEL: usize = 32;

/// The names of every node of one disk's tree, level by level, and the leaves whose blocks
/// changed since the last [`MapTree::encode`].
#[derive(Debug)]
pub struct MapTree {
    /// `levels[0]` are the leaves; the last level is the root alone.
    levels: Vec<Vec<Digest>>,
    dirty: BTreeSet<usize>,
}

impl MapTree {
    /// The tree of a disk of `blocks` blocks that reads as zeroes: every node is
    /// [`Digest::ZERO`] and nothing is stored.
    pub fn empty(blocks: u64) -> Self {
        MapTree {
            levels: map::tree_shape(blocks)
                .into_iter()
                .map(|n| vec![Digest::ZERO; n])
                .collect(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn root(&self) -> Digest {
        self.levels[self.levels.len() - 1][0]
    }

    /// Note that `block`'s reference changed.
    pub fn mark(&mut self, block: u64) {
        self.dirty.insert(block as usize / LEAF_ENTRIES);
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Every stored node (all but the zero subtrees).
    pub fn nodes(&self) -> impl Iterator<Item = Digest> + '_ {
        self.levels
            .iter()
            .flatten()
            .copied()
            .filter(|d| *d != Digest::ZERO)
    }

    /// Re-encode the changed leaves of `entries` and every ancestor of them; returns the new
    /// nodes to store (a node that reads as zeroes is named [`Digest::ZERO`] and not returned).
    pub fn encode(&mut self, entries: &[ChunkRef]) -> Result<Vec<(Digest, Vec<u8>)>, ReplicaError> {
        let mut out = Vec::new();
        let mut changed = std::mem::take(&mut self.dirty);
        for level in 0..self.levels.len() {
            let mut parents = BTreeSet::new();
            for p in changed {
                let (bytes, digest) = if level == 0 {
                    let range = span(p, LEAF_ENTRIES, entries.len());
                    let leaf = &entries[range];
                    if leaf.iter().all(ChunkRef::is_zero) {
                        (Vec::new(), Digest::ZERO)
                    } else {
                        map::encode_leaf(leaf).map_err(ReplicaError::format("encode map leaf"))?
                    }
                } else {
                    let below = &self.levels[level - 1];
                    let children = &below[span(p, FANOUT, below.len())];
                    if children.iter().all(|d| *d == Digest::ZERO) {
                        (Vec::new(), Digest::ZERO)
                    } else {
                        map::encode_index(level as u8, children)
                            .map_err(ReplicaError::format("encode map index node"))?
                    }
                };
                if self.levels[level][p] != digest {
                    self.levels[level][p] = digest;
                    parents.insert(p / FANOUT);
                    if digest != Digest::ZERO {
                        out.push((digest, bytes));
                    }
                }
            }
            changed = parents;
        }
        Ok(out)
    }
}

/// Entries `[p × n, min((p + 1) × n, len))`.
fn span(p: usize, n: usize, len: usize) -> std::ops::Range<usize> {
    p * n..((p + 1) * n).min(len)
}

/// Blocks of a disk of `size` bytes.
pub fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// The number of entries the node at `position` of `level` must hold, for a tree of `shape`
/// over `blocks` blocks.
pub fn expected_count(shape: &[usize], blocks: u64, level: usize, position: usize) -> usize {
    if level == 0 {
        span(position, LEAF_ENTRIES, blocks as usize).len()
    } else {
        span(position, FANOUT, shape[level - 1]).len()
    }
}

/// Check a decoded node against the place the tree puts it.
pub fn check_node(
    node: &Node,
    shape: &[usize],
    blocks: u64,
    level: usize,
    position: usize,
) -> Result<(), String> {
    let count = match node {
        Node::Leaf(e) => e.len(),
        Node::Index { children, .. } => children.len(),
    };
    let want = expected_count(shape, blocks, level, position);
    if node.level() as usize != level {
        return Err(format!(
            "a level-{} node where level {level} belongs",
            node.level()
        ));
    }
    if count != want {
        return Err(format!(
            "{count} entries where node {position} of level {level} must hold {want}"
        ));
    }
    Ok(())
}

async fn fetch(layout: &ReplicaLayout, disk: usize, digest: Digest) -> Result<Node, ReplicaError> {
    let key = layout.page_key(disk, &digest);
    let bytes = layout.disks[disk].get(&key).await?;
    map::decode(&bytes, &digest).map_err(ReplicaError::format(format!("map node {key}")))
}

/// Load a disk's whole map as a record names it: one reference per block, and its tree.
pub async fn load(
    layout: &ReplicaLayout,
    disk: usize,
    dm: &DiskMap,
) -> Result<(Vec<ChunkRef>, MapTree), ReplicaError> {
    let blocks = blocks_of(dm.size);
    let mut entries = vec![ChunkRef::ZERO; blocks as usize];
    let mut tree = MapTree::empty(blocks);
    match &dm.map {
        MapRoot::Pages(pages) => {
            load_flat(layout, disk, dm.size, pages, &mut entries).await?;
            tree.dirty = (0..tree.levels[0].len()).collect();
        }
        MapRoot::Tree(root) => {
            let shape = map::tree_shape(blocks);
            let top = shape.len() - 1;
            tree.levels[top][0] = *root;
            for level in (0..=top).rev() {
                let wanted: Vec<(usize, Digest)> = tree.levels[level]
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, d)| *d != Digest::ZERO)
                    .collect();
                let nodes: Vec<(usize, Digest, Node)> = futures::stream::iter(wanted)
                    .map(|(p, d)| async move {
                        Ok::<_, ReplicaError>((p, d, fetch(layout, disk, d).await?))
                    })
                    .buffered(PARALLEL)
                    .try_collect()
                    .await?;
                for (p, d, node) in nodes {
                    check_node(&node, &shape, blocks, level, p).map_err(|e| {
                        ReplicaError::Internal(format!(
                            "disk {disk}: map node {} is misplaced: {e}",
                            d.to_hex()
                        ))
                    })?;
                    match node {
                        Node::Leaf(e) => {
                            entries[span(p, LEAF_ENTRIES, blocks as usize)].copy_from_slice(&e)
                        }
                        Node::Index { children, .. } => {
                            let below = &mut tree.levels[level - 1];
                            let range = span(p, FANOUT, below.len());
                            below[range].copy_from_slice(&children);
                        }
                    }
                }
            }
        }
    }
    Ok((entries, tree))
}

/// A flat page list (records before version 3): page `p` holds blocks from
/// `p × FLAT_PAGE_ENTRIES`.
async fn load_flat(
    layout: &ReplicaLayout,
    disk: usize,
    size: u64,
    pages: &[Digest],
    entries: &mut [ChunkRef],
) -> Result<(), ReplicaError> {
    let want = entries.len().div_ceil(FLAT_PAGE_ENTRIES);
    if pages.len() != want {
        return Err(ReplicaError::Internal(format!(
            "disk {disk}: record names {} map pages, a {size}-byte disk needs {want}",
            pages.len(),
        )));
    }
    let loaded: Vec<Vec<ChunkRef>> = futures::stream::iter(pages.iter().copied())
        .map(|d| async move {
            if d == Digest::ZERO {
                return Ok(Vec::new());
            }
            let key = layout.page_key(disk, &d);
            let bytes = layout.disks[disk].get(&key).await?;
            map::decode_leaf(&bytes, &d).map_err(ReplicaError::format(format!("map page {key}")))
        })
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    for (p, page) in loaded.into_iter().enumerate() {
        let base = p * FLAT_PAGE_ENTRIES;
        let n = page.len().min(entries.len() - base);
        entries[base..base + n].copy_from_slice(&page[..n]);
    }
    Ok(())
}

/// Visit every node a disk map reaches that is not in `seen` yet (adding it), and the entries
/// of every such leaf. A node in `seen` is skipped with all it reaches: nodes are
/// content-addressed, so whoever added it visits (or visited) the same subtree.
pub async fn walk(
    layout: &ReplicaLayout,
    disk: usize,
    dm: &DiskMap,
    seen: &mut HashSet<Digest>,
    mut on_leaf: impl FnMut(&[ChunkRef]),
) -> Result<(), ReplicaError> {
    let mut frontier: Vec<Digest> = match &dm.map {
        MapRoot::Pages(pages) => pages.clone(),
        MapRoot::Tree(root) => vec![*root],
    };
    while !frontier.is_empty() {
        let wanted: Vec<Digest> = frontier
            .drain(..)
            .filter(|d| *d != Digest::ZERO && seen.insert(*d))
            .collect();
        let nodes: Vec<Node> = futures::stream::iter(wanted)
            .map(|d| fetch(layout, disk, d))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        for node in nodes {
            match node {
                Node::Leaf(e) => on_leaf(&e),
                Node::Index { children, .. } => frontier.extend(children),
            }
        }
    }
    Ok(())
}
