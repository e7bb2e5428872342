//! Segments whose checksum is right but whose counts claim more than the object holds: each is
//! refused with an error naming the field, before anything is allocated for the claim.

use proptest::prelude::*;

use super::*;

/// A segment with the given header counts around `body` (already compressed), sealed with a
/// correct trailer.
fn sealed(count: u32, raw_len: u64, first: u64, last: u64, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_header(MAGIC, VERSION);
    w.u16(0);
    w.bytes(&[7; 16]);
    w.u64(1);
    w.u64(first);
    w.u64(last);
    w.i64(0);
    w.i64(0);
    w.bytes(&[0; 32]);
    w.u32(count);
    w.u64(raw_len);
    w.u64(body.len() as u64);
    w.bytes(body);
    w.finish()
}

fn markers(first: u64, n: u64) -> Vec<u8> {
    let mut raw = Vec::new();
    for i in 0..n {
        encode_record_ref(
            &mut raw,
            Seq(first + i),
            Timestamp(0),
            0,
            OpRef::Marker(MarkerKind::CrashConsistent),
        );
    }
    raw
}

fn refused(bytes: &[u8], field: &str) {
    match decode(bytes) {
        Err(FormatError::Invalid { format, what }) => {
            assert_eq!(format, "segment");
            assert!(what.contains(field), "{what:?} does not name {field}");
        }
        other => panic!("expected an error naming {field}, got {other:?}"),
    }
}

#[test]
fn a_record_count_of_u32_max_behind_a_right_checksum_is_refused() {
    let raw = markers(1, 2);
    let body = zstd::bulk::compress(&raw, 1).unwrap();
    let bytes = sealed(u32::MAX, raw.len() as u64, 1, 2, &body);
    refused(&bytes, "record_count");
    refused(&sealed(0, raw.len() as u64, 1, 2, &body), "record_count");
    // The same body with the true count decodes: the error above is the count's.
    assert_eq!(
        decode(&sealed(2, raw.len() as u64, 1, 2, &body))
            .unwrap()
            .records
            .len(),
        2
    );
}

#[test]
fn a_raw_len_past_what_the_body_holds_is_refused() {
    let raw = markers(1, 2);
    let body = zstd::bulk::compress(&raw, 1).unwrap();
    refused(&sealed(2, u64::MAX, 1, 2, &body), "raw_len");
    refused(&sealed(2, MAX_RAW_LEN, 1, 2, &body), "raw_len");
    // Plausible for the count, but more than the few bytes of body can expand to.
    refused(&sealed(2, 64 << 20, 1, 2, &body), "raw_len");
    // Within every bound, but not what the zstd frame declares.
    refused(&sealed(2, raw.len() as u64 + 8, 1, 2, &body), "raw_len");
    // A body that is not a zstd frame at all.
    refused(
        &sealed(2, raw.len() as u64, 1, 2, &[0xaa; 64]),
        "zstd frame",
    );
    // A frame that does not declare its size is bounded by the rest alone.
    let body = zstd::stream::encode_all(&raw[..], 1).unwrap();
    assert!(matches!(
        zstd::zstd_safe::get_frame_content_size(&body),
        Ok(None)
    ));
    assert_eq!(
        decode(&sealed(2, raw.len() as u64, 1, 2, &body))
            .unwrap()
            .records
            .len(),
        2
    );
}

#[test]
fn a_write_longer_than_the_largest_record_is_refused() {
    let mut raw = Vec::new();
    encode_record_header(
        &mut raw,
        Seq(1),
        Timestamp(0),
        0,
        OpRef::Zero {
            offset: 0,
            len: MAX_RECORD_LEN + 1,
        },
    );
    raw[0] = 1; // a write whose payload would be 32 MiB + 1
    let body = zstd::bulk::compress(&raw, 1).unwrap();
    refused(&sealed(1, raw.len() as u64, 1, 1, &body), "write too large");
    // A payload length within the limit but past the end of the records.
    raw[32..40].copy_from_slice(&4096u64.to_le_bytes());
    let body = zstd::bulk::compress(&raw, 1).unwrap();
    assert!(matches!(
        decode(&sealed(1, raw.len() as u64, 1, 1, &body)),
        Err(FormatError::Truncated { .. })
    ));
}

proptest! {
    /// Any header counts over any records, correctly checksummed: the decoder answers (never
    /// panics, never allocates for a claim), and what it accepts agrees with the header.
    #[test]
    fn checksummed_segments_with_any_counts_decode_or_refuse(
        count in prop_oneof![Just(u32::MAX), 0u32..8, any::<u32>()],
        raw_len in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        first in 0u64..4,
        n in 1u64..6,
        junk in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut raw = markers(first, n);
        raw.extend_from_slice(&junk);
        let body = zstd::bulk::compress(&raw, 1).unwrap();
        let raw_len = raw_len.unwrap_or(raw.len() as u64);
        let bytes = sealed(count, raw_len, first, first + n - 1, &body);
        if let Ok(seg) = decode(&bytes) {
            prop_assert_eq!(seg.records.len() as u64, u64::from(count));
            prop_assert_eq!(seg.header.raw_len, raw.len() as u64);
        }
    }
}

/// Found by the `segment` fuzz target: a record at sequence `u64::MAX` followed by one at 0
/// overflowed the order check (a panic with overflow checks, accepted as consecutive without).
#[test]
fn a_sequence_that_wraps_around_is_a_gap() {
    let mut raw = markers(u64::MAX, 1);
    raw.extend_from_slice(&markers(0, 1));
    let body = zstd::bulk::compress(&raw, 1).unwrap();
    refused(&sealed(2, raw.len() as u64, u64::MAX, 0, &body), "sequence gap");
    let wrapped = [u64::MAX, 0].map(|s| Record {
        seq: Seq(s),
        time: Timestamp(0),
        disk: 0,
        op: Op::Marker(MarkerKind::CrashConsistent),
    });
    assert!(encode(StreamId([1; 16]), Generation(1), Digest::ZERO, &wrapped, 1).is_err());
}

#[test]
fn peek_record_checks_a_header_as_decoding_does() {
    let mut raw = markers(1, 1);
    assert_eq!(peek_record(&raw).unwrap(), (Seq(1), Timestamp(0), 40));
    raw[1] = 9; // marker kind 9
    assert!(decode_record_prefix(&raw).is_err());
    assert!(peek_record(&raw).is_err());
    raw[0] = 7; // kind 7
    assert!(peek_record(&raw).is_err());
}
