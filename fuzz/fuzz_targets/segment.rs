//! Segments, behind their checksum. Each input is decoded twice:
//! 1. as a whole segment whose trailer is recomputed (golden fixtures are seeds);
//! 2. as a 120-byte header followed by the *uncompressed* records: the records are compressed
//!    and `body_len` set; `raw_len` is set to the records' length unless bit 0 of the header's
//!    `flags` (ignored by the decoder) asks to keep the input's claim.
#![no_main]

use ferry_format::segment::{self, Segment};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 120;

fuzz_target!(|data: &[u8]| {
    if let Some(object) = reseal(data) {
        check(segment::decode(&object));
    }
    if data.len() >= HEADER {
        let (head, raw) = data.split_at(HEADER);
        let Ok(body) = zstd::bulk::compress(raw, 1) else {
            return;
        };
        let mut object = head.to_vec();
        if head[10] & 1 == 0 {
            object[104..112].copy_from_slice(&(raw.len() as u64).to_le_bytes());
        }
        object[112..120].copy_from_slice(&(body.len() as u64).to_le_bytes());
        object.extend_from_slice(&body);
        check(segment::decode(&ferry_format::seal(object)));
    }
});

/// What a decoded segment promises.
fn check(decoded: Result<Segment, ferry_format::FormatError>) {
    let Ok(seg) = decoded else { return };
    let h = &seg.header;
    assert_eq!(seg.records.len(), h.record_count as usize);
    assert_eq!(seg.records[0].seq, h.first_seq);
    assert_eq!(seg.records[seg.records.len() - 1].seq, h.last_seq);
    let raw: usize = seg
        .records
        .iter()
        .map(|r| segment::RECORD_HEADER + r.data_len())
        .sum();
    assert_eq!(raw as u64, h.raw_len);
}

/// `data` with its last 32 bytes replaced by the BLAKE3 of the rest.
fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    let body = data.len().checked_sub(32)?;
    Some(ferry_format::seal(data[..body].to_vec()))
}
