//! Storage efficiency of recovery points, measured on the replica library itself: a
//! [`Processor`] applies segments built here to local `file://` stores. Time is simulated (the
//! records' and markers' times are set here), so nothing waits for it.
//!
//! - **Stored bytes per unique byte**: a disk filled with data of realistic compressibility, then
//!   24 h of 1 % daily overwrite churn (4 KiB and 64 KiB writes at random offsets) with a
//!   crash-consistent point every 5 minutes, all 288 kept. Every object under the replica's
//!   prefix is counted against the zstd size (at the packs' level) of every distinct 64 KiB
//!   block content the points hold.
//! - **Metadata per point**: the bytes (record and map pages) one point adds for 1, 100 and
//!   10 000 (`--quick`: 1 000) changed blocks on a 1 GiB and a 64 GiB disk, sparse (nothing else
//!   ever written) and full (every block mapped before; that map is built directly, the replica
//!   never needs the disk's data for it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ferry_agent::stream::StreamConfig;
use ferry_format::map::ChunkRef;
use ferry_format::point::MapRoot;
use ferry_format::segment::{self, MarkerKind, Op, Record};
use ferry_format::{BLOCK_SIZE, Digest, pack};
use ferry_replica::{Processor, ProcessorConfig, ProcessorStatus, ReplicaLayout, gc, points, tree};
use ferry_storage::{DynStore, Key, StoreError};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::data::Pool;
use super::{Figure, MB, MIB, Plan, Target, progress};

const BS: usize = BLOCK_SIZE as usize;
const PAGE: usize = 4096;
const SECOND: i64 = 1_000_000_000;
const DAY: i64 = 24 * 3600 * SECOND;
const POINT_EVERY: i64 = 300 * SECOND;
/// Points of the simulated day after the initial one: 288.
const POINTS: i64 = DAY / POINT_EVERY;
/// Simulated start: 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600 * SECOND;
/// Fixed, so the byte figures are the same from run to run.
const SEED: u64 = 0x5eed_f00d;
/// Longer than the run: the processor's own garbage collection never starts.
const NEVER: Duration = Duration::from_secs(24 * 3600);
const WAIT: Duration = Duration::from_secs(300);

const META_DISKS: [(u64, &str); 2] = [(1 << 30, "1GiB"), (64 << 30, "64GiB")];
/// Changed blocks per measured point (`--quick`: 1 000 instead of 10 000).
const CHANGED: [usize; 3] = [1, 100, 10_000];
const CHANGED_QUICK: [usize; 3] = [1, 100, 1_000];

pub async fn run(dir: &Path, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let mut figures = efficiency(&dir.join("storage-day"), plan, pool)
        .await
        .context("stored bytes per unique byte")?;
    figures.extend(
        metadata(&dir.join("storage-meta"), plan, pool)
            .await
            .context("metadata per point")?,
    );
    Ok(figures)
}

