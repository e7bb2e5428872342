use super::*;

fn rec(seq: u64, time: i64, disk: u16, op: Op) -> Record {
    Record {
        seq: Seq(seq),
        time: Timestamp(time),
        disk,
        op,
    }
}

fn sample() -> Vec<Record> {
    vec![
        rec(
            10,
            100,
            0,
            Op::Write {
                offset: 4096,
                data: vec![7; 4096],
            },
        ),
        rec(
            11,
            100,
            1,
            Op::Zero {
                offset: 0,
                len: 65536,
            },
        ),
        rec(
            12,
            105,
            0,
            Op::Trim {
                offset: 8192,
                len: 4096,
            },
        ),
        rec(13, 110, 0, Op::Marker(MarkerKind::CrashConsistent)),
    ]
}

#[test]
fn round_trips() {
    let stream = StreamId([3; 16]);
    let (bytes, digest) = encode(stream, Generation(2), Digest([9; 32]), &sample(), 3).unwrap();
    let seg = decode(&bytes).unwrap();
    assert_eq!(seg.records, sample());
    assert_eq!(seg.digest, digest);
    assert_eq!(seg.header.first_seq, Seq(10));
    assert_eq!(seg.header.last_seq, Seq(13));
    assert_eq!(seg.header.first_time, Timestamp(100));
    assert_eq!(seg.header.last_time, Timestamp(110));
    assert_eq!(seg.header.prev_digest, Digest([9; 32]));
    assert_eq!(seg.header.generation, Generation(2));
    assert_eq!(seg.header.stream, stream);
}

#[test]
fn every_flipped_byte_is_detected() {
    let (bytes, _) = encode(StreamId([1; 16]), Generation(1), Digest::ZERO, &sample(), 3).unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn truncation_is_detected() {
    let (bytes, _) = encode(StreamId([1; 16]), Generation(1), Digest::ZERO, &sample(), 3).unwrap();
    for len in [0, 5, 41, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            decode(&bytes[..len]).is_err(),
            "truncation to {len} went unnoticed"
        );
    }
}

#[test]
fn gaps_and_empty_segments_are_refused() {
    let mut r = sample();
    r[2].seq = Seq(20);
    assert!(encode(StreamId([1; 16]), Generation(1), Digest::ZERO, &r, 3).is_err());
    assert!(encode(StreamId([1; 16]), Generation(1), Digest::ZERO, &[], 3).is_err());
}

#[test]
fn names_sort_by_sequence() {
    let a = object_name(Seq(9));
    let b = object_name(Seq(10));
    let c = object_name(Seq(0x1_0000_0000));
    assert!(a < b && b < c);
    assert_eq!(parse_object_name(&c), Some(Seq(0x1_0000_0000)));
    assert_eq!(parse_object_name("x.seg"), None);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = (u16, Op)> {
        prop_oneof![
            (
                0u16..4,
                0u64..1 << 40,
                proptest::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(d, offset, data)| (d, Op::Write { offset, data })),
            (0u16..4, 0u64..1 << 40, 0u64..1 << 30)
                .prop_map(|(d, offset, len)| (d, Op::Zero { offset, len })),
            (0u16..4, 0u64..1 << 40, 0u64..1 << 30)
                .prop_map(|(d, offset, len)| (d, Op::Trim { offset, len })),
            Just((0u16, Op::Marker(MarkerKind::AppConsistent))),
        ]
    }

    proptest! {
        #[test]
        fn any_records_round_trip(first in 0u64..1 << 50, ops in proptest::collection::vec((op(), 0i64..1000), 1..40)) {
            let mut t = 1_700_000_000_000_000_000i64;
            let records: Vec<Record> = ops.into_iter().enumerate().map(|(i, ((disk, op), dt))| {
                t += dt;
                Record { seq: Seq(first + i as u64), time: Timestamp(t), disk, op }
            }).collect();
            let (bytes, digest) = encode(StreamId([5; 16]), Generation(7), Digest([1; 32]), &records, 1).unwrap();
            let seg = decode(&bytes).unwrap();
            prop_assert_eq!(seg.records, records);
            prop_assert_eq!(seg.digest, digest);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&data);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&VERSION.to_le_bytes());
            framed.extend_from_slice(&data);
            let _ = decode(&framed);
        }
    }
}

#[test]
fn one_encoder_streams_segments_from_pieces_of_their_records() {
    let mut raw = Vec::new();
    for r in sample() {
        encode_record(&mut raw, &r);
    }
    let mut encoder = RawEncoder::new(1).unwrap();
    for (round, piece) in [1usize, 7, 4096, raw.len()].into_iter().enumerate() {
        let mut segment = encoder.start(raw.len() as u64).unwrap();
        for chunk in raw.chunks(piece) {
            segment.push(chunk).unwrap();
        }
        let prev = Digest([round as u8; 32]);
        let (bytes, digest) = segment
            .finish(
                StreamId([4; 16]),
                Generation(3),
                prev,
                4,
                (Seq(10), Timestamp(100)),
                (Seq(13), Timestamp(110)),
            )
            .unwrap();
        let seg = decode(&bytes).unwrap();
        assert_eq!(seg.records, sample(), "pieces of {piece} bytes");
        assert_eq!(seg.digest, digest);
        assert_eq!(seg.header.prev_digest, prev);
    }
    // The records must be exactly as long as announced.
    let mut segment = encoder.start(raw.len() as u64 + 1).unwrap();
    segment.push(&raw).unwrap();
    let facts = ((Seq(10), Timestamp(100)), (Seq(13), Timestamp(110)));
    let short = segment.finish(
        StreamId([4; 16]),
        Generation(3),
        Digest::ZERO,
        4,
        facts.0,
        facts.1,
    );
    assert!(short.is_err());
    let mut segment = encoder.start(raw.len() as u64).unwrap();
    segment.push(&raw).unwrap();
    let ok = segment.finish(
        StreamId([4; 16]),
        Generation(3),
        Digest::ZERO,
        4,
        facts.0,
        facts.1,
    );
    assert!(ok.is_ok(), "the encoder is usable after a failed segment");
}
