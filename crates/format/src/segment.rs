//! Segments: immutable slices of one protected item's ordered write stream.
//!
//! A segment holds consecutive records (`first_seq..=last_seq`, no gaps) of every disk of the
//! item, in the order the writes were acknowledged, zstd-compressed, chained to the previous
//! segment by its digest. Spec: `docs/formats/segment.md`.

use ferry_types::{Generation, Seq, StreamId, Timestamp};

use crate::codec::{Reader, Writer, open_frame};
use crate::{Digest, FormatError};

const FORMAT: &str = "segment";
pub const MAGIC: &[u8; 8] = b"FERRYSEG";
pub const VERSION: u16 = 1;
/// Largest payload of one write record (the NBD limit).
pub const MAX_RECORD_LEN: u64 = 32 << 20;
/// Bytes of a record before its payload.
pub const RECORD_HEADER: usize = 40;
/// Largest body a segment may declare (sealing cuts segments far smaller).
pub const MAX_RAW_LEN: u64 = 1 << 30;
/// Most bytes one byte of a zstd frame can expand to: a block holds at most 128 KiB and takes
/// at least 4 bytes (an RLE block). A declared length past this cannot be the frame's.
pub const MAX_COMPRESSION_RATIO: u64 = (128 << 10) / 4;

/// What a marker says about the instant it was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    /// Every write acknowledged before the marker is before it in the stream.
    CrashConsistent = 1,
    /// As crash-consistent, and the guest was quiesced.
    AppConsistent = 2,
    /// The initial copy of the disks ends here.
    InitialSyncDone = 3,
    /// The agent's ship buffer overflowed: writes after this marker were tracked in a dirty
    /// bitmap and arrive as block copies, out of order, until [`MarkerKind::CatchUpDone`].
    /// No instant in between is a consistent image of the disks.
    Overflow = 4,
    /// Every block dirtied since the last [`MarkerKind::Overflow`] has been copied: the replica
    /// is a consistent image again here.
    CatchUpDone = 5,
}

impl MarkerKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::CrashConsistent),
            2 => Some(Self::AppConsistent),
            3 => Some(Self::InitialSyncDone),
            4 => Some(Self::Overflow),
            5 => Some(Self::CatchUpDone),
            _ => None,
        }
    }
}

/// What one record does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    Trim { offset: u64, len: u64 },
    Marker(MarkerKind),
}

/// One entry of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    /// When the write was sequenced (just before it was acknowledged).
    pub time: Timestamp,
    /// Index of the disk within the item; 0 for markers.
    pub disk: u16,
    pub op: Op,
}

impl Record {
    /// Payload bytes this record carries.
    pub fn data_len(&self) -> usize {
        match &self.op {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// The fixed fields of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub stream: StreamId,
    pub generation: Generation,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    /// Digest of the previous segment of the stream; zero for the first.
    pub prev_digest: Digest,
    pub record_count: u32,
    /// Size of the records before compression.
    pub raw_len: u64,
}

/// A decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub records: Vec<Record>,
    /// This segment's own digest (its trailer), which the next segment names.
    pub digest: Digest,
}

/// The object name of the segment starting at `first_seq`: names sort by sequence.
pub fn object_name(first_seq: Seq) -> String {
    format!("{:016x}.seg", first_seq.0)
}

/// Parse an object name made by [`object_name`].
pub fn parse_object_name(name: &str) -> Option<Seq> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16).then_some(())?;
    u64::from_str_radix(hex, 16).ok().map(Seq)
}

/// Encode records (which must be non-empty, consecutive and time-ordered) as a segment.
/// Returns the object bytes and its digest.
pub fn encode(
    stream: StreamId,
    generation: Generation,
    prev_digest: Digest,
    records: &[Record],
    zstd_level: i32,
) -> Result<(Vec<u8>, Digest), FormatError> {
    check_order(records)?;
    let mut raw = Vec::with_capacity(records.iter().map(|r| RECORD_HEADER + r.data_len()).sum());
    for r in records {
        encode_record(&mut raw, r);
    }
    let (first, last) = (&records[0], &records[records.len() - 1]);
    let body = RawBody {
        raw: &raw,
        count: records.len() as u32,
        first: (first.seq, first.time),
        last: (last.seq, last.time),
    };
    encode_raw(stream, generation, prev_digest, &body, zstd_level)
}

