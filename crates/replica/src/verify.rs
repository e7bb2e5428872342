//! Verifying a replica: re-read every map page and chunk behind the retained recovery points,
//! check their digests, and repair damaged chunks in place from the source disks.
//!
//! Each distinct page and each distinct chunk is read once, however many points share it. A
//! pack that several checked chunks share is read whole (one GET, and its trailer is checked
//! too); otherwise its chunks are ranged reads, as an export does them.
//!
//! Repair never moves anything: records and pages are immutable and name chunks by
//! `(pack, offset, len)`. See [`repair`] for how a chunk is rebuilt at its old place.

mod repair;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_format::map::{self, ChunkRef, FANOUT, FLAT_PAGE_ENTRIES, LEAF_ENTRIES, Node};
use ferry_format::point::MapRoot;
use ferry_format::{BLOCK_SIZE, Digest, pack};
use ferry_storage::StoreError;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

pub use repair::{BlockSource, ImageFiles};

use crate::points::{self, PointInfo};
use crate::tree;
use crate::{ReplicaError, ReplicaLayout};

/// Pages and ranged chunk reads in flight at once.
const PARALLEL: usize = 16;
/// Packs checked at once (a whole pack may be 16 MiB in memory).
const PARALLEL_PACKS: usize = 4;
/// Read a pack whole when at least this many of its chunks are checked.
const WHOLE_PACK_CHUNKS: usize = 4;
/// Block positions remembered per chunk or page (repair candidates).
const MAX_POSITIONS: usize = 64;

/// What a verify found, and what a repair did about it.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct VerifyReport {
    /// Retained recovery points whose objects were checked.
    pub points: usize,
    /// Distinct map pages checked.
    pub pages: usize,
    /// Distinct chunks checked.
    pub chunks: usize,
    /// Bytes read from the target accounts.
    pub bytes_read: u64,
    /// Problems fixed by this run.
    pub repaired: usize,
    /// Problems left (all of them when no repair was asked for).
    pub unrepaired: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is left damaged.
    pub fn is_clean(&self) -> bool {
        self.unrepaired == 0
    }
}

/// The kind of a damaged object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// A map page.
    Page,
    /// A whole pack (missing, or its trailer or index is damaged).
    Pack,
    /// One chunk inside a pack.
    Chunk,
}

/// One damaged or missing object.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Problem {
    pub kind: ObjectKind,
    pub disk: usize,
    /// The object's key in the disk's target account.
    pub key: String,
    /// For a chunk: which one, and where in the pack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkPlace>,
    /// What is wrong.
    pub error: String,
    /// Ids of the recovery points that read this object, oldest first.
    pub points: Vec<String>,
    pub repaired: bool,
    /// Why a repair was not possible (only after a repair was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrepairable: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ChunkPlace {
    /// BLAKE3 of the uncompressed block, hex.
    pub hash: String,
    pub offset: u32,
    pub len: u32,
}

/// Check every page and chunk behind the retained points; change nothing.
pub async fn check(layout: &ReplicaLayout) -> Result<VerifyReport, ReplicaError> {
    let scan = scan(layout).await?;
    let outcomes = vec![None; scan.findings.len()];
    Ok(scan.report(layout, outcomes))
}

/// Check, then repair what the source still holds (see [`repair`]), re-checking every
/// repaired object. `zstd_level` must be the level the processor wrote with.
pub async fn check_and_repair(
    layout: &ReplicaLayout,
    source: std::sync::Arc<dyn BlockSource>,
    zstd_level: i32,
) -> Result<VerifyReport, ReplicaError> {
    let scan = scan(layout).await?;
    let outcomes = repair::run(layout, &scan, source, zstd_level).await?;
    Ok(scan.report(layout, outcomes.into_iter().map(Some).collect()))
}

/// Which points read an object, and at which block (or node) positions.
#[derive(Debug, Default)]
struct Uses {
    points: BTreeSet<usize>,
    positions: BTreeSet<u64>,
    /// For a map node: where the points' maps put it.
    place: Option<Place>,
}

/// Where a map node sits: a page of a flat list, or a node of a tree over `blocks` blocks.
#[derive(Debug, Clone, Copy)]
enum Place {
    Flat,
    Tree { blocks: u64, level: usize },
}

impl Uses {
    fn add(&mut self, points: impl IntoIterator<Item = usize>, position: u64) {
        self.points.extend(points);
        if self.positions.len() < MAX_POSITIONS {
            self.positions.insert(position);
        }
    }
}

/// Every object the retained points read, deduplicated.
#[derive(Debug, Default)]
struct Inventory {
    ids: Vec<String>,
    pages: BTreeMap<(usize, Digest), Uses>,
    chunks: HashMap<(usize, ChunkRef), Uses>,
}

