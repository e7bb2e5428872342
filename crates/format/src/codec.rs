//! Little-endian readers and writers, and the common frame: magic, version, ..., BLAKE3 trailer.

use std::fmt;

use crate::FormatError;

/// A BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub const ZERO: Digest = Digest([0; 32]);

    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Appends little-endian fields to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_header(magic: &[u8; 8], version: u16) -> Self {
        let mut w = Writer { buf: Vec::new() };
        w.bytes(magic);
        w.u16(version);
        w
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Append the BLAKE3 digest of everything written so far and return the whole object.
    pub fn finish(self) -> Vec<u8> {
        seal(self.buf)
    }
}

/// Reads little-endian fields, failing with `Truncated` past the end.
pub(crate) struct Reader<'a> {
    pub format: &'static str,
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(FormatError::Truncated {
                format: self.format,
                len: self.data.len(),
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn digest(&mut self) -> Result<Digest, FormatError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.take(32)?);
        Ok(Digest(d))
    }
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

/// Check the frame of an object: length, magic, version, then the BLAKE3 trailer. Returns a reader
/// positioned after the version, over the object without its trailer.
pub(crate) fn open_frame<'a>(
    format: &'static str,
    magic: &[u8; 8],
    version: u16,
    data: &'a [u8],
) -> Result<Reader<'a>, FormatError> {
    open_frame_versions(format, magic, version..=version, data).map(|(r, _)| r)
}

/// As [`open_frame`] for a format that reads several versions; also returns the version.
pub(crate) fn open_frame_versions<'a>(
    format: &'static str,
    magic: &[u8; 8],
    versions: std::ops::RangeInclusive<u16>,
    data: &'a [u8],
) -> Result<(Reader<'a>, u16), FormatError> {
    let version = *versions.end();
    if data.len() < 8 + 2 + 32 {
        return Err(FormatError::Truncated {
            format,
            len: data.len(),
        });
    }
    if &data[..8] != magic {
        return Err(FormatError::BadMagic { format });
    }
    let v = u16::from_le_bytes([data[8], data[9]]);
    if !versions.contains(&v) {
        return Err(FormatError::UnsupportedVersion {
            format,
            version: v,
            supported: version,
        });
    }
    let (body, trailer) = data.split_at(data.len() - 32);
    if Digest::of(body).0 != trailer {
        return Err(FormatError::Checksum { format });
    }
    let r = Reader {
        format,
        data: body,
        pos: 10,
    };
    Ok((r, v))
}

/// Append the BLAKE3 trailer to `body` (everything of an object before its trailer), making a
/// whole object. Public so tests and fuzz targets can build objects whose checksum is right
/// and reach the checks behind it; the encoders use it too.
pub fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let d = Digest::of(&body);
    body.extend_from_slice(&d.0);
    body
}

/// The digest an object carries as its trailer (its identity in a chain), without verifying.
pub fn trailer_digest(data: &[u8]) -> Option<Digest> {
    let t = data.len().checked_sub(32)?;
    let mut d = [0u8; 32];
    d.copy_from_slice(&data[t..]);
    Some(Digest(d))
}
