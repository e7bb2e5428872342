//! One protected VM's ordered write stream: every write of every disk, in one order.
//!
//! Appends go to the open local log file ([`crate::log`]); [`Stream::rotate`] closes it so the
//! sealer can turn it into a segment, and [`Stream::shipped`] retires a closed log once its
//! segment is durable in the cache account. After a restart, [`Stream::open`] finds every
//! log file that was not shipped yet and queues it again, so no acknowledged write is lost.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_format::Digest;
use ferry_format::segment::{MarkerKind, OpRef};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use serde::Serialize;
use tokio::sync::Notify;

use crate::AgentError;
use crate::log::{self, LogWriter};
use crate::state::{self, StreamState};

/// How a stream is cut into segments.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Seal at least this often while records are pending.
    pub seal_interval: Duration,
    /// Seal as soon as this many bytes are pending.
    pub seal_bytes: u64,
    /// zstd level for segment bodies.
    pub zstd_level: i32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            seal_interval: Duration::from_secs(1),
            seal_bytes: 8 << 20,
            zstd_level: 1,
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
}

struct Inner {
    next_seq: Seq,
    last_time: Timestamp,
    open: Option<(LogWriter, Arc<File>)>,
    closed: VecDeque<ClosedLog>,
    /// Closed logs not synced yet: the next FUA or FLUSH syncs them before the open log, so a
    /// synced record never follows one that could be lost.
    unsynced: Vec<(Seq, Arc<File>)>,
    state: StreamState,
}

