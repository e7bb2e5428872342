//! The blocks a joined host exchanges with the server, whose replicas it cannot reach itself.
//! **Restoring** a disk from a recovery point: the agent asks which blocks of the point hold
//! data (to [`crate::hydrate::prepare`] the image) and then for their contents (the disk's
//! [`BlockSource`] while it hydrates). **Seeding** a replica from the disks a host kept (a
//! reprotect after its site came back): the agent sends their blocks to the server, range by
//! range. The wire forms are here, shared by both ends; the spec is `docs/agent-protocol.md`
//! ("Restoring a disk", "Seeding from a host's disks").

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hydrate::{BlockSource, BoxFuture};

/// Which disk of which VM, restored from which point.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreDisk {
    pub vm: String,
    pub disk: usize,
    /// The recovery point's id (`rp-…`).
    pub point: String,
}

/// The blocks of a point's disk that hold data, as half-open ranges `[start, end)` of block
/// numbers, in order; every other block is zeroes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Present {
    pub ranges: Vec<(u64, u64)>,
}

impl Present {
    /// The ranges of an ascending list of block numbers.
    pub fn from_blocks(blocks: &[u64]) -> Present {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &b in blocks {
            match ranges.last_mut() {
                Some((_, end)) if *end == b => *end += 1,
                _ => ranges.push((b, b + 1)),
            }
        }
        Present { ranges }
    }

    /// The block numbers, checked against the disk's block count.
    pub fn blocks(&self, count: u64) -> Result<Vec<u64>, String> {
        let mut out = Vec::new();
        let mut last = 0;
        for &(start, end) in &self.ranges {
            if start < last || end <= start || end > count {
                return Err(format!(
                    "block range [{start}, {end}) is out of order or past the disk's {count} blocks"
                ));
            }
            out.extend(start..end);
            last = end;
        }
        Ok(out)
    }
}

/// A request for some blocks of a [`RestoreDisk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlocksRequest {
    #[serde(flatten)]
    pub disk: RestoreDisk,
    pub blocks: Vec<u64>,
}

/// The body that answers a [`BlocksRequest`]: per block, its number (u64, little-endian), its
/// length (u32, little-endian) and its bytes.
pub fn encode_blocks(blocks: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let len: usize = blocks.iter().map(|(_, b)| 12 + b.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (n, bytes) in blocks {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The blocks of an [`encode_blocks`] body; each must be one asked for and at most `max` bytes.
pub fn decode_blocks(
    mut body: &[u8],
    asked: &[u64],
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::with_capacity(asked.len());
    while !body.is_empty() {
        if body.len() < 12 {
            return Err("the block body ends inside a block's header".into());
        }
        let n = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default()) as usize;
        body = &body[12..];
        if len > max || body.len() < len {
            return Err(format!(
                "block {n} claims {len} bytes: more than a block or than the body holds"
            ));
        }
        if !asked.contains(&n) {
            return Err(format!(
                "the server sent block {n}, which was not asked for"
            ));
        }
        out.push((n, body[..len].to_vec()));
        body = &body[len..];
    }
    Ok(out)
}

/// The bytes of a disk one seed upload request carries: its non-zero blocks in the body
/// ([`encode_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedRange {
    /// The upload's number, from the `upload-disks` command.
    pub upload: u64,
    pub disk: usize,
    pub offset: u64,
    pub len: u64,
}

/// Bytes of a disk per seed upload request (the API's body limit is 2 MiB).
pub const SEED_CHUNK: u64 = 1 << 20;

/// The server, as a joined host's agent exchanges blocks with it.
pub trait ServerBlocks: Send + Sync + 'static {
    /// The blocks of the point's disk that hold data.
    fn present(&self, disk: RestoreDisk) -> BoxFuture<Result<Present, String>>;
    /// The source of the disk's blocks while it hydrates.
    fn source(&self, disk: RestoreDisk) -> Arc<dyn BlockSource>;
    /// Send one range of a disk being seeded from.
    fn upload(&self, range: SeedRange, body: Vec<u8>) -> BoxFuture<Result<(), String>>;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ranges_round_trip(set in proptest::collection::btree_set(0u64..5000, 0..300)) {
            let blocks: Vec<u64> = set.into_iter().collect();
            let present = Present::from_blocks(&blocks);
            prop_assert_eq!(present.blocks(5000).unwrap(), blocks.clone());
            // Ranges are maximal: no two touch.
            for w in present.ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        }

        #[test]
        fn block_bodies_round_trip(blocks in proptest::collection::vec((0u64..100, proptest::collection::vec(any::<u8>(), 0..64)), 0..20)) {
            let asked: Vec<u64> = blocks.iter().map(|(n, _)| *n).collect();
            let body = encode_blocks(&blocks);
            prop_assert_eq!(decode_blocks(&body, &asked, 64).unwrap(), blocks);
        }
    }

    #[test]
    fn ranges_past_the_disk_or_out_of_order_are_refused() {
        let past = Present {
            ranges: vec![(0, 11)],
        };
        assert!(past.blocks(10).unwrap_err().contains("past the disk"));
        let backwards = Present {
            ranges: vec![(5, 6), (2, 3)],
        };
        assert!(backwards.blocks(10).is_err());
        let empty = Present {
            ranges: vec![(4, 4)],
        };
        assert!(empty.blocks(10).is_err());
    }

    #[test]
    fn a_truncated_or_unasked_block_body_is_refused() {
        let body = encode_blocks(&[(3, vec![7; 16])]);
        assert!(
            decode_blocks(&body[..20], &[3], 64)
                .unwrap_err()
                .contains("claims")
        );
        assert!(
            decode_blocks(&body[..5], &[3], 64)
                .unwrap_err()
                .contains("header")
        );
        assert!(
            decode_blocks(&body, &[4], 64)
                .unwrap_err()
                .contains("not asked")
        );
        assert!(
            decode_blocks(&body, &[3], 8)
                .unwrap_err()
                .contains("claims")
        );
    }
}
