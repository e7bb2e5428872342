//! Space kept back on the source host for the moment its disk fills up.
//!
//! A write whose record cannot be logged because the disk is full is still tracked: the stream
//! falls back to its dirty bitmaps, as when the ship buffer is full. Creating a bitmap and
//! logging the overflow marker need a little space themselves, so each stream keeps a
//! `reserve` file of [`BYTES`] in its directory and deletes it at that moment. The catch-up
//! waits until the reserve can be made again: only then is there room to log the copies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::AgentError;

const FILE: &str = "reserve";
/// Enough for the overflow marker and the bitmaps of 2 TiB of disks (2 KiB per GiB).
pub const BYTES: u64 = 4 << 20;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Make sure the reserve exists and holds [`BYTES`] of allocated space.
pub(crate) fn ensure(dir: &Path) -> Result<(), AgentError> {
    let p = path(dir);
    if std::fs::metadata(&p).is_ok_and(|m| m.len() == BYTES) {
        return Ok(());
    }
    if ferry_types::failpoint::check("agent-reserve") == ferry_types::failpoint::Action::Error {
        return Err(AgentError::io("make the stream's space reserve", &p)(
            io::Error::from_raw_os_error(libc::ENOSPC),
        ));
    }
    let tmp = dir.join(format!("{FILE}.tmp"));
    let made = allocate(&tmp).and_then(|()| std::fs::rename(&tmp, &p));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map_err(AgentError::io("make the stream's space reserve", &p))
}

fn allocate(path: &Path) -> io::Result<()> {
    let f = File::create(path)?;
    allocate_file(&f, BYTES)?;
    f.sync_all()
}

/// Give `f` `len` bytes of allocated blocks (not a sparse hole), from its start.
pub(crate) fn allocate_file(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate on an open descriptor; it reports failure by its return value.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            // A file system without fallocate: write the zeroes.
            let zeroes = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeroes.len() as u64) as usize;
                f.write_all_at(&zeroes[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Delete the reserve, giving its space to the stream; true when there was one.
pub(crate) fn release(dir: &Path) -> bool {
    std::fs::remove_file(path(dir)).is_ok()
}

/// True when `e` is a full disk (or a full quota).
pub(crate) fn is_no_space(e: &AgentError) -> bool {
    matches!(e, AgentError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        let m = std::fs::metadata(path(dir.path())).unwrap();
        assert_eq!(m.len(), BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(
            m.blocks() * 512 >= BYTES,
            "the reserve's blocks are allocated, not a hole"
        );
        assert!(release(dir.path()));
        assert!(!release(dir.path()));
        ensure(dir.path()).unwrap();
        assert!(path(dir.path()).exists());
        let full = AgentError::io("append", "x")(io::Error::from_raw_os_error(libc::ENOSPC));
        let other = AgentError::io("append", "x")(io::Error::from_raw_os_error(libc::EIO));
        assert!(is_no_space(&full) && !is_no_space(&other));
    }
}
