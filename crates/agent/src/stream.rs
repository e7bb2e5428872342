//! One protected VM's ordered write stream: every write of every disk, in one order.
//!
//! Appends go to the open local log file ([`crate::log`]); [`Stream::rotate`] closes it so the
//! sealer can turn it into a segment, and [`Stream::shipped`] retires a closed log once its
//! segment is durable in the cache account. After a restart, [`Stream::open`] finds every
//! log file that was not shipped yet and queues it again, so no acknowledged write is lost.
//!
//! The logs not shipped yet are the **ship buffer**, bounded by [`StreamConfig::buffer_bytes`].
//! When a write would overflow it (the cache account is unreachable or slower than the VM), the
//! stream opens a **catch-up window**: an [`MarkerKind::Overflow`] marker goes into the log and
//! the VM's writes are only tracked in a persisted dirty bitmap ([`crate::dirty`]), so the VM
//! keeps its full speed. Once the buffer has drained, [`crate::catch_up`] copies the dirty
//! blocks into the stream and closes the window with [`MarkerKind::CatchUpDone`]. No instant
//! inside a window is recoverable, and no point is cut there.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_format::Digest;
use ferry_format::segment::{MarkerKind, OpRef};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use serde::Serialize;
use tokio::sync::Notify;

use crate::dirty::DirtyMap;
use crate::log::{self, LogWriter};
use crate::state::{self, StreamState};
use crate::{AgentError, alive};

mod recover;
mod stop;
mod window;

pub(crate) use recover::{list_logs, recover_bitmaps, sync_dir};
use recover::{recover_logs, remove_logs};

/// How a stream is cut into segments.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Seal at least this often while records are pending.
    pub seal_interval: Duration,
    /// Seal as soon as this many bytes are pending.
    pub seal_bytes: u64,
    /// zstd level for segment bodies.
    pub zstd_level: i32,
    /// The ship buffer: at most this many bytes of logs wait to be shipped; writes beyond it
    /// are tracked in a dirty bitmap until a catch-up copies them.
    pub buffer_bytes: u64,
    /// At a start, how long a replicated VM's writes wait for its stream before they go on
    /// untracked (and the item needs a repair); see [`crate::hold`].
    pub start_hold: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            seal_interval: Duration::from_secs(1),
            seal_bytes: 8 << 20,
            zstd_level: 1,
            buffer_bytes: 2 << 30,
            start_hold: Duration::from_secs(20),
        }
    }
}

/// A closed log file waiting to be shipped as one segment.
#[derive(Debug, Clone)]
pub(crate) struct ClosedLog {
    pub path: PathBuf,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub first_time: Timestamp,
    /// Size of the log file.
    pub bytes: u64,
    /// Changes recorded in this log that have not reached their image yet.
    pub applying: Arc<InFlight>,
}

impl ClosedLog {
    /// True when every change recorded in the log has reached its image: only then may the
    /// log be retired, since after a crash the logs still on the host are what
    /// [`crate::redo`] makes again.
    pub fn applied(&self) -> bool {
        self.applying.0.load(Ordering::Acquire) == 0
    }
}

/// How many changes recorded in one log are still on their way to their image.
#[derive(Debug, Default)]
pub(crate) struct InFlight(AtomicUsize);

/// A change whose record is in a log and which is being applied to its image: until this is
/// dropped, the log is not retired ([`ClosedLog::applied`]).
#[must_use = "drop it once the change is in the image"]
pub(crate) struct Applying(Arc<InFlight>);

