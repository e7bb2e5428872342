//! The persisted dirty bitmap of one disk: which 64 KiB blocks changed while the write stream
//! could not hold them (the ship buffer was full).
//!
//! One bit per block, in a file beside the stream's logs (`dirty-<disk>.bitmap`). A bit is
//! written to the file (one `pwrite` of the word that holds it) before the write that set it is
//! acknowledged, so it survives `kill -9`; the file is synced on FUA and FLUSH, so it survives
//! power loss as the writes do. Bits are cleared only in memory while a catch-up copies their
//! blocks: the file is removed once the catch-up is complete and durable in the stream, so a
//! crash in between copies the blocks again (never fewer). Spec: `docs/formats/dirty-bitmap.md`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_format::BLOCK_SIZE;

use crate::AgentError;

pub(crate) const MAGIC: &[u8; 8] = b"FERRYDBM";
pub(crate) const VERSION: u16 = 1;
/// Header: magic, version, six reserved bytes; the bitmap's words follow.
const HEADER: u64 = 16;

/// File name of disk `disk`'s bitmap.
pub(crate) fn file_name(disk: u16) -> String {
    format!("dirty-{disk:04}.bitmap")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u16> {
    name.strip_prefix("dirty-")?
        .strip_suffix(".bitmap")?
        .parse()
        .ok()
}

/// Most blocks a bitmap covers: those of a 256 TiB disk. A longer file is refused unread.
pub(crate) const MAX_BLOCKS: u64 = 1 << 32;
/// The length of the largest bitmap file.
pub(crate) const MAX_FILE_LEN: u64 = HEADER + MAX_BLOCKS / 8;

fn too_long(len: u64) -> String {
    format!(
        "dirty bitmap is {len} bytes, longer than the bitmap of the largest disk \
         ({MAX_FILE_LEN} bytes for {MAX_BLOCKS} blocks)"
    )
}

/// The words of a bitmap file's bytes, or why they are not a bitmap.
pub(crate) fn parse(data: &[u8]) -> Result<Vec<u64>, String> {
    if data.len() < HEADER as usize || &data[..8] != MAGIC {
        return Err("not a dirty bitmap (bad magic)".into());
    }
    if data.len() as u64 > MAX_FILE_LEN {
        return Err(too_long(data.len() as u64));
    }
    let version = u16::from_le_bytes([data[8], data[9]]);
    if version != VERSION {
        return Err(format!(
            "dirty bitmap version {version}; this agent reads version {VERSION}"
        ));
    }
    // A word torn by power loss can only be one that was never synced; it is read as
    // written so far, and the bytes of a partial last word are kept.
    Ok(data[HEADER as usize..]
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect())
}

/// One disk's dirty blocks, in memory and in its file.
pub(crate) struct DirtyMap {
    file: File,
    path: PathBuf,
    words: Vec<u64>,
    /// Set bits.
    count: u64,
    /// A bit was written to the file since the last sync.
    unsynced: bool,
}

impl DirtyMap {
    /// Create the bitmap file of `disk` (empty); given the disk's size, the file's space is
    /// allocated whole, so setting a bit later needs no new space.
    pub fn create(dir: &Path, disk: u16, disk_size: Option<u64>) -> Result<DirtyMap, AgentError> {
        let path = dir.join(file_name(disk));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(AgentError::io("create dirty bitmap", &path))?;
        let mut head = [0u8; HEADER as usize];
        head[..8].copy_from_slice(MAGIC);
        head[8..10].copy_from_slice(&VERSION.to_le_bytes());
        if let Some(size) = disk_size {
            let words = size.div_ceil(BLOCK_SIZE).div_ceil(64);
            crate::reserve::allocate_file(&file, HEADER + words * 8)
                .map_err(AgentError::io("allocate dirty bitmap", &path))?;
        }
        file.write_all_at(&head, 0)
            .map_err(AgentError::io("write dirty bitmap", &path))?;
        Ok(DirtyMap {
            file,
            path,
            words: Vec::new(),
            count: 0,
            unsynced: true,
        })
    }

    /// Open a bitmap left by an earlier run.
    pub fn open(path: &Path) -> Result<DirtyMap, AgentError> {
        let corrupt = |reason: String| AgentError::CorruptLog {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        };
        // Bounded before it is read: the file is never longer than the largest disk's bitmap.
        let len = std::fs::metadata(path)
            .map_err(AgentError::io("read dirty bitmap", path))?
            .len();
        if len > MAX_FILE_LEN {
            return Err(corrupt(too_long(len)));
        }
        let data = std::fs::read(path).map_err(AgentError::io("read dirty bitmap", path))?;
        let words = parse(&data).map_err(corrupt)?;
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(AgentError::io("open dirty bitmap", path))?;
        Ok(DirtyMap {
            file,
            path: path.to_path_buf(),
            words,
            count,
            unsynced: false,
        })
    }

    /// Mark every block of `offset..offset + len` dirty, writing each changed word to the file.
    pub fn set_range(&mut self, offset: u64, len: u64) -> Result<(), AgentError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        let need = (last / 64 + 1) as usize;
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
        let mut changed: Option<(usize, usize)> = None;
        for b in first..=last {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if self.words[w] & (1 << bit) == 0 {
                self.words[w] |= 1 << bit;
                self.count += 1;
                changed = Some(match changed {
                    None => (w, w),
                    Some((a, _)) => (a, w),
                });
            }
        }
        if let Some((a, z)) = changed {
            let bytes: Vec<u8> = self.words[a..=z]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            self.file
                .write_all_at(&bytes, HEADER + a as u64 * 8)
                .map_err(AgentError::io("write dirty bitmap", &self.path))?;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Clear block `block` in memory; true when it was set.
    pub fn take(&mut self, block: u64) -> bool {
        let (w, bit) = ((block / 64) as usize, block % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & (1 << bit) != 0 => {
                *word &= !(1 << bit);
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Set block `block` again in memory after a `take` whose copy failed (the file still
    /// has it).
    pub fn untake(&mut self, block: u64) {
        let (w, bit) = ((block / 64) as usize, block % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & (1 << bit) == 0 {
            self.words[w] |= 1 << bit;
            self.count += 1;
        }
    }

    /// The first set block at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while let Some(&word) = self.words.get(w) {
            let hit = word & mask;
            if hit != 0 {
                return Some(w as u64 * 64 + u64::from(hit.trailing_zeros()));
            }
            w += 1;
            mask = !0;
        }
        None
    }

    /// True when `block` is dirty.
    pub fn is_set(&self, block: u64) -> bool {
        self.words
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    /// Number of dirty blocks.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Make the bits written so far durable.
    pub fn sync(&mut self) -> Result<(), AgentError> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(AgentError::io("sync dirty bitmap", &self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_survive_a_reopen_and_take_clears_only_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = DirtyMap::create(dir.path(), 2, Some(100 * BLOCK_SIZE)).unwrap();
        m.set_range(0, 1).unwrap();
        m.set_range(BLOCK_SIZE * 70 - 1, 2).unwrap(); // blocks 69 and 70
        m.set_range(BLOCK_SIZE * 70, BLOCK_SIZE).unwrap(); // 70 again
        assert_eq!(m.count(), 3);
        assert_eq!(m.next_set(1), Some(69));
        assert_eq!(m.next_set(70), Some(70));
        assert_eq!(m.next_set(71), None);
        assert!(m.take(69));
        assert!(!m.take(69));
        assert_eq!(m.count(), 2);
        m.untake(69);
        assert!(m.take(69), "a block put back is dirty again");
        let path = m.path().to_path_buf();
        drop(m);
        let m = DirtyMap::open(&path).unwrap();
        assert_eq!(m.count(), 3, "a cleared bit stays set in the file");
        assert_eq!(parse_file_name(&file_name(2)), Some(2));
        std::fs::write(&path, b"not a bitmap").unwrap();
        assert!(DirtyMap::open(&path).is_err());
    }

    #[test]
    fn a_bitmap_longer_than_the_largest_disk_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let m = DirtyMap::create(dir.path(), 0, None).unwrap();
        let path = m.path().to_path_buf();
        drop(m);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(MAX_FILE_LEN + 1).unwrap();
        let e = DirtyMap::open(&path).err().expect("refused").to_string();
        assert!(
            e.contains("longer than the bitmap of the largest disk"),
            "{e}"
        );
        assert_eq!(
            parse(&[0; 3]).unwrap_err(),
            "not a dirty bitmap (bad magic)"
        );
    }
}
