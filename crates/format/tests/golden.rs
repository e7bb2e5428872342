//! Golden fixtures: objects written by version 1 of each format must decode forever.
//! Regenerate (only when adding a new version's fixture) with `FERRY_BLESS=1 cargo test -p ferry-format --test golden`.

use ferry_format::map::{self, ChunkRef};
use ferry_format::point::{DiskMap, MapRoot, PointKind, PointRecord};
use ferry_format::segment::{self, MarkerKind, Op, Record};
use ferry_format::{Digest, pack};
use ferry_types::{Generation, Seq, StreamId, Timestamp};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let path = format!("{DIR}/{name}");
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, make()).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("read fixture {path}: {e}"))
}

fn segment_records() -> Vec<Record> {
    let t = 1_795_000_000_000_000_000;
    vec![
        Record {
            seq: Seq(1),
            time: Timestamp(t),
            disk: 0,
            op: Op::Write {
                offset: 0,
                data: b"ferry segment v1".repeat(4),
            },
        },
        Record {
            seq: Seq(2),
            time: Timestamp(t + 1),
            disk: 1,
            op: Op::Zero {
                offset: 65536,
                len: 65536,
            },
        },
        Record {
            seq: Seq(3),
            time: Timestamp(t + 2),
            disk: 0,
            op: Op::Trim {
                offset: 4096,
                len: 4096,
            },
        },
        Record {
            seq: Seq(4),
            time: Timestamp(t + 3),
            disk: 0,
            op: Op::Marker(MarkerKind::CrashConsistent),
        },
    ]
}

#[test]
fn segment_v1_decodes() {
    let bytes = fixture("segment-v1.seg", || {
        segment::encode(
            StreamId([0xab; 16]),
            Generation(1),
            Digest::ZERO,
            &segment_records(),
            3,
        )
        .unwrap()
        .0
    });
    let seg = segment::decode(&bytes).expect("golden segment decodes");
    assert_eq!(seg.header.stream, StreamId([0xab; 16]));
    assert_eq!(seg.header.generation, Generation(1));
    assert_eq!(
        (seg.header.first_seq, seg.header.last_seq),
        (Seq(1), Seq(4))
    );
    assert_eq!(seg.header.prev_digest, Digest::ZERO);
    assert_eq!(seg.records, segment_records());
}

/// The two entries of the map fixtures: a zero block and one chunk.
fn map_entries() -> Vec<ChunkRef> {
    vec![
        ChunkRef::ZERO,
        ChunkRef {
            hash: Digest([1; 32]),
            pack: 0x1234,
            offset: 18,
            len: 700,
        },
    ]
}

#[test]
fn map_page_v1_decodes() {
    let entries = map_entries();
    let bytes = std::fs::read(format!("{DIR}/map-page-v1.page")).unwrap();
    assert_eq!(
        map::decode(&bytes, &Digest::of(&bytes)).unwrap(),
        map::Node::Leaf(entries)
    );
    assert!(
        map::decode(&bytes, &Digest::ZERO).is_err(),
        "a page must match its name"
    );
}

#[test]
fn map_nodes_v2_decode() {
    let entries = map_entries();
    let leaf = fixture("map-leaf-v2.page", || map::encode_leaf(&entries).unwrap().0);
    let leaf_name = Digest::of(&leaf);
    assert_eq!(
        map::decode(&leaf, &leaf_name).unwrap(),
        map::Node::Leaf(entries)
    );
    let children = vec![leaf_name, Digest::ZERO];
    let index = fixture("map-index-v2.page", || {
        map::encode_index(1, &children).unwrap().0
    });
    assert_eq!(
        map::decode(&index, &Digest::of(&index)).unwrap(),
        map::Node::Index { level: 1, children }
    );
}

#[test]
fn pack_v1_decodes() {
    let raw = vec![0x5a_u8; 65536];
    let bytes = fixture("pack-v1.pack", || {
        let mut b = pack::PackBuilder::new(0x42);
        let c = pack::compress_chunk(&raw, 3).unwrap();
        b.push_compressed(Digest::of(&raw), &c, raw.len() as u32);
        b.finish()
    });
    let (id, entries) = pack::decode_index(&bytes).unwrap();
    assert_eq!(id, 0x42);
    assert_eq!(entries.len(), 1);
    let e = entries[0];
    let chunk = &bytes[e.offset as usize..(e.offset + e.len) as usize];
    assert_eq!(
        pack::open_chunk(chunk, &e.hash, e.raw_len as usize).unwrap(),
        raw
    );
}

fn point_record() -> PointRecord {
    PointRecord {
        kind: PointKind::CrashConsistent,
        stream: StreamId([0xcd; 16]),
        generation: Generation(3),
        seq: Seq(99),
        time: Timestamp(1_795_000_000_000_000_000),
        segment_first_seq: Seq(90),
        segment_prev_digest: Digest([2; 32]),
        initial_sync_seq: Some(Seq(50)),
        catch_up_seq: None,
        disks: vec![
            DiskMap {
                size: 64 << 20,
                map: MapRoot::Pages(vec![Digest([4; 32])]),
            },
            DiskMap {
                size: 1 << 20,
                map: MapRoot::Pages(vec![]),
            },
        ],
    }
}

#[test]
fn recovery_point_v1_decodes() {
    // Version 1 has no catch-up field: it reads as none.
    let rec = point_record();
    let bytes = std::fs::read(format!("{DIR}/recovery-point-v1.point")).unwrap();
    assert_eq!(PointRecord::decode(&bytes).unwrap(), rec);
}

#[test]
fn recovery_point_v2_decodes() {
    let rec = PointRecord {
        kind: PointKind::Checkpoint,
        catch_up_seq: Some(Seq(95)),
        ..point_record()
    };
    let bytes = std::fs::read(format!("{DIR}/recovery-point-v2.point")).unwrap();
    assert_eq!(PointRecord::decode(&bytes).unwrap(), rec);
}

#[test]
fn recovery_point_v3_decodes() {
    let mut rec = point_record();
    rec.disks[0].map = MapRoot::Tree(Digest([4; 32]));
    rec.disks[1].map = MapRoot::Tree(Digest::ZERO);
    let bytes = fixture("recovery-point-v3.point", || rec.encode());
    assert_eq!(PointRecord::decode(&bytes).unwrap(), rec);
}