/// A day of 5-minute points on a disk written in full: stored bytes per unique byte.
async fn efficiency(dir: &Path, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let size = plan.disk;
    let config = ProcessorConfig {
        poll_interval: Duration::from_millis(5),
        gc_interval: NEVER,
        ..Default::default()
    };
    let level = config.zstd_level;
    let mut replica = Replica::create(dir, size, config)?;
    let mut day = Day {
        pool: pool.clone(),
        size,
        level,
        chain: Chain::new(replica.layout.stream),
        changed: HashMap::new(),
        unique: Unique::default(),
    };
    progress(format!(
        "storage: filling a {} MiB disk, then 24 h of 1 % daily churn with a point every 5 min",
        size / MIB
    ));
    let t = Instant::now();
    replica.start();
    let (mut day, initial) = feed(&replica, move |tx| {
        let seq = day.fill(tx)?;
        Ok((day, seq))
    })
    .await?;
    replica.wait_point(initial).await?;
    replica.stop().await;
    let collected = collect_garbage(&replica.layout).await?;
    let before = replica.usage().await?;
    let initial_unique = day.unique.clone();
    progress(format!(
        "storage: initial point in {:.1} s ({} blocks, zstd level {level} keeps {:.0} % of them; \
         {collected} unreferenced objects collected): {}",
        t.elapsed().as_secs_f64(),
        initial_unique.blocks,
        100.0 * initial_unique.bytes as f64 / (initial_unique.blocks * BLOCK_SIZE) as f64,
        before.describe()
    ));

    let t = Instant::now();
    replica.start();
    let (day, churn) = feed(&replica, move |tx| {
        let churn = day.churn(tx)?;
        Ok((day, churn))
    })
    .await?;
    replica.wait_point(day.chain.last()).await?;
    replica.stop().await;
    let collected = collect_garbage(&replica.layout).await?;
    // As the monitor keeps it for a 24 h journal window, seen at the last point.
    let journal_pruned =
        points::prune_journal(&replica.layout, Timestamp(T0 + POINTS * POINT_EVERY - DAY)).await?;
    let kept = points::list(&replica.layout).await?.len();
    if kept as i64 != POINTS + 1 {
        bail!("{kept} points kept, expected {}", POINTS + 1);
    }
    let after = replica.usage().await?;
    progress(format!(
        "storage: 24 h simulated in {:.1} s: {} writes ({} of 4 KiB) of {:.1} MB, {} blocks \
         changed, {kept} points; {collected} objects collected, {journal_pruned} journal segments \
         past the 24 h window pruned",
        t.elapsed().as_secs_f64(),
        churn.writes,
        churn.small,
        churn.bytes as f64 / MB,
        day.changed.len(),
    ));
    progress(format!("storage: after 24 h: {}", after.describe()));
    let unique = day.unique.bytes;
    let churn_unique = unique - initial_unique.bytes;
    progress(format!(
        "storage: unique data {:.1} MB ({} blocks), of which the churn added {:.2} MB ({} blocks)",
        unique as f64 / MB,
        day.unique.blocks,
        churn_unique as f64 / MB,
        day.unique.blocks - initial_unique.blocks
    ));
    let baseline = format!("unique 64 KiB blocks at zstd level {level}, MB");
    Ok(vec![
        // Points, checkpoints, map pages and packs: what the points themselves keep.
        bytes_ratio(
            "stored_per_unique_byte_excl_journal",
            after.points_storage(),
            &baseline,
            unique,
            MB,
            Target::AtMost(1.2),
        ),
        bytes_ratio(
            "stored_per_unique_byte_incl_journal",
            after.points_storage() + after.journal,
            &baseline,
            unique,
            MB,
            Target::None,
        ),
        bytes_ratio(
            "stored_per_unique_byte_churn_only_excl_journal",
            after.points_storage() - before.points_storage(),
            &format!("unique blocks the churn added, zstd level {level}, MB"),
            churn_unique,
            MB,
            Target::None,
        ),
    ])
}

/// The writer of the simulated day: the stream it sends, the blocks churn changed (current
/// content), and every distinct block content a point holds.
struct Day {
    pool: Arc<Pool>,
    size: u64,
    /// The packs' zstd level, for the baseline.
    level: i32,
    chain: Chain,
    changed: HashMap<u64, Vec<u8>>,
    unique: Unique,
}

struct Churn {
    writes: u64,
    small: u64,
    bytes: u64,
}

type Segments = mpsc::Sender<(Seq, Bytes)>;