impl Applying {
    fn new(log: &Arc<InFlight>) -> Applying {
        log.0.fetch_add(1, Ordering::AcqRel);
        Applying(log.clone())
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The log being appended to.
struct OpenLog {
    writer: LogWriter,
    /// The same file, to sync it without the stream's lock.
    file: Arc<File>,
    applying: Arc<InFlight>,
}

/// A catch-up window: the blocks written while the ship buffer was full.
struct Window {
    maps: BTreeMap<u16, DirtyMap>,
    /// Writes go to the bitmap, not to the log (the buffer is full, or the catch-up has not
    /// started yet).
    overflowing: bool,
    /// A repair's resync is comparing every block: the window stays open until it is done.
    resyncing: bool,
    since: Timestamp,
}

struct Inner {
    next_seq: Seq,
    last_time: Timestamp,
    open: Option<OpenLog>,
    closed: VecDeque<ClosedLog>,
    /// Closed logs not synced yet: the next FUA or FLUSH syncs them before the open log, so a
    /// synced record never follows one that could be lost.
    unsynced: Vec<(Seq, Arc<File>)>,
    state: StreamState,
    /// Bytes of logs not shipped yet (the ship buffer's fill).
    buffered: u64,
    window: Option<Window>,
    /// Bytes the VM changed (written, zeroed or trimmed) per disk since the stream opened.
    changed: Vec<u64>,
    /// When the newest change was recorded.
    last_change: Option<Timestamp>,
    /// Since when the source host's disk has been too full to log writes ([`crate::reserve`]).
    disk_full_since: Option<Timestamp>,
}

/// What the stream has done, for health and RPO.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct StreamStatus {
    pub next_seq: u64,
    /// Sequence of the last record durable in the cache account.
    pub shipped_through: Option<u64>,
    /// Time of the oldest record not yet in the cache account (none when all is shipped).
    pub oldest_unshipped: Option<Timestamp>,
    pub pending_logs: usize,
    pub bytes_written: u64,
    /// Bytes the VM changed (written, zeroed or trimmed) per disk since the stream opened:
    /// churn is its rate.
    pub bytes_changed_per_disk: Vec<u64>,
    /// When the newest change of a disk was recorded (since the stream opened).
    #[serde(default)]
    pub last_change: Option<Timestamp>,
    pub bytes_logged: u64,
    pub bytes_shipped: u64,
    pub segments_shipped: u64,
    pub initial_sync_done_seq: Option<u64>,
    pub last_error: Option<String>,
    /// Bytes waiting in the ship buffer, and its bound.
    pub buffered_bytes: u64,
    pub buffer_limit: u64,
    /// `ordered` (every write in the stream), `overflow` (the buffer is full: writes are only
    /// tracked as dirty blocks), `catching-up` (dirty blocks are being copied) or `resyncing`
    /// (a repair compares every block).
    pub tracking: String,
    /// Since when the stream has not been ordered (the catch-up window's start).
    pub unordered_since: Option<Timestamp>,
    /// Bytes of blocks still to copy by the catch-up.
    pub dirty_bytes: u64,
    /// Why the stream no longer holds every change of the disks (a write reached the image
    /// but could not be recorded): only a repair makes the replica whole again.
    pub tracking_lost: Option<String>,
    /// Since when the source host's disk has been too full to log writes: they are tracked as
    /// dirty blocks, and the catch-up waits for space.
    pub disk_full_since: Option<Timestamp>,
    /// Times the disk was found full since the stream opened.
    pub disk_full_count: u64,
}

#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    bytes_logged: AtomicU64,
    bytes_shipped: AtomicU64,
    segments_shipped: AtomicU64,
    disk_full: AtomicU64,
}

/// The ordered write stream of one VM.
pub struct Stream {
    dir: PathBuf,
    pub(crate) config: StreamConfig,
    inner: Mutex<Inner>,
    /// Wakes the sealer early (size threshold reached, or a marker wants its segment now).
    pub(crate) seal_now: Notify,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    /// Serialises the stores of `state.json`, which happen outside the stream's lock (an
    /// fsync there would stall every write): taken before that lock, never while holding it.
    state_io: Mutex<()>,
    /// Set when a change of a disk could not be recorded (see [`StreamStatus::tracking_lost`]).
    tracking_lost: Mutex<Option<String>>,
    /// One shipper at a time (the sealer, or a caller of [`crate::sealer::seal_and_ship`]).
    pub(crate) shipping: tokio::sync::Mutex<()>,
    /// The size of each disk, once known: a dirty bitmap is then allocated whole when created,
    /// so setting its bits never needs space the disk may no longer have.
    disk_sizes: std::sync::OnceLock<Vec<u64>>,
    /// See [`Stream::inject_disk_full`].
    inject_full: AtomicBool,
}

