//! The processing loop of one protected item.
//!
//! Position is rebuilt from the newest durable record (recovery point or checkpoint) whenever
//! the processor starts or hits an error it cannot step over, so a `kill -9` at any moment
//! loses nothing (segments are deleted from the cache only once a durable record covers them)
//! and applies nothing twice (state is the record's maps plus the records after its sequence).

mod idle;
mod seed;
pub use idle::Waker;
pub use seed::{SeedBlocks, SeedSource};

use idle::IdlePoll;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_format::point::{PointKind, PointRecord};
use ferry_format::segment::{self, MarkerKind, Op, Record, Segment};
use ferry_format::{BLOCK_SIZE, Digest};
use ferry_storage::retry::{Backoff, pause, stop_requested};
use ferry_storage::{DynStore, Key, StoreError};
use ferry_types::{Generation, Seq, Timestamp};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::blocks::DiskState;
use crate::chunks::{self, Packer};
use crate::points::{self, PointInfo};
use crate::{ReplicaError, ReplicaLayout};

/// Tunables of the processor.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub zstd_level: i32,
    /// Target size of a pack object.
    pub pack_bytes: usize,
    /// Write a checkpoint once this many bytes of changed blocks are held in memory...
    pub checkpoint_bytes: u64,
    /// ...or when this long has passed since the last durable record with segments pending.
    pub checkpoint_interval: Duration,
    /// How often to look for the next segment when it is not there yet...
    pub poll_interval: Duration,
    /// ...and the longest pause between two looks once the stream has been idle for a while
    /// (see `processor/idle.rs`).
    pub idle_poll_max: Duration,
    /// Pause before trying again after an error (it doubles while errors last, up to 15 times
    /// this).
    pub retry_delay: Duration,
    /// How often garbage collection runs a step (see [`crate::gc`]).
    pub gc_interval: Duration,
    /// How long unreferenced objects stay before they are deleted.
    pub gc_grace: Duration,
    /// How long the next segment may be missing while a later one is in the cache before the
    /// stream is declared broken (a sequence gap: the missing records can never be applied).
    pub gap_grace: Duration,
}

/// How long applying a verified segment takes, for every processor of the process.
static APPLY_LATENCY: ferry_types::histogram::Histogram = ferry_types::histogram::Histogram::new();

/// The latency histogram of segment applies (every item of this process).
pub fn apply_latency() -> ferry_types::histogram::Snapshot {
    APPLY_LATENCY.snapshot()
}

/// The longest pause between two attempts while the same trouble lasts, in `retry_delay`s
/// (30 s by default).
const MAX_DELAY_FACTOR: u32 = 15;

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            zstd_level: 1,
            pack_bytes: 16 << 20,
            checkpoint_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(5),
            poll_interval: Duration::from_millis(100),
            idle_poll_max: Duration::from_secs(10),
            retry_delay: Duration::from_secs(2),
            gc_interval: Duration::from_secs(60),
            gc_grace: Duration::from_secs(600),
            gap_grace: Duration::from_secs(30),
        }
    }
}

/// What the processor has done; read by the control plane for state, health and RPO.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessorStatus {
    /// Sequence and time of the last record applied.
    pub applied_seq: Option<u64>,
    pub applied_time: Option<Timestamp>,
    /// Set once the initial copy is applied and the first point published.
    pub initial_sync_seq: Option<u64>,
    /// The overflow marker of a catch-up in progress, and its time when this run applied it.
    pub catch_up_seq: Option<u64>,
    pub catch_up_since: Option<Timestamp>,
    pub last_point: Option<PointInfo>,
    /// The newest app-consistent point (found among the newest 500 at start).
    pub last_app_point: Option<PointInfo>,
    pub segments_applied: u64,
    pub segment_bytes_applied: u64,
    pub points_published: u64,
    /// The error that stops progress now, if any.
    pub error: Option<String>,
    /// When the error is a refused segment.
    pub refused_segment: Option<u64>,
    /// Objects garbage collection deleted since the processor started.
    pub gc_deleted: u64,
    /// Segments of a stale (fenced) generation found in the cache and deleted.
    pub stale_segments_deleted: u64,
    /// A persistent sequence gap: `(missing, next present)`, the first sequence of the segment
    /// that never came and of the first later one in the cache. Only a repair recovers.
    pub gap: Option<(u64, u64)>,
    /// When the processor last looked for its next segment and found none: every segment the
    /// cache held before then is applied.
    #[serde(skip)]
    pub drained_at: Option<Timestamp>,
}

