//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the decoders of the
//! agent's local files, over bytes instead of files. Each returns what the decoder said and
//! panics only when two readings of the same bytes disagree, which is a bug.

use std::path::Path;

use ferry_format::segment;

/// Read `data` as a stream log both ways the agent does: record by record up to the first bad
/// frame (recovery and redo), and streamed as a segment body (shipping). Returns the number of
/// records the first reading found, and whether the second accepted the log.
pub fn stream_log(data: &[u8]) -> (usize, bool) {
    let (records, dropped) = crate::log::parse(data);
    let mut body = Vec::new();
    let raw = crate::log::read_raw_from(data, Path::new("fuzz"), &mut Vec::new(), |piece| {
        body.extend_from_slice(piece);
        Ok(())
    });
    if let Ok(raw) = &raw {
        // A log fit to ship is whole: the record-by-record reading found every record, and
        // the body streamed decodes back to the same records.
        assert_eq!(dropped, 0, "a log fit to ship has a torn tail");
        assert_eq!(raw.count as usize, records.len());
        assert_eq!(raw.first.0, records[0].seq);
        assert_eq!(raw.last.0, records[records.len() - 1].seq);
        let mut at = 0;
        for r in &records {
            let (decoded, used) = segment::decode_record_prefix(&body[at..]).expect("record");
            assert_eq!(&decoded, r);
            at += used;
        }
        assert_eq!(at, body.len());
    }
    (records.len(), raw.is_ok())
}

/// Parse `data` as a dirty bitmap file; the number of dirty blocks, or why it is refused.
pub fn dirty_bitmap(data: &[u8]) -> Result<u64, String> {
    let words = crate::dirty::parse(data)?;
    Ok(words.iter().map(|w| u64::from(w.count_ones())).sum())
}

/// Parse `data` as the hydration bitmap of a disk of `size` bytes; the blocks still to fetch,
/// or why it is refused.
pub fn hydration_bitmap(data: &[u8], size: u64) -> Result<u64, String> {
    let b = crate::hydrate::parse(data, size)?;
    assert_eq!(b.words.len() as u64, b.blocks.div_ceil(64));
    Ok(b.words.iter().map(|w| u64::from(w.count_ones())).sum())
}

/// The CRC32C the agent's files use, so a fuzz target can make a checksum right.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_point_reads_what_the_agent_writes() {
        let mut log = Vec::new();
        for seq in 1..=3u64 {
            let mut rec = Vec::new();
            segment::encode_record_ref(
                &mut rec,
                ferry_types::Seq(seq),
                ferry_types::Timestamp(seq as i64),
                0,
                segment::OpRef::Write {
                    offset: 512 * seq,
                    data: &[seq as u8; 100],
                },
            );
            log.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            log.extend_from_slice(&crc32c(&rec).to_le_bytes());
            log.extend_from_slice(&rec);
        }
        assert_eq!(stream_log(&log), (3, true));
        assert_eq!(stream_log(&log[..log.len() - 1]), (2, false));

        let mut dirty = crate::dirty::MAGIC.to_vec();
        dirty.extend_from_slice(&crate::dirty::VERSION.to_le_bytes());
        dirty.extend_from_slice(&[0; 6]);
        dirty.extend_from_slice(&[0b101, 0, 0]);
        assert_eq!(dirty_bitmap(&dirty), Ok(2));

        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        let size = 100 * ferry_format::BLOCK_SIZE;
        crate::hydrate::prepare(&image, size, &[1, 7, 99]).unwrap();
        let data = std::fs::read(crate::hydrate::bitmap_path(&image)).unwrap();
        assert_eq!(hydration_bitmap(&data, size), Ok(3));
        assert!(hydration_bitmap(&data, size + ferry_format::BLOCK_SIZE).is_err());
    }
}