/// Records already in the body encoding, with the facts the header states about them.
pub struct RawBody<'a> {
    pub raw: &'a [u8],
    pub count: u32,
    pub first: (Seq, Timestamp),
    pub last: (Seq, Timestamp),
}

/// Encode a segment from records already in the body encoding (the agent's log holds them so).
/// The caller vouches for their order; decoding checks it again.
pub fn encode_raw(
    stream: StreamId,
    generation: Generation,
    prev_digest: Digest,
    body: &RawBody<'_>,
    zstd_level: i32,
) -> Result<(Vec<u8>, Digest), FormatError> {
    let mut encoder = RawEncoder::new(zstd_level)?;
    let mut segment = encoder.start(body.raw.len() as u64)?;
    segment.push(body.raw)?;
    segment.finish(
        stream,
        generation,
        prev_digest,
        body.count,
        body.first,
        body.last,
    )
}

/// Encodes segments from records pushed in pieces, as [`encode_raw`] does from a whole body:
/// the agent streams each sealed log through it without assembling the body, and keeps one
/// compression context for every segment.
pub struct RawEncoder {
    zstd: zstd::zstd_safe::CCtx<'static>,
}

impl RawEncoder {
    pub fn new(zstd_level: i32) -> Result<RawEncoder, FormatError> {
        let mut zstd = zstd::zstd_safe::CCtx::try_create()
            .ok_or_else(|| FormatError::invalid(FORMAT, "create a compression context"))?;
        zstd.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(zstd_level))
            .map_err(compress_error)?;
        Ok(RawEncoder { zstd })
    }

    /// Start a segment whose records take exactly `raw_len` bytes in the body encoding.
    pub fn start(&mut self, raw_len: u64) -> Result<RawSegment<'_>, FormatError> {
        if raw_len > MAX_RAW_LEN {
            return Err(FormatError::invalid(FORMAT, "the records are too long"));
        }
        self.zstd
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(compress_error)?;
        self.zstd
            .set_pledged_src_size(Some(raw_len))
            .map_err(compress_error)?;
        // Room for the header, the compressed records however they compress, and the trailer:
        // the object is built in place.
        let bound = zstd::zstd_safe::compress_bound(raw_len as usize);
        let mut out = Vec::with_capacity(HEADER_LEN + bound + 32);
        out.resize(HEADER_LEN, 0);
        Ok(RawSegment {
            zstd: &mut self.zstd,
            out,
            raw_len,
        })
    }
}

/// A segment being encoded by a [`RawEncoder`].
pub struct RawSegment<'a> {
    zstd: &'a mut zstd::zstd_safe::CCtx<'static>,
    out: Vec<u8>,
    raw_len: u64,
}

