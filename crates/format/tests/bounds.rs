//! Objects whose checksum is right but whose counts claim more than the object holds: each
//! decoder refuses them with an error naming the field, before it allocates for the claim.
//! The property tests build correctly checksummed objects with random field values, so the
//! parsers behind the checksums are exercised, not just the checksum.

use ferry_format::point::{PointKind, PointRecord};
use ferry_format::{Digest, FormatError, map, pack, seal};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use proptest::prelude::*;

fn names(result: Result<impl std::fmt::Debug, FormatError>, format: &str, field: &str) {
    match result {
        Err(FormatError::Invalid { format: f, what }) => {
            assert_eq!(f, format);
            assert!(what.contains(field), "{what:?} does not name {field}");
        }
        other => panic!("expected a {format} error naming {field}, got {other:?}"),
    }
}

/// A recovery point (version 3) whose disk list is `disks` as given, sealed.
fn point_with_disks(disk_count: u16, disks: &[u8]) -> Vec<u8> {
    let mut b = point_v3_head();
    b.extend_from_slice(&disk_count.to_le_bytes());
    b.extend_from_slice(disks);
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // catch_up_seq
    seal(b)
}

fn point_v3_head() -> Vec<u8> {
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
    let bytes = rec.encode();
    // Everything before `disk_count` (99 bytes).
    bytes[..99].to_vec()
}

#[test]
fn a_point_claiming_more_disks_or_pages_than_it_holds_is_refused() {
    names(
        PointRecord::decode(&point_with_disks(u16::MAX, &[])),
        "recovery point",
        "disk_count",
    );
    let mut disk = Vec::new();
    disk.extend_from_slice(&(1u64 << 30).to_le_bytes());
    disk.push(1); // form: page list
    disk.extend_from_slice(&u32::MAX.to_le_bytes());
    names(
        PointRecord::decode(&point_with_disks(1, &disk)),
        "recovery point",
        "page_count",
    );
    // The same disk with the pages it names decodes.
    disk.truncate(9);
    disk.extend_from_slice(&1u32.to_le_bytes());
    disk.extend_from_slice(&[4; 32]);
    let rec = PointRecord::decode(&point_with_disks(1, &disk)).unwrap();
    assert_eq!(rec.disks.len(), 1);
}

/// A pack of `chunk_area` bytes of chunks and `entries` as its index, with `count` as given.
fn pack_with(chunk_area: &[u8], entries: &[(u32, u32, u32)], count: u32) -> Vec<u8> {
    let mut b = pack::MAGIC.to_vec();
    b.extend_from_slice(&pack::VERSION.to_le_bytes());
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(chunk_area);
    for &(offset, len, raw_len) in entries {
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&raw_len.to_le_bytes());
    }
    b.extend_from_slice(&count.to_le_bytes());
    seal(b)
}

#[test]
fn a_pack_index_claiming_more_than_the_pack_holds_is_refused() {
    names(
        pack::decode_index(&pack_with(&[0; 100], &[], u32::MAX)),
        "pack",
        "count",
    );
    names(
        pack::decode_index(&pack_with(&[0; 100], &[(18, 10, 65536)], 4)),
        "pack",
        "count",
    );
    names(
        pack::decode_index(&pack_with(&[0; 100], &[(18, 10, u32::MAX)], 1)),
        "pack",
        "raw_len",
    );
    names(
        pack::decode_index(&pack_with(&[0; 100], &[(2, 10, 65536)], 1)),
        "pack",
        "offset",
    );
    names(
        pack::decode_index(&pack_with(&[0; 100], &[(18, 101, 65536)], 1)),
        "pack",
        "offset",
    );
    let (_, entries) = pack::decode_index(&pack_with(&[0; 100], &[(18, 100, 65536)], 1)).unwrap();
    assert_eq!(entries.len(), 1);
    names(
        pack::open_chunk(&[0; 10], &Digest::ZERO, u32::MAX as usize),
        "pack",
        "raw_len",
    );
}

/// A map node (version 2) with the given level and count around `body`, sealed; and its name.
fn node_with(level: u8, count: u32, body: &[u8]) -> (Vec<u8>, Digest) {
    let mut b = map::MAGIC.to_vec();
    b.extend_from_slice(&map::VERSION.to_le_bytes());
    b.push(level);
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(body);
    let bytes = seal(b);
    let name = Digest::of(&bytes);
    (bytes, name)
}

#[test]
fn a_map_node_claiming_more_entries_than_a_node_holds_is_refused() {
    let body = zstd::bulk::compress(&[0; 48], 1).unwrap();
    for count in [u32::MAX, map::MAX_ENTRIES as u32 + 1] {
        let (bytes, name) = node_with(0, count, &body);
        names(map::decode(&bytes, &name), "map page", "count");
    }
    let (bytes, name) = node_with(0, 2, &body);
    names(map::decode(&bytes, &name), "map page", "count 2");
    let (bytes, name) = node_with(0, 1, &body);
    assert!(matches!(map::decode(&bytes, &name), Ok(map::Node::Leaf(e)) if e.len() == 1));
}

proptest! {
    #[test]
    fn checksummed_points_with_any_counts_decode_or_refuse(
        disk_count in any::<u16>(),
        disks in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = PointRecord::decode(&point_with_disks(disk_count, &disks));
    }

    #[test]
    fn checksummed_packs_with_any_index_decode_or_refuse(
        area in 0usize..300,
        entries in proptest::collection::vec((any::<u32>(), 0u32..400, any::<u32>()), 0..6),
        count in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
    ) {
        let count = count.unwrap_or(entries.len() as u32);
        let bytes = pack_with(&vec![0; area], &entries, count);
        if let Ok((_, decoded)) = pack::decode_index(&bytes) {
            prop_assert_eq!(decoded.len(), count as usize);
            for e in decoded {
                prop_assert!(e.offset as usize >= pack::HEADER_LEN);
                prop_assert!(u64::from(e.raw_len) <= pack::MAX_CHUNK_LEN);
            }
        }
    }

    #[test]
    fn checksummed_map_nodes_with_any_counts_decode_or_refuse(
        level in 0u8..12,
        count in prop_oneof![any::<u32>(), 0u32..1100],
        entries in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let body = zstd::bulk::compress(&entries, 1).unwrap();
        let (bytes, name) = node_with(level, count, &body);
        if let Ok(node) = map::decode(&bytes, &name) {
            let n = match node {
                map::Node::Leaf(e) => e.len(),
                map::Node::Index { children, .. } => children.len(),
            };
            prop_assert_eq!(n, count as usize);
        }
    }
}