impl Inventory {
    /// The checked chunks of one pack.
    fn pack_chunks(&self, disk: usize, pack: u64) -> Vec<ChunkRef> {
        self.chunks
            .keys()
            .filter(|(d, r)| *d == disk && r.pack == pack)
            .map(|(_, r)| *r)
            .collect()
    }

    fn point_ids(&self, points: &BTreeSet<usize>) -> Vec<String> {
        points.iter().map(|&i| self.ids[i].clone()).collect()
    }
}

/// What is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Page(usize, Digest),
    PackMissing(usize, u64),
    /// The pack's trailer or index, while every chunk the points use is intact.
    PackFrame(usize, u64),
    Chunk(usize, ChunkRef),
}

#[derive(Debug)]
struct Finding {
    damage: Damage,
    error: String,
}

/// A repair's result for one finding.
#[derive(Debug, Clone)]
enum Outcome {
    Repaired,
    Unrepairable(String),
}

struct Scan {
    inv: Inventory,
    findings: Vec<Finding>,
    bytes_read: u64,
}

async fn scan(layout: &ReplicaLayout) -> Result<Scan, ReplicaError> {
    let mut inv = inventory_roots(layout).await?;
    let mut findings = Vec::new();
    let mut bytes_read = 0;
    let mut read: BTreeSet<(usize, Digest)> = BTreeSet::new();
    // Level by level: each round reads the nodes the previous one found.
    loop {
        let keys: Vec<(usize, Digest)> = inv
            .pages
            .keys()
            .filter(|k| !read.contains(*k))
            .copied()
            .collect();
        if keys.is_empty() {
            break;
        }
        read.extend(keys.iter().copied());
        let pages: Vec<_> = futures::stream::iter(keys)
            .map(|(d, g)| read_page(layout, d, g))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        for (d, g, bytes, node) in pages {
            bytes_read += bytes;
            match node.and_then(|n| inv.check_place(d, g, n)) {
                Ok(node) => inv.add_below(d, g, node),
                Err(error) => findings.push(Finding {
                    damage: Damage::Page(d, g),
                    error,
                }),
            }
        }
    }
    let mut packs: BTreeMap<(usize, u64), Vec<ChunkRef>> = BTreeMap::new();
    for (d, r) in inv.chunks.keys() {
        packs.entry((*d, r.pack)).or_default().push(*r);
    }
    let checked: Vec<_> = futures::stream::iter(packs)
        .map(|((d, p), refs)| check_pack(layout, d, p, refs))
        .buffer_unordered(PARALLEL_PACKS)
        .try_collect()
        .await?;
    for c in checked {
        bytes_read += c.bytes_read;
        findings.extend(c.findings);
    }
    Ok(Scan {
        inv,
        findings,
        bytes_read,
    })
}

/// List the points and the map nodes their records name (tree roots, or flat pages).
async fn inventory_roots(layout: &ReplicaLayout) -> Result<Inventory, ReplicaError> {
    let records = points::list(layout).await?;
    let mut inv = Inventory {
        ids: records
            .iter()
            .map(|r| PointInfo::from_record(r).id)
            .collect(),
        ..Default::default()
    };
    for (i, rec) in records.iter().enumerate() {
        for (d, dm) in rec.disks.iter().enumerate() {
            if d >= layout.disks.len() {
                return Err(ReplicaError::Internal(format!(
                    "recovery point {} names disk {d}, the replica has {} disks",
                    inv.ids[i],
                    layout.disks.len()
                )));
            }
            match &dm.map {
                MapRoot::Pages(pages) => {
                    for (p, digest) in pages.iter().enumerate() {
                        inv.add_node(d, *digest, [i], p as u64, Place::Flat);
                    }
                }
                MapRoot::Tree(root) => {
                    let blocks = tree::blocks_of(dm.size);
                    let level = map::tree_shape(blocks).len() - 1;
                    inv.add_node(d, *root, [i], 0, Place::Tree { blocks, level });
                }
            }
        }
    }
    Ok(inv)
}

impl Inventory {
    fn add_node(
        &mut self,
        disk: usize,
        digest: Digest,
        points: impl IntoIterator<Item = usize>,
        position: u64,
        place: Place,
    ) {
        if digest == Digest::ZERO {
            return;
        }
        let uses = self.pages.entry((disk, digest)).or_default();
        uses.add(points, position);
        uses.place.get_or_insert(place);
    }

    /// Check that a good node is what its place in the tree needs.
    fn check_place(&self, disk: usize, digest: Digest, node: Node) -> Result<Node, String> {
        let Some(uses) = self.pages.get(&(disk, digest)) else {
            return Ok(node);
        };
        let position = uses.positions.first().copied().unwrap_or(0) as usize;
        match uses.place {
            Some(Place::Tree { blocks, level }) => {
                tree::check_node(&node, &map::tree_shape(blocks), blocks, level, position)?;
            }
            Some(Place::Flat) | None => {
                if !matches!(node, Node::Leaf(_)) {
                    return Err("an index node where a flat map names a page".into());
                }
            }
        }
        Ok(node)
    }

