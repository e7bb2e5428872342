//! Seeding a new VM's first disk from an `--image` file: checked to be a regular file no
//! larger than the disk (a FIFO or a device would block the copy forever), then copied on the
//! blocking pool; a copy that makes no progress for [`STALL`] fails rather than hangs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ControlError, Result};

/// How long a copy may go without copying a byte before it is given up.
pub(crate) const STALL: Duration = Duration::from_secs(60);

/// An image checked to be a regular file, open for reading.
pub(crate) struct Image {
    file: File,
    name: String,
    len: u64,
}

impl Image {
    /// Open `name` without blocking (a FIFO with no writer would block the open itself) and
    /// refuse anything that is not a regular file no larger than `disk_size`.
    pub(crate) fn open(name: &str, disk_size: u64) -> Result<Image> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(name)
            .map_err(|e| ControlError::invalid(format!("image {name}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| ControlError::invalid(format!("image {name}: {e}")))?;
        if !meta.is_file() {
            return Err(ControlError::invalid(format!(
                "--image must be a regular file: {name} is {}",
                describe(&meta.file_type())
            )));
        }
        if meta.len() > disk_size {
            return Err(ControlError::invalid(format!(
                "image {name} ({} bytes) is larger than disk 0",
                meta.len()
            )));
        }
        Ok(Image {
            file,
            name: name.to_string(),
            len: meta.len(),
        })
    }

    /// The image's path.
    pub(crate) fn path(&self) -> &str {
        &self.name
    }

    /// Copy the image into a new disk image `dst` of `size` bytes, on the blocking pool.
    /// Fails (and removes `dst`) when the copy makes no progress for `stall`.
    pub(crate) async fn seed(self, dst: &Path, size: u64, stall: Duration) -> Result<()> {
        let copied = Arc::new(AtomicU64::new(0));
        let name = self.name.clone();
        let (counter, target) = (copied.clone(), dst.to_path_buf());
        let mut copy = tokio::task::spawn_blocking(move || self.copy_to(&target, size, &counter));
        let mut last = (0, Instant::now());
        loop {
            match tokio::time::timeout(Duration::from_secs(1), &mut copy).await {
                Ok(done) => {
                    return done
                        .map_err(|e| ControlError::Internal(format!("copy image {name}: {e}")))?;
                }
                Err(_) => {
                    let now = copied.load(Ordering::Relaxed);
                    if now != last.0 {
                        last = (now, Instant::now());
                    } else if last.1.elapsed() >= stall {
                        // The copy may be stuck in a read for good: leave it, and its image.
                        let _ = std::fs::remove_file(dst);
                        return Err(ControlError::invalid(format!(
                            "copy image {name}: no progress for {} s (at byte {now})",
                            stall.as_secs()
                        )));
                    }
                }
            }
        }
    }

    fn copy_to(mut self, dst: &PathBuf, size: u64, copied: &AtomicU64) -> Result<()> {
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ControlError::Internal(format!("create {}: {e}", dir.display())))?;
        }
        let internal = |what: &str, e: std::io::Error| {
            ControlError::Internal(format!("{what} {}: {e}", dst.display()))
        };
        let mut out = File::create(dst).map_err(|e| internal("create", e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.len {
            let n = match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ControlError::invalid(format!(
                        "copy image {}: {e}",
                        self.name
                    )));
                }
            };
            out.write_all(&buf[..n]).map_err(|e| internal("write", e))?;
            at += n as u64;
            copied.store(at, Ordering::Relaxed);
        }
        out.set_len(size).map_err(|e| internal("size", e))?;
        Ok(())
    }
}

fn describe(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

/// The blocks of a raw image file, for a joined host's disk that is filled from it while it
/// is served (zeroes past its end).
pub(crate) struct ImageBlocks {
    pub path: PathBuf,
}

impl ferry_agent::hydrate::BlockSource for ImageBlocks {
    fn fetch(
        &self,
        blocks: Vec<u64>,
    ) -> ferry_agent::hydrate::BoxFuture<ferry_agent::hydrate::Fetched> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let file =
                    File::open(&path).map_err(|e| format!("image {}: {e}", path.display()))?;
                let bs = ferry_format::BLOCK_SIZE;
                let mut out = Vec::with_capacity(blocks.len());
                for b in blocks {
                    let mut buf = vec![0u8; bs as usize];
                    let mut at = 0;
                    while at < buf.len() {
                        let n = file
                            .read_at(&mut buf[at..], b * bs + at as u64)
                            .map_err(|e| format!("image {}: {e}", path.display()))?;
                        if n == 0 {
                            break;
                        }
                        at += n;
                    }
                    out.push((b, buf));
                }
                Ok(out)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// The blocks an image of `len` bytes covers.
pub(crate) fn image_blocks(len: u64) -> Vec<u64> {
    (0..len.div_ceil(ferry_format::BLOCK_SIZE)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_no_larger_than_the_disk_is_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let err = Image::open(fifo.to_str().unwrap(), 1 << 20).err().unwrap();
        assert!(
            err.to_string().contains("--image must be a regular file")
                && err.to_string().contains("a FIFO"),
            "{err}"
        );
        let err = Image::open(dir.path().to_str().unwrap(), 1 << 20)
            .err()
            .unwrap();
        assert!(err.to_string().contains("a directory"), "{err}");
        let big = dir.path().join("big.raw");
        std::fs::write(&big, vec![1u8; 4096]).unwrap();
        let err = Image::open(big.to_str().unwrap(), 1024).err().unwrap();
        assert!(err.to_string().contains("larger than disk 0"), "{err}");
    }

    #[tokio::test]
    async fn an_image_is_copied_and_the_disk_sized() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        std::fs::write(&src, vec![7u8; 3 << 20]).unwrap();
        let dst = dir.path().join("vm/disk0.raw");
        let image = Image::open(src.to_str().unwrap(), 8 << 20).unwrap();
        image.seed(&dst, 8 << 20, STALL).await.unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out.len(), 8 << 20);
        assert!(out[..3 << 20].iter().all(|&b| b == 7) && out[3 << 20..].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn a_copy_without_progress_fails() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        // A source whose reads never return, as a hung file system's would.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let image = Image {
            file,
            name: "stuck".into(),
            len: 10,
        };
        let dst = dir.path().join("disk0.raw");
        let err = image
            .seed(&dst, 1 << 20, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no progress"), "{err}");
        assert!(!dst.exists());
        // Let the abandoned copy end, so the runtime can shut down.
        std::fs::write(&fifo, [0u8; 10]).unwrap();
    }
}
