//! Recovery-point records: the small object whose create-only write publishes a point.
//!
//! A record names, for each disk of the item, the root of its block map at the point's
//! instant. Checkpoints use the same record with kind [`PointKind::Checkpoint`]: they are the
//! processor's own restart positions and are never shown to users.
//! Spec: `docs/formats/recovery-point.md`.

use ferry_types::{Generation, Seq, StreamId, Timestamp};

use crate::codec::{Writer, open_frame_versions};
use crate::{Digest, FormatError};

const FORMAT: &str = "recovery point";
pub const MAGIC: &[u8; 8] = b"FERRYRPT";
pub const VERSION: u16 = 3;
/// The oldest version still read (version 1 has no `catch_up_seq`; versions 1 and 2 list every
/// page of a flat block map).
const OLDEST: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointKind {
    CrashConsistent = 1,
    AppConsistent = 2,
    Checkpoint = 3,
}

impl PointKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::CrashConsistent),
            2 => Some(Self::AppConsistent),
            3 => Some(Self::Checkpoint),
            _ => None,
        }
    }

    /// The name users see (`crash-consistent`, `app-consistent`, `checkpoint`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CrashConsistent => "crash-consistent",
            Self::AppConsistent => "app-consistent",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// One disk's block map at the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMap {
    pub size: u64,
    pub map: MapRoot,
}

/// How a record names a disk's block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapRoot {
    /// Every page of a flat map, [`crate::map::FLAT_PAGE_ENTRIES`] blocks each, in block order
    /// (records before version 3).
    Pages(Vec<Digest>),
    /// The root node of the disk's map tree ([`crate::map::tree_shape`]);
    /// [`Digest::ZERO`] when the whole disk reads as zeroes.
    Tree(Digest),
}

const FORM_PAGES: u8 = 1;
const FORM_TREE: u8 = 2;

/// A recovery point (or a checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRecord {
    pub kind: PointKind,
    pub stream: StreamId,
    pub generation: Generation,
    /// Every record up to and including this one is in the point; none after.
    pub seq: Seq,
    /// The instant the point represents.
    pub time: Timestamp,
    /// First sequence of the segment holding `seq`, and that segment's `prev_digest`:
    /// where processing resumes from this point.
    pub segment_first_seq: Seq,
    pub segment_prev_digest: Digest,
    /// Sequence of the record that ended the initial copy, once it has been applied.
    pub initial_sync_seq: Option<Seq>,
    /// Sequence of the overflow marker of a catch-up still in progress: from there until its
    /// catch-up-done marker the replica is not a consistent image.
    pub catch_up_seq: Option<Seq>,
    pub disks: Vec<DiskMap>,
}

impl PointRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u8(self.kind as u8);
        w.bytes(&self.stream.0);
        w.u64(self.generation.0);
        w.u64(self.seq.0);
        w.i64(self.time.0);
        w.u64(self.segment_first_seq.0);
        w.bytes(&self.segment_prev_digest.0);
        w.u64(self.initial_sync_seq.map_or(u64::MAX, |s| s.0));
        w.u16(self.disks.len() as u16);
        for d in &self.disks {
            w.u64(d.size);
            match &d.map {
                MapRoot::Pages(pages) => {
                    w.u8(FORM_PAGES);
                    w.u32(pages.len() as u32);
                    for p in pages {
                        w.bytes(&p.0);
                    }
                }
                MapRoot::Tree(root) => {
                    w.u8(FORM_TREE);
                    w.bytes(&root.0);
                }
            }
        }
        w.u64(self.catch_up_seq.map_or(u64::MAX, |s| s.0));
        w.finish()
    }

    pub fn decode(data: &[u8]) -> Result<Self, FormatError> {
        let (mut r, version) = open_frame_versions(FORMAT, MAGIC, OLDEST..=VERSION, data)?;
        let kind = r.u8()?;
        let kind = PointKind::from_u8(kind)
            .ok_or_else(|| FormatError::invalid(FORMAT, format!("unknown kind {kind}")))?;
        let mut stream = [0u8; 16];
        stream.copy_from_slice(r.take(16)?);
        let generation = Generation(r.u64()?);
        let seq = Seq(r.u64()?);
        let time = Timestamp(r.i64()?);
        let segment_first_seq = Seq(r.u64()?);
        let segment_prev_digest = r.digest()?;
        let initial = r.u64()?;
        let ndisks = r.u16()?;
        // Each disk takes at least its size and an empty page list: bound the count by what
        // is left before allocating for it.
        let min_disk = if version >= 3 { 8 + 1 + 4 } else { 8 + 4 };
        if usize::from(ndisks) > r.remaining() / min_disk {
            return Err(FormatError::invalid(
                FORMAT,
                format!(
                    "disk_count {ndisks} cannot fit in the {} bytes left",
                    r.remaining()
                ),
            ));
        }
        let mut disks = Vec::with_capacity(ndisks as usize);
        for _ in 0..ndisks {
            let size = r.u64()?;
            let form = if version >= 3 { r.u8()? } else { FORM_PAGES };
            let map = match form {
                FORM_PAGES => {
                    let npages = r.u32()? as usize;
                    if npages > r.remaining() / 32 {
                        return Err(FormatError::invalid(
                            FORMAT,
                            format!(
                                "page_count {npages} cannot fit in the {} bytes left",
                                r.remaining()
                            ),
                        ));
                    }
                    MapRoot::Pages((0..npages).map(|_| r.digest()).collect::<Result<_, _>>()?)
                }
                FORM_TREE => MapRoot::Tree(r.digest()?),
                other => {
                    return Err(FormatError::invalid(
                        FORMAT,
                        format!("unknown block-map form {other}"),
                    ));
                }
            };
            disks.push(DiskMap { size, map });
        }
        let catch_up = if version >= 2 { r.u64()? } else { u64::MAX };
        if r.remaining() != 0 {
            return Err(FormatError::invalid(
                FORMAT,
                "trailing bytes after the disks",
            ));
        }
        Ok(PointRecord {
            kind,
            stream: StreamId(stream),
            generation,
            seq,
            time,
            segment_first_seq,
            segment_prev_digest,
            initial_sync_seq: (initial != u64::MAX).then_some(Seq(initial)),
            catch_up_seq: (catch_up != u64::MAX).then_some(Seq(catch_up)),
            disks,
        })
    }

    /// The object name: points and checkpoints sort by sequence.
    pub fn object_name(&self) -> String {
        object_name(self.seq)
    }
}

/// The object name of the point at `seq`.
pub fn object_name(seq: Seq) -> String {
    format!("{:016x}.point", seq.0)
}

/// Parse an object name made by [`object_name`].
pub fn parse_object_name(name: &str) -> Option<Seq> {
    let hex = name.strip_suffix(".point")?;
    (hex.len() == 16).then_some(())?;
    u64::from_str_radix(hex, 16).ok().map(Seq)
}
