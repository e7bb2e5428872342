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
/// Largest `len` of a frame: a record's header and the largest write payload.
pub(crate) const MAX_FRAME_LEN: usize = segment::RECORD_HEADER + segment::MAX_RECORD_LEN as usize;

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
    /// Fault injection: the next append fails half-way, as on a full disk.
    pub fail_next: bool,
    /// A failed append left part of its record that could not be cut back: a reader would
    /// stop there, so nothing more is appended.
    pub torn: bool,
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
            fail_next: false,
            torn: false,
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
        if self.torn {
            return Err(AgentError::CorruptLog {
                path: self.path.clone(),
                offset: self.bytes,
                reason: "a failed append could not be cut back; nothing more can be appended"
                    .into(),
            });
        }
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
        let inject = matches!(op, OpRef::Write { .. })
            && ferry_types::failpoint::check("agent-log-append")
                == ferry_types::failpoint::Action::Error;
        let written = if inject || std::mem::take(&mut self.fail_next) {
            // As a full disk does: part of the record lands, then the write fails.
            let _ = std::io::Write::write_all(&mut self.file, &self.buf[..self.buf.len() / 2]);
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            write_all_vectored(&mut self.file, &self.buf, payload)
        };
        if let Err(e) = written {
            // Cut what landed of the record, so the records appended after this one are not
            // behind a torn frame (a reader stops at the first bad frame).
            if let Err(cut) = self.file.set_len(self.bytes) {
                self.torn = true;
                return Err(AgentError::io(
                    "cut a failed append from stream log",
                    &self.path,
                )(cut));
            }
            return Err(AgentError::io("append to stream log", &self.path)(e));
        }
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
    Ok(parse(&data))
}

/// The records of a log's bytes up to the first bad frame, and the bytes dropped from there
/// ([`read`] without the file).
pub(crate) fn parse(data: &[u8]) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        match frame_at(data, pos) {
            Some((rec, next)) => {
                records.push(rec);
                pos = next;
            }
            None => return (records, (data.len() - pos) as u64),
        }
    }
    (records, 0)
}

/// Bytes of the records of a log of `file_len` bytes holding `records` records, without their
/// frames (`None` if it cannot hold that many).
pub(crate) fn body_len(file_len: u64, records: u64) -> Option<u64> {
    file_len.checked_sub(records.checked_mul(FRAME as u64)?)
}

/// What [`read_raw`] found in a sealed log.
#[derive(Debug)]
pub(crate) struct RawLog {
    pub count: u32,
    pub first: (Seq, Timestamp),
    pub last: (Seq, Timestamp),
}

/// Bytes of a sealed log read at a time: small enough to stay in the CPU's cache while they
/// are checked and compressed.
const READ_PIECE: usize = 256 << 10;

/// Read a sealed log and hand its records to `sink` in the segment body encoding (frames
/// stripped, checksums and order checked) in pieces (one may end inside a record), without
/// decoding the records or assembling the body: the cheap path from log to segment. `buf` is
/// scratch space, kept from one log to the next. A piece of a record reaches `sink` before its
/// checksum is checked: on an error, discard what `sink` received.
pub(crate) fn read_raw(
    path: &Path,
    buf: &mut Vec<u8>,
    sink: impl FnMut(&[u8]) -> Result<(), AgentError>,
) -> Result<RawLog, AgentError> {
    let file = File::open(path).map_err(AgentError::io("read stream log", path))?;
    read_raw_from(file, path, buf, sink)
}

