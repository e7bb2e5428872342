//! The catch-up: once the ship buffer has room again after an overflow, copy every block the
//! dirty bitmaps hold into the stream and close the window (see [`crate::stream`]).
//!
//! It reads only the dirty blocks, never the whole disk. Writes the VM makes meanwhile are
//! logged in order again; should the buffer fill up once more, they are tracked as dirty
//! blocks and copied in the same pass, and the window closes only when nothing is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_format::BLOCK_SIZE;

use crate::AgentError;
use crate::disk::Disk;
use crate::stream::Stream;

/// How often an idle catch-up looks for an open window (a window is rare: a cheap poll).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause while the buffer is over its low-water mark.
const BUSY_POLL: Duration = Duration::from_millis(10);

/// Counters of the catch-ups of one stream.
#[derive(Debug, Default)]
pub struct CatchUpProgress {
    /// Bytes of dirty blocks copied into the stream.
    pub copied_bytes: AtomicU64,
    /// Windows closed.
    pub completed: AtomicU64,
}

/// The buffer fill below which a catch-up copies (half the buffer, so live writes keep room).
fn low_water(stream: &Stream) -> u64 {
    stream.config.buffer_bytes / 2
}

/// Run until `cancel` is set: wait for a window, copy its blocks, close it. Blocking; run it
/// on a blocking thread.
pub fn run(
    disks: &[Arc<Disk>],
    stream: &Stream,
    progress: &CatchUpProgress,
    cancel: &AtomicBool,
) -> Result<(), AgentError> {
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        if stream.unordered_since().is_none() || stream.buffered() > low_water(stream) {
            std::thread::sleep(if stream.unordered_since().is_none() {
                IDLE_POLL
            } else {
                BUSY_POLL
            });
            continue;
        }
        if !stream.resume_logging() {
            continue;
        }
        for disk in disks {
            let mut from = 0;
            while let Some(block) = stream.next_dirty(disk.index(), from) {
                while stream.buffered() > low_water(stream) {
                    if cancel.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(BUSY_POLL);
                }
                let n = disk.copy_dirty_block(stream, block, &mut buf)?;
                progress.copied_bytes.fetch_add(n, Ordering::Relaxed);
                from = block + 1;
            }
        }
        if stream.close_window()?.is_some() {
            progress.completed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Otherwise the buffer overflowed again, a block was dirtied behind the pass, or a
        // repair's compare still holds the window open: go round once more, after a pause (a
        // pass over clean bitmaps would otherwise spin on the stream's lock).
        std::thread::sleep(BUSY_POLL);
    }
}