impl RawSegment<'_> {
    /// Add the next records (in the body encoding; a piece may end inside a record).
    pub fn push(&mut self, records: &[u8]) -> Result<(), FormatError> {
        let mut input = zstd::zstd_safe::InBuffer::around(records);
        while input.pos() < records.len() {
            self.reserve();
            let pos = self.out.len();
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut self.out, pos);
            self.zstd
                .compress_stream2(
                    &mut output,
                    &mut input,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue,
                )
                .map_err(compress_error)?;
        }
        Ok(())
    }

    /// Close the segment: `count` records from `first` to `last` (sequence and time), chained
    /// to `prev_digest`. Returns the object bytes and its digest.
    pub fn finish(
        mut self,
        stream: StreamId,
        generation: Generation,
        prev_digest: Digest,
        count: u32,
        first: (Seq, Timestamp),
        last: (Seq, Timestamp),
    ) -> Result<(Vec<u8>, Digest), FormatError> {
        if count == 0 {
            return Err(FormatError::invalid(
                FORMAT,
                "a segment needs at least one record",
            ));
        }
        loop {
            self.reserve();
            let pos = self.out.len();
            let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut self.out, pos);
            let mut input = zstd::zstd_safe::InBuffer::around(&[]);
            let left = self
                .zstd
                .compress_stream2(
                    &mut output,
                    &mut input,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
                )
                .map_err(compress_error)?;
            if left == 0 {
                break;
            }
        }
        let z_len = (self.out.len() - HEADER_LEN) as u64;
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u16(0); // flags
        w.bytes(&stream.0);
        w.u64(generation.0);
        w.u64(first.0.0);
        w.u64(last.0.0);
        w.i64(first.1.0);
        w.i64(last.1.0);
        w.bytes(&prev_digest.0);
        w.u32(count);
        w.u64(self.raw_len);
        w.u64(z_len);
        debug_assert_eq!(w.buf.len(), HEADER_LEN);
        self.out[..HEADER_LEN].copy_from_slice(&w.buf);
        let digest = Digest::of(&self.out);
        self.out.extend_from_slice(&digest.0);
        if self.out.capacity() > 2 * self.out.len() {
            // Well compressed: do not keep the room reserved for the worst case.
            self.out.shrink_to_fit();
        }
        Ok((self.out, digest))
    }

    /// Keep room for a compression step's output.
    fn reserve(&mut self) {
        let room = zstd::zstd_safe::CCtx::out_size().max(4096);
        if self.out.capacity() - self.out.len() < room {
            self.out.reserve(room);
        }
    }
}

fn compress_error(code: usize) -> FormatError {
    FormatError::invalid(
        FORMAT,
        format!("compress: {}", zstd::zstd_safe::get_error_name(code)),
    )
}

/// Bytes of a segment before its compressed records.
const HEADER_LEN: usize = 8 + 2 + 2 + 16 + 8 + 2 * 8 + 2 * 8 + 32 + 4 + 8 + 8;

/// Sequence, time and total length of the record at the front of `data`, from its header
/// alone (the payload is not read), checked as [`decode`] checks it: a header this accepts
/// is one a segment decodes.
pub fn peek_record(data: &[u8]) -> Result<(Seq, Timestamp, usize), FormatError> {
    let mut r = Reader {
        format: FORMAT,
        data,
        pos: 0,
    };
    let head = decode_record_head(&mut r)?;
    let payload = match head.op {
        Op::Write { .. } => head.len as usize,
        _ => 0,
    };
    Ok((head.seq, head.time, RECORD_HEADER + payload))
}

/// Decode and verify a segment: frame checksum, header, and every record's sequence and order.
pub fn decode(data: &[u8]) -> Result<Segment, FormatError> {
    let mut r = open_frame(FORMAT, MAGIC, VERSION, data)?;
    let header = decode_header(&mut r)?;
    let body_len = r.u64()? as usize;
    if body_len != r.remaining() {
        return Err(FormatError::invalid(
            FORMAT,
            "body length does not match the object size",
        ));
    }
    let body = r.take(body_len)?;
    check_counts(&header, body)?;
    let raw = zstd::bulk::decompress(body, header.raw_len as usize)
        .map_err(|e| FormatError::invalid(FORMAT, format!("decompress records: {e}")))?;
    if raw.len() as u64 != header.raw_len {
        return Err(FormatError::invalid(
            FORMAT,
            "records are shorter than declared",
        ));
    }
    let mut rr = Reader {
        format: FORMAT,
        data: &raw,
        pos: 0,
    };
    // Bounded by `check_counts`: every record takes at least a header of the body.
    let mut records = Vec::with_capacity(header.record_count as usize);
    while rr.remaining() > 0 {
        records.push(decode_record(&mut rr)?);
    }
    if records.len() != header.record_count as usize {
        return Err(FormatError::invalid(
            FORMAT,
            "record count does not match the header",
        ));
    }
    check_order(&records)?;
    let (first, last) = (&records[0], &records[records.len() - 1]);
    if first.seq != header.first_seq || last.seq != header.last_seq {
        return Err(FormatError::invalid(
            FORMAT,
            "sequence range does not match the records",
        ));
    }
    if first.time != header.first_time || last.time != header.last_time {
        return Err(FormatError::invalid(
            FORMAT,
            "time range does not match the records",
        ));
    }
    let digest = crate::codec::trailer_digest(data).unwrap_or_default();
    Ok(Segment {
        header,
        records,
        digest,
    })
}

