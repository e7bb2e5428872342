//! The local stream log: the write stream's durable tail on the source host.
//!
//! Each record is framed as `len: u32, crc32c: u32, record` (the record in the segment body
//! encoding) and appended with one `write` before the write it describes is acknowledged, so
//! it survives `kill -9` of the agent; `sync` makes it survive power loss too (done on FUA and
//! FLUSH). One log file becomes exactly one segment. A torn tail (power loss mid-append) is
//! detected by the frame checksum and cut off on recovery.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};

use ferry_format::segment::{self, OpRef, Record};
use ferry_types::{Seq, Timestamp};

use crate::AgentError;

const FRAME: usize = 8;

/// Name of the log file whose first record is `first`.
pub(crate) fn file_name(first: Seq) -> String {
    format!("log-{:016x}", first.0)
}

pub(crate) fn parse_file_name(name: &str) -> Option<Seq> {
    let hex = name.strip_prefix("log-")?;
    (hex.len() == 16).then_some(())?;
    u64::from_str_radix(hex, 16).ok().map(Seq)
}

/// Bytes a record takes in the log: its frame, header and payload.
pub(crate) fn record_size(op: OpRef<'_>) -> u64 {
    let payload = match op {
        OpRef::Write { data, .. } => data.len() as u64,
        _ => 0,
    };
    (FRAME + segment::RECORD_HEADER) as u64 + payload
}

/// The log file being appended to.
pub(crate) struct LogWriter {
    file: File,
    pub path: PathBuf,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub first_time: Timestamp,
    pub bytes: u64,
    buf: Vec<u8>,
}

impl LogWriter {
    pub fn create(dir: &Path, first_seq: Seq, first_time: Timestamp) -> Result<Self, AgentError> {
        let path = dir.join(file_name(first_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(AgentError::io("create stream log", &path))?;
        Ok(LogWriter {
            file,
            path,
            first_seq,
            last_seq: first_seq,
            first_time,
            bytes: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Append one record with one vectored `write` (header and payload, no copy of the payload).
    pub fn append(
        &mut self,
        seq: Seq,
        time: Timestamp,
        disk: u16,
        op: OpRef<'_>,
    ) -> Result<(), AgentError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; FRAME]);
        segment::encode_record_header(&mut self.buf, seq, time, disk, op);
        let payload: &[u8] = match op {
            OpRef::Write { data, .. } => data,
            _ => &[],
        };
        let len = (self.buf.len() - FRAME + payload.len()) as u32;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.buf[FRAME..]), payload);
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let total = self.buf.len() + payload.len();
        write_all_vectored(&mut self.file, &self.buf, payload)
            .map_err(AgentError::io("append to stream log", &self.path))?;
        self.last_seq = seq;
        self.bytes += total as u64;
        Ok(())
    }
}

/// Write `head` then `body` with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut File, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut bufs: &mut [IoSlice<'_>] = &mut slices;
    while bufs.iter().any(|b| !b.is_empty()) {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read every whole record of a log file. Everything from the first bad frame on is a torn
/// tail (power loss mid-append) and is cut off; the second value is the number of bytes
/// dropped. Records after a torn one were never synced, so no write acknowledged with FUA or
/// FLUSH is among them; after `kill -9` no frame is ever torn (each record is one `write`).
pub(crate) fn read(path: &Path) -> Result<(Vec<Record>, u64), AgentError> {
    let data = std::fs::read(path).map_err(AgentError::io("read stream log", path))?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        match frame_at(&data, pos) {
            Some((rec, next)) => {
                records.push(rec);
                pos = next;
            }
            None => return Ok((records, (data.len() - pos) as u64)),
        }
    }
    Ok((records, 0))
}

/// A sealed log's records in the segment body encoding, checked frame by frame.
pub(crate) struct RawLog {
    pub raw: Vec<u8>,
    pub count: u32,
    pub first: (Seq, Timestamp),
    pub last: (Seq, Timestamp),
}

/// Read a sealed log as one body of records (frames stripped, checksums and order checked),
/// without decoding the records: the cheap path from log to segment.
pub(crate) fn read_raw(path: &Path) -> Result<RawLog, AgentError> {
    let data = std::fs::read(path).map_err(AgentError::io("read stream log", path))?;
    let corrupt = |offset: usize, reason: &str| AgentError::CorruptLog {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.into(),
    };
    let mut raw = Vec::with_capacity(data.len());
    let (mut pos, mut count) = (0usize, 0u32);
    let (mut first, mut last) = (None, None::<(Seq, Timestamp)>);
    while pos < data.len() {
        let head = data
            .get(pos..pos + FRAME)
            .ok_or_else(|| corrupt(pos, "truncated frame"))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let body = data
            .get(pos + FRAME..pos + FRAME + len)
            .ok_or_else(|| corrupt(pos, "truncated record"))?;
        if crc32c::crc32c(body) != crc {
            return Err(corrupt(pos, "a record of a sealed log fails its checksum"));
        }
        let (seq, time, total) =
            segment::peek_record(body).ok_or_else(|| corrupt(pos, "unreadable record header"))?;
        if total != len {
            return Err(corrupt(pos, "record length does not match its frame"));
        }
        if let Some((s, t)) = last
            && (seq.0 != s.0 + 1 || time < t)
        {
            return Err(corrupt(pos, "records are out of order"));
        }
        first.get_or_insert((seq, time));
        last = Some((seq, time));
        raw.extend_from_slice(body);
        count += 1;
        pos += FRAME + len;
    }
    match (first, last) {
        (Some(first), Some(last)) => Ok(RawLog {
            raw,
            count,
            first,
            last,
        }),
        _ => Err(corrupt(0, "the log holds no record")),
    }
}

fn frame_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let head = data.get(pos..pos + FRAME)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    let body = data.get(pos + FRAME..pos + FRAME + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let (rec, used) = segment::decode_record_prefix(body).ok()?;
    (used == len).then_some((rec, pos + FRAME + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::segment::Op;

    fn write_log(dir: &Path, n: u64) -> PathBuf {
        let mut w = LogWriter::create(dir, Seq(5), Timestamp(1)).unwrap();
        for i in 0..n {
            let data = vec![i as u8; 100];
            w.append(
                Seq(5 + i),
                Timestamp(1 + i as i64),
                0,
                OpRef::Write {
                    offset: i * 512,
                    data: &data,
                },
            )
            .unwrap();
        }
        w.path.clone()
    }

    #[test]
    fn records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3);
        let (recs, dropped) = read(&path).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].seq, Seq(7));
        assert_eq!(
            recs[2].op,
            Op::Write {
                offset: 1024,
                data: vec![2; 100]
            }
        );
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_first_bad_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let (recs, dropped) = read(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(dropped > 0);
        assert!(read_raw(&path).is_err(), "a log to ship must be whole");
        let mut bad = full.clone();
        bad[20] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let (recs, dropped) = read(&path).unwrap();
        assert!(recs.is_empty());
        assert_eq!(dropped as usize, full.len());
    }
}
