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
/// Bytes of one index entry.
pub const ENTRY_LEN: usize = 32 + 4 + 4 + 4;
/// Largest uncompressed chunk: one block.
pub const MAX_CHUNK_LEN: u64 = crate::BLOCK_SIZE;

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
    if raw_len as u64 > MAX_CHUNK_LEN {
        return Err(FormatError::invalid(
            FORMAT,
            format!(
                "chunk {hash:?}: raw_len {raw_len} is over the largest chunk ({MAX_CHUNK_LEN} bytes)"
            ),
        ));
    }
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
    // Bounded by the bytes between the header and `count` before anything is allocated.
    let room = (body.len() - HEADER_LEN - 4) / ENTRY_LEN;
    if count > room {
        return Err(FormatError::invalid(
            FORMAT,
            format!("count {count} is more entries than the index has room for ({room})"),
        ));
    }
    let index_len = count * ENTRY_LEN;
    let chunk_end = body.len() - 4 - index_len;
    let mut ir = Reader {
        format: FORMAT,
        data: &body[chunk_end..body.len() - 4],
        pos: 0,
    };
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let e = PackEntry {
            hash: ir.digest()?,
            offset: ir.u32()?,
            len: ir.u32()?,
            raw_len: ir.u32()?,
        };
        if (e.offset as usize) < HEADER_LEN || e.offset as usize + e.len as usize > chunk_end {
            return Err(FormatError::invalid(
                FORMAT,
                format!(
                    "entry {i}: offset {} + len {} lies outside the chunk area [{HEADER_LEN}, {chunk_end})",
                    e.offset, e.len
                ),
            ));
        }
        if u64::from(e.raw_len) > MAX_CHUNK_LEN {
            return Err(FormatError::invalid(
                FORMAT,
                format!(
                    "entry {i}: raw_len {} is over the largest chunk ({MAX_CHUNK_LEN} bytes)",
                    e.raw_len
                ),
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

/// Recompute the trailer of a pack whose chunk area was changed in place, and check that its
/// index still decodes. The old trailer is ignored: a damaged chunk is what breaks it.
pub fn reseal(data: &[u8]) -> Result<Vec<u8>, FormatError> {
    let body_len = data.len().checked_sub(32).ok_or(FormatError::Truncated {
        format: FORMAT,
        len: data.len(),
    })?;
    let mut out = data.to_vec();
    let d = Digest::of(&out[..body_len]);
    out[body_len..].copy_from_slice(&d.0);
    decode_index(&out)?;
    Ok(out)
}

/// Put `compressed` back at `offset` of a pack (a repair of a damaged chunk) and reseal it.
/// The chunk keeps its place: the index must still decode and hold the entry
/// `(hash, offset, compressed.len())`, so map pages that point at `(offset, len)` stay valid.
pub fn patch_chunk(
    data: &[u8],
    hash: &Digest,
    offset: u32,
    compressed: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let start = offset as usize;
    let end = start + compressed.len();
    if start < HEADER_LEN || end + 32 > data.len() {
        return Err(FormatError::invalid(
            FORMAT,
            format!(
                "chunk at {offset}+{} lies outside the pack",
                compressed.len()
            ),
        ));
    }
    let mut patched = data.to_vec();
    patched[start..end].copy_from_slice(compressed);
    let out = reseal(&patched)?;
    let (_, entries) = decode_index(&out)?;
    if !entries
        .iter()
        .any(|e| e.hash == *hash && e.offset == offset && e.len as usize == compressed.len())
    {
        return Err(FormatError::invalid(
            FORMAT,
            format!(
                "the index has no entry for chunk {hash:?} at {offset}+{}; the index is damaged too",
                compressed.len()
            ),
        ));
    }
    Ok(out)
}

/// Rebuild a lost pack from chunks at their recorded places (`entries` with their compressed
/// bytes, any order). Gaps — chunks that no retained point uses, whose content is unknown —
/// are zero-filled and left out of the index; the index follows the last chunk given.
pub fn rebuild(id: u64, chunks: &[(PackEntry, Vec<u8>)]) -> Result<Vec<u8>, FormatError> {
    let mut sorted: Vec<&(PackEntry, Vec<u8>)> = chunks.iter().collect();
    sorted.sort_by_key(|(e, _)| e.offset);
    let mut w = Writer::with_header(MAGIC, VERSION);
    w.u64(id);
    for (e, z) in &sorted {
        let at = e.offset as usize;
        if z.len() != e.len as usize {
            return Err(FormatError::invalid(
                FORMAT,
                format!(
                    "chunk {:?} is {} bytes, its entry says {}",
                    e.hash,
                    z.len(),
                    e.len
                ),
            ));
        }
        if at < w.buf.len() {
            return Err(FormatError::invalid(
                FORMAT,
                format!("chunk {:?} at {at}+{} overlaps another", e.hash, e.len),
            ));
        }
        w.buf.resize(at, 0);
        w.bytes(z);
    }
    for (e, _) in &sorted {
        w.bytes(&e.hash.0);
        w.u32(e.offset);
        w.u32(e.len);
        w.u32(e.raw_len);
    }
    w.u32(sorted.len() as u32);
    Ok(w.finish())
}

#[cfg(test)]
mod repair_tests {
    use super::*;

    fn pack_of(blocks: &[u8]) -> (Vec<u8>, Vec<(PackEntry, Vec<u8>)>) {
        let mut b = PackBuilder::new(7);
        let mut chunks = Vec::new();
        for &v in blocks {
            let raw = vec![v; 65536];
            let z = compress_chunk(&raw, 1).unwrap();
            chunks.push((b.push_compressed(Digest::of(&raw), &z, 65536), z));
        }
        (b.finish(), chunks)
    }

    #[test]
    fn a_patched_chunk_keeps_its_place_and_the_pack_verifies_again() {
        let (good, chunks) = pack_of(&[1, 2, 3]);
        let (e, z) = &chunks[1];
        let mut bad = good.clone();
        bad[e.offset as usize + 3] ^= 0xff;
        assert!(decode_index(&bad).is_err());
        let fixed = patch_chunk(&bad, &e.hash, e.offset, z).unwrap();
        assert_eq!(fixed, good);
        let wrong_len = patch_chunk(&bad, &e.hash, e.offset, &z[..z.len() - 1]);
        assert!(wrong_len.is_err(), "a chunk of another length must not fit");
    }

    #[test]
    fn a_rebuilt_pack_serves_every_chunk_at_its_old_offset() {
        let (_, chunks) = pack_of(&[4, 5, 6]);
        let kept = [chunks[0].clone(), chunks[2].clone()];
        let rebuilt = rebuild(7, &kept).unwrap();
        let (id, entries) = decode_index(&rebuilt).unwrap();
        assert_eq!((id, entries.len()), (7, 2));
        for (e, z) in &kept {
            let at = e.offset as usize;
            assert_eq!(&rebuilt[at..at + z.len()], z.as_slice());
            open_chunk(&rebuilt[at..at + z.len()], &e.hash, 65536).unwrap();
        }
    }
}