impl Stream {
    /// Open (or create) the stream kept in `dir`. A state left by another stream id (an
    /// earlier replication of the same VM) is discarded with its logs.
    pub fn open(
        dir: &Path,
        stream: StreamId,
        generation: Generation,
        config: StreamConfig,
    ) -> Result<Arc<Stream>, AgentError> {
        Self::open_at(dir, stream, generation, config, None)
    }

    /// As [`Stream::open`]; with `resync_from`, a new generation's stream starts at that
    /// sequence as a repair's resync (see [`Stream::resyncing`]). A state left by another
    /// generation is discarded with its logs: its writer is fenced.
    pub fn open_at(
        dir: &Path,
        stream: StreamId,
        generation: Generation,
        config: StreamConfig,
        resync_from: Option<Seq>,
    ) -> Result<Arc<Stream>, AgentError> {
        std::fs::create_dir_all(dir).map_err(AgentError::io("create stream directory", dir))?;
        let fresh = StreamState {
            stream,
            generation,
            prev_digest: String::new(),
            shipped_next: resync_from.unwrap_or(Seq(1)),
            initial_sync_done_seq: None,
            resync: resync_from.is_some(),
            stopped_with: None,
        };
        let state = match state::load(dir)? {
            Some(s) if s.stream == stream && s.generation == generation => s,
            // A late start of an older writer must not discard the newer one's logs.
            Some(s) if s.stream == stream && s.generation > generation => {
                return Err(AgentError::StaleGeneration {
                    stream,
                    held: s.generation,
                    given: generation,
                });
            }
            _ => {
                remove_logs(dir)?;
                alive::forget(dir)?;
                crate::hold::forget(dir)?;
                state::store(dir, &fresh)?;
                fresh
            }
        };
        let (closed, next_seq, last_time) = recover_logs(dir, &state)?;
        let maps = recover_bitmaps(dir)?;
        let buffered = closed.iter().map(|c| c.bytes).sum();
        let stream = Arc::new(Stream {
            dir: dir.to_path_buf(),
            config,
            inner: Mutex::new(Inner {
                next_seq,
                last_time,
                open: None,
                closed,
                unsynced: Vec::new(),
                state,
                buffered,
                window: None,
                changed: Vec::new(),
                last_change: None,
                disk_full_since: None,
            }),
            seal_now: Notify::new(),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            state_io: Mutex::new(()),
            tracking_lost: Mutex::new(None),
            shipping: tokio::sync::Mutex::new(()),
            disk_sizes: std::sync::OnceLock::new(),
            inject_full: AtomicBool::new(false),
        });
        if let Err(e) = crate::reserve::ensure(dir) {
            tracing::warn!(error = %e, "no space reserve for a full disk: a write that cannot be logged will need a repair");
        }
        let resyncing = stream.lock().state.resync;
        if !maps.is_empty() || resyncing {
            // A window was open when the agent stopped (or a resync starts): it stays open
            // (its overflow marker may not have reached the log, so it is put there again; a
            // second one inside a window is harmless).
            tracing::warn!(dir = %dir.display(), resyncing, "a catch-up window is open");
            let mut g = stream.lock();
            g.window = Some(Window {
                overflowing: !maps.is_empty(),
                maps,
                resyncing,
                since: Timestamp::now(),
            });
            stream.log_locked(&mut g, 0, OpRef::Marker(MarkerKind::Overflow), false)?;
        }
        Ok(stream)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> StreamId {
        self.lock().state.stream
    }

    pub fn generation(&self) -> Generation {
        self.lock().state.generation
    }

    /// Append one record to the log, whatever the ship buffer holds (markers and copies);
    /// with `durable`, it is on stable storage when this returns. Returns its sequence.
    pub fn append(&self, disk: u16, op: OpRef<'_>, durable: bool) -> Result<Seq, AgentError> {
        let (seq, pending) = {
            let mut g = self.lock();
            self.log_locked(&mut g, disk, op, durable)?
        };
        self.count_written(op);
        self.finish_append(pending)?;
        ferry_types::failpoint::hit("agent-after-log-append");
        Ok(seq)
    }

    /// Record a change of the VM's disk **before** it is applied to the image: appended to the
    /// log, or, when the ship buffer is full (or a catch-up has not started yet), tracked in the
    /// disk's dirty bitmap. Either way it is on stable storage when this returns with
    /// `durable`. Call it under the disk's order lock of the range, and apply the change while
    /// the returned [`Applying`] (set when the change was logged) is alive.
    ///
    /// An error means nothing was recorded, so the image must not change: the write is
    /// refused. Only when what was recorded cannot be relied on any more (a record half in a
    /// log that could not be cut back, a log that could not be synced) is tracking lost and a
    /// repair needed.
    pub(crate) fn record(
        &self,
        disk: u16,
        op: OpRef<'_>,
        durable: bool,
    ) -> Result<Option<Applying>, AgentError> {
        let (offset, len) = match op {
            OpRef::Write { offset, data } => (offset, data.len() as u64),
            OpRef::Zero { offset, len } | OpRef::Trim { offset, len } => (offset, len),
            OpRef::Marker(_) => {
                self.append(disk, op, durable)?;
                return Ok(None);
            }
        };
        let logged = {
            let mut g = self.lock();
            let size = log::record_size(op);
            let overflowing = g.window.as_ref().is_some_and(|w| w.overflowing);
            let recorded = if overflowing || g.buffered + size > self.config.buffer_bytes {
                self.track_locked(&mut g, disk, offset, len, durable)
                    .map(|()| None)
            } else {
                match self.log_locked(&mut g, disk, op, durable) {
                    Ok((_, p)) => {
                        let log = &g.open.as_ref().expect("the record's log is open").applying;
                        Ok(Some((p, Applying::new(log))))
                    }
                    Err(e) if crate::reserve::is_no_space(&e) && !self.log_torn(&g) => {
                        self.disk_full_locked(&mut g, &e);
                        self.track_locked(&mut g, disk, offset, len, durable)
                            .map(|()| None)
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = &recorded
                && self.log_torn(&g)
            {
                self.lose_tracking(disk, offset, e);
            }
            let logged = recorded?;
            let d = disk as usize;
            if g.changed.len() <= d {
                g.changed.resize(d + 1, 0);
            }
            g.changed[d] += len;
            g.last_change = Some(g.last_time);
            logged
        };
        self.count_written(op);
        let Some((pending, applying)) = logged else {
            return Ok(None);
        };
        // The record is in the log: from here on, a failure leaves the log holding a change
        // the caller will not make.
        self.finish_append(pending)
            .inspect_err(|e| self.lose_tracking(disk, offset, e))?;
        ferry_types::failpoint::hit("agent-after-log-append");
        Ok(Some(applying))
    }

    /// True when the open log holds part of a record it could not cut back: nothing appended
    /// after it could be read.
    fn log_torn(&self, g: &Inner) -> bool {
        g.open.as_ref().is_some_and(|o| o.writer.torn)
    }

    /// Fault injection (tests, drills): the next change appended to the log (not a marker)
    /// fails half-way with `ENOSPC`, as on a full disk.
    pub fn inject_disk_full(&self) {
        self.inject_full.store(true, Ordering::Relaxed);
    }

    /// The sizes of the stream's disks (set once, at the start).
    pub(crate) fn set_disk_sizes(&self, sizes: Vec<u64>) {
        let _ = self.disk_sizes.set(sizes);
    }

    /// What the stream holds no longer matches what the VM's disks hold or will hold (a
    /// record half in a log that could not be cut back, a log that could not be synced): from
    /// now on the replica cannot be made equal to the disks from the stream.
    pub(crate) fn lose_tracking(&self, disk: u16, offset: u64, e: &AgentError) {
        let reason = format!(
            "a write to disk {disk} at byte {offset} could not be recorded reliably ({e}); check the source host's disk"
        );
        tracing::error!(dir = %self.dir.display(), %reason, "tracking lost");
        self.tracking_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
    }

    fn count_written(&self, op: OpRef<'_>) {
        if let OpRef::Write { data, .. } = op {
            self.counters
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    /// Append to the open log (creating it); returns the sequence and what is left to do
    /// outside the lock.
    fn log_locked(
        &self,
        g: &mut Inner,
        disk: u16,
        op: OpRef<'_>,
        durable: bool,
    ) -> Result<(Seq, PendingAppend), AgentError> {
        let now = Timestamp::now().max(g.last_time);
        let seq = g.next_seq;
        if g.open.is_none() {
            let writer = LogWriter::create(&self.dir, seq, now)?;
            let file = Arc::new(
                File::open(&writer.path)
                    .map_err(AgentError::io("open stream log", &writer.path))?,
            );
            g.open = Some(OpenLog {
                writer,
                file,
                applying: Arc::default(),
            });
        }
        let OpenLog {
            writer: w, file: f, ..
        } = g.open.as_mut().expect("open log exists");
        if !matches!(op, OpRef::Marker(_)) && self.inject_full.swap(false, Ordering::Relaxed) {
            w.fail_next = true;
        }
        let before = w.bytes;
        w.append(seq, now, disk, op)?;
        let added = w.bytes - before;
        let full = w.bytes >= self.config.seal_bytes;
        let file = durable.then(|| f.clone());
        g.next_seq = seq.next();
        g.last_time = now;
        g.buffered += added;
        // Closed logs stay listed until their sync has finished, so a concurrent durable
        // append cannot return while an earlier log it depends on is still being synced.
        let earlier = if durable {
            g.unsynced.clone()
        } else {
            Vec::new()
        };
        Ok((
            seq,
            PendingAppend {
                sync: file.map(|f| (earlier, f)),
                full,
            },
        ))
    }

    /// Sync what a durable append needs, and rotate a full log.
    fn finish_append(&self, pending: PendingAppend) -> Result<(), AgentError> {
        if let Some((earlier, f)) = pending.sync {
            self.sync_files(&earlier)?;
            f.sync_data()
                .map_err(AgentError::io("sync stream log", &self.dir))?;
        }
        if pending.full {
            // Close the log here, not in the sealer: while the sealer ships, the open log would
            // otherwise grow without bound and become one huge segment.
            self.rotate()?;
            self.seal_now.notify_one();
        }
        Ok(())
    }

    /// Append a marker and ask for it to be sealed at once; returns its sequence. A point
    /// marker is refused inside a catch-up window (no instant there is consistent).
    pub fn mark(&self, kind: MarkerKind) -> Result<Seq, AgentError> {
        if matches!(
            kind,
            MarkerKind::CrashConsistent | MarkerKind::AppConsistent
        ) && let Some(since) = self.unordered_since()
        {
            return Err(AgentError::CatchingUp { since });
        }
        let seq = self.append(0, OpRef::Marker(kind), true)?;
        if kind == MarkerKind::InitialSyncDone {
            self.update_state(|s| s.initial_sync_done_seq = Some(seq))?;
        }
        self.seal_now.notify_one();
        Ok(seq)
    }

    /// Make every appended record, and every tracked dirty block, durable (FLUSH).
    pub fn sync(&self) -> Result<(), AgentError> {
        let (closed, open) = {
            let mut g = self.lock();
            if let Some(w) = g.window.as_mut() {
                for m in w.maps.values_mut() {
                    m.sync()?;
                }
            }
            (g.unsynced.clone(), g.open.as_ref().map(|o| o.file.clone()))
        };
        self.sync_files(&closed)?;
        if let Some(f) = open {
            f.sync_data()
                .map_err(AgentError::io("sync stream log", &self.dir))?;
        }
        Ok(())
    }

    /// Sync closed logs, then stop listing them as unsynced.
    fn sync_files(&self, closed: &[(Seq, Arc<File>)]) -> Result<(), AgentError> {
        if closed.is_empty() {
            return Ok(());
        }
        for (_, f) in closed {
            f.sync_data()
                .map_err(AgentError::io("sync stream log", &self.dir))?;
        }
        self.lock()
            .unsynced
            .retain(|(first, _)| !closed.iter().any(|(c, _)| c == first));
        Ok(())
    }

    /// Close the open log (if it holds records) and queue it for shipping.
    pub(crate) fn rotate(&self) -> Result<(), AgentError> {
        let mut g = self.lock();
        let Some(OpenLog {
            writer: w,
            file: f,
            applying,
        }) = g.open.take()
        else {
            return Ok(());
        };
        if w.bytes == 0 {
            // A log whose first append failed (a full disk) holds nothing to ship. Removed
            // under the lock: the next log has the same name.
            return std::fs::remove_file(&w.path)
                .map_err(AgentError::io("remove empty stream log", &w.path));
        }
        g.closed.push_back(ClosedLog {
            path: w.path.clone(),
            first_seq: w.first_seq,
            last_seq: w.last_seq,
            first_time: w.first_time,
            bytes: w.bytes,
            applying,
        });
        // Not synced here (that would force writeback of every segment's worth of writes);
        // the next FUA or FLUSH syncs it.
        g.unsynced.push((w.first_seq, f));
        self.counters
            .bytes_logged
            .fetch_add(w.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Up to `max` of the oldest closed logs not shipped yet, and the digest the first one's
    /// segment must chain to.
    pub(crate) fn next_to_ship(&self, max: usize) -> (Vec<ClosedLog>, Digest) {
        let g = self.lock();
        let logs = g.closed.iter().take(max).cloned().collect();
        (logs, g.state.prev_digest())
    }

    /// Record that the segments of `logs` (the oldest closed ones, in order) are durable in
    /// the cache, the last with `digest`, `bytes` long in all: the state is stored, then the
    /// logs leave the ship buffer and are removed.
    pub(crate) fn shipped(
        &self,
        logs: &[ClosedLog],
        digest: Digest,
        bytes: u64,
    ) -> Result<(), AgentError> {
        let Some(last) = logs.last() else {
            return Ok(());
        };
        self.update_state(|s| {
            s.prev_digest = digest.to_hex();
            s.shipped_next = last.last_seq.next();
        })?;
        {
            let mut g = self.lock();
            for log in logs {
                if g.closed
                    .front()
                    .is_some_and(|c| c.first_seq == log.first_seq)
                {
                    g.closed.pop_front();
                    g.buffered = g.buffered.saturating_sub(log.bytes);
                }
                // Once in the cache account the log no longer needs to be durable here.
                g.unsynced.retain(|(first, _)| *first != log.first_seq);
            }
        }
        for log in logs {
            std::fs::remove_file(&log.path)
                .map_err(AgentError::io("remove shipped log", &log.path))?;
        }
        self.counters
            .bytes_shipped
            .fetch_add(bytes, Ordering::Relaxed);
        self.counters
            .segments_shipped
            .fetch_add(logs.len() as u64, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Change the stream's state and store it. The file is written outside the stream's lock,
    /// so writes go on meanwhile; `state_io` keeps the stores in the order of the changes.
    fn update_state(&self, change: impl FnOnce(&mut StreamState)) -> Result<(), AgentError> {
        let _io = self.state_io.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = {
            let mut g = self.lock();
            change(&mut g.state);
            g.state.clone()
        };
        state::store(&self.dir, &snapshot)
    }

    pub(crate) fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn status(&self) -> StreamStatus {
        let g = self.lock();
        let oldest = g
            .closed
            .front()
            .map(|c| c.first_time)
            .or_else(|| g.open.as_ref().map(|o| o.writer.first_time));
        let shipped_next = g.state.shipped_next.0;
        let (tracking, unordered_since, dirty_bytes) = match &g.window {
            None => ("ordered", None, 0),
            Some(w) => (
                if w.overflowing {
                    "overflow"
                } else if w.resyncing {
                    "resyncing"
                } else {
                    "catching-up"
                },
                Some(w.since),
                w.maps.values().map(DirtyMap::count).sum::<u64>() * ferry_format::BLOCK_SIZE,
            ),
        };
        StreamStatus {
            next_seq: g.next_seq.0,
            shipped_through: (shipped_next > 1).then(|| shipped_next - 1),
            oldest_unshipped: oldest,
            pending_logs: g.closed.len() + usize::from(g.open.is_some()),
            bytes_written: self.counters.bytes_written.load(Ordering::Relaxed),
            bytes_changed_per_disk: g.changed.clone(),
            last_change: g.last_change,
            bytes_logged: self.counters.bytes_logged.load(Ordering::Relaxed),
            bytes_shipped: self.counters.bytes_shipped.load(Ordering::Relaxed),
            segments_shipped: self.counters.segments_shipped.load(Ordering::Relaxed),
            initial_sync_done_seq: g.state.initial_sync_done_seq.map(|s| s.0),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            buffered_bytes: g.buffered,
            buffer_limit: self.config.buffer_bytes,
            tracking_lost: self
                .tracking_lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            tracking: tracking.to_string(),
            unordered_since,
            dirty_bytes,
            disk_full_since: g.disk_full_since,
            disk_full_count: self.counters.disk_full.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn initial_sync_done(&self) -> bool {
        self.lock().state.initial_sync_done_seq.is_some()
    }

    /// Bytes waiting in the ship buffer.
    pub fn buffered(&self) -> u64 {
        self.lock().buffered
    }
}

/// Closed logs not synced yet, by first sequence.
type Unsynced = Vec<(Seq, Arc<File>)>;

/// What an append leaves to do once the stream's lock is released.
struct PendingAppend {
    /// Files to sync for a durable append: closed logs not synced yet, and the open log.
    sync: Option<(Unsynced, Arc<File>)>,
    /// The open log reached the seal size.
    full: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(s: &Stream, n: u8) {
        s.append(
            0,
            OpRef::Write {
                offset: 0,
                data: &[n; 512],
            },
            false,
        )
        .unwrap();
    }

    #[test]
    fn a_log_whose_first_append_failed_is_never_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Stream::open(
            dir.path(),
            StreamId([6; 16]),
            Generation(1),
            Default::default(),
        )
        .unwrap();
        s.inject_disk_full();
        let data = [7u8; 512];
        let e = s
            .append(
                0,
                OpRef::Write {
                    offset: 0,
                    data: &data,
                },
                false,
            )
            .unwrap_err();
        assert!(crate::reserve::is_no_space(&e), "{e}");
        s.rotate().unwrap();
        assert_eq!(s.status().pending_logs, 0, "no empty log is closed");
        assert!(list_logs(dir.path()).unwrap().is_empty());
        write(&s, 1);
        assert_eq!(s.status().next_seq, 2, "the failed append took no sequence");
    }

    #[test]
    fn logs_survive_a_restart_and_a_torn_log_drops_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let (id, g) = (StreamId([4; 16]), Generation(1));
        let s = Stream::open(dir.path(), id, g, StreamConfig::default()).unwrap();
        for n in 0..3 {
            write(&s, n);
        }
        s.rotate().unwrap();
        write(&s, 3);
        write(&s, 4);
        s.rotate().unwrap();
        write(&s, 5);
        drop(s);

        // A plain restart keeps every record, in order.
        let s = Stream::open(dir.path(), id, g, StreamConfig::default()).unwrap();
        assert_eq!(s.status().next_seq, 7);
        assert_eq!(s.status().pending_logs, 3);
        drop(s);

        // Power loss tore the first log: it is cut, and the logs after it are dropped.
        let first = dir.path().join(log::file_name(Seq(1)));
        let len = std::fs::metadata(&first).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let s = Stream::open(dir.path(), id, g, StreamConfig::default()).unwrap();
        assert_eq!(s.status().pending_logs, 1);
        assert_eq!(
            s.status().next_seq,
            3,
            "the stream continues after the last whole record"
        );
        assert_eq!(list_logs(dir.path()).unwrap(), vec![Seq(1)]);
    }
}