impl Day {
    /// The initial copy: every block, in 1 MiB writes, in segments of the agent's seal size,
    /// the last ending with the initial-sync-done marker. Returns the marker's sequence.
    fn fill(&mut self, tx: &Segments) -> Result<Seq> {
        let seal = StreamConfig::default().seal_bytes;
        let (mut records, mut pending, mut offset) = (Vec::new(), 0, 0);
        while offset < self.size {
            let len = (self.size - offset).min(MIB);
            let mut data = vec![0u8; len as usize];
            for (i, block) in data.chunks_mut(BS).enumerate() {
                realistic(&self.pool, offset / BLOCK_SIZE + i as u64, block);
                self.unique.add(block, self.level)?;
            }
            records.push(self.chain.record(T0, Op::Write { offset, data }));
            (pending, offset) = (pending + len, offset + len);
            if pending >= seal && offset < self.size {
                send(tx, self.chain.seal(&records)?)?;
                (records, pending) = (Vec::new(), 0);
            }
        }
        let marker = self
            .chain
            .record(T0, Op::Marker(MarkerKind::InitialSyncDone));
        let seq = marker.seq;
        records.push(marker);
        send(tx, self.chain.seal(&records)?)?;
        Ok(seq)
    }

    /// 24 h in which 1 % of the disk's bytes are overwritten with new data: 4 KiB and 64 KiB
    /// writes (even odds) at random 4 KiB-aligned offsets and times, one segment per 5 minutes
    /// ending with a crash-consistent marker (as the agent seals at a marker).
    fn churn(&mut self, tx: &Segments) -> Result<Churn> {
        let mut rng = StdRng::seed_from_u64(SEED);
        let mut writes = Vec::new();
        let mut stats = Churn {
            writes: 0,
            small: 0,
            bytes: 0,
        };
        while stats.bytes < self.size / 100 {
            let len = if rng.random_bool(0.5) { PAGE } else { BS } as u64;
            let offset = rng.random_range(0..=(self.size - len) / PAGE as u64) * PAGE as u64;
            writes.push((rng.random_range(1..=DAY), offset, len));
            stats.writes += 1;
            stats.small += u64::from(len == PAGE as u64);
            stats.bytes += len;
        }
        writes.sort_unstable();
        let mut writes = writes.into_iter().peekable();
        let mut content = 1u64 << 40;
        for k in 1..=POINTS {
            let at = k * POINT_EVERY;
            let (mut records, mut dirty) = (Vec::new(), BTreeSet::new());
            while let Some((t, offset, len)) = writes.next_if(|w| w.0 <= at) {
                let mut data = vec![0u8; len as usize];
                realistic(&self.pool, content, &mut data);
                content += 1;
                self.overwrite(offset, &data, &mut dirty);
                records.push(self.chain.record(T0 + t, Op::Write { offset, data }));
            }
            records.push(
                self.chain
                    .record(T0 + at, Op::Marker(MarkerKind::CrashConsistent)),
            );
            for b in dirty {
                self.unique.add(&self.changed[&b], self.level)?;
            }
            send(tx, self.chain.seal(&records)?)?;
        }
        Ok(stats)
    }

    /// Applies a write to the blocks churn changed, starting a block from its initial content.
    fn overwrite(&mut self, offset: u64, data: &[u8], dirty: &mut BTreeSet<u64>) {
        let mut at = offset;
        while at < offset + data.len() as u64 {
            let b = at / BLOCK_SIZE;
            let in_block = (at - b * BLOCK_SIZE) as usize;
            let n = (BS - in_block).min((offset + data.len() as u64 - at) as usize);
            let pool = &self.pool;
            let block = self.changed.entry(b).or_insert_with(|| {
                let mut v = vec![0u8; BS];
                realistic(pool, b, &mut v);
                v
            });
            let src = (at - offset) as usize;
            block[in_block..in_block + n].copy_from_slice(&data[src..src + n]);
            dirty.insert(b);
            at += n as u64;
        }
    }
}