/// Asked before the processor publishes a record or deletes anything (a segment, a
/// checkpoint, garbage): whether it may still change the replica. A server whose lease on the
/// item passed to another answers [`ReplicaError::Fenced`], saying why, and the processor
/// stops; any other error (the lease could not be read) is retried like a store's.
pub type Fence = Arc<dyn Fn() -> Result<(), ReplicaError> + Send + Sync>;

/// The processor of one item.
pub struct Processor {
    layout: ReplicaLayout,
    cache: DynStore,
    disk_sizes: Vec<u64>,
    config: ProcessorConfig,
    status: Arc<Mutex<ProcessorStatus>>,
    waker: Waker,
    fence: Option<Fence>,
}

struct Position {
    disks: Vec<DiskState>,
    applied: Seq,
    applied_time: Timestamp,
    next_segment: Seq,
    prev_digest: Digest,
    generation: Generation,
    initial_sync_seq: Option<Seq>,
    /// The overflow marker of a catch-up in progress (its time, when seen by this run): no
    /// point is published until its catch-up-done marker.
    catch_up: Option<(Seq, Option<Timestamp>)>,
    /// Segments fully applied but not yet covered by a durable record.
    pending: Vec<Seq>,
    last_durable: Instant,
}

impl Processor {
    pub fn new(
        layout: ReplicaLayout,
        cache: DynStore,
        disk_sizes: Vec<u64>,
        config: ProcessorConfig,
    ) -> Self {
        Processor {
            layout,
            cache,
            disk_sizes,
            config,
            status: Arc::default(),
            waker: Waker::default(),
            fence: None,
        }
    }

    /// Ask `fence` before every publication and deletion.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// An error when the fence says this processor may no longer change the replica.
    fn check_fence(&self) -> Result<(), ReplicaError> {
        match &self.fence {
            Some(f) => f(),
            None => Ok(()),
        }
    }

    /// A handle to tell the processor what its source has shipped.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// A handle to the live status.
    pub fn status(&self) -> Arc<Mutex<ProcessorStatus>> {
        self.status.clone()
    }

    fn update(&self, f: impl FnOnce(&mut ProcessorStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Run until `shutdown` turns true (or its sender is gone). After an error it starts again
    /// from the last durable record, after a pause that grows while the errors last (logged
    /// once per change of error) and starts over once segments apply again.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.backoff();
        while !stop_requested(&shutdown) {
            let applied = self.segments_applied();
            let result = match self.recover().await {
                Ok(pos) => self.process(pos, &mut shutdown).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                if let ReplicaError::Fenced(why) = &e {
                    tracing::warn!(stream = %self.layout.stream, reason = %why, "processing stopped: the processor is fenced");
                    self.update(|s| s.error = Some(e.to_string()));
                    return;
                }
                if self.segments_applied() != applied {
                    backoff.succeeded();
                }
                if backoff.failed(&e) {
                    tracing::warn!(stream = %self.layout.stream, error = %e, "processing stopped; restarting from the last durable record");
                }
                self.update(|s| s.error = Some(e.to_string()));
                wait(&mut shutdown, backoff.delay()).await;
            }
        }
    }

    /// The pauses after errors: from `retry_delay`, doubling up to [`MAX_DELAY_FACTOR`] of it.
    fn backoff(&self) -> Backoff {
        let first = self.config.retry_delay;
        Backoff::new(first, first * MAX_DELAY_FACTOR)
    }

    fn segments_applied(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .segments_applied
    }

    /// The position of a replica with no record yet: zero disks, before the first segment.
    fn empty_position(&self, time: Timestamp, generation: Generation) -> Position {
        Position {
            disks: self
                .disk_sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| DiskState::empty(i, s))
                .collect(),
            applied: Seq(0),
            applied_time: time,
            next_segment: Seq(1),
            prev_digest: Digest::ZERO,
            generation,
            initial_sync_seq: None,
            catch_up: None,
            pending: Vec::new(),
            last_durable: Instant::now(),
        }
    }

