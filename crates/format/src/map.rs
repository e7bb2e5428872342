//! Block-map pages: which chunk holds each block of a disk.
//!
//! A disk's map is a list of pages, each covering [`ENTRIES_PER_PAGE`] blocks of
//! [`crate::BLOCK_SIZE`] bytes. Pages are content-addressed (named by the digest of their
//! encoding), so recovery points share every page they did not change.
//! Spec: `docs/formats/map-page.md`.

use crate::codec::{Reader, Writer, open_frame};
use crate::{Digest, FormatError};

const FORMAT: &str = "map page";
pub const MAGIC: &[u8; 8] = b"FERRYMAP";
pub const VERSION: u16 = 1;
/// Blocks covered by one page (64 MiB of disk at 64 KiB blocks).
pub const ENTRIES_PER_PAGE: usize = 1024;
const ENTRY_LEN: usize = 48;

/// Where one block's bytes live. `hash == Digest::ZERO` means the block reads as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the block's uncompressed bytes.
    pub hash: Digest,
    /// Pack object holding the chunk.
    pub pack: u64,
    /// Byte offset of the compressed chunk inside the pack.
    pub offset: u32,
    /// Compressed length.
    pub len: u32,
}

impl ChunkRef {
    pub const ZERO: ChunkRef = ChunkRef {
        hash: Digest::ZERO,
        pack: 0,
        offset: 0,
        len: 0,
    };

    pub fn is_zero(&self) -> bool {
        self.hash == Digest::ZERO
    }
}

/// Encode a page; returns the bytes and the digest that names it.
pub fn encode(entries: &[ChunkRef]) -> Result<(Vec<u8>, Digest), FormatError> {
    if entries.len() > ENTRIES_PER_PAGE {
        return Err(FormatError::invalid(FORMAT, "too many entries"));
    }
    let mut raw = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        raw.extend_from_slice(&e.hash.0);
        raw.extend_from_slice(&e.pack.to_le_bytes());
        raw.extend_from_slice(&e.offset.to_le_bytes());
        raw.extend_from_slice(&e.len.to_le_bytes());
    }
    let body = zstd::bulk::compress(&raw, 1)
        .map_err(|e| FormatError::invalid(FORMAT, format!("compress: {e}")))?;
    let mut w = Writer::with_header(MAGIC, VERSION);
    w.u32(entries.len() as u32);
    w.bytes(&body);
    let bytes = w.finish();
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

/// Decode and verify a page; `expected` is the digest it was named by.
pub fn decode(data: &[u8], expected: &Digest) -> Result<Vec<ChunkRef>, FormatError> {
    let mut r = open_frame(FORMAT, MAGIC, VERSION, data)?;
    if Digest::of(data) != *expected {
        return Err(FormatError::invalid(
            FORMAT,
            "content does not match its name",
        ));
    }
    let count = r.u32()? as usize;
    if count > ENTRIES_PER_PAGE {
        return Err(FormatError::invalid(FORMAT, "too many entries"));
    }
    let body = r.take(r.remaining())?;
    let raw = zstd::bulk::decompress(body, count * ENTRY_LEN)
        .map_err(|e| FormatError::invalid(FORMAT, format!("decompress: {e}")))?;
    if raw.len() != count * ENTRY_LEN {
        return Err(FormatError::invalid(
            FORMAT,
            "entry bytes do not match the count",
        ));
    }
    let mut rr = Reader {
        format: FORMAT,
        data: &raw,
        pos: 0,
    };
    (0..count)
        .map(|_| {
            Ok(ChunkRef {
                hash: rr.digest()?,
                pack: rr.u64()?,
                offset: rr.u32()?,
                len: rr.u32()?,
            })
        })
        .collect()
}

/// The object name of a page.
pub fn object_name(digest: &Digest) -> String {
    format!("{}.page", digest.to_hex())
}