/// Bound the header's counts by what the object can hold, before anything is allocated for
/// them: `raw_len` by [`MAX_RAW_LEN`], by what `record_count` records can take, and by what the
/// compressed body can expand to (and by the size the zstd frame declares, if it does);
/// `record_count` by the record headers `raw_len` has room for.
fn check_counts(header: &SegmentHeader, body: &[u8]) -> Result<(), FormatError> {
    let (count, raw_len) = (u64::from(header.record_count), header.raw_len);
    let invalid = |what: String| Err(FormatError::invalid(FORMAT, what));
    if count == 0 {
        return invalid("record_count is 0; a segment needs at least one record".into());
    }
    if raw_len > MAX_RAW_LEN {
        return invalid(format!(
            "raw_len {raw_len} is over the largest body ({MAX_RAW_LEN} bytes)"
        ));
    }
    if count > raw_len / RECORD_HEADER as u64 {
        return invalid(format!(
            "record_count {count} cannot fit in raw_len {raw_len} ({RECORD_HEADER} bytes at least per record)"
        ));
    }
    if raw_len > count * (MAX_RECORD_LEN + RECORD_HEADER as u64) {
        return invalid(format!(
            "raw_len {raw_len} is more than {count} records can hold"
        ));
    }
    if raw_len > (body.len() as u64).saturating_mul(MAX_COMPRESSION_RATIO) {
        return invalid(format!(
            "raw_len {raw_len} is more than a body of {} bytes can expand to",
            body.len()
        ));
    }
    // Writers declare the size in the frame; a frame that does not is bounded by the checks
    // above alone.
    match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(None) => Ok(()),
        Ok(Some(n)) if n == raw_len => Ok(()),
        Ok(Some(n)) => invalid(format!(
            "the body's zstd frame declares {n} bytes, raw_len says {raw_len}"
        )),
        Err(_) => invalid("the body does not start with a zstd frame header".into()),
    }
}

fn decode_header(r: &mut Reader<'_>) -> Result<SegmentHeader, FormatError> {
    let _flags = r.u16()?;
    let mut stream = [0u8; 16];
    stream.copy_from_slice(r.take(16)?);
    Ok(SegmentHeader {
        stream: StreamId(stream),
        generation: Generation(r.u64()?),
        first_seq: Seq(r.u64()?),
        last_seq: Seq(r.u64()?),
        first_time: Timestamp(r.i64()?),
        last_time: Timestamp(r.i64()?),
        prev_digest: r.digest()?,
        record_count: r.u32()?,
        raw_len: r.u64()?,
    })
}

fn check_order(records: &[Record]) -> Result<(), FormatError> {
    if records.is_empty() {
        return Err(FormatError::invalid(
            FORMAT,
            "a segment needs at least one record",
        ));
    }
    for pair in records.windows(2) {
        if pair[0].seq.0.checked_add(1) != Some(pair[1].seq.0) {
            return Err(FormatError::invalid(
                FORMAT,
                format!("sequence gap between {} and {}", pair[0].seq, pair[1].seq),
            ));
        }
        if pair[1].time < pair[0].time {
            return Err(FormatError::invalid(
                FORMAT,
                format!("time goes backwards at sequence {}", pair[1].seq),
            ));
        }
    }
    Ok(())
}

/// A record's operation with borrowed data, for encoding without a copy.
#[derive(Debug, Clone, Copy)]
pub enum OpRef<'a> {
    Write { offset: u64, data: &'a [u8] },
    Zero { offset: u64, len: u64 },
    Trim { offset: u64, len: u64 },
    Marker(MarkerKind),
}