/// [`read_raw`] from any reader; `path` names the log in errors.
pub(crate) fn read_raw_from(
    mut file: impl std::io::Read,
    path: &Path,
    buf: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> Result<(), AgentError>,
) -> Result<RawLog, AgentError> {
    let corrupt = |offset: u64, reason: &str| AgentError::CorruptLog {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    };
    buf.resize(READ_PIECE, 0);
    // The frame being read: its header, how much of it has been read, the record's header
    // (for its sequence and time), the body bytes still to come and their checksum so far.
    let (mut frame, mut framed) = ([0u8; FRAME], 0usize);
    let (mut head, mut headed) = ([0u8; segment::RECORD_HEADER], 0usize);
    let (mut left, mut crc) = (0usize, 0u32);
    let mut at = 0u64;
    let (mut count, mut first, mut last) = (0u32, None, None::<(Seq, Timestamp)>);
    loop {
        let n = match std::io::Read::read(&mut file, buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(AgentError::io("read stream log", path)(e)),
        };
        let mut piece = &buf[..n];
        while !piece.is_empty() {
            if framed < FRAME {
                let k = (FRAME - framed).min(piece.len());
                frame[framed..framed + k].copy_from_slice(&piece[..k]);
                (framed, piece) = (framed + k, &piece[k..]);
                if framed < FRAME {
                    continue;
                }
                left = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
                (headed, crc) = (0, 0);
                if left < segment::RECORD_HEADER {
                    return Err(corrupt(at, "unreadable record header"));
                }
                if left > MAX_FRAME_LEN {
                    return Err(corrupt(
                        at,
                        &format!(
                            "frame len {left} is over the largest record ({MAX_FRAME_LEN} bytes)"
                        ),
                    ));
                }
            }
            let k = left.min(piece.len());
            let body = &piece[..k];
            crc = crc32c::crc32c_append(crc, body);
            let h = (segment::RECORD_HEADER - headed).min(k);
            head[headed..headed + h].copy_from_slice(&body[..h]);
            headed += h;
            sink(body)?;
            (left, piece) = (left - k, &piece[k..]);
            if left > 0 {
                continue;
            }
            // A whole record.
            let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            if crc != u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) {
                return Err(corrupt(at, "a record of a sealed log fails its checksum"));
            }
            let (seq, time, total) = segment::peek_record(&head)
                .map_err(|e| corrupt(at, &format!("unreadable record header: {e}")))?;
            if total != len {
                return Err(corrupt(at, "record length does not match its frame"));
            }
            if let Some((s, t)) = last
                && (s.0.checked_add(1) != Some(seq.0) || time < t)
            {
                return Err(corrupt(at, "records are out of order"));
            }
            first.get_or_insert((seq, time));
            last = Some((seq, time));
            count = count
                .checked_add(1)
                .ok_or_else(|| corrupt(at, "more records than a segment can count"))?;
            at += (FRAME + len) as u64;
            framed = 0;
        }
    }
    if framed > 0 {
        let reason = if framed < FRAME {
            "truncated frame"
        } else {
            "truncated record"
        };
        return Err(corrupt(at, reason));
    }
    match (first, last) {
        (Some(first), Some(last)) => Ok(RawLog { count, first, last }),
        _ => Err(corrupt(0, "the log holds no record")),
    }
}