/// Content `n` of realistic compressibility in `buf` (a multiple of 4 KiB): the first half of
/// every 4 KiB page is pool bytes distinct for every `n`, the second half repeated log lines,
/// so zstd level 1 keeps a little over half, as for a disk of mixed system and application data.
fn realistic(pool: &Pool, n: u64, buf: &mut [u8]) {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        let line = b"2026-01-01T00:00:00.000Z app[4242]: GET /api/v1/items status=200 bytes=512\n";
        line.iter().copied().cycle().take(PAGE / 2).collect()
    });
    pool.fill(n, buf);
    for page in buf.chunks_mut(PAGE) {
        page[PAGE / 2..].copy_from_slice(text);
    }
}

/// Distinct non-zero block contents (zero blocks are never stored) and their compressed size.
#[derive(Debug, Default, Clone)]
struct Unique {
    seen: HashSet<Digest>,
    blocks: u64,
    bytes: u64,
}

impl Unique {
    fn add(&mut self, block: &[u8], level: i32) -> Result<()> {
        if block.iter().all(|&b| b == 0) || !self.seen.insert(Digest::of(block)) {
            return Ok(());
        }
        self.blocks += 1;
        self.bytes += pack::compress_chunk(block, level)?.len() as u64;
        Ok(())
    }
}

/// Metadata one point adds, by `n` changed blocks and disk size, first on a sparse disk (only
/// the changed blocks ever written), then on the same disk with every block mapped. The changed
/// sets are nested (the first `n` of one random order), so each point's pages are what an
/// independent replica with only those blocks written would store.
async fn metadata(dir: &Path, plan: Plan, pool: &Arc<Pool>) -> Result<Vec<Figure>> {
    let counts = if plan.quick { CHANGED_QUICK } else { CHANGED };
    let config = ProcessorConfig {
        checkpoint_bytes: u64::MAX,
        checkpoint_interval: NEVER,
        poll_interval: Duration::from_millis(5),
        gc_interval: NEVER,
        ..Default::default()
    };
    let mut added = HashMap::new();
    for (size, label) in META_DISKS {
        let mut rng = StdRng::seed_from_u64(SEED ^ size);
        let blocks = (size / BLOCK_SIZE) as usize;
        let mut changed: Vec<u64> = rand::seq::index::sample(&mut rng, blocks, counts[2])
            .into_iter()
            .map(|b| b as u64)
            .collect();
        changed.shuffle(&mut rng);
        let mut replica = Replica::create(&dir.join(label), size, config.clone())?;
        let mut chain = Chain::new(replica.layout.stream);
        replica.start();
        let start = chain.record(T0, Op::Marker(MarkerKind::InitialSyncDone));
        let seq = start.seq;
        replica.ship(chain.seal(&[start])?).await?;
        replica.wait_point(seq).await?;
        for (k, full) in [false, true].into_iter().enumerate() {
            if full {
                replica.stop().await;
                let mapped = fill_map(&replica.layout, pack_bytes(), &mut rng).await?;
                progress(format!(
                    "storage: {label} disk: {mapped} more blocks mapped (map built directly)"
                ));
                replica.start();
            }
            for (i, n) in counts.into_iter().enumerate() {
                let t = Instant::now();
                let time = T0 + (1 + k * counts.len() + i) as i64 * POINT_EVERY;
                let u = replica
                    .point_after(&mut chain, &changed[..n], time, pool, &mut rng)
                    .await?;
                progress(format!(
                    "storage: point with {n} changed blocks on a {label} {} disk: {} B \
                     ({} B record, {} B in {} map pages) in {:.1} s",
                    if full { "full" } else { "sparse" },
                    u.metadata(),
                    u.points,
                    u.pages,
                    u.page_objects,
                    t.elapsed().as_secs_f64()
                ));
                added.insert((full, label, n), u.metadata());
            }
        }
        replica.stop().await;
        drop(replica);
        let _ = std::fs::remove_dir_all(dir.join(label));
    }
    let mut figures = Vec::new();
    for full in [false, true] {
        for (_, label) in META_DISKS {
            for n in counts {
                figures.push(Figure::new(
                    &format!("metadata_per_point_{n}_blocks_{label}_{}", disk_state(full)),
                    added[&(full, label, n)] as f64,
                    "B",
                    "changed blocks (ratio: B per block)",
                    n as f64,
                    Target::None,
                ));
            }
        }
    }
    // A point that changes one block must cost about the same on a disk 64 times larger: its
    // metadata is one leaf and one node per level, and levels grow with the logarithm of the
    // size. With more changed blocks the ratio is reported only: on the small disk they share
    // its few leaves, on the large one each scattered block has a leaf of its own, so there the
    // cost per block stays what one block costs.
    let (small, big) = (META_DISKS[0].1, META_DISKS[1].1);
    for full in [false, true] {
        for n in counts {
            figures.push(bytes_ratio(
                &format!("metadata_disk_size_ratio_{n}_blocks_{}", disk_state(full)),
                added[&(full, big, n)],
                &format!("same point on the {small} disk, B"),
                added[&(full, small, n)],
                1.0,
                if n == 1 {
                    Target::AtMost(1.5)
                } else {
                    Target::None
                },
            ));
        }
        let (one, most) = (counts[0], counts[counts.len() - 1]);
        figures.push(bytes_ratio(
            &format!(
                "metadata_per_block_{most}_vs_{one}_blocks_{big}_{}",
                disk_state(full)
            ),
            added[&(full, big, most)] / most as u64,
            &format!("B per block of a {one}-block point"),
            added[&(full, big, one)] / one as u64,
            1.0,
            Target::AtMost(1.0),
        ));
    }
    Ok(figures)
}

