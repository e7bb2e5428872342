//! Initial replication: stream the existing contents of every disk, skipping zero blocks,
//! while the VM keeps writing. Each block is read and appended under its disk's order lock
//! (see [`crate::disk::Disk::copy_to_stream`]), so live writes are never overtaken by older
//! data. The copy ends with an [`MarkerKind::InitialSyncDone`] marker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_format::segment::MarkerKind;
use ferry_types::Seq;
use serde::Serialize;

use crate::AgentError;
use crate::disk::Disk;
use crate::stream::Stream;

/// Bytes read per step.
pub const STEP: usize = 1 << 20;
/// How far ahead of the copy the disk is asked to read.
const READ_AHEAD: u64 = 8 << 20;
/// The copy pauses while this many bytes wait in the local log to be shipped.
pub const MAX_PENDING_LOGS: usize = 32;

/// How far the initial copy is.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    pub scanned_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub cancelled: AtomicBool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ProgressView {
    pub total_bytes: u64,
    pub scanned_bytes: u64,
    pub sent_bytes: u64,
}

impl Progress {
    pub fn view(&self) -> ProgressView {
        ProgressView {
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            scanned_bytes: self.scanned_bytes.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Copy every disk into the stream; blocking, run it on a blocking thread. Returns the
/// sequence of the end marker, or `None` when cancelled.
///
/// With `seed` (the replica's digest of every block of every disk, as a reprotect starts
/// from a replica seeded with the other side's disks), only blocks that differ are sent.
pub fn run(
    disks: &[Arc<Disk>],
    stream: &Stream,
    progress: &Progress,
    seed: Option<&[Vec<ferry_format::Digest>]>,
) -> Result<Option<Seq>, AgentError> {
    let total: u64 = disks
        .iter()
        .map(|d| ferry_nbd::Export::size(d.as_ref()))
        .sum();
    progress.total_bytes.store(total, Ordering::Relaxed);
    let mut buf = vec![0u8; STEP];
    for disk in disks {
        let size = ferry_nbd::Export::size(disk.as_ref());
        let mut offset = 0;
        while offset < size {
            if progress.cancelled.load(Ordering::Relaxed) {
                return Ok(None);
            }
            while stream.status().pending_logs > MAX_PENDING_LOGS
                || stream.buffered() > stream.config.buffer_bytes / 2
            {
                if progress.cancelled.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if offset % READ_AHEAD == 0 {
                // Keep the next stretch in flight while this one is compared and appended.
                if offset == 0 {
                    disk.read_ahead(0, READ_AHEAD);
                }
                disk.read_ahead(offset + READ_AHEAD, READ_AHEAD);
            }
            let n = (size - offset).min(STEP as u64) as usize;
            let sent = match seed {
                Some(seed) => {
                    let theirs = seed.get(disk.index() as usize).map_or(&[][..], |v| v);
                    disk.copy_delta_to_stream(stream, offset, &mut buf[..n], theirs)?
                }
                None if disk.copy_to_stream(stream, offset, &mut buf[..n])? => n as u64,
                None => 0,
            };
            progress.sent_bytes.fetch_add(sent, Ordering::Relaxed);
            progress
                .scanned_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            offset += n as u64;
        }
    }
    Ok(Some(stream.mark(MarkerKind::InitialSyncDone)?))
}
