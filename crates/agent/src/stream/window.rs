//! A stream's catch-up windows: tracking changes as dirty blocks while the ship buffer is full
//! (or the source host's disk is), and closing the window once a catch-up has copied them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use ferry_format::segment::{MarkerKind, OpRef};
use ferry_types::{Seq, Timestamp};

use super::recover::sync_dir;
use super::{Inner, Stream, Window};
use crate::AgentError;
use crate::dirty::DirtyMap;
use crate::state;

impl Stream {
    /// The source host's disk is full: give the stream the reserve's space and track writes
    /// as dirty blocks (the caller does) until the catch-up finds room again.
    pub(super) fn disk_full_locked(&self, g: &mut Inner, e: &AgentError) {
        let released = crate::reserve::release(&self.dir);
        if let Some(w) = g.window.as_mut() {
            w.overflowing = true;
        }
        if g.disk_full_since.is_none() {
            g.disk_full_since = Some(Timestamp::now());
            self.counters.disk_full.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(dir = %self.dir.display(), error = %e, released, "the source host's disk is full: tracking dirty blocks until there is space");
        }
    }

    /// A catch-up's copy of `block` could not be logged: the block is dirty again (its bit
    /// never left the file), and on a full disk writes go back to the bitmap.
    pub(crate) fn copy_failed(&self, disk: u16, block: u64, e: &AgentError) {
        let mut g = self.lock();
        if let Some(m) = g.window.as_mut().and_then(|w| w.maps.get_mut(&disk)) {
            m.untake(block);
        }
        if crate::reserve::is_no_space(e) {
            self.disk_full_locked(&mut g, e);
        }
    }

    /// True when there is room to log again: the disk was not full, or the reserve could be
    /// made again (then the disk is no longer counted as full).
    pub(crate) fn has_room(&self) -> bool {
        if self.lock().disk_full_since.is_none() {
            return true;
        }
        match crate::reserve::ensure(&self.dir) {
            Ok(()) => {
                self.lock().disk_full_since = None;
                tracing::info!(dir = %self.dir.display(), "the source host's disk has room again: catching up");
                true
            }
            Err(_) => false,
        }
    }

    /// Track a change in the dirty bitmap, opening a catch-up window if none is open: the
    /// bitmap file is durable before the overflow marker is logged, so a window the processor
    /// has seen open is always found again after a crash.
    pub(super) fn track_locked(
        &self,
        g: &mut Inner,
        disk: u16,
        offset: u64,
        len: u64,
        durable: bool,
    ) -> Result<(), AgentError> {
        let opening = g.window.is_none();
        let window = g.window.get_or_insert_with(|| Window {
            maps: BTreeMap::new(),
            overflowing: true,
            resyncing: false,
            since: Timestamp::now(),
        });
        window.overflowing = true;
        let map = match window.maps.entry(disk) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let size = self.disk_sizes.get().and_then(|s| s.get(disk as usize));
                let mut m = DirtyMap::create(&self.dir, disk, size.copied())?;
                m.sync()?;
                sync_dir(&self.dir)?;
                e.insert(m)
            }
        };
        map.set_range(offset, len)?;
        if durable {
            map.sync()?;
        }
        if opening {
            tracing::warn!(dir = %self.dir.display(), limit = self.config.buffer_bytes, "the ship buffer is full: tracking dirty blocks until the cache account catches up");
            let (_, pending) = self.log_locked(g, 0, OpRef::Marker(MarkerKind::Overflow), false)?;
            // The marker needs no sync of its own: until it is durable, the bitmap is.
            debug_assert!(pending.sync.is_none());
        }
        Ok(())
    }

    /// The start of the open catch-up window, if one is open.
    pub fn unordered_since(&self) -> Option<Timestamp> {
        self.lock().window.as_ref().map(|w| w.since)
    }

    /// True while a repair's resync has not compared every block yet.
    pub fn resyncing(&self) -> bool {
        self.lock().window.as_ref().is_some_and(|w| w.resyncing)
    }

    /// The resync has compared every block: close the window as soon as nothing is dirty.
    pub(crate) fn finish_resync(&self) -> Result<(), AgentError> {
        if let Some(w) = self.lock().window.as_mut() {
            w.resyncing = false;
        }
        self.close_window().map(|_| ())
    }

    /// Start the catch-up of the open window: from now on writes are logged again (until the
    /// buffer fills again). False when no window is open.
    pub(crate) fn resume_logging(&self) -> bool {
        match self.lock().window.as_mut() {
            Some(w) => {
                w.overflowing = false;
                true
            }
            None => false,
        }
    }

    /// The first dirty block of `disk` at or after `from`.
    pub(crate) fn next_dirty(&self, disk: u16, from: u64) -> Option<u64> {
        let g = self.lock();
        g.window.as_ref()?.maps.get(&disk)?.next_set(from)
    }

    /// Clear a dirty block before copying it (under the disk's order lock); true when it was
    /// dirty.
    pub(crate) fn take_dirty(&self, disk: u16, block: u64) -> bool {
        let mut g = self.lock();
        g.window
            .as_mut()
            .and_then(|w| w.maps.get_mut(&disk))
            .is_some_and(|m| m.take(block))
    }

    /// Close the window when nothing is left to copy: the copies and a catch-up-done marker
    /// are made durable, then the bitmaps are removed. Returns the marker's sequence, or
    /// `None` when blocks are still dirty (or the buffer overflowed again).
    pub(crate) fn close_window(&self) -> Result<Option<Seq>, AgentError> {
        // The state may be stored below, under the stream's lock: `state_io` comes first.
        let _io = self.state_io.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = self.lock();
        let Some(w) = g.window.as_ref() else {
            return Ok(None);
        };
        if w.overflowing || w.resyncing || w.maps.values().any(|m| m.count() > 0) {
            return Ok(None);
        }
        let (seq, pending) =
            self.log_locked(&mut g, 0, OpRef::Marker(MarkerKind::CatchUpDone), true)?;
        // Synced under the lock: no new window may open (and recreate a bitmap file) before
        // the old files are gone.
        if let Some((earlier, f)) = &pending.sync {
            for (_, e) in earlier {
                e.sync_data()
                    .map_err(AgentError::io("sync stream log", &self.dir))?;
            }
            f.sync_data()
                .map_err(AgentError::io("sync stream log", &self.dir))?;
            let synced: Vec<Seq> = earlier.iter().map(|(s, _)| *s).collect();
            g.unsynced.retain(|(first, _)| !synced.contains(first));
        }
        let w = g.window.take().expect("window is open");
        for m in w.maps.values() {
            std::fs::remove_file(m.path())
                .map_err(AgentError::io("remove dirty bitmap", m.path()))?;
        }
        if g.state.resync {
            g.state.resync = false;
            state::store(&self.dir, &g.state)?;
        }
        drop(g);
        if pending.full {
            self.rotate()?;
        }
        self.seal_now.notify_one();
        tracing::info!(dir = %self.dir.display(), seq = %seq, "catch-up complete: the stream is ordered again");
        Ok(Some(seq))
    }
}
