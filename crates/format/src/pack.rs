//! Chunk packs: many compressed chunks in one object, so request counts stay bounded.
//!
//! Layout: header (magic, version, pack id), then each chunk as one zstd frame, then an index
//! of `(hash, offset, len, raw_len)` for every chunk, its entry count, and the BLAKE3 trailer.
//! Readers normally fetch one chunk with a ranged read using the offset and length kept in the
//! block map; the index lets `verify` and garbage collection read a pack on its own.
//! Spec: `docs/formats/pack.md`.

use crate::codec::{Reader, Writer, open_frame};
use crate::{Digest, FormatError};

const FORMAT: &str = "pack";
pub const MAGIC: &[u8; 8] = b"FERRYPAK";
pub const VERSION: u16 = 1;
/// Bytes before the first chunk.
pub const HEADER_LEN: usize = 8 + 2 + 8;

/// One chunk's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub hash: Digest,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

/// Builds one pack in memory.
pub struct PackBuilder {
    id: u64,
    w: Writer,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(id: u64) -> Self {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u64(id);
        PackBuilder {
            id,
            w,
            entries: Vec::new(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.w.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add a chunk already compressed with zstd; returns its entry.
    pub fn push_compressed(&mut self, hash: Digest, compressed: &[u8], raw_len: u32) -> PackEntry {
        let e = PackEntry {
            hash,
            offset: self.w.buf.len() as u32,
            len: compressed.len() as u32,
            raw_len,
        };
        self.w.bytes(compressed);
        self.entries.push(e);
        e
    }

    /// Finish the pack: index, count, trailer.
    pub fn finish(mut self) -> Vec<u8> {
        for e in &self.entries {
            self.w.bytes(&e.hash.0);
            self.w.u32(e.offset);
            self.w.u32(e.len);
            self.w.u32(e.raw_len);
        }
        self.w.u32(self.entries.len() as u32);
        self.w.finish()
    }
}

/// Compress one chunk for a pack.
pub fn compress_chunk(raw: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    zstd::bulk::compress(raw, level)
        .map_err(|e| FormatError::invalid(FORMAT, format!("compress: {e}")))
}

/// Decompress one chunk fetched by a ranged read and check it against its hash.
pub fn open_chunk(
    compressed: &[u8],
    hash: &Digest,
    raw_len: usize,
) -> Result<Vec<u8>, FormatError> {
    let raw = zstd::bulk::decompress(compressed, raw_len)
        .map_err(|e| FormatError::invalid(FORMAT, format!("decompress chunk {hash:?}: {e}")))?;
    if Digest::of(&raw) != *hash {
        return Err(FormatError::invalid(
            FORMAT,
            format!("chunk {hash:?} does not match its hash"),
        ));
    }
    Ok(raw)
}

/// Decode a whole pack's index (verifying the trailer).
pub fn decode_index(data: &[u8]) -> Result<(u64, Vec<PackEntry>), FormatError> {
    let mut r = open_frame(FORMAT, MAGIC, VERSION, data)?;
    let id = r.u64()?;
    let body = r.data;
    if body.len() < HEADER_LEN + 4 {
        return Err(FormatError::Truncated {
            format: FORMAT,
            len: data.len(),
        });
    }
    let count = u32::from_le_bytes(body[body.len() - 4..].try_into().unwrap_or_default()) as usize;
    let index_len = count
        .checked_mul(44)
        .filter(|&l| l + 4 + HEADER_LEN <= body.len())
        .ok_or_else(|| FormatError::invalid(FORMAT, "index does not fit in the pack"))?;
    let mut ir = Reader {
        format: FORMAT,
        data: &body[body.len() - 4 - index_len..body.len() - 4],
        pos: 0,
    };
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let e = PackEntry {
            hash: ir.digest()?,
            offset: ir.u32()?,
            len: ir.u32()?,
            raw_len: ir.u32()?,
        };
        if e.offset as usize + e.len as usize > body.len() - 4 - index_len {
            return Err(FormatError::invalid(
                FORMAT,
                "an entry points outside the chunk area",
            ));
        }
        entries.push(e);
    }
    Ok((id, entries))
}

/// The object name of a pack.
pub fn object_name(id: u64) -> String {
    format!("{id:016x}.pack")
}