    /// Record what one good node reaches (its children, or its chunks) for the points that
    /// read it.
    fn add_below(&mut self, disk: usize, digest: Digest, node: Node) {
        let Some(uses) = self.pages.get(&(disk, digest)) else {
            return;
        };
        let points: Vec<usize> = uses.points.iter().copied().collect();
        let positions: Vec<u64> = uses.positions.iter().copied().collect();
        let place = uses.place;
        match (node, place) {
            (Node::Index { children, .. }, Some(Place::Tree { blocks, level })) => {
                for &p in &positions {
                    for (i, c) in children.iter().enumerate() {
                        let below = Place::Tree {
                            blocks,
                            level: level - 1,
                        };
                        let at = p * FANOUT as u64 + i as u64;
                        self.add_node(disk, *c, points.iter().copied(), at, below);
                    }
                }
            }
            (Node::Leaf(entries), place) => {
                let per = match place {
                    Some(Place::Flat) | None => FLAT_PAGE_ENTRIES,
                    Some(Place::Tree { .. }) => LEAF_ENTRIES,
                } as u64;
                for &p in &positions {
                    for (i, r) in entries.iter().enumerate().filter(|(_, r)| !r.is_zero()) {
                        self.chunks
                            .entry((disk, *r))
                            .or_default()
                            .add(points.iter().copied(), p * per + i as u64);
                    }
                }
            }
            (Node::Index { .. }, _) => {}
        }
    }
}

/// One node: its disk, digest, bytes read, and the node or what is wrong with it.
type PageRead = (usize, Digest, u64, Result<Node, String>);

async fn read_page(
    layout: &ReplicaLayout,
    disk: usize,
    digest: Digest,
) -> Result<PageRead, ReplicaError> {
    let key = layout.page_key(disk, &digest);
    match layout.disks[disk].get(&key).await {
        Ok(bytes) => Ok((
            disk,
            digest,
            bytes.len() as u64,
            map::decode(&bytes, &digest).map_err(|e| e.to_string()),
        )),
        Err(StoreError::NotFound { .. }) => Ok((disk, digest, 0, Err("missing".into()))),
        Err(e) => Err(e.into()),
    }
}

struct PackCheck {
    bytes_read: u64,
    findings: Vec<Finding>,
}

async fn check_pack(
    layout: &ReplicaLayout,
    disk: usize,
    pack: u64,
    refs: Vec<ChunkRef>,
) -> Result<PackCheck, ReplicaError> {
    let key = layout.pack_key(disk, pack);
    let store = &layout.disks[disk];
    let missing = |n: usize| PackCheck {
        bytes_read: 0,
        findings: vec![Finding {
            damage: Damage::PackMissing(disk, pack),
            error: format!("missing ({n} chunks the points use are in it)"),
        }],
    };
    let n = refs.len();
    if n < WHOLE_PACK_CHUNKS {
        return Ok(check_ranges(layout, disk, refs)
            .await?
            .unwrap_or_else(|| missing(n)));
    }
    let data = match store.get(&key).await {
        Ok(d) => d,
        Err(StoreError::NotFound { .. }) => return Ok(missing(n)),
        Err(e) => return Err(e.into()),
    };
    let bytes_read = data.len() as u64;
    let findings = blocking(move || {
        let mut out: Vec<Finding> = refs
            .iter()
            .filter_map(|r| {
                check_slice(&data, r).err().map(|error| Finding {
                    damage: Damage::Chunk(disk, *r),
                    error,
                })
            })
            .collect();
        if out.is_empty()
            && let Err(e) = pack::decode_index(&data)
        {
            out.push(Finding {
                damage: Damage::PackFrame(disk, pack),
                error: format!("{e} (every chunk the points use is intact)"),
            });
        }
        out
    })
    .await?;
    Ok(PackCheck {
        bytes_read,
        findings,
    })
}