impl Op {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Write { offset, data } => OpRef::Write {
                offset: *offset,
                data,
            },
            Op::Zero { offset, len } => OpRef::Zero {
                offset: *offset,
                len: *len,
            },
            Op::Trim { offset, len } => OpRef::Trim {
                offset: *offset,
                len: *len,
            },
            Op::Marker(m) => OpRef::Marker(*m),
        }
    }
}

/// Append one record in the segment body encoding (also used by the agent's local log).
pub fn encode_record(out: &mut Vec<u8>, r: &Record) {
    encode_record_ref(out, r.seq, r.time, r.disk, r.op.as_ref());
}

/// Append one record given as parts.
pub fn encode_record_ref(out: &mut Vec<u8>, seq: Seq, time: Timestamp, disk: u16, op: OpRef<'_>) {
    encode_record_header(out, seq, time, disk, op);
    if let OpRef::Write { data, .. } = op {
        out.extend_from_slice(data);
    }
}

/// Append a record's 40-byte header only; a write's payload must follow it.
pub fn encode_record_header(
    out: &mut Vec<u8>,
    seq: Seq,
    time: Timestamp,
    disk: u16,
    op: OpRef<'_>,
) {
    let (kind, sub, offset, len) = match op {
        OpRef::Write { offset, data } => (1u8, 0u8, offset, data.len() as u64),
        OpRef::Zero { offset, len } => (2, 0, offset, len),
        OpRef::Trim { offset, len } => (3, 0, offset, len),
        OpRef::Marker(m) => (4, m as u8, 0, 0),
    };
    out.push(kind);
    out.push(sub);
    out.extend_from_slice(&disk.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(&time.0.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Decode one record from the front of `data`; returns it and the bytes it took.
pub fn decode_record_prefix(data: &[u8]) -> Result<(Record, usize), FormatError> {
    let mut r = Reader {
        format: FORMAT,
        data,
        pos: 0,
    };
    let rec = decode_record(&mut r)?;
    Ok((rec, r.pos))
}

/// A record's header, checked; a write's `op` has no data yet (`len` bytes follow).
struct RecordHead {
    seq: Seq,
    time: Timestamp,
    disk: u16,
    len: u64,
    op: Op,
}

fn decode_record_head(r: &mut Reader<'_>) -> Result<RecordHead, FormatError> {
    let kind = r.u8()?;
    let sub = r.u8()?;
    let disk = r.u16()?;
    let _reserved = r.u32()?;
    let seq = Seq(r.u64()?);
    let time = Timestamp(r.i64()?);
    let offset = r.u64()?;
    let len = r.u64()?;
    if offset.checked_add(len).is_none() {
        return Err(FormatError::invalid(
            FORMAT,
            format!("record {seq}: extent overflows"),
        ));
    }
    let op = match kind {
        1 => {
            if len > MAX_RECORD_LEN {
                return Err(FormatError::invalid(
                    FORMAT,
                    format!("record {seq}: write too large"),
                ));
            }
            Op::Write {
                offset,
                data: Vec::new(),
            }
        }
        2 => Op::Zero { offset, len },
        3 => Op::Trim { offset, len },
        4 => Op::Marker(MarkerKind::from_u8(sub).ok_or_else(|| {
            FormatError::invalid(FORMAT, format!("record {seq}: unknown marker kind {sub}"))
        })?),
        k => {
            return Err(FormatError::invalid(
                FORMAT,
                format!("record {seq}: unknown kind {k}"),
            ));
        }
    };
    Ok(RecordHead {
        seq,
        time,
        disk,
        len,
        op,
    })
}

fn decode_record(r: &mut Reader<'_>) -> Result<Record, FormatError> {
    let RecordHead {
        seq,
        time,
        disk,
        len,
        mut op,
    } = decode_record_head(r)?;
    if let Op::Write { data, .. } = &mut op {
        *data = r.take(len as usize)?.to_vec();
    }
    Ok(Record {
        seq,
        time,
        disk,
        op,
    })
}

#[cfg(test)]
mod tests;
