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

/// What one [`pass`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// No window is open.
    Idle,
    /// The buffer is over its low-water mark: nothing was copied.
    Waiting,
    /// Blocks were copied, but the window stays open (the buffer filled up again, a block was
    /// dirtied behind the pass, or a repair's compare still holds it).
    Open,
    /// Every dirty block is in the stream; the catch-up-done marker has this sequence.
    Closed(ferry_types::Seq),
}

/// Run until `cancel` is set: wait for a window, copy its blocks, close it. Blocking; run it
/// on a blocking thread.
pub fn run(
    disks: &[Arc<Disk>],
    stream: &Stream,
    progress: &CatchUpProgress,
    cancel: &AtomicBool,
) -> Result<(), AgentError> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        match pass(disks, stream, progress, cancel)? {
            Pass::Closed(_) => {}
            Pass::Idle => std::thread::sleep(IDLE_POLL),
            // A pass over clean bitmaps would otherwise spin on the stream's lock.
            Pass::Waiting | Pass::Open => std::thread::sleep(BUSY_POLL),
        }
    }
}

/// One attempt: when a window is open and the buffer has room, copy every dirty block into
/// the stream (stopping early when the buffer passes its low-water mark again, or at
/// `cancel`), then close the window if nothing is left. Blocking.
pub fn pass(
    disks: &[Arc<Disk>],
    stream: &Stream,
    progress: &CatchUpProgress,
    cancel: &AtomicBool,
) -> Result<Pass, AgentError> {
    if stream.unordered_since().is_none() {
        return Ok(Pass::Idle);
    }
    if stream.buffered() > low_water(stream) {
        return Ok(Pass::Waiting);
    }
    if !stream.resume_logging() {
        return Ok(Pass::Idle);
    }
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for disk in disks {
        let mut from = 0;
        while let Some(block) = stream.next_dirty(disk.index(), from) {
            if stream.buffered() > low_water(stream) || cancel.load(Ordering::Relaxed) {
                return Ok(Pass::Open);
            }
            let n = disk.copy_dirty_block(stream, block, &mut buf)?;
            progress.copied_bytes.fetch_add(n, Ordering::Relaxed);
            from = block + 1;
        }
    }
    match stream.close_window()? {
        Some(seq) => {
            progress.completed.fetch_add(1, Ordering::Relaxed);
            Ok(Pass::Closed(seq))
        }
        None => Ok(Pass::Open),
    }
}