/// What the stream has done, for health and RPO.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStatus {
    pub next_seq: u64,
    /// Sequence of the last record durable in the cache account.
    pub shipped_through: Option<u64>,
    /// Time of the oldest record not yet in the cache account (none when all is shipped).
    pub oldest_unshipped: Option<Timestamp>,
    pub pending_logs: usize,
    pub bytes_written: u64,
    pub bytes_logged: u64,
    pub bytes_shipped: u64,
    pub segments_shipped: u64,
    pub initial_sync_done_seq: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    bytes_written: AtomicU64,
    bytes_logged: AtomicU64,
    bytes_shipped: AtomicU64,
    segments_shipped: AtomicU64,
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
        std::fs::create_dir_all(dir).map_err(AgentError::io("create stream directory", dir))?;
        let fresh = StreamState {
            stream,
            generation,
            prev_digest: String::new(),
            shipped_next: Seq(1),
            initial_sync_done_seq: None,
        };
        let state = match state::load(dir)? {
            Some(s) if s.stream == stream && s.generation == generation => s,
            _ => {
                remove_logs(dir)?;
                state::store(dir, &fresh)?;
                fresh
            }
        };
        let (closed, next_seq, last_time) = recover_logs(dir, &state)?;
        Ok(Arc::new(Stream {
            dir: dir.to_path_buf(),
            config,
            inner: Mutex::new(Inner {
                next_seq,
                last_time,
                open: None,
                closed,
                unsynced: Vec::new(),
                state,
            }),
            seal_now: Notify::new(),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        }))
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

    /// Append one record; with `durable`, it is on stable storage when this returns.
    /// Returns the record's sequence.
    pub fn append(&self, disk: u16, op: OpRef<'_>, durable: bool) -> Result<Seq, AgentError> {
        let (seq, file, full) = {
            let mut g = self.lock();
            let now = Timestamp::now().max(g.last_time);
            let seq = g.next_seq;
            if g.open.is_none() {
                let w = LogWriter::create(&self.dir, seq, now)?;
                let f = Arc::new(
                    File::open(&w.path).map_err(AgentError::io("open stream log", &w.path))?,
                );
                g.open = Some((w, f));
            }
            let (w, f) = g.open.as_mut().expect("open log exists");
            w.append(seq, now, disk, op)?;
            let full = w.bytes >= self.config.seal_bytes;
            let file = durable.then(|| f.clone());
            g.next_seq = seq.next();
            g.last_time = now;
            // Closed logs stay listed until their sync has finished, so a concurrent durable
            // append cannot return while an earlier log it depends on is still being synced.
            let earlier = if durable {
                g.unsynced.clone()
            } else {
                Vec::new()
            };
            (seq, file.map(|f| (earlier, f)), full)
        };
        if let OpRef::Write { data, .. } = op {
            self.counters
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Some((earlier, f)) = file {
            self.sync_files(&earlier)?;
            f.sync_data()
                .map_err(AgentError::io("sync stream log", &self.dir))?;
        }
        if full {
            // Close the log here, not in the sealer: while the sealer ships, the open log would
            // otherwise grow without bound and become one huge segment.
            self.rotate()?;
            self.seal_now.notify_one();
        }
        Ok(seq)
    }

    /// Append a marker and ask for it to be sealed at once; returns its sequence.
    pub fn mark(&self, kind: MarkerKind) -> Result<Seq, AgentError> {
        let seq = self.append(0, OpRef::Marker(kind), true)?;
        if kind == MarkerKind::InitialSyncDone {
            let mut g = self.lock();
            g.state.initial_sync_done_seq = Some(seq);
            state::store(&self.dir, &g.state)?;
        }
        self.seal_now.notify_one();
        Ok(seq)
    }

    /// Make every appended record durable (FLUSH).
    pub fn sync(&self) -> Result<(), AgentError> {
        let (closed, open) = {
            let g = self.lock();
            (g.unsynced.clone(), g.open.as_ref().map(|(_, f)| f.clone()))
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
        let Some((w, f)) = g.open.take() else {
            return Ok(());
        };
        g.closed.push_back(ClosedLog {
            path: w.path.clone(),
            first_seq: w.first_seq,
            last_seq: w.last_seq,
            first_time: w.first_time,
        });
        // Not synced here (that would force writeback of every segment's worth of writes);
        // the next FUA or FLUSH syncs it.
        g.unsynced.push((w.first_seq, f));
        self.counters
            .bytes_logged
            .fetch_add(w.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// The oldest closed log not shipped yet, and the digest its segment must chain to.
    pub(crate) fn next_to_ship(&self) -> Option<(ClosedLog, Digest)> {
        let g = self.lock();
        g.closed.front().map(|c| (c.clone(), g.state.prev_digest()))
    }

    /// Record that `log`'s segment (with `digest`, `bytes` long) is durable in the cache.
    pub(crate) fn shipped(
        &self,
        log: &ClosedLog,
        digest: Digest,
        bytes: u64,
    ) -> Result<(), AgentError> {
        let mut g = self.lock();
        g.state.prev_digest = digest.to_hex();
        g.state.shipped_next = log.last_seq.next();
        state::store(&self.dir, &g.state)?;
        g.closed.pop_front();
        // Once in the cache account the log no longer needs to be durable here.
        g.unsynced.retain(|(first, _)| *first != log.first_seq);
        drop(g);
        std::fs::remove_file(&log.path).map_err(AgentError::io("remove shipped log", &log.path))?;
        self.counters
            .bytes_shipped
            .fetch_add(bytes, Ordering::Relaxed);
        self.counters
            .segments_shipped
            .fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
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
            .or_else(|| g.open.as_ref().map(|(w, _)| w.first_time));
        let shipped_next = g.state.shipped_next.0;
        StreamStatus {
            next_seq: g.next_seq.0,
            shipped_through: (shipped_next > 1).then(|| shipped_next - 1),
            oldest_unshipped: oldest,
            pending_logs: g.closed.len() + usize::from(g.open.is_some()),
            bytes_written: self.counters.bytes_written.load(Ordering::Relaxed),
            bytes_logged: self.counters.bytes_logged.load(Ordering::Relaxed),
            bytes_shipped: self.counters.bytes_shipped.load(Ordering::Relaxed),
            segments_shipped: self.counters.segments_shipped.load(Ordering::Relaxed),
            initial_sync_done_seq: g.state.initial_sync_done_seq.map(|s| s.0),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    pub(crate) fn initial_sync_done(&self) -> bool {
        self.lock().state.initial_sync_done_seq.is_some()
    }
}

fn remove_logs(dir: &Path) -> Result<(), AgentError> {
    for name in list_logs(dir)? {
        let p = dir.join(log::file_name(name));
        std::fs::remove_file(&p).map_err(AgentError::io("remove old stream log", &p))?;
    }
    Ok(())
}

fn list_logs(dir: &Path) -> Result<Vec<Seq>, AgentError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(AgentError::io("list stream logs", dir))? {
        let entry = entry.map_err(AgentError::io("list stream logs", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(log::parse_file_name) {
            seqs.push(seq);
        }
    }
    seqs.sort();
    Ok(seqs)
}

/// Queue every log left by an earlier run: logs already shipped are removed, everything from
/// the first torn record on (power loss) is cut, and the rest wait to be shipped in order.
fn recover_logs(
    dir: &Path,
    state: &StreamState,
) -> Result<(VecDeque<ClosedLog>, Seq, Timestamp), AgentError> {
    let mut closed = VecDeque::new();
    let mut next = state.shipped_next;
    let mut last_time = Timestamp(0);
    let mut torn = false;
    for first in list_logs(dir)? {
        let path = dir.join(log::file_name(first));
        if torn {
            // Nothing after a torn record was ever synced (a sync covers every earlier log),
            // so no write acknowledged with FUA or FLUSH is among what is dropped here.
            tracing::warn!(path = %path.display(), "drop a stream log that follows a torn one");
            std::fs::remove_file(&path).map_err(AgentError::io("remove stream log", &path))?;
            continue;
        }
        let (records, dropped) = log::read(&path)?;
        torn = dropped > 0;
        if dropped > 0 {
            tracing::warn!(path = %path.display(), dropped, "cut a torn tail off the stream log");
            let keep = std::fs::metadata(&path)
                .map_err(AgentError::io("stat stream log", &path))?
                .len()
                - dropped;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(AgentError::io("open stream log", &path))?;
            f.set_len(keep)
                .map_err(AgentError::io("truncate stream log", &path))?;
        }
        let (Some(first_rec), Some(last_rec)) = (records.first(), records.last()) else {
            std::fs::remove_file(&path)
                .map_err(AgentError::io("remove empty stream log", &path))?;
            continue;
        };
        if last_rec.seq < state.shipped_next {
            std::fs::remove_file(&path)
                .map_err(AgentError::io("remove shipped stream log", &path))?;
            continue;
        }
        next = last_rec.seq.next();
        last_time = last_rec.time;
        closed.push_back(ClosedLog {
            path,
            first_seq: first_rec.seq,
            last_seq: last_rec.seq,
            first_time: first_rec.time,
        });
    }
    Ok((closed, next, last_time))
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