    /// Rebuild the position from the newest durable record, and delete cache segments it covers.
    async fn recover(&self) -> Result<Position, ReplicaError> {
        let latest = points::latest_record(&self.layout).await?;
        let mut pos = match latest {
            None => self.empty_position(Timestamp(0), Generation(0)),
            Some(rec) => {
                let mut disks = Vec::with_capacity(rec.disks.len());
                for (i, d) in rec.disks.iter().enumerate() {
                    disks.push(DiskState::load(&self.layout, i, d).await?);
                }
                Position {
                    disks,
                    applied: rec.seq,
                    applied_time: rec.time,
                    next_segment: rec.segment_first_seq,
                    prev_digest: rec.segment_prev_digest,
                    generation: rec.generation,
                    initial_sync_seq: rec.initial_sync_seq,
                    catch_up: rec.catch_up_seq.map(|q| (q, None)),
                    pending: Vec::new(),
                    last_durable: Instant::now(),
                }
            }
        };
        for seg in self.cache.list(None).await? {
            if let Some(first) = segment::parse_object_name(seg.key.file_name())
                && first < pos.next_segment
            {
                self.check_fence()?;
                self.cache.delete(&seg.key).await?;
            }
        }
        if pos.disks.len() != self.disk_sizes.len() {
            return Err(ReplicaError::Internal(format!(
                "the replica has {} disks but the item has {}",
                pos.disks.len(),
                self.disk_sizes.len()
            )));
        }
        pos.pending.clear();
        let last = points::latest_point(&self.layout).await?;
        // Looked for among the newest points only: a restart need not read every record.
        let last_app = points::latest_app_point(&self.layout, 500).await?;
        self.update(|s| {
            s.applied_seq = (pos.applied.0 > 0).then_some(pos.applied.0);
            s.applied_time = (pos.applied.0 > 0).then_some(pos.applied_time);
            s.initial_sync_seq = pos.initial_sync_seq.map(|q| q.0);
            s.catch_up_seq = pos.catch_up.map(|(q, _)| q.0);
            s.last_point = last;
            s.last_app_point = last_app;
        });
        Ok(pos)
    }

