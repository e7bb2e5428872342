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
    if stream.buffered() > low_water(stream) || !stream.has_room() {
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
            let n = match disk.copy_dirty_block(stream, block, &mut buf) {
                Ok(n) => n,
                // The block is dirty again and writes are tracked: wait for space.
                Err(e) if crate::reserve::is_no_space(&e) => return Ok(Pass::Waiting),
                Err(e) => return Err(e),
            };
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

#[cfg(test)]
mod tests {
    use ferry_nbd::Export;
    use ferry_types::{Generation, StreamId};

    use super::*;
    use crate::stream::StreamConfig;

    /// A full disk: the write is acknowledged and tracked; a catch-up whose copy also meets the
    /// full disk puts the block back and waits; the next pass copies it and closes the window.
    #[test]
    fn a_full_disk_is_tracked_and_a_failed_copy_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open_or_create(&dir.path().join("d0.raw"), 4 << 20, 0).unwrap());
        let stream = Stream::open(
            &dir.path().join("stream"),
            StreamId([5; 16]),
            Generation(1),
            StreamConfig::default(),
        )
        .unwrap();
        stream.set_disk_sizes(vec![4 << 20]);
        disk.attach(Some(stream.clone()));
        let reserve = dir.path().join("stream").join("reserve");
        assert!(reserve.exists(), "a stream keeps a space reserve");

        disk.write(0, &[1; 4096], false).unwrap();
        stream.inject_disk_full();
        disk.write(1 << 20, &[2; 4096], true)
            .expect("a write the full disk could not log is still acknowledged");
        let st = stream.status();
        assert_eq!(st.tracking, "overflow");
        assert!(st.disk_full_since.is_some());
        assert_eq!(st.disk_full_count, 1);
        assert_eq!(st.dirty_bytes, BLOCK_SIZE);
        assert!(
            !reserve.exists(),
            "the reserve gave its space to the bitmap"
        );

        // The copy meets the full disk too: the block stays dirty, writes are tracked again.
        let (progress, cancel) = (CatchUpProgress::default(), AtomicBool::new(false));
        stream.inject_disk_full();
        let disks = [disk.clone()];
        assert_eq!(
            pass(&disks, &stream, &progress, &cancel).unwrap(),
            Pass::Waiting
        );
        let st = stream.status();
        assert_eq!(
            (st.tracking.as_str(), st.dirty_bytes),
            ("overflow", BLOCK_SIZE)
        );
        assert!(st.disk_full_since.is_some());

        // Room again: the block is copied and the window closes.
        assert!(matches!(
            pass(&disks, &stream, &progress, &cancel).unwrap(),
            Pass::Closed(_)
        ));
        let st = stream.status();
        assert_eq!((st.tracking.as_str(), st.dirty_bytes), ("ordered", 0));
        assert!(st.disk_full_since.is_none());
        assert!(reserve.exists(), "the reserve is made again");
        assert_eq!(progress.copied_bytes.load(Ordering::Relaxed), BLOCK_SIZE);
    }
}
