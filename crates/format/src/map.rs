//! Block-map nodes: which chunk holds each block of a disk.
//!
//! A disk's map is a tree of content-addressed nodes (named by the digest of their encoding).
//! Leaves hold the references of [`LEAF_ENTRIES`] consecutive blocks of [`crate::BLOCK_SIZE`]
//! bytes; index nodes hold the names of up to [`FANOUT`] children one level down. A subtree in
//! which every block reads as zeroes is named [`Digest::ZERO`] and never stored. A recovery
//! point names only the root, so a point that changes `n` blocks stores at most `n` leaves and
//! their ancestors, whatever the disk's size; points share every node they did not change.
//!
//! Version 1 objects are leaves of up to 1024 entries (the flat page lists of recovery-point
//! records before version 3); they are still read.
//! Spec: `docs/formats/map-page.md`.

use crate::codec::{Reader, Writer, open_frame_versions};
use crate::{Digest, FormatError};

const FORMAT: &str = "map page";
pub const MAGIC: &[u8; 8] = b"FERRYMAP";
pub const VERSION: u16 = 2;
const OLDEST: u16 = 1;
/// Blocks covered by one leaf (8 MiB of disk at 64 KiB blocks).
pub const LEAF_ENTRIES: usize = 128;
/// Children of one index node.
pub const FANOUT: usize = 64;
/// Blocks covered by one page of a flat page list (records before version 3).
pub const FLAT_PAGE_ENTRIES: usize = 1024;
/// The most entries any node may hold.
pub const MAX_ENTRIES: usize = 1024;
const ENTRY_LEN: usize = 48;
const CHILD_LEN: usize = 32;
/// Levels above the leaves a tree may have (64^8 leaves is far beyond any disk).
pub const MAX_LEVEL: u8 = 8;

/// Where one block's bytes live. `hash == Digest::ZERO` means the block reads as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the block's uncompressed bytes.
    pub hash: Digest,
    /// Pack object holding the chunk.
    pub pack: u64,
    /// Byte offset of the compressed chunk inside the pack.
    pub offset: u32,
    /// Compressed length.
    pub len: u32,
}

impl ChunkRef {
    pub const ZERO: ChunkRef = ChunkRef {
        hash: Digest::ZERO,
        pack: 0,
        offset: 0,
        len: 0,
    };

    pub fn is_zero(&self) -> bool {
        self.hash == Digest::ZERO
    }
}

/// A decoded map node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Level 0: one reference per block.
    Leaf(Vec<ChunkRef>),
    /// Level ≥ 1: the names of the children, each one level down ([`Digest::ZERO`] = zeroes).
    Index { level: u8, children: Vec<Digest> },
}

impl Node {
    pub fn level(&self) -> u8 {
        match self {
            Node::Leaf(_) => 0,
            Node::Index { level, .. } => *level,
        }
    }
}

/// The shape of a disk's tree: how many nodes each level has, leaves first; the last level
/// has exactly one node, the root.
pub fn tree_shape(blocks: u64) -> Vec<usize> {
    let mut levels = vec![(blocks.div_ceil(LEAF_ENTRIES as u64) as usize).max(1)];
    while levels[levels.len() - 1] > 1 {
        levels.push(levels[levels.len() - 1].div_ceil(FANOUT));
    }
    levels
}

/// Encode a leaf; returns the bytes and the digest that names it.
pub fn encode_leaf(entries: &[ChunkRef]) -> Result<(Vec<u8>, Digest), FormatError> {
    let mut raw = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        raw.extend_from_slice(&e.hash.0);
        raw.extend_from_slice(&e.pack.to_le_bytes());
        raw.extend_from_slice(&e.offset.to_le_bytes());
        raw.extend_from_slice(&e.len.to_le_bytes());
    }
    encode_node(0, entries.len(), &raw)
}

/// Encode an index node at `level` (≥ 1).
pub fn encode_index(level: u8, children: &[Digest]) -> Result<(Vec<u8>, Digest), FormatError> {
    if level == 0 || level > MAX_LEVEL {
        return Err(FormatError::invalid(FORMAT, format!("index level {level}")));
    }
    let raw: Vec<u8> = children.iter().flat_map(|d| d.0).collect();
    encode_node(level, children.len(), &raw)
}

fn encode_node(level: u8, count: usize, raw: &[u8]) -> Result<(Vec<u8>, Digest), FormatError> {
    if count > MAX_ENTRIES {
        return Err(FormatError::invalid(FORMAT, "too many entries"));
    }
    let body = zstd::bulk::compress(raw, 1)
        .map_err(|e| FormatError::invalid(FORMAT, format!("compress: {e}")))?;
    let mut w = Writer::with_header(MAGIC, VERSION);
    w.u8(level);
    w.u32(count as u32);
    w.bytes(&body);
    let bytes = w.finish();
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

/// Decode and verify a node; `expected` is the digest it was named by.
pub fn decode(data: &[u8], expected: &Digest) -> Result<Node, FormatError> {
    let (mut r, version) = open_frame_versions(FORMAT, MAGIC, OLDEST..=VERSION, data)?;
    if Digest::of(data) != *expected {
        return Err(FormatError::invalid(
            FORMAT,
            "content does not match its name",
        ));
    }
    let level = if version >= 2 { r.u8()? } else { 0 };
    if level > MAX_LEVEL {
        return Err(FormatError::invalid(FORMAT, format!("level {level}")));
    }
    let count = r.u32()? as usize;
    if count > MAX_ENTRIES {
        return Err(FormatError::invalid(
            FORMAT,
            format!("count {count} is over the most entries of a node ({MAX_ENTRIES})"),
        ));
    }
    let len = if level == 0 { ENTRY_LEN } else { CHILD_LEN };
    let body = r.take(r.remaining())?;
    let raw = zstd::bulk::decompress(body, count * len)
        .map_err(|e| FormatError::invalid(FORMAT, format!("decompress: {e}")))?;
    if raw.len() != count * len {
        return Err(FormatError::invalid(
            FORMAT,
            format!("entry bytes ({}) do not match count {count}", raw.len()),
        ));
    }
    let mut rr = Reader {
        format: FORMAT,
        data: &raw,
        pos: 0,
    };
    if level > 0 {
        let children = (0..count).map(|_| rr.digest()).collect::<Result<_, _>>()?;
        return Ok(Node::Index { level, children });
    }
    let entries = (0..count)
        .map(|_| {
            Ok(ChunkRef {
                hash: rr.digest()?,
                pack: rr.u64()?,
                offset: rr.u32()?,
                len: rr.u32()?,
            })
        })
        .collect::<Result<_, FormatError>>()?;
    Ok(Node::Leaf(entries))
}

/// Decode a node that must be a leaf (a page of a flat page list).
pub fn decode_leaf(data: &[u8], expected: &Digest) -> Result<Vec<ChunkRef>, FormatError> {
    match decode(data, expected)? {
        Node::Leaf(entries) => Ok(entries),
        Node::Index { level, .. } => Err(FormatError::invalid(
            FORMAT,
            format!("an index node (level {level}) where a leaf was expected"),
        )),
    }
}

/// The object name of a node.
pub fn object_name(digest: &Digest) -> String {
    format!("{}.page", digest.to_hex())
}