    async fn process(
        &self,
        mut pos: Position,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ReplicaError> {
        let mut last_gc = Instant::now();
        let mut last_gap_check = Instant::now();
        let mut gap_since: Option<(Seq, Instant)> = None;
        let mut refusals = self.backoff();
        let mut idle = IdlePoll::new(self.config.poll_interval, self.config.idle_poll_max);
        while !stop_requested(shutdown) {
            if last_gc.elapsed() >= self.config.gc_interval {
                last_gc = Instant::now();
                self.collect_garbage(&mut pos).await?;
            }
            let key = Key::parse(&segment::object_name(pos.next_segment))?;
            let bytes = match self.cache.get(&key).await {
                Ok(b) => {
                    idle.busy();
                    if gap_since.take().is_some() {
                        self.update(|s| s.gap = None);
                    }
                    b
                }
                Err(StoreError::NotFound { .. }) => {
                    self.update(|s| s.drained_at = Some(Timestamp::now()));
                    let shipped = self.waker.shipped_from(pos.next_segment.0);
                    if shipped {
                        idle.busy();
                    }
                    if !pos.pending.is_empty()
                        && pos.last_durable.elapsed() >= self.config.checkpoint_interval
                    {
                        self.publish(&mut pos, PointKind::Checkpoint, None).await?;
                    }
                    let suspected = shipped || gap_since.is_some();
                    if last_gap_check.elapsed()
                        >= idle::gap_check_every(suspected, self.config.gap_grace)
                    {
                        last_gap_check = Instant::now();
                        self.check_gap(pos.next_segment, &mut gap_since).await?;
                    }
                    IdlePoll::wait(idle.empty(), &self.waker, shutdown).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Ok(stale) = segment::decode(&bytes)
                && stale.header.generation < pos.generation
            {
                // A writer fenced by a repair stored this after the fence: it is not part of
                // the stream. Deleting it lets the current writer store its own segment here.
                tracing::warn!(
                    stream = %self.layout.stream,
                    segment = %key,
                    stale = %stale.header.generation,
                    current = %pos.generation,
                    "deleted a segment of a stale generation"
                );
                self.check_fence()?;
                self.cache.delete(&key).await?;
                self.update(|s| s.stale_segments_deleted += 1);
                continue;
            }
            let seg = match self.verify(&bytes, &pos) {
                Ok(seg) => seg,
                Err(reason) => {
                    let e = ReplicaError::SegmentRefused {
                        first_seq: pos.next_segment.0,
                        reason,
                    };
                    if refusals.failed(&e) {
                        tracing::error!(stream = %self.layout.stream, error = %e, "refused a segment");
                    }
                    self.update(|s| {
                        s.error = Some(e.to_string());
                        s.refused_segment = Some(pos.next_segment.0);
                    });
                    wait(shutdown, refusals.delay()).await;
                    continue;
                }
            };
            self.journal(&seg, bytes.clone()).await?;
            ferry_types::failpoint::hit("processor-after-journal");
            let started = Instant::now();
            self.apply(&mut pos, &seg, bytes.len() as u64).await?;
            APPLY_LATENCY.observe(started.elapsed());
            refusals.succeeded();
            ferry_types::failpoint::hit("processor-after-apply");
            let dirty: u64 = pos
                .disks
                .iter()
                .map(|d| d.dirty.len() as u64 * BLOCK_SIZE)
                .sum();
            if dirty >= self.config.checkpoint_bytes
                || (!pos.pending.is_empty()
                    && pos.last_durable.elapsed() >= self.config.checkpoint_interval)
            {
                self.publish(&mut pos, PointKind::Checkpoint, None).await?;
            }
        }
        Ok(())
    }

    /// While segment `next` is missing: whether a later one is in the cache (the agent stores
    /// segments in order, so that is a hole in the stream), for longer than the grace.
    async fn check_gap(
        &self,
        next: Seq,
        since: &mut Option<(Seq, Instant)>,
    ) -> Result<(), ReplicaError> {
        let later = self
            .cache
            .list(None)
            .await?
            .iter()
            .filter_map(|o| segment::parse_object_name(o.key.file_name()))
            .filter(|first| *first > next)
            .min();
        let Some(later) = later else {
            *since = None;
            return Ok(());
        };
        let first_seen = match since {
            Some((at, t)) if *at == next => *t,
            _ => since.insert((next, Instant::now())).1,
        };
        if first_seen.elapsed() >= self.config.gap_grace {
            let e = ReplicaError::SequenceGap {
                missing: next.0,
                present: later.0,
            };
            tracing::error!(stream = %self.layout.stream, error = %e, "sequence gap");
            self.update(|s| {
                s.error = Some(e.to_string());
                s.gap = Some((next.0, later.0));
            });
        }
        Ok(())
    }

    /// Everything that must hold before any record of a segment is applied.
    fn verify(&self, bytes: &Bytes, pos: &Position) -> Result<Segment, String> {
        let seg = segment::decode(bytes).map_err(|e| e.to_string())?;
        let h = &seg.header;
        if h.stream != self.layout.stream {
            return Err(format!(
                "it belongs to stream {}, not {}",
                h.stream, self.layout.stream
            ));
        }
        if h.first_seq != pos.next_segment {
            return Err(format!(
                "it starts at sequence {}, expected {}",
                h.first_seq, pos.next_segment
            ));
        }
        if h.prev_digest != pos.prev_digest {
            return Err(
                "its previous-segment digest does not match the segment applied before it".into(),
            );
        }
        if h.generation < pos.generation {
            return Err(format!(
                "it was written by stale generation {} (current {})",
                h.generation, pos.generation
            ));
        }
        for r in &seg.records {
            if matches!(r.op, Op::Marker(_)) {
                continue;
            }
            let disk = pos.disks.get(r.disk as usize).ok_or_else(|| {
                format!(
                    "record {} names disk {}, the item has {}",
                    r.seq,
                    r.disk,
                    pos.disks.len()
                )
            })?;
            disk.check(&r.op)?;
        }
        Ok(seg)
    }

    async fn apply(&self, pos: &mut Position, seg: &Segment, len: u64) -> Result<(), ReplicaError> {
        pos.generation = seg.header.generation;
        let last = seg.header.last_seq;
        let start = pos.applied;
        let todo: Vec<&Record> = seg.records.iter().filter(|r| r.seq > start).collect();
        // Runs of writes between markers: each run's partial blocks are read before it applies
        // (a marker's flush in between changes which blocks are held in memory).
        for run in todo.split_inclusive(|r| matches!(r.op, Op::Marker(_))) {
            self.prefetch(pos, run).await?;
            for r in run {
                pos.applied = r.seq;
                pos.applied_time = r.time;
                match &r.op {
                    Op::Marker(kind) => self.at_marker(pos, seg, r, *kind).await?,
                    op => pos.disks[r.disk as usize].apply(op),
                }
            }
        }
        if pos.next_segment <= last {
            pos.prev_digest = seg.digest;
            pos.next_segment = last.next();
            pos.pending.push(seg.header.first_seq);
        }
        self.update(|s| {
            s.applied_seq = Some(pos.applied.0);
            s.applied_time = Some(pos.applied_time);
            s.segments_applied += 1;
            s.segment_bytes_applied += len;
            s.error = None;
            s.refused_segment = None;
        });
        Ok(())
    }

    /// A marker: publish a point of its kind once the initial copy is in and no catch-up is
    /// in progress.
    async fn at_marker(
        &self,
        pos: &mut Position,
        seg: &Segment,
        r: &Record,
        kind: MarkerKind,
    ) -> Result<(), ReplicaError> {
        let point_kind = match kind {
            MarkerKind::InitialSyncDone => {
                pos.initial_sync_seq.get_or_insert(r.seq);
                PointKind::CrashConsistent
            }
            MarkerKind::CrashConsistent => PointKind::CrashConsistent,
            MarkerKind::AppConsistent => PointKind::AppConsistent,
            MarkerKind::Overflow => {
                if pos.catch_up.is_none() {
                    tracing::warn!(stream = %self.layout.stream, seq = %r.seq, "the agent's ship buffer overflowed; no point until its catch-up completes");
                    pos.catch_up = Some((r.seq, Some(r.time)));
                    self.update(|s| {
                        s.catch_up_seq = Some(r.seq.0);
                        s.catch_up_since = Some(r.time);
                    });
                }
                return Ok(());
            }
            MarkerKind::CatchUpDone => {
                pos.catch_up = None;
                self.update(|s| {
                    s.catch_up_seq = None;
                    s.catch_up_since = None;
                });
                PointKind::CrashConsistent
            }
        };
        if pos.initial_sync_seq.is_none() || pos.catch_up.is_some() {
            return Ok(());
        }
        let last = seg.header.last_seq;
        let at_end = r.seq == last;
        if at_end {
            pos.prev_digest = seg.digest;
            pos.next_segment = last.next();
            pos.pending.push(seg.header.first_seq);
        }
        let resume = (!at_end).then_some((seg.header.first_seq, seg.header.prev_digest));
        self.publish(pos, point_kind, resume).await
    }

    /// One garbage-collection step, with what this processor holds in memory counted as
    /// referenced; candidate packs are dropped from dedup so no new block points into them.
    async fn collect_garbage(&self, pos: &mut Position) -> Result<(), ReplicaError> {
        let mut refs = crate::gc::Referenced::default();
        for d in &pos.disks {
            refs.pages.extend(d.tree.nodes().map(|p| (d.index, p)));
            refs.packs.extend(
                d.map
                    .iter()
                    .filter(|r| !r.is_zero())
                    .map(|r| (d.index, r.pack)),
            );
        }
        self.check_fence()?;
        let report = crate::gc::collect(&self.layout, &refs, self.config.gc_grace).await?;
        for d in pos.disks.iter_mut() {
            d.known
                .retain(|_, r| !report.pending_packs.contains(&(d.index, r.pack)));
        }
        if report.marked + report.deleted > 0 {
            tracing::info!(stream = %self.layout.stream, marked = report.marked, deleted = report.deleted, "garbage collection");
        }
        self.update(|s| {
            s.gc_deleted += report.deleted as u64;
        });
        Ok(())
    }

    /// Keep a verified segment in the target's journal (before it can leave the cache), so any
    /// instant within the journal window can be rebuilt from the point before it.
    async fn journal(&self, seg: &Segment, bytes: Bytes) -> Result<(), ReplicaError> {
        let key = self.layout.journal_key(seg.header.first_seq);
        match self.layout.meta.put_new(&key, bytes).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Read, in parallel, every stored block the records change only in part.
    async fn prefetch(&self, pos: &mut Position, records: &[&Record]) -> Result<(), ReplicaError> {
        let mut need = BTreeSet::new();
        for r in records {
            if !matches!(r.op, Op::Marker(_)) {
                for b in pos.disks[r.disk as usize].blocks_to_load(&r.op) {
                    need.insert((r.disk as usize, b));
                }
            }
        }
        let loaded: Vec<(usize, u64, Vec<u8>)> = futures::stream::iter(need)
            .map(|(d, b)| {
                let r = pos.disks[d].map[b as usize];
                let layout = &self.layout;
                async move {
                    chunks::read_chunk(layout, d, &r)
                        .await
                        .map(|data| (d, b, data))
                }
            })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        for (d, b, data) in loaded {
            pos.disks[d].insert_loaded(b, data);
        }
        Ok(())
    }

    /// Make every change durable and publish a record at the current position. `resume` is
    /// the segment to restart from when the position is inside a segment.
    async fn publish(
        &self,
        pos: &mut Position,
        kind: PointKind,
        resume: Option<(Seq, Digest)>,
    ) -> Result<(), ReplicaError> {
        self.flush(pos).await?;
        let (segment_first_seq, segment_prev_digest) =
            resume.unwrap_or((pos.next_segment, pos.prev_digest));
        let rec = PointRecord {
            kind,
            stream: self.layout.stream,
            generation: pos.generation,
            seq: pos.applied,
            time: pos.applied_time,
            segment_first_seq,
            segment_prev_digest,
            initial_sync_seq: pos.initial_sync_seq,
            catch_up_seq: pos.catch_up.map(|(q, _)| q),
            disks: pos.disks.iter().map(|d| d.disk_map()).collect(),
        };
        let prefix = match kind {
            PointKind::Checkpoint => self.layout.checkpoints_prefix(),
            _ => self.layout.points_prefix(),
        };
        let key = prefix.join(&rec.object_name());
        self.check_fence()?;
        match self
            .layout
            .meta
            .put_new(&key, Bytes::from(rec.encode()))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        ferry_types::failpoint::hit("processor-after-point");
        pos.last_durable = Instant::now();
        for first in std::mem::take(&mut pos.pending) {
            let key = Key::parse(&segment::object_name(first))?;
            if let Err(e) = self.cache.delete(&key).await {
                tracing::warn!(%key, error = %e, "delete applied segment; it will be removed on restart");
            }
        }
        if kind == PointKind::Checkpoint {
            points::prune_checkpoints(&self.layout, rec.seq).await;
        }
        let info = PointInfo::from_record(&rec);
        self.update(|s| {
            if kind != PointKind::Checkpoint {
                s.points_published += 1;
                if kind == PointKind::AppConsistent {
                    s.last_app_point = Some(info.clone());
                }
                s.last_point = Some(info);
            }
            s.initial_sync_seq = pos.initial_sync_seq.map(|q| q.0);
        });
        Ok(())
    }

    /// Store every changed block as chunks in packs, then the changed map pages.
    async fn flush(&self, pos: &mut Position) -> Result<(), ReplicaError> {
        if !pos.disks.iter().any(|d| d.needs_flush()) {
            return Ok(());
        }
        let disks = std::mem::take(&mut pos.disks);
        let (level, pack_bytes) = (self.config.zstd_level, self.config.pack_bytes);
        let (mut disks, packs) =
            tokio::task::spawn_blocking(move || pack_dirty(disks, level, pack_bytes))
                .await
                .map_err(|e| ReplicaError::Internal(format!("pack chunks: {e}")))??;
        let uploads = packs.into_iter().map(|(d, id, bytes)| {
            let key = self.layout.pack_key(d, id);
            let store = self.layout.disks[d].clone();
            async move { store.put_new(&key, bytes).await.map(|_| ()) }
        });
        futures::stream::iter(uploads)
            .buffer_unordered(4)
            .try_collect::<Vec<_>>()
            .await?;
        let mut pages = Vec::new();
        for d in disks.iter_mut() {
            for (digest, bytes) in d.encode_dirty_nodes()? {
                pages.push((d.index, digest, bytes));
            }
        }
        let uploads = pages.into_iter().map(|(d, digest, bytes)| {
            let key = self.layout.page_key(d, &digest);
            let store = self.layout.disks[d].clone();
            async move {
                match store.put_new(&key, Bytes::from(bytes)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        futures::stream::iter(uploads)
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        pos.disks = disks;
        Ok(())
    }
}

type Packs = Vec<(usize, u64, Bytes)>;

/// Hash, dedup and compress every changed block (CPU work, on a blocking thread).
fn pack_dirty(
    mut disks: Vec<DiskState>,
    level: i32,
    pack_bytes: usize,
) -> Result<(Vec<DiskState>, Packs), ReplicaError> {
    let mut packs = Vec::new();
    for d in disks.iter_mut() {
        let mut packer = Packer::new(pack_bytes);
        let mut refs = Vec::with_capacity(d.dirty.len());
        let mut dirty: Vec<_> = d.dirty.drain().collect();
        dirty.sort_by_key(|(b, _)| *b);
        for (b, block) in dirty {
            let r = match block {
                crate::blocks::Block::Zero => ferry_format::map::ChunkRef::ZERO,
                crate::blocks::Block::Data(data) if data.iter().all(|&b| b == 0) => {
                    ferry_format::map::ChunkRef::ZERO
                }
                crate::blocks::Block::Data(data) => {
                    let hash = Digest::of(&data);
                    match d.known.get(&hash) {
                        Some(r) => *r,
                        None => {
                            let r = packer.add(hash, &data, level)?;
                            d.known.insert(hash, r);
                            r
                        }
                    }
                }
            };
            refs.push((b, r));
        }
        packer.seal();
        packs.extend(
            packer
                .finished
                .into_iter()
                .map(|(id, bytes)| (d.index, id, bytes)),
        );
        d.commit_refs(refs);
    }
    Ok((disks, packs))
}

/// Sleep for `d`, or less when the processor is to stop (the loops check that next).
async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    pause(shutdown, d).await;
}

/// The BLAKE3 digest of every block of every disk as the replica's newest record holds it
/// ([`Digest::ZERO`] for a zero block): what a hash-compare resync compares local blocks with.
pub async fn block_hashes(layout: &ReplicaLayout) -> Result<Vec<Vec<Digest>>, ReplicaError> {
    let Some(rec) = points::latest_record(layout).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(rec.disks.len());
    for (i, d) in rec.disks.iter().enumerate() {
        let state = DiskState::load(layout, i, d).await?;
        out.push(state.map.iter().map(|r| r.hash).collect());
    }
    Ok(out)
}

impl Processor {
    /// The time of the first catch-up-done marker after `after`, looking through the journal
    /// from segment `from` on; none when it is not in the journal (yet).
    async fn catch_up_end(&self, after: Seq, from: Seq) -> Result<Option<Timestamp>, ReplicaError> {
        let mut next = from;
        loop {
            let bytes = match self.layout.meta.get(&self.layout.journal_key(next)).await {
                Ok(b) => b,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let seg = segment::decode(&bytes).map_err(ReplicaError::format("journal segment"))?;
            let end = seg
                .records
                .iter()
                .find(|r| r.seq > after && r.op == Op::Marker(MarkerKind::CatchUpDone));
            if let Some(r) = end {
                return Ok(Some(r.time));
            }
            next = seg.header.last_seq.next();
        }
    }

    /// The disks exactly as they were at instant `t`: from `base` (a point at or before `t`),
    /// replay the journal's records sequenced at or before `t`, and publish the result as a
    /// crash-consistent point at the last such record (its time is that record's). Returns
    /// `base` itself when no journaled record falls between it and `t`.
    pub async fn replay_to(
        &self,
        base: &PointRecord,
        t: Timestamp,
    ) -> Result<PointRecord, ReplicaError> {
        let mut disks = Vec::with_capacity(base.disks.len());
        for (i, d) in base.disks.iter().enumerate() {
            disks.push(DiskState::load(&self.layout, i, d).await?);
        }
        let mut pos = Position {
            disks,
            applied: base.seq,
            applied_time: base.time,
            next_segment: base.segment_first_seq,
            prev_digest: base.segment_prev_digest,
            generation: base.generation,
            initial_sync_seq: base.initial_sync_seq,
            catch_up: base.catch_up_seq.map(|q| (q, None)),
            pending: Vec::new(),
            last_durable: Instant::now(),
        };
        let mut resume = (base.segment_first_seq, base.segment_prev_digest);
        'segments: loop {
            let key = self.layout.journal_key(pos.next_segment);
            let bytes = match self.layout.meta.get(&key).await {
                Ok(b) => b,
                Err(StoreError::NotFound { .. }) => {
                    // The end of the journal, unless a later segment is there: then this one
                    // was pruned (the journal is pruned from the front), and stopping here
                    // would answer with an earlier instant than `t`.
                    let later = self
                        .layout
                        .meta
                        .list(Some(&self.layout.journal_prefix()))
                        .await?
                        .iter()
                        .filter_map(|o| segment::parse_object_name(o.key.file_name()))
                        .any(|first| first > pos.next_segment);
                    if later {
                        return Err(ReplicaError::UnknownPoint(format!(
                            "at {t} (the journal after point {} was pruned; choose a later \
                             instant or a listed point)",
                            crate::points::point_id(base.seq)
                        )));
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if let Ok(seg) = segment::decode(&bytes)
                && seg.header.generation > pos.generation
            {
                // A repair fenced the stream here: the new generation starts with a resync,
                // which is a catch-up window until its catch-up-done marker.
                match seg.records.first() {
                    Some(first) if first.time <= t => {
                        return Err(ReplicaError::NotRecoverable {
                            at: t,
                            since: first.time,
                            until: self.catch_up_end(first.seq, pos.next_segment).await?,
                        });
                    }
                    _ => break 'segments,
                }
            }
            let seg = self
                .verify(&bytes, &pos)
                .map_err(|reason| ReplicaError::SegmentRefused {
                    first_seq: pos.next_segment.0,
                    reason: format!("journal: {reason}"),
                })?;
            let todo: Vec<&Record> = seg
                .records
                .iter()
                .filter(|r| r.seq > pos.applied && r.time <= t)
                .collect();
            self.prefetch(&mut pos, &todo).await?;
            for r in &todo {
                match r.op {
                    Op::Marker(MarkerKind::Overflow) if pos.catch_up.is_none() => {
                        pos.catch_up = Some((r.seq, Some(r.time)));
                    }
                    Op::Marker(MarkerKind::CatchUpDone) => pos.catch_up = None,
                    Op::Marker(_) => {}
                    ref op => pos.disks[r.disk as usize].apply(op),
                }
                pos.applied = r.seq;
                pos.applied_time = r.time;
            }
            let last = seg.header.last_seq;
            if pos.applied < last {
                // The instant falls inside this segment.
                resume = (seg.header.first_seq, seg.header.prev_digest);
                break 'segments;
            }
            pos.prev_digest = seg.digest;
            pos.next_segment = last.next();
            resume = (pos.next_segment, pos.prev_digest);
        }
        if let Some((_, since)) = pos.catch_up {
            return Err(ReplicaError::NotRecoverable {
                at: t,
                since: since.unwrap_or(base.time),
                until: self.catch_up_end(pos.applied, resume.0).await?,
            });
        }
        if pos.applied == base.seq {
            return Ok(base.clone());
        }
        self.flush(&mut pos).await?;
        let rec = PointRecord {
            kind: PointKind::CrashConsistent,
            stream: self.layout.stream,
            generation: pos.generation,
            seq: pos.applied,
            time: pos.applied_time,
            segment_first_seq: resume.0,
            segment_prev_digest: resume.1,
            initial_sync_seq: pos.initial_sync_seq,
            catch_up_seq: None,
            disks: pos.disks.iter().map(|d| d.disk_map()).collect(),
        };
        let key = self.layout.points_prefix().join(&rec.object_name());
        match self
            .layout
            .meta
            .put_new(&key, Bytes::from(rec.encode()))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(rec),
            Err(e) => Err(e.into()),
        }
    }
}
