//! After an unclean stop: the changes the stream logged are made again on the disk images
//! before the disks are served.
//!
//! A change is appended to the stream log before it is applied to its image
//! ([`crate::disk::Disk`]), so after a `kill -9` the log may hold a change the image lacks
//! (never the reverse: see [`crate::alive`] for when the log is trusted). Every record of the
//! logs not shipped yet is applied again, in the stream's order: replaying a tail of the stream
//! in order gives every block its last logged value, which is what the block held, or was being
//! given, when the agent died. A shipped log held no change still on its way to its image
//! ([`crate::stream::ClosedLog::applied`]), so nothing older is needed.
//!
//! Blocks that a catch-up window's dirty bitmap holds are left alone: a write tracked only in
//! the bitmap may have changed them after their last logged record, and the catch-up copies
//! them from the image anyway. Logs after a torn one are left alone too: the stream's recovery
//! drops them ([`crate::stream`]), so the replica never receives them.
//!
//! Once done and synced, the stream's `alive` file is removed: the images hold the logs, and a
//! later start must not make them again over writes made since. Should anything fail, the logs
//! are not trusted: the stream refuses to continue, and the item needs a repair.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use ferry_format::BLOCK_SIZE;
use ferry_format::segment::Op;

use crate::dirty::DirtyMap;
use crate::disk::{Disk, zero_range};
use crate::{AgentError, alive, hold, log, state, stream};

/// What [`after_unclean_stop`] made again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Redone {
    /// Changes applied to the images again.
    pub records: u64,
    /// Bytes they cover.
    pub bytes: u64,
}

/// Before a VM's disks (`disks`, by index) are served: if the stream kept in `dir` stopped
/// without a clean shutdown and its logs can be trusted, make every logged change again on the
/// images. `None` when there was nothing to do.
pub fn after_unclean_stop(dir: &Path, disks: &[Arc<Disk>]) -> Option<Redone> {
    match redo(dir, disks) {
        Ok(done) => {
            if let Some(r) = done {
                tracing::info!(dir = %dir.display(), records = r.records, bytes = r.bytes,
                    "the stream stopped uncleanly: its logged changes are made again on the disks");
            }
            done
        }
        Err(e) => {
            let reason = format!(
                "after an unclean stop, the stream's logs could not be made again on the disk \
                 images ({e})"
            );
            tracing::error!(dir = %dir.display(), %reason, "tracking lost");
            if let Err(e) = hold::record_reason(dir, &reason) {
                tracing::error!(dir = %dir.display(), error = %e, "record that the stream cannot continue");
            }
            if let Err(e) = alive::forget(dir) {
                tracing::error!(dir = %dir.display(), error = %e, "forget the stream's sign of life");
            }
            None
        }
    }
}

fn redo(dir: &Path, disks: &[Arc<Disk>]) -> Result<Option<Redone>, AgentError> {
    let Some(state) = state::load(dir)? else {
        return Ok(None);
    };
    if state.stopped_with.is_some() || alive::last(dir)?.is_none() {
        // A clean stop (every change is in its image), or nothing ran since the last redo.
        return Ok(None);
    }
    let images: Vec<&Path> = disks.iter().map(|d| d.path()).collect();
    if let Err(e) = alive::check(dir, &images) {
        // Not trusted: nothing is made again, and the stream says why when it starts.
        tracing::warn!(dir = %dir.display(), error = %e, "the stream's logs are not made again");
        return Ok(None);
    }
    // What follows changes the images as the agent itself: it counts as alive.
    alive::touch(dir)?;
    let dirty = stream::recover_bitmaps(dir)?;
    let mut done = Redone::default();
    let mut touched = vec![false; disks.len()];
    for first in stream::list_logs(dir)? {
        let path = dir.join(log::file_name(first));
        let (records, torn) = log::read(&path)?;
        if records.last().is_none_or(|r| r.seq < state.shipped_next) {
            continue;
        }
        for rec in &records {
            let Some(disk) = disks.get(rec.disk as usize) else {
                continue;
            };
            let (offset, len) = match &rec.op {
                Op::Write { offset, data } => (*offset, data.len() as u64),
                Op::Zero { offset, len } | Op::Trim { offset, len } => (*offset, *len),
                Op::Marker(_) => continue,
            };
            if offset.checked_add(len).is_none_or(|end| end > disk.size()) {
                return Err(AgentError::CorruptLog {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "record {} changes {len} bytes at {offset} of disk {}, past its end",
                        rec.seq, rec.disk
                    ),
                });
            }
            for (at, n) in clean_runs(dirty.get(&rec.disk), offset, len) {
                let applied = match &rec.op {
                    Op::Write { data, .. } => {
                        let from = (at - offset) as usize;
                        disk.file().write_all_at(&data[from..from + n as usize], at)
                    }
                    _ => zero_range(disk.file(), at, n),
                };
                applied.map_err(AgentError::io("write disk image", disk.path()))?;
            }
            touched[rec.disk as usize] = true;
            done.records += 1;
            done.bytes += len;
        }
        if torn > 0 {
            break;
        }
    }
    for (disk, _) in disks.iter().zip(&touched).filter(|(_, t)| **t) {
        disk.file()
            .sync_data()
            .map_err(AgentError::io("sync disk image", disk.path()))?;
    }
    alive::forget(dir)?;
    stream::sync_dir(dir)?;
    Ok((done.records > 0).then_some(done))
}