fn frame_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let head = data.get(pos..pos + FRAME)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    if !(segment::RECORD_HEADER..=MAX_FRAME_LEN).contains(&len) {
        return None;
    }
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
    use ferry_format::Digest;
    use ferry_format::segment::{MarkerKind, Op};
    use ferry_types::{Generation, StreamId};

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
        assert!(
            read_raw(&path, &mut Vec::new(), |_| Ok(())).is_err(),
            "a log to ship must be whole"
        );
        let mut bad = full.clone();
        bad[20] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let (recs, dropped) = read(&path).unwrap();
        assert!(recs.is_empty());
        assert_eq!(dropped as usize, full.len());
    }

    #[test]
    fn a_failed_append_is_cut_so_later_records_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::create(dir.path(), Seq(1), Timestamp(1)).unwrap();
        let write = |data: &'static [u8]| OpRef::Write { offset: 0, data };
        w.append(Seq(1), Timestamp(1), 0, write(&[1; 4096]))
            .unwrap();
        let good = w.bytes;
        w.fail_next = true;
        let e = w
            .append(Seq(2), Timestamp(2), 0, write(&[2; 4096]))
            .unwrap_err();
        assert!(e.to_string().contains("append to stream log"), "{e}");
        assert_eq!(std::fs::metadata(&w.path).unwrap().len(), good);
        // The sequence that failed is appended again once there is room.
        w.append(Seq(2), Timestamp(3), 0, write(&[3; 4096]))
            .unwrap();
        let (records, dropped) = read(&w.path).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[1].op,
            Op::Write {
                offset: 0,
                data: vec![3; 4096]
            }
        );
        log_raw_ok(&w.path);
    }

    fn log_raw_ok(path: &Path) {
        let log = read_raw(path, &mut Vec::new(), |_| Ok(())).unwrap();
        assert_eq!((log.first.0, log.last.0), (Seq(1), Seq(2)));
    }

    #[test]
    fn a_sealed_log_streams_into_a_segment_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::create(dir.path(), Seq(5), Timestamp(1)).unwrap();
        // One record longer than a piece, so records and frames straddle the pieces.
        let big = vec![7u8; READ_PIECE + 1000];
        let ops = [
            OpRef::Write {
                offset: 0,
                data: &[1; 100],
            },
            OpRef::Write {
                offset: 4096,
                data: &big,
            },
            OpRef::Zero {
                offset: 0,
                len: 4096,
            },
            OpRef::Marker(MarkerKind::CrashConsistent),
            OpRef::Write {
                offset: 512,
                data: &[2; 3],
            },
        ];
        for (i, op) in ops.iter().enumerate() {
            w.append(Seq(5 + i as u64), Timestamp(1 + i as i64), 0, *op)
                .unwrap();
        }
        let raw_len = body_len(w.bytes, ops.len() as u64).unwrap();
        let mut encoder = segment::RawEncoder::new(1).unwrap();
        let mut seg = encoder.start(raw_len).unwrap();
        let mut pieces = 0;
        let log = read_raw(&w.path, &mut Vec::new(), |piece| {
            pieces += 1;
            Ok(seg.push(piece)?)
        })
        .unwrap();
        assert!(pieces > ops.len());
        assert_eq!(
            (log.count, log.first, log.last),
            (5, (Seq(5), Timestamp(1)), (Seq(9), Timestamp(5)))
        );
        let (bytes, digest) = seg
            .finish(
                StreamId([1; 16]),
                Generation(1),
                Digest::ZERO,
                log.count,
                log.first,
                log.last,
            )
            .unwrap();
        let decoded = segment::decode(&bytes).unwrap();
        assert_eq!(decoded.digest, digest);
        assert_eq!(decoded.records, read(&w.path).unwrap().0);

        // A record out of order is refused.
        w.append(
            Seq(11),
            Timestamp(9),
            0,
            OpRef::Marker(MarkerKind::CrashConsistent),
        )
        .unwrap();
        assert!(read_raw(&w.path, &mut Vec::new(), |_| Ok(())).is_err());
    }

    /// A frame around `record` with a right checksum and `len` as given (the record's own
    /// length when `None`).
    fn frame(record: &[u8], len: Option<u32>) -> Vec<u8> {
        let mut f = len.unwrap_or(record.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
        f.extend_from_slice(record);
        f
    }

    fn marker(seq: u64) -> Vec<u8> {
        let mut r = Vec::new();
        segment::encode_record_ref(
            &mut r,
            Seq(seq),
            Timestamp(1),
            0,
            OpRef::Marker(MarkerKind::CrashConsistent),
        );
        r
    }

    fn raw(data: &[u8]) -> Result<RawLog, AgentError> {
        read_raw_from(data, Path::new("log"), &mut Vec::new(), |_| Ok(()))
    }

    #[test]
    fn a_frame_longer_than_the_largest_record_is_refused_before_it_is_read() {
        let mut data = frame(&marker(1), None);
        let good = data.len();
        data.extend_from_slice(&frame(&marker(2), Some(u32::MAX)));
        let e = raw(&data).unwrap_err().to_string();
        assert!(e.contains(&format!("at byte {good}")), "{e}");
        assert!(
            e.contains("frame len 4294967295 is over the largest record"),
            "{e}"
        );
        let (records, dropped) = parse(&data);
        assert_eq!(records.len(), 1, "the frame is a torn tail");
        assert_eq!(dropped as usize, data.len() - good);
    }

    #[test]
    fn a_record_claiming_more_payload_than_its_frame_is_refused() {
        // A right checksum over a write record whose payload length is past the frame.
        let mut rec = Vec::new();
        segment::encode_record_header(
            &mut rec,
            Seq(1),
            Timestamp(1),
            0,
            OpRef::Zero {
                offset: 0,
                len: segment::MAX_RECORD_LEN,
            },
        );
        rec[0] = 1;
        let data = frame(&rec, None);
        let e = raw(&data).unwrap_err().to_string();
        assert!(e.contains("record length does not match its frame"), "{e}");
        assert_eq!(parse(&data), (vec![], data.len() as u64));
    }

    /// Found by the `stream_log` fuzz target: a record whose header a segment refuses (an
    /// unknown kind or marker kind, an extent that overflows) passed the shipping reader, which
    /// checked only its length, so its log became a segment the processor refuses forever.
    #[test]
    fn a_record_a_segment_would_refuse_is_refused_before_shipping() {
        for (at, value) in [(0usize, 7u8), (1, 9), (31, 0xff)] {
            let mut rec = marker(2);
            rec[0] = if at == 31 { 2 } else { rec[0] };
            rec[at] = value;
            if at == 31 {
                rec[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
            }
            let mut data = frame(&marker(1), None);
            data.extend_from_slice(&frame(&rec, None));
            let e = raw(&data).unwrap_err().to_string();
            assert!(e.contains("unreadable record header"), "{e}");
            assert_eq!(parse(&data).0.len(), 1, "recovery stops at the same record");
        }
        // A sequence that wraps around is out of order, not an overflow.
        let mut data = frame(&marker(u64::MAX), None);
        data.extend_from_slice(&frame(&marker(0), None));
        let e = raw(&data).unwrap_err().to_string();
        assert!(e.contains("out of order"), "{e}");
    }

    proptest::proptest! {
        /// Frames with right checksums around records with random fields: both readings
        /// answer, and agree on a log they both accept.
        #[test]
        fn checksummed_frames_with_any_fields_read_or_refuse(
            frames in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 40..120),
                 0u8..6, proptest::option::of(proptest::prelude::any::<u32>())),
                1..6),
        ) {
            let mut data = Vec::new();
            for (i, (mut rec, kind, len)) in frames.into_iter().enumerate() {
                rec[0] = kind;
                rec[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                rec[16..24].copy_from_slice(&0i64.to_le_bytes());
                let payload = (rec.len() - segment::RECORD_HEADER) as u64;
                rec[32..40].copy_from_slice(&payload.to_le_bytes());
                data.extend_from_slice(&frame(&rec, len));
            }
            let (records, dropped) = parse(&data);
            if let Ok(log) = raw(&data) {
                proptest::prop_assert_eq!(dropped, 0);
                proptest::prop_assert_eq!(log.count as usize, records.len());
            }
        }
    }
}
