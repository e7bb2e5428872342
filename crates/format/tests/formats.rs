//! Every format refuses corruption and survives round trips of arbitrary content.

use ferry_format::map::{self, ChunkRef};
use ferry_format::point::{DiskMap, MapRoot, PointKind, PointRecord};
use ferry_format::{Digest, FormatError, pack};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use proptest::prelude::*;

fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
    (any::<[u8; 32]>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(h, pack, offset, len)| ChunkRef {
            hash: Digest(h),
            pack,
            offset,
            len,
        },
    )
}

proptest! {
    #[test]
    fn map_leaves_round_trip(entries in proptest::collection::vec(chunk_ref(), 0..map::FLAT_PAGE_ENTRIES)) {
        let (bytes, digest) = map::encode_leaf(&entries).unwrap();
        prop_assert_eq!(map::decode(&bytes, &digest).unwrap(), map::Node::Leaf(entries));
    }

    #[test]
    fn map_index_nodes_round_trip(level in 1..=map::MAX_LEVEL, children in proptest::collection::vec(any::<[u8; 32]>(), 0..map::FANOUT)) {
        let children: Vec<Digest> = children.into_iter().map(Digest).collect();
        let (bytes, digest) = map::encode_index(level, &children).unwrap();
        prop_assert_eq!(map::decode(&bytes, &digest).unwrap(), map::Node::Index { level, children });
        prop_assert!(map::decode_leaf(&bytes, &digest).is_err());
    }

    #[test]
    fn tree_shapes_end_in_one_root(blocks in 0..u64::from(u32::MAX)) {
        let shape = map::tree_shape(blocks);
        prop_assert_eq!(shape[0] as u64, blocks.div_ceil(map::LEAF_ENTRIES as u64).max(1));
        prop_assert_eq!(*shape.last().unwrap(), 1);
        prop_assert!(shape.len() <= map::MAX_LEVEL as usize + 1);
        for w in shape.windows(2) {
            prop_assert_eq!(w[1], w[0].div_ceil(map::FANOUT));
        }
    }

    #[test]
    fn points_round_trip(seq in any::<u64>(), t in any::<i64>(), catch_up in proptest::option::of(0..u64::MAX), pages in proptest::collection::vec(any::<[u8; 32]>(), 0..50), root in any::<[u8; 32]>()) {
        let rec = PointRecord {
            kind: PointKind::AppConsistent,
            stream: StreamId([1; 16]),
            generation: Generation(1),
            seq: Seq(seq),
            time: Timestamp(t),
            segment_first_seq: Seq(seq / 2),
            segment_prev_digest: Digest::ZERO,
            initial_sync_seq: None,
            catch_up_seq: catch_up.map(Seq),
            disks: vec![
                DiskMap { size: 1 << 30, map: MapRoot::Pages(pages.into_iter().map(Digest).collect()) },
                DiskMap { size: 1 << 40, map: MapRoot::Tree(Digest(root)) },
            ],
        };
        prop_assert_eq!(PointRecord::decode(&rec.encode()).unwrap(), rec);
    }

    #[test]
    fn packs_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..5000), 1..8)) {
        let mut b = pack::PackBuilder::new(7);
        for c in &chunks {
            let z = pack::compress_chunk(c, 1).unwrap();
            b.push_compressed(Digest::of(c), &z, c.len() as u32);
        }
        let bytes = b.finish();
        let (_, entries) = pack::decode_index(&bytes).unwrap();
        for (c, e) in chunks.iter().zip(entries) {
            let z = &bytes[e.offset as usize..(e.offset + e.len) as usize];
            prop_assert_eq!(&pack::open_chunk(z, &e.hash, e.raw_len as usize).unwrap(), c);
        }
    }
}

#[test]
fn corrupt_objects_are_refused_with_a_named_format() {
    let rec = PointRecord {
        kind: PointKind::CrashConsistent,
        stream: StreamId([1; 16]),
        generation: Generation(1),
        seq: Seq(5),
        time: Timestamp(5),
        segment_first_seq: Seq(5),
        segment_prev_digest: Digest::ZERO,
        initial_sync_seq: None,
        catch_up_seq: None,
        disks: vec![],
    };
    let mut bytes = rec.encode();
    bytes[20] ^= 1;
    let err = PointRecord::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        FormatError::Checksum {
            format: "recovery point"
        }
    );
    assert!(err.to_string().contains("corrupt"));
    let mut v4 = rec.encode();
    v4[8] = 4;
    assert!(matches!(
        PointRecord::decode(&v4),
        Err(FormatError::UnsupportedVersion { version: 4, .. })
    ));
}

#[test]
fn a_chunk_that_does_not_match_its_hash_is_refused() {
    let raw = vec![1u8; 100];
    let z = pack::compress_chunk(&raw, 1).unwrap();
    assert!(pack::open_chunk(&z, &Digest::of(&raw), 100).is_ok());
    assert!(pack::open_chunk(&z, &Digest([0; 32]), 100).is_err());
}