/// The pieces of `offset..offset + len` outside the blocks `dirty` holds, as `(offset, len)`.
fn clean_runs(dirty: Option<&DirtyMap>, offset: u64, len: u64) -> Vec<(u64, u64)> {
    let end = offset + len;
    let Some(dirty) = dirty else {
        return if len > 0 { vec![(offset, len)] } else { vec![] };
    };
    let mut runs = Vec::new();
    let mut at = offset;
    let mut run: Option<u64> = None;
    while at < end {
        let block = at / BLOCK_SIZE;
        let next = ((block + 1) * BLOCK_SIZE).min(end);
        match (dirty.is_set(block), run) {
            (false, None) => run = Some(at),
            (true, Some(from)) => {
                runs.push((from, at - from));
                run = None;
            }
            _ => {}
        }
        at = next;
    }
    if let Some(from) = run {
        runs.push((from, end - from));
    }
    runs
}

#[cfg(test)]
mod tests {
    use ferry_nbd::Export;
    use ferry_types::{Generation, StreamId};

    use super::*;
    use crate::stream::Stream;

    const SIZE: u64 = 1 << 20;

    /// A disk replicated by a stream kept in `dir/stream`, started as the host starts one.
    fn protected(dir: &Path) -> (Arc<Disk>, Arc<Stream>) {
        let disk = Arc::new(Disk::open_or_create(&dir.join("disk0.raw"), SIZE, 0).unwrap());
        let stream = Stream::open(
            &dir.join("stream"),
            StreamId([3; 16]),
            Generation(1),
            Default::default(),
        )
        .unwrap();
        stream.check_stopped(&[disk.path()]).unwrap();
        disk.attach(Some(stream.clone()));
        (disk, stream)
    }

    fn reopen(dir: &Path) -> Arc<Disk> {
        Arc::new(Disk::open_or_create(&dir.join("disk0.raw"), SIZE, 0).unwrap())
    }

    fn redo_at(dir: &Path, disk: &Arc<Disk>) -> Option<Redone> {
        after_unclean_stop(&dir.join("stream"), std::slice::from_ref(disk))
    }

    fn read(disk: &Disk, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        disk.read(offset, &mut buf).unwrap();
        buf
    }

    #[test]
    fn a_change_logged_but_not_in_the_image_is_made_again_once() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, stream) = protected(dir.path());
        disk.write(0, &[1; 4096], false).unwrap();
        disk.write(8192, &[2; 4096], false).unwrap();
        disk.inject_crash_before_image_write();
        disk.write(4096, &[3; 8192], false)
            .expect_err("the agent died before the image write");
        assert_eq!(read(&disk, 8192, 4096), vec![2; 4096], "the image lacks it");
        drop((disk, stream));

        let disk = reopen(dir.path());
        let done = redo_at(dir.path(), &disk);
        assert_eq!(
            done,
            Some(Redone {
                records: 3,
                bytes: 16384
            })
        );
        assert_eq!(read(&disk, 0, 4096), vec![1; 4096]);
        assert_eq!(
            read(&disk, 4096, 8192),
            vec![3; 8192],
            "made again, in order"
        );
        assert_eq!(read(&disk, 12288, 4096), vec![0; 4096]);

        // Made again once: a write after the redo is not undone by a later one.
        disk.write(4096, &[4; 4096], false).unwrap();
        assert_eq!(redo_at(dir.path(), &disk), None);
        assert_eq!(read(&disk, 4096, 4096), vec![4; 4096]);
    }

    #[test]
    fn nothing_is_made_again_after_a_clean_stop_or_a_change_behind_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, stream) = protected(dir.path());
        disk.write(0, &[1; 4096], false).unwrap();
        stream.record_stop(&[disk.path()]).unwrap();
        drop((disk, stream));
        let disk = reopen(dir.path());
        assert_eq!(redo_at(dir.path(), &disk), None);
        drop(disk);

        let dir = tempfile::tempdir().unwrap();
        let (disk, stream) = protected(dir.path());
        disk.write(0, &[1; 4096], false).unwrap();
        drop((disk, stream));
        // Written by something else, later than the agent's last sign of life.
        let image = dir.path().join("disk0.raw");
        std::fs::File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + alive::SLACK * 2)
            .unwrap();
        let disk = reopen(dir.path());
        assert_eq!(redo_at(dir.path(), &disk), None);
        assert!(
            alive::check(&dir.path().join("stream"), &[&image]).is_err(),
            "the stream refuses to continue"
        );
    }

    #[test]
    fn dirty_blocks_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = DirtyMap::create(dir.path(), 0, Some(16 * BLOCK_SIZE)).unwrap();
        m.set_range(2 * BLOCK_SIZE, 1).unwrap();
        m.set_range(4 * BLOCK_SIZE, 2 * BLOCK_SIZE).unwrap();
        let b = BLOCK_SIZE;
        // A write over blocks 1..=7, from inside block 1, keeps blocks 1, 3, 6 and 7.
        assert_eq!(
            clean_runs(Some(&m), b + 100, 6 * b),
            vec![(b + 100, b - 100), (3 * b, b), (6 * b, b + 100)]
        );
        assert_eq!(clean_runs(Some(&m), 2 * b + 5, 10), vec![]);
        assert_eq!(clean_runs(None, 7, 9), vec![(7, 9)]);
    }
}
