//! [`FileExport`]: a plain export over a raw image file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Export;

/// Serves a raw image file: `pread`/`pwrite` through the page cache, `fdatasync` for flush and
/// FUA, hole punching (falling back to writing zeroes) for trim and write-zeroes, and
/// `FALLOC_FL_ZERO_RANGE` (falling back to writing zeroes) for write-zeroes with NO_HOLE.
#[derive(Debug)]
pub struct FileExport {
    file: File,
    size: u64,
}

impl FileExport {
    /// Opens an existing image read-write; its current length is the export size.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file)
    }

    /// Creates (or truncates) a sparse image of `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self { file, size })
    }

    /// Serves an already open read-write file.
    pub fn from_file(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }

    fn zero_range(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()> {
        let mode = if no_hole {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        };
        match fallocate(&self.file, mode, offset, len) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => self.write_zero_bytes(offset, len)?,
            Err(e) => return Err(e),
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; len.min(CHUNK) as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(CHUNK) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.zero_range(offset, len, fua, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()> {
        self.zero_range(offset, len, fua, no_hole)
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// `fallocate(mode)` over `len` bytes at `offset`: with `FALLOC_FL_PUNCH_HOLE` they are
/// deallocated, with `FALLOC_FL_ZERO_RANGE` they stay allocated; either way they read back as
/// zeroes and the file keeps its size (`FALLOC_FL_KEEP_SIZE`).
#[allow(unsafe_code)]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: `fallocate` only takes integers; the descriptor is owned by `file`, which is
    // borrowed for the duration of the call, so it is open and refers to our file.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_trim_zero() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let e = FileExport::create(&dir.path().join("img"), 1 << 20)?;
        assert_eq!(e.size(), 1 << 20);
        e.write(4096, &[0xab; 8192], true)?;
        let mut buf = [0u8; 8192];
        e.read(4096, &mut buf)?;
        assert!(buf.iter().all(|b| *b == 0xab));
        e.trim(4096, 4096, false)?;
        e.write_zeroes(8192, 100, true, false)?;
        e.read(4096, &mut buf)?;
        assert!(buf[..4196].iter().all(|b| *b == 0));
        assert!(buf[4196..].iter().all(|b| *b == 0xab));
        e.write_zero_bytes(0, 1 << 20)?;
        e.flush()
    }
}