/// Check a few chunks of one pack by ranged reads; `None` when the pack is missing.
async fn check_ranges(
    layout: &ReplicaLayout,
    disk: usize,
    refs: Vec<ChunkRef>,
) -> Result<Option<PackCheck>, ReplicaError> {
    let n = refs.len();
    let results: Vec<(ChunkRef, u64, Option<String>)> = futures::stream::iter(refs)
        .map(|r| async move {
            match fetch_and_check(layout, disk, &r).await {
                Ok((bytes, error)) => Ok((r, bytes, error)),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    let all_missing = results
        .iter()
        .all(|(_, b, e)| *b == 0 && e.as_deref() == Some(MISSING));
    if n > 0 && all_missing {
        return Ok(None);
    }
    Ok(Some(PackCheck {
        bytes_read: results.iter().map(|(_, b, _)| b).sum(),
        findings: results
            .into_iter()
            .filter_map(|(r, _, e)| {
                e.map(|error| Finding {
                    damage: Damage::Chunk(disk, r),
                    error,
                })
            })
            .collect(),
    }))
}

const MISSING: &str = "the pack is missing";

/// A ranged read of one chunk and its check: bytes read, and what is wrong if anything.
async fn fetch_and_check(
    layout: &ReplicaLayout,
    disk: usize,
    r: &ChunkRef,
) -> Result<(u64, Option<String>), ReplicaError> {
    let key = layout.pack_key(disk, r.pack);
    let start = r.offset as u64;
    let z = match layout.disks[disk]
        .get_range(&key, start..start + r.len as u64)
        .await
    {
        Ok(z) => z,
        Err(StoreError::NotFound { .. }) => return Ok((0, Some(MISSING.into()))),
        Err(e @ StoreError::InvalidRange { .. }) => {
            return Ok((0, Some(format!("the pack is truncated: {e}"))));
        }
        Err(e) => return Err(e.into()),
    };
    let hash = r.hash;
    let bytes = z.len() as u64;
    let error = blocking(move || {
        pack::open_chunk(&z, &hash, BLOCK_SIZE as usize)
            .err()
            .map(|e| e.to_string())
    })
    .await?;
    Ok((bytes, error))
}

/// Check one chunk inside a whole pack.
fn check_slice(data: &[u8], r: &ChunkRef) -> Result<(), String> {
    let (start, end) = (r.offset as usize, r.offset as usize + r.len as usize);
    let z = data.get(start..end).ok_or_else(|| {
        format!(
            "the pack is truncated: it ends at {}, before the chunk's end at {end}",
            data.len()
        )
    })?;
    pack::open_chunk(z, &r.hash, BLOCK_SIZE as usize)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Run CPU-bound work (decompression, hashing, reading the source) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReplicaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplicaError::Internal(format!("verify task failed: {e}")))
}

impl Scan {
    fn report(self, layout: &ReplicaLayout, outcomes: Vec<Option<Outcome>>) -> VerifyReport {
        let mut problems: Vec<Problem> = self
            .findings
            .iter()
            .zip(outcomes)
            .map(|(f, o)| self.problem(layout, f, o))
            .collect();
        problems.sort_by(|a, b| {
            (a.disk, &a.key, a.kind, a.chunk.as_ref().map(|c| c.offset)).cmp(&(
                b.disk,
                &b.key,
                b.kind,
                b.chunk.as_ref().map(|c| c.offset),
            ))
        });
        let repaired = problems.iter().filter(|p| p.repaired).count();
        VerifyReport {
            points: self.inv.ids.len(),
            pages: self.inv.pages.len(),
            chunks: self.inv.chunks.len(),
            bytes_read: self.bytes_read,
            repaired,
            unrepaired: problems.len() - repaired,
            problems,
        }
    }

    fn problem(&self, layout: &ReplicaLayout, f: &Finding, outcome: Option<Outcome>) -> Problem {
        let inv = &self.inv;
        let (disk, key, chunk, points) = match f.damage {
            Damage::Page(d, g) => (
                d,
                layout.page_key(d, &g),
                None,
                inv.pages.get(&(d, g)).map(|u| u.points.clone()),
            ),
            Damage::PackMissing(d, p) | Damage::PackFrame(d, p) => {
                let pts = match f.damage {
                    Damage::PackMissing(..) => inv
                        .pack_chunks(d, p)
                        .iter()
                        .filter_map(|r| inv.chunks.get(&(d, *r)))
                        .flat_map(|u| u.points.iter().copied())
                        .collect(),
                    _ => BTreeSet::new(),
                };
                (d, layout.pack_key(d, p), None, Some(pts))
            }
            Damage::Chunk(d, r) => (
                d,
                layout.pack_key(d, r.pack),
                Some(ChunkPlace {
                    hash: r.hash.to_hex(),
                    offset: r.offset,
                    len: r.len,
                }),
                inv.chunks.get(&(d, r)).map(|u| u.points.clone()),
            ),
        };
        let kind = match f.damage {
            Damage::Page(..) => ObjectKind::Page,
            Damage::PackMissing(..) | Damage::PackFrame(..) => ObjectKind::Pack,
            Damage::Chunk(..) => ObjectKind::Chunk,
        };
        Problem {
            kind,
            disk,
            key: key.to_string(),
            chunk,
            error: f.error.clone(),
            points: inv.point_ids(&points.unwrap_or_default()),
            repaired: matches!(outcome, Some(Outcome::Repaired)),
            unrepairable: match outcome {
                Some(Outcome::Unrepairable(why)) => Some(why),
                _ => None,
            },
        }
    }
}