fn disk_state(full: bool) -> &'static str {
    if full { "full_disk" } else { "sparse_disk" }
}

fn pack_bytes() -> usize {
    ProcessorConfig::default().pack_bytes
}

/// Gives every block the replica's newest point reads as zero a chunk of its own, as the initial
/// copy of a disk written in full leaves it (runs of ~33 KB chunks at rising offsets in packs of
/// `pack_bytes`), and makes that point name the new pages. Those chunks are never read: the
/// blocks measured afterwards were written, with real chunks, before. Returns the blocks mapped.
async fn fill_map(layout: &ReplicaLayout, pack_bytes: usize, rng: &mut StdRng) -> Result<u64> {
    let mut rec = points::list(layout)
        .await?
        .pop()
        .context("the replica has no point")?;
    let header = pack::HEADER_LEN as u32;
    let (mut id, mut offset, mut mapped) = (rng.random::<u64>(), header, 0);
    let (mut entries, mut tree) = tree::load(layout, 0, &rec.disks[0]).await?;
    for (b, e) in entries.iter_mut().enumerate().filter(|(_, e)| e.is_zero()) {
        let len = rng.random_range(28_000..38_000);
        if (offset + len) as usize > pack_bytes {
            (id, offset) = (rng.random(), header);
        }
        *e = ChunkRef {
            hash: Digest(rng.random()),
            pack: id,
            offset,
            len,
        };
        offset += len;
        mapped += 1;
        tree.mark(b as u64);
    }
    let nodes = tree.encode(&entries)?;
    rec.disks[0].map = MapRoot::Tree(tree.root());
    futures::stream::iter(nodes)
        .map(|(digest, bytes)| {
            let key = layout.page_key(0, &digest);
            let store = layout.disks[0].clone();
            async move {
                match store.put_new(&key, Bytes::from(bytes)).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .context("store map nodes")?;
    // Records are immutable; this one is replaced only to give the bench a full map.
    points::delete_point(layout, &rec).await?;
    let key = layout.points_prefix().join(&rec.object_name());
    layout.meta.put_new(&key, Bytes::from(rec.encode())).await?;
    Ok(mapped)
}

/// A figure that is a ratio of bytes: the value (and the ratio column) is
/// `bytes / baseline_bytes`; the baseline value is `baseline_bytes / per_unit`.
fn bytes_ratio(
    name: &str,
    bytes: u64,
    baseline: &str,
    baseline_bytes: u64,
    per_unit: f64,
    target: Target,
) -> Figure {
    let ratio = bytes as f64 / baseline_bytes.max(1) as f64;
    let mut f = Figure::new(
        name,
        ratio,
        "x",
        baseline,
        baseline_bytes as f64 / per_unit,
        target,
    );
    f.ratio = f.value;
    f
}

/// The stream of one simulated item: sequences, and the digest chain of its segments.
struct Chain {
    stream: StreamId,
    next: Seq,
    prev: Digest,
}

impl Chain {
    fn new(stream: StreamId) -> Chain {
        Chain {
            stream,
            next: Seq(1),
            prev: Digest::ZERO,
        }
    }

    fn record(&mut self, time: i64, op: Op) -> Record {
        let seq = self.next;
        self.next = seq.next();
        Record {
            seq,
            time: Timestamp(time),
            disk: 0,
            op,
        }
    }

    /// The sequence of the last record made.
    fn last(&self) -> Seq {
        Seq(self.next.0 - 1)
    }

    /// Encodes `records` as the next segment, at the agent's compression level.
    fn seal(&mut self, records: &[Record]) -> Result<(Seq, Bytes)> {
        let level = StreamConfig::default().zstd_level;
        let (bytes, digest) =
            segment::encode(self.stream, Generation(1), self.prev, records, level)?;
        self.prev = digest;
        Ok((records[0].seq, Bytes::from(bytes)))
    }
}

fn send(tx: &Segments, segment: (Seq, Bytes)) -> Result<()> {
    tx.blocking_send(segment)
        .map_err(|_| anyhow!("the segment store stopped"))
}

/// Runs `produce` on a blocking thread and stores each segment it sends in the cache as it
/// comes, so the processor applies them while later ones are made.
async fn feed<T: Send + 'static>(
    replica: &Replica,
    produce: impl FnOnce(&Segments) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::task::spawn_blocking(move || produce(&tx));
    while let Some(segment) = rx.recv().await {
        replica.ship(segment).await?;
    }
    task.await.context("make segments")?
}

/// Garbage collection as the processor runs it, its grace period long past in simulated time:
/// mark, then sweep (with the processor stopped, the records hold every reference). Returns the
/// objects deleted.
async fn collect_garbage(layout: &ReplicaLayout) -> Result<usize> {
    let none = gc::Referenced::default();
    gc::collect(layout, &none, Duration::ZERO).await?;
    Ok(gc::collect(layout, &none, Duration::ZERO).await?.deleted)
}

/// Bytes stored under a replica's prefix, by kind of object.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    points: u64,
    checkpoints: u64,
    pages: u64,
    page_objects: u64,
    packs: u64,
    journal: u64,
    other: u64,
}

impl Usage {
    /// Everything but the journal: what the points themselves keep.
    fn points_storage(&self) -> u64 {
        self.metadata() + self.packs + self.other
    }

    /// Records and map pages.
    fn metadata(&self) -> u64 {
        self.points + self.checkpoints + self.pages
    }

    fn minus(&self, o: &Usage) -> Usage {
        Usage {
            points: self.points - o.points,
            checkpoints: self.checkpoints - o.checkpoints,
            pages: self.pages - o.pages,
            page_objects: self.page_objects - o.page_objects,
            packs: self.packs - o.packs,
            journal: self.journal - o.journal,
            other: self.other - o.other,
        }
    }

    fn describe(&self) -> String {
        let mb = |b: u64| b as f64 / MB;
        format!(
            "packs {:.1} MB, map pages {:.2} MB ({} objects), point records {:.1} kB, \
             checkpoints {:.1} kB, journal {:.1} MB, other {:.1} kB",
            mb(self.packs),
            mb(self.pages),
            self.page_objects,
            self.points as f64 / 1e3,
            self.checkpoints as f64 / 1e3,
            mb(self.journal),
            self.other as f64 / 1e3
        )
    }
}

/// A replica on a local `file://` target account, and the cache account its processor reads.
struct Replica {
    layout: ReplicaLayout,
    cache: DynStore,
    size: u64,
    config: ProcessorConfig,
    running: Option<Running>,
}

struct Running {
    status: Arc<Mutex<ProcessorStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Replica {
    fn create(dir: &Path, size: u64, config: ProcessorConfig) -> Result<Replica> {
        let target = open_store(&dir.join("target"))?;
        let cache = open_store(&dir.join("cache"))?;
        Ok(Replica {
            layout: ReplicaLayout::new(StreamId::random(), target.clone(), vec![target]),
            cache,
            size,
            config,
            running: None,
        })
    }

    /// Starts a processor (it resumes from the newest record).
    fn start(&mut self) {
        let p = Processor::new(
            self.layout.clone(),
            self.cache.clone(),
            vec![self.size],
            self.config.clone(),
        );
        let status = p.status();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(p.run(stopped));
        self.running = Some(Running { status, stop, task });
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    async fn ship(&self, (first, bytes): (Seq, Bytes)) -> Result<()> {
        let key = Key::parse(&segment::object_name(first))?;
        self.cache
            .put_new(&key, bytes)
            .await
            .with_context(|| format!("store segment {first}"))?;
        Ok(())
    }

    /// Waits until the processor has published the point at `seq`.
    async fn wait_point(&self, seq: Seq) -> Result<()> {
        let Some(r) = &self.running else {
            bail!("the processor is not running")
        };
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let s = r.status.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = &s.error {
                    bail!("processor: {e}");
                }
                if s.last_point.as_ref().is_some_and(|p| p.seq >= seq.0) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for the point at {seq}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes 4 KiB of new data at a random place in each of `blocks`, then a marker at
    /// `time`; returns what the point adds to the replica.
    async fn point_after(
        &self,
        chain: &mut Chain,
        blocks: &[u64],
        time: i64,
        pool: &Pool,
        rng: &mut StdRng,
    ) -> Result<Usage> {
        let before = self.usage().await?;
        let mut records = Vec::with_capacity(blocks.len() + 1);
        for b in blocks {
            let offset = b * BLOCK_SIZE + rng.random_range(0..(BS / PAGE) as u64) * PAGE as u64;
            let mut data = vec![0u8; PAGE];
            pool.fill(rng.random(), &mut data);
            records.push(chain.record(time - SECOND, Op::Write { offset, data }));
        }
        let marker = chain.record(time, Op::Marker(MarkerKind::CrashConsistent));
        let seq = marker.seq;
        records.push(marker);
        let segment = chain.seal(&records)?;
        drop(records);
        self.ship(segment).await?;
        self.wait_point(seq).await?;
        Ok(self.usage().await?.minus(&before))
    }

    /// Every object under the replica's prefix (the meta and disk account are one here).
    async fn usage(&self) -> Result<Usage> {
        let root = Key::from_segments(["replicas", &self.layout.stream.to_string()])?;
        let mut u = Usage::default();
        for o in self.layout.meta.list(Some(&root)).await? {
            let rest = o.key.strip_prefix(&root).unwrap_or(o.key.as_str());
            let kind = rest.split('/').find(|s| !s.starts_with("disk"));
            match kind {
                Some("points") => u.points += o.size,
                Some("checkpoints") => u.checkpoints += o.size,
                Some("pages") => (u.pages, u.page_objects) = (u.pages + o.size, u.page_objects + 1),
                Some("packs") => u.packs += o.size,
                Some("journal") => u.journal += o.size,
                _ => u.other += o.size,
            }
        }
        Ok(u)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(true);
            r.task.abort();
        }
    }
}

fn open_store(dir: &Path) -> Result<DynStore> {
    let url = format!("file://{}", dir.display());
    ferry_storage::open(&url).with_context(|| format!("open {url}"))
}
