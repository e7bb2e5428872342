//! A seeded simulation of the whole replication pipeline against a plain reference model.
//!
//! One VM with three small disks is served in process by the agent's own pieces (`Disk`,
//! `Stream`, the sealer and shipper) and replicated by a `Processor` into local `file://`
//! accounts, each wrapped in a `FaultyStore`. From one seed, a random mix of writes (some with
//! FUA), write-zeroes, trims and flushes goes through the `Disk`s and into the model (one
//! `Vec<u8>` per disk, and every change by the sequence the stream gave it), interleaved with
//! crash-consistent and app-consistent markers, agent crashes (everything dropped without a
//! shutdown and reopened from the same directory, as after `kill -9`; sometimes during the
//! initial copy), processor crashes (its task aborted mid-work, restarted later), cache and
//! target outages, flaky calls, replays to an instant while replication runs, points deleted
//! as retention does and the journal pruned to a window. Some seeds give the agent a small ship
//! buffer, so an outage of the cache account overflows it: changes are then only tracked as
//! dirty blocks (the model places each before the next record), markers are refused, and a
//! catch-up step copies the blocks and closes the window with a catch-up-done point. The source
//! host's disk also fills up now and then: the next change (or catch-up copy) cannot be logged,
//! and is tracked as a dirty block the same way. At the end everything is drained, and
//! every recovery point and every sampled instant in the window (replayed from the journal)
//! must export byte-equal to the model at its sequence; a replay may refuse an instant it has
//! nothing to rebuild from, never answer with another one.
//!
//! Each seed prints `simulation seed: N` first; `FERRY_SIM_SEED=N` runs that seed alone (the
//! same steps; the background tasks' timing differs from run to run), `FERRY_SIM_RANDOM=K`
//! runs K fresh seeds instead of the fixed ones.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_agent::catch_up::{self, CatchUpProgress, Pass};
use ferry_agent::disk::Disk;
use ferry_agent::initial_sync::{self, Progress};
use ferry_agent::sealer;
use ferry_agent::stream::{Stream, StreamConfig};
use ferry_format::point::{PointKind, PointRecord};
use ferry_format::segment::{self, MarkerKind};
use ferry_nbd::Export;
use ferry_replica::{
    PointSelector, Processor, ProcessorConfig, ProcessorStatus, ReplicaLayout, export, points,
    verify,
};
use ferry_storage::fault::FaultyStore;
use ferry_storage::{DynStore, Key};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SIZES: [u64; 3] = [1 << 20, 2 << 20, 1 << 20];
const SECTOR: u64 = 512;
const BLOCK: u64 = 64 << 10;
/// Whole-block contents written in several places, so the processor deduplicates them.
const PATTERNS: [u8; 3] = [0xa1, 0xb2, 0xc3];
const FIXED_SEEDS: std::ops::RangeInclusive<u64> = 1..=8;

#[test]
fn replicas_match_the_model_through_crashes_and_outages() {
    for seed in seeds() {
        eprintln!("simulation seed: {seed}");
        let started = Instant::now();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| runtime().block_on(simulate(seed))));
        match outcome {
            Ok(summary) => eprintln!(
                "simulation seed {seed}: passed in {:.1} s; {summary}",
                started.elapsed().as_secs_f64()
            ),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("simulation seed {seed} failed (replay: FERRY_SIM_SEED={seed}): {msg}");
            }
        }
    }
}

/// The smallest case the simulation found: the journal is pruned to a window whose base is
/// point P2, then P2 is deleted (as retention may delete it), and the instant at the start of
/// the window is asked for. The newest point before it is now P1, whose journal segments were
/// pruned: the replay must rebuild the instant or refuse, never answer with P1's contents.
#[test]
fn an_instant_whose_window_base_was_deleted_is_rebuilt_or_refused() {
    runtime().block_on(async {
        let mut sim = Sim::new(0);
        sim.knobs.stream.buffer_bytes = 2 << 30;
        sim.start_agent_and_copy().await;
        sim.start_processor();
        sim.step(Step::Write).await;
        sim.mark(MarkerKind::CrashConsistent);
        sim.settle().await;
        sim.step(Step::Write).await;
        let p2 = sim.mark(MarkerKind::CrashConsistent).unwrap();
        sim.settle().await;
        sim.step(Step::Write).await;
        sim.step(Step::Instant).await;
        sim.settle().await;
        let (t, want) = *sim.instants.last().unwrap();

        let layout = sim.layout();
        points::prune_journal(&layout, t).await.unwrap();
        let p2 = points::resolve(&layout, &PointSelector::Id(p2))
            .await
            .unwrap();
        points::delete_point(&layout, &p2).await.unwrap();
        sim.deleted.push(p2.seq);
        sim.window = t;
        if let Some(rec) = sim.replay(t, want).await {
            for (disk, model) in sim.model.disks.iter().enumerate() {
                let got = export_disk(&layout, &rec, disk).await;
                assert_eq!(difference(&got, model), None, "instant {t}, disk {disk}");
            }
        }
        sim.drain().await;
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FERRY_SIM_SEED") {
        return vec![s.trim().parse().expect("FERRY_SIM_SEED is a u64")];
    }
    if let Ok(k) = std::env::var("FERRY_SIM_RANDOM") {
        let k: usize = k.trim().parse().expect("FERRY_SIM_RANDOM is a count");
        return (0..k).map(|_| rand::rng().random()).collect();
    }
    FIXED_SEEDS.collect()
}

async fn simulate(seed: u64) -> String {
    let mut sim = Sim::new(seed);
    sim.start_agent_and_copy().await;
    sim.start_processor();
    for _ in 0..sim.knobs.steps {
        sim.tick();
        let step = sim.pick();
        sim.step(step).await;
        // Steps are spread over time, so shipping, processing, checkpoints and garbage
        // collection run between them and outages last a while.
        if sim.rng.random_bool(0.6) {
            tokio::time::sleep(ms(sim.rng.random_range(0..=5))).await;
        }
    }
    sim.drain().await;
    sim.check().await;
    format!("{:?}; {:?}", sim.counts, sim.knobs)
}

/// What a seed varies besides its steps: the agent's and the processor's tunables. A knob
/// added to either config can be drawn here per seed.
#[derive(Debug, Clone)]
struct Knobs {
    steps: usize,
    stream: StreamConfig,
    processor: ProcessorConfig,
}

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.random_range(0..from.len())]
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Knobs {
    fn draw(rng: &mut StdRng) -> Knobs {
        Knobs {
            steps: rng.random_range(300..450),
            stream: stream_config(rng, StreamConfig::default()),
            processor: ProcessorConfig {
                pack_bytes: pick(rng, &[100_000, 1 << 20, 16 << 20]),
                checkpoint_bytes: pick(rng, &[128 << 10, 1 << 20, 64 << 20]),
                checkpoint_interval: ms(pick(rng, &[10, 100, 5_000])),
                poll_interval: ms(pick(rng, &[2, 10])),
                retry_delay: ms(pick(rng, &[5, 30])),
                gc_interval: ms(pick(rng, &[50, 300, 60_000])),
                gc_grace: ms(pick(rng, &[300, 600_000])),
                ..ProcessorConfig::default()
            },
        }
    }
}

fn stream_config(rng: &mut StdRng, mut c: StreamConfig) -> StreamConfig {
    c.seal_interval = ms(pick(rng, &[5, 30, 150]));
    c.seal_bytes = pick(rng, &[48 << 10, 512 << 10, 8 << 20]);
    c.zstd_level = rng.random_range(1..=3);
    c.buffer_bytes = pick(rng, &[2 << 30, 2 << 30, 1 << 20, 256 << 10]);
    c
}

/// One change as the model keeps it (a trim reads back as zeroes, like a write-zeroes).
enum Change {
    Write {
        disk: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        disk: usize,
        offset: u64,
        len: u64,
    },
}

fn apply(disks: &mut [Vec<u8>], c: &Change) {
    match c {
        Change::Write { disk, offset, data } => {
            let at = *offset as usize;
            disks[*disk][at..at + data.len()].copy_from_slice(data);
        }
        Change::Zero { disk, offset, len } => {
            disks[*disk][*offset as usize..(*offset + *len) as usize].fill(0);
        }
    }
}

fn zero_disks() -> Vec<Vec<u8>> {
    SIZES.iter().map(|&s| vec![0u8; s as usize]).collect()
}

/// The reference: the disks now, and every change by its sequence (sequence 0: written before
/// replication started, so the initial copy carries it).
struct Model {
    disks: Vec<Vec<u8>>,
    log: Vec<(Seq, Change)>,
}

impl Model {
    fn change(&mut self, seq: Seq, c: Change) {
        apply(&mut self.disks, &c);
        self.log.push((seq, c));
    }
}

/// The model's disks as they were after a sequence, rebuilt forward from zero disks.
struct Cursor<'a> {
    disks: Vec<Vec<u8>>,
    log: &'a [(Seq, Change)],
    next: usize,
    at: Seq,
}

impl<'a> Cursor<'a> {
    fn new(log: &'a [(Seq, Change)]) -> Self {
        Cursor {
            disks: zero_disks(),
            log,
            next: 0,
            at: Seq(0),
        }
    }

    fn at(&mut self, seq: Seq) -> &[Vec<u8>] {
        assert!(seq >= self.at, "the cursor only moves forward");
        while let Some((s, c)) = self.log.get(self.next)
            && *s <= seq
        {
            apply(&mut self.disks, c);
            self.next += 1;
        }
        self.at = seq;
        &self.disks
    }
}

/// Where `got` first differs from `want`, for a failure message.
fn difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    if got.len() != want.len() {
        return Some(format!("{} bytes, the model has {}", got.len(), want.len()));
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    let run = got[at..]
        .iter()
        .zip(&want[at..])
        .take_while(|(a, b)| a != b)
        .count();
    Some(format!(
        "first difference at offset {at} (64 KiB block {}): {:#04x} instead of the model's {:#04x}, {run} differing bytes from there",
        at as u64 / BLOCK,
        got[at],
        want[at]
    ))
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Write,
    Zero,
    Trim,
    Flush,
    Mark,
    Instant,
    Settle,
    Replay,
    CrashAgent,
    CrashProcessor,
    CacheOutage,
    TargetOutage,
    Flaky,
    Retention,
    PruneJournal,
    CatchUp,
    DiskFull,
    CrashMidWrite,
}

const STEPS: [(Step, u32); 18] = [
    (Step::Write, 50),
    (Step::Zero, 5),
    (Step::Trim, 5),
    (Step::Flush, 4),
    (Step::Mark, 7),
    (Step::Instant, 5),
    (Step::Settle, 5),
    (Step::Replay, 3),
    (Step::CrashAgent, 2),
    (Step::CrashProcessor, 3),
    (Step::CacheOutage, 2),
    (Step::TargetOutage, 2),
    (Step::Flaky, 2),
    (Step::Retention, 2),
    (Step::PruneJournal, 1),
    (Step::CatchUp, 3),
    (Step::DiskFull, 2),
    (Step::CrashMidWrite, 2),
];

/// What a seed did, for its summary line.
#[derive(Debug, Default)]
struct Counts {
    writes: usize,
    fua: usize,
    zeroes: usize,
    trims: usize,
    flushes: usize,
    markers: usize,
    instants: usize,
    replays: usize,
    agent_crashes: usize,
    crashes_mid_write: usize,
    copies_interrupted: usize,
    processor_crashes: usize,
    cache_outages: usize,
    target_outages: usize,
    flaky: usize,
    points_deleted: usize,
    journal_prunes: usize,
    /// Changes tracked as dirty blocks while the ship buffer was full.
    tracked: usize,
    /// Catch-up windows closed.
    catch_ups: usize,
    /// Times the source disk was made full for the next change or copy.
    disk_fulls: usize,
    /// Steps at which the agent's last shipment had failed.
    ship_errors: usize,
    /// Steps at which the processor was stopped by an error.
    processor_errors: usize,
    segments_shipped: u64,
    segments_applied: u64,
    gc_deleted: u64,
    points_checked: usize,
    instants_checked: usize,
}

struct Agent {
    disks: Vec<Arc<Disk>>,
    stream: Arc<Stream>,
    stop: watch::Sender<bool>,
    sealer: JoinHandle<()>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: Arc<Mutex<ProcessorStatus>>,
}

impl Running {
    fn status(&self) -> ProcessorStatus {
        read(&self.status)
    }
}

fn read(status: &Mutex<ProcessorStatus>) -> ProcessorStatus {
    status.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

struct Sim {
    seed: u64,
    rng: StdRng,
    knobs: Knobs,
    dir: tempfile::TempDir,
    stream_id: StreamId,
    /// The cache account (the agent and the processor see the item's prefix of it).
    cache: Arc<FaultyStore>,
    /// Two target accounts: disks 0 and 2 (and the replica's records) in the first.
    targets: Vec<Arc<FaultyStore>>,
    agent: Option<Agent>,
    processor: Option<Running>,
    model: Model,
    last_seq: Seq,
    /// The blocks (disk, block) the open catch-up window's bitmaps hold (a tracked change sets
    /// them; only the window's close clears them).
    window_dirty: std::collections::BTreeSet<(usize, u64)>,
    markers: Vec<(Seq, MarkerKind)>,
    /// Instants taken between steps, with the last sequence at or before each.
    instants: Vec<(Timestamp, Seq)>,
    /// Points that replays published during the run.
    replayed: Vec<Seq>,
    /// Points deleted as retention does.
    deleted: Vec<Seq>,
    /// The journal was pruned to this window: only instants from here on replay.
    window: Timestamp,
    cache_outage: usize,
    target_outage: usize,
    processor_down: usize,
    counts: Counts,
}

fn faulty(dir: PathBuf) -> Arc<FaultyStore> {
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("file://{}", dir.display());
    Arc::new(FaultyStore::new(ferry_storage::open(&url).unwrap()))
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let knobs = Knobs::draw(&mut rng);
        let dir = tempfile::tempdir().unwrap();
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Sim {
            seed,
            knobs,
            stream_id: StreamId(id),
            cache: faulty(dir.path().join("cache")),
            targets: vec![
                faulty(dir.path().join("target-a")),
                faulty(dir.path().join("target-b")),
            ],
            dir,
            rng,
            agent: None,
            processor: None,
            model: Model {
                disks: zero_disks(),
                log: Vec::new(),
            },
            last_seq: Seq(0),
            window_dirty: Default::default(),
            markers: Vec::new(),
            instants: Vec::new(),
            replayed: Vec::new(),
            deleted: Vec::new(),
            window: Timestamp(i64::MIN),
            cache_outage: 0,
            target_outage: 0,
            processor_down: 0,
            counts: Counts::default(),
        }
    }

    /// The item's view of the cache account, as the control plane hands it out.
    fn cache_view(&self) -> DynStore {
        let prefix = Key::from_segments(["streams", &self.stream_id.to_string()]).unwrap();
        ferry_storage::scoped(self.cache.clone() as DynStore, prefix)
    }

    /// A fresh layout (nothing cached), as a restarted process builds it.
    fn layout(&self) -> ReplicaLayout {
        let (a, b) = (
            self.targets[0].clone() as DynStore,
            self.targets[1].clone() as DynStore,
        );
        ReplicaLayout::new(self.stream_id, a.clone(), vec![a.clone(), b, a])
    }

    fn image(&self, disk: usize) -> PathBuf {
        self.dir
            .path()
            .join("disks")
            .join(format!("disk{disk}.raw"))
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent runs")
    }

    /// Open the disks and the stream (after a crash: as they were left) and start the sealer.
    /// A fresh agent writes a little before replication starts and runs the initial copy.
    fn start_agent(&mut self, fresh: bool) -> bool {
        let seed = self.seed;
        let disks: Vec<Arc<Disk>> = (0..SIZES.len())
            .map(|i| Arc::new(Disk::open_or_create(&self.image(i), SIZES[i], i as u16).unwrap()))
            .collect();
        if fresh {
            for _ in 0..self.rng.random_range(0..6) {
                let disk = self.rng.random_range(0..SIZES.len());
                let (offset, len) = self.extent(disk);
                let data = self.data(len as usize);
                disks[disk].write(offset, &data, false).unwrap();
                self.model
                    .change(Seq(0), Change::Write { disk, offset, data });
            }
        }
        let dir = self.dir.path().join("stream");
        if !fresh {
            // As the host does before it serves the disks again: the changes the stream
            // logged are made again on the images.
            ferry_agent::redo::after_unclean_stop(&dir, &disks);
        }
        let stream = Stream::open(
            &dir,
            self.stream_id,
            Generation(1),
            self.knobs.stream.clone(),
        )
        .unwrap();
        let images: Vec<_> = disks.iter().map(|d| d.path()).collect();
        stream
            .check_stopped(&images)
            .unwrap_or_else(|e| panic!("seed {seed}: the stream cannot go on: {e}"));
        let status = stream.status();
        if !fresh {
            // A catch-up window open at the crash stays open, and its overflow marker is
            // logged again.
            let reopened = status.tracking != "ordered";
            assert_eq!(
                status.next_seq,
                self.last_seq.0 + 1 + u64::from(reopened),
                "seed {seed}: after the agent's crash the stream must go on right after the last acknowledged record: {status:?}"
            );
            self.last_seq = Seq(status.next_seq - 1);
            for (i, want) in self.model.disks.iter().enumerate() {
                let got = std::fs::read(self.image(i)).unwrap();
                if let Some(d) = difference(&got, want) {
                    panic!("seed {seed}: after the agent's crash, source disk {i}: {d}");
                }
            }
        }
        for d in &disks {
            d.attach(Some(stream.clone()));
        }
        let (stop, stopped) = watch::channel(false);
        let sealer = tokio::spawn(sealer::run(stream.clone(), self.cache_view(), stopped));
        self.agent = Some(Agent {
            disks,
            stream: stream.clone(),
            stop,
            sealer,
        });
        if status.initial_sync_done_seq.is_none() {
            // Sometimes the agent is killed in the middle of the initial copy.
            let progress = Arc::new(Progress::default());
            let killer = self.rng.random_bool(0.3).then(|| {
                let after = Duration::from_micros(self.rng.random_range(0..1_500));
                let p = progress.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    p.cancelled.store(true, Ordering::Relaxed);
                })
            });
            let done = initial_sync::run(&self.agent().disks, &stream, &progress, None).unwrap();
            if let Some(k) = killer {
                k.join().unwrap();
            }
            let Some(done) = done else {
                // Copied blocks are in the stream; the copy starts again after the restart.
                self.last_seq = Seq(stream.status().next_seq - 1);
                return false;
            };
            self.last_seq = done;
            self.markers.push((done, MarkerKind::InitialSyncDone));
        }
        true
    }

    /// Start the agent; when it is killed during the initial copy, restart it until the copy
    /// is done.
    async fn start_agent_and_copy(&mut self) {
        let mut fresh = true;
        while !self.start_agent(fresh) {
            self.crash_agent().await;
            self.counts.copies_interrupted += 1;
            fresh = false;
        }
    }

    /// `kill -9` of the agent: the sealer stops wherever it is, nothing is closed cleanly.
    async fn crash_agent(&mut self) {
        let a = self.agent.take().expect("the agent runs");
        self.counts.segments_shipped += a.stream.status().segments_shipped;
        a.sealer.abort();
        let _ = a.sealer.await;
        drop(a.disks);
        drop(a.stop);
        assert_eq!(
            Arc::strong_count(&a.stream),
            1,
            "nothing else holds the stream"
        );
        drop(a.stream);
        self.counts.agent_crashes += 1;
    }

    fn start_processor(&mut self) {
        let p = Processor::new(
            self.layout(),
            self.cache_view(),
            SIZES.to_vec(),
            self.knobs.processor.clone(),
        );
        let status = p.status();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(p.run(stopped));
        self.processor = Some(Running { stop, task, status });
    }

    async fn crash_processor(&mut self) {
        let p = self.processor.take().expect("the processor runs");
        p.task.abort();
        let _ = p.task.await;
        self.count_processor(&read(&p.status));
        self.counts.processor_crashes += 1;
    }

    fn count_processor(&mut self, s: &ProcessorStatus) {
        self.counts.segments_applied += s.segments_applied;
        self.counts.gc_deleted += s.gc_deleted;
    }

    fn heal(&mut self) {
        for s in std::iter::once(&self.cache).chain(&self.targets) {
            s.set_offline(false);
            s.fail_next(0, None);
        }
        self.cache_outage = 0;
        self.target_outage = 0;
    }

    /// Count down outages and a processor's down time; note what the faults did.
    fn tick(&mut self) {
        if self.agent().stream.status().last_error.is_some() {
            self.counts.ship_errors += 1;
        }
        if self
            .processor
            .as_ref()
            .is_some_and(|p| p.status().error.is_some())
        {
            self.counts.processor_errors += 1;
        }
        if self.cache_outage > 0 {
            self.cache_outage -= 1;
            if self.cache_outage == 0 {
                self.cache.set_offline(false);
            }
        }
        if self.target_outage > 0 {
            self.target_outage -= 1;
            if self.target_outage == 0 {
                self.targets.iter().for_each(|t| t.set_offline(false));
            }
        }
        if self.processor.is_none() {
            if self.processor_down == 0 {
                self.start_processor();
            } else {
                self.processor_down -= 1;
            }
        }
    }

    fn pick(&mut self) -> Step {
        let total: u32 = STEPS.iter().map(|(_, w)| w).sum();
        let mut n = self.rng.random_range(0..total);
        for (s, w) in STEPS {
            if n < w {
                return s;
            }
            n -= w;
        }
        unreachable!()
    }

    /// A random extent of a disk as NBD clients send them: sector-aligned, mostly small,
    /// sometimes whole 64 KiB blocks, sometimes up to 1 MiB across the 1 MiB order regions.
    fn extent(&mut self, disk: usize) -> (u64, u64) {
        let size = SIZES[disk];
        if self.rng.random_bool(0.25) {
            let blocks = size / BLOCK;
            let n = self.rng.random_range(1..=4);
            let first = self.rng.random_range(0..=blocks - n);
            return (first * BLOCK, n * BLOCK);
        }
        let sectors = match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(1..=32),
            70..96 => self.rng.random_range(33..=256),
            _ => self.rng.random_range(257..=2048),
        };
        let offset = self.rng.random_range(0..=size / SECTOR - sectors) * SECTOR;
        (offset, sectors * SECTOR)
    }

    fn data(&mut self, len: usize) -> Vec<u8> {
        match self.rng.random_range(0..10) {
            0 => vec![0; len],
            1 | 2 => vec![pick(&mut self.rng, &PATTERNS); len],
            _ => {
                let mut v = vec![0; len];
                self.rng.fill_bytes(&mut v);
                v
            }
        }
    }

    /// Where the change just made stands in the stream: the sequence of its record, checked
    /// against the stream; or, when the full ship buffer had it tracked as a dirty block, the
    /// sequence the next record will get (every state from that record on holds the change).
    fn acknowledged(&mut self, what: &str, (disk, offset, len): (usize, u64, u64)) -> Seq {
        let status = self.agent().stream.status();
        if status.tracking == "overflow" {
            // Opening the window logged an overflow marker.
            self.last_seq = Seq(status.next_seq - 1);
            self.counts.tracked += 1;
            if len > 0 {
                for block in offset / BLOCK..=(offset + len - 1) / BLOCK {
                    self.window_dirty.insert((disk, block));
                }
            }
            return Seq(status.next_seq);
        }
        let seq = self.last_seq.next();
        assert_eq!(
            status.next_seq,
            seq.0 + 1,
            "seed {}: the {what} was not logged as record {seq:?}",
            self.seed
        );
        self.last_seq = seq;
        seq
    }

    /// Cut a point marker; inside a catch-up window it must be refused (`None`).
    fn mark(&mut self, kind: MarkerKind) -> Option<Seq> {
        let stream = self.agent().stream.clone();
        if stream.unordered_since().is_some() {
            assert!(
                stream.mark(kind).is_err(),
                "seed {}: a point marker inside a catch-up window",
                self.seed
            );
            return None;
        }
        let seq = stream.mark(kind).unwrap();
        assert_eq!(
            seq,
            self.last_seq.next(),
            "seed {}: marker sequence",
            self.seed
        );
        self.last_seq = seq;
        self.markers.push((seq, kind));
        self.counts.markers += 1;
        Some(seq)
    }

    /// One catch-up pass, as the agent's catch-up task makes them; a closed window is a point.
    fn catch_up(&mut self) -> Pass {
        let a = self.agent();
        let progress = CatchUpProgress::default();
        let pass = catch_up::pass(&a.disks, &a.stream, &progress, &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("seed {}: catch-up: {e}", self.seed));
        self.last_seq = Seq(a.stream.status().next_seq - 1);
        if let Pass::Closed(seq) = pass {
            self.window_dirty.clear();
            self.markers.push((seq, MarkerKind::CatchUpDone));
            self.counts.catch_ups += 1;
        }
        pass
    }

    async fn step(&mut self, step: Step) {
        let disk = self.rng.random_range(0..SIZES.len());
        let fua = self.rng.random_bool(0.2);
        match step {
            Step::Write => {
                let (offset, len) = self.extent(disk);
                let data = self.data(len as usize);
                self.agent().disks[disk].write(offset, &data, fua).unwrap();
                let seq = self.acknowledged("write", (disk, offset, len));
                self.model.change(seq, Change::Write { disk, offset, data });
                self.counts.writes += 1;
                self.counts.fua += usize::from(fua);
            }
            Step::Zero | Step::Trim => {
                let (offset, len) = self.extent(disk);
                let d = &self.agent().disks[disk];
                if matches!(step, Step::Zero) {
                    d.write_zeroes(offset, len, fua, self.counts.zeroes.is_multiple_of(2))
                        .unwrap();
                    self.counts.zeroes += 1;
                } else {
                    d.trim(offset, len, fua).unwrap();
                    self.counts.trims += 1;
                }
                let seq = self.acknowledged("zero or trim", (disk, offset, len));
                self.model.change(seq, Change::Zero { disk, offset, len });
            }
            Step::Flush => {
                self.agent().disks[disk].flush().unwrap();
                self.counts.flushes += 1;
            }
            Step::Mark => {
                let kind = if self.rng.random_bool(0.3) {
                    MarkerKind::AppConsistent
                } else {
                    MarkerKind::CrashConsistent
                };
                self.mark(kind);
            }
            Step::Instant => {
                if self.agent().stream.unordered_since().is_some() {
                    // No instant inside a catch-up window can be rebuilt.
                    return;
                }
                // Every record so far was timed before it was acknowledged, the next one will
                // be timed after this.
                self.instants.push((Timestamp::now(), self.last_seq));
                self.counts.instants += 1;
            }
            Step::Settle => self.settle().await,
            Step::Replay => self.replay_now().await,
            Step::CrashMidWrite => {
                // The agent dies between a change's record and its write to the image.
                let (offset, len) = self.extent(disk);
                let data = self.data(len as usize);
                let d = self.agent().disks[disk].clone();
                d.inject_crash_before_image_write();
                assert!(
                    d.write(offset, &data, fua).is_err(),
                    "the write never completes"
                );
                drop(d);
                let status = self.agent().stream.status();
                let seq = self.acknowledged("write the agent died in", (disk, offset, len));
                if status.tracking != "overflow" {
                    // In the log: made again on the image before the disk is served, but for
                    // the blocks the window's bitmaps hold (which the catch-up copies as the
                    // image holds them). Only a dirty bit: nothing changes.
                    let mut at = offset;
                    while at < offset + len {
                        let next = ((at / BLOCK + 1) * BLOCK).min(offset + len);
                        if !self.window_dirty.contains(&(disk, at / BLOCK)) {
                            let part =
                                data[(at - offset) as usize..(next - offset) as usize].to_vec();
                            self.model.change(
                                seq,
                                Change::Write {
                                    disk,
                                    offset: at,
                                    data: part,
                                },
                            );
                        }
                        at = next;
                    }
                }
                self.counts.crashes_mid_write += 1;
                // The sealer goes on meanwhile: it must not retire the change's log.
                tokio::time::sleep(ms(self.rng.random_range(0..15))).await;
                self.crash_agent().await;
                assert!(self.start_agent(false), "the initial copy is done");
            }
            Step::CrashAgent => {
                // Let the sealer get into the middle of something.
                tokio::time::sleep(ms(self.rng.random_range(0..15))).await;
                self.crash_agent().await;
                assert!(self.start_agent(false), "the initial copy is done");
            }
            Step::CrashProcessor => {
                if self.processor.is_some() {
                    tokio::time::sleep(ms(self.rng.random_range(0..25))).await;
                    self.crash_processor().await;
                    self.processor_down = self.rng.random_range(0..30);
                }
            }
            Step::CacheOutage => {
                if self.cache_outage == 0 {
                    self.cache_outage = self.rng.random_range(3..40);
                    self.cache.set_offline(true);
                    self.counts.cache_outages += 1;
                }
            }
            Step::TargetOutage => {
                if self.target_outage == 0 {
                    self.target_outage = self.rng.random_range(3..40);
                    if self.rng.random_bool(0.5) {
                        self.targets.iter().for_each(|t| t.set_offline(true));
                    } else {
                        let i = self.rng.random_range(0..self.targets.len());
                        self.targets[i].set_offline(true);
                    }
                    self.counts.target_outages += 1;
                }
            }
            Step::Flaky => {
                let n = self.rng.random_range(1..6);
                let store = match self.rng.random_range(0..3) {
                    0 => &self.cache,
                    i => &self.targets[i - 1],
                };
                store.fail_next(n, None);
                self.counts.flaky += 1;
            }
            Step::Retention => self.delete_a_point().await,
            Step::PruneJournal => self.prune_journal().await,
            Step::DiskFull => {
                // The next change (or catch-up copy) cannot be logged: it is tracked.
                self.agent().stream.inject_disk_full();
                self.counts.disk_fulls += 1;
            }
            Step::CatchUp => {
                // The agent's catch-up task runs beside the VM: give it a little while.
                for _ in 0..40 {
                    match self.catch_up() {
                        Pass::Idle | Pass::Closed(_) => break,
                        Pass::Waiting | Pass::Open => tokio::time::sleep(ms(5)).await,
                    }
                }
            }
        }
    }

    /// Let the background work: with every store up, until the processor has applied every
    /// record so far; during an outage, for a little while.
    async fn settle(&mut self) {
        let Some(p) = &self.processor else {
            return;
        };
        if self.cache_outage > 0 || self.target_outage > 0 {
            tokio::time::sleep(ms(self.rng.random_range(5..50))).await;
            return;
        }
        let (status, last) = (p.status.clone(), self.last_seq.0);
        let stream = self.agent().stream.clone();
        until(self.seed, "the processor to catch up", 30, || {
            let s = read(&status);
            if s.applied_seq.is_some_and(|a| a >= last) {
                Ok(())
            } else {
                Err(format!(
                    "applied through {last}: processor {s:?}; stream {:?}",
                    stream.status()
                ))
            }
        })
        .await;
    }

    /// Rebuild a sampled instant the processor has already applied, while it runs (as
    /// `--point <time>` does); the point it publishes is checked with the others at the end.
    async fn replay_now(&mut self) {
        let Some(p) = &self.processor else {
            return;
        };
        if self.target_outage > 0 || self.instants.is_empty() {
            return;
        }
        let applied = p.status().applied_seq.unwrap_or(0);
        let done: Vec<(Timestamp, Seq)> = self
            .instants
            .iter()
            .copied()
            .filter(|(t, s)| s.0 <= applied && *t >= self.window)
            .collect();
        if done.is_empty() {
            return;
        }
        let (t, want) = pick(&mut self.rng, &done);
        self.targets.iter().for_each(|s| s.fail_next(0, None));
        if let Some(rec) = self.replay(t, want).await {
            self.replayed.push(rec.seq);
            self.counts.replays += 1;
        }
    }

    /// Delete a point as retention may (never the newest, nor the newest app-consistent one);
    /// garbage collection then frees what only it referenced.
    async fn delete_a_point(&mut self) {
        if self.target_outage > 0 {
            return;
        }
        self.targets.iter().for_each(|s| s.fail_next(0, None));
        let layout = self.layout();
        let all = points::list(&layout).await.unwrap();
        let newest_app = all
            .iter()
            .rev()
            .find(|p| p.kind == PointKind::AppConsistent)
            .map(|p| p.seq);
        let candidates: Vec<&PointRecord> = all
            .iter()
            .take(all.len().saturating_sub(1))
            .filter(|p| Some(p.seq) != newest_app)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let p = candidates[self.rng.random_range(0..candidates.len())];
        points::delete_point(&layout, p).await.unwrap();
        self.deleted.push(p.seq);
        self.counts.points_deleted += 1;
    }

    /// Prune the journal to a window starting at an instant already processed, as the
    /// monitor does; later replays only ask for instants inside it.
    async fn prune_journal(&mut self) {
        let Some(p) = &self.processor else {
            return;
        };
        let applied = p.status().applied_seq.unwrap_or(0);
        let done: Vec<Timestamp> = self
            .instants
            .iter()
            .filter(|(t, s)| s.0 <= applied && *t >= self.window)
            .map(|(t, _)| *t)
            .collect();
        if self.target_outage > 0 || done.is_empty() {
            return;
        }
        let start = done[self.rng.random_range(0..done.len())];
        self.targets.iter().for_each(|s| s.fail_next(0, None));
        points::prune_journal(&self.layout(), start).await.unwrap();
        self.window = start;
        self.counts.journal_prunes += 1;
    }

    /// Rebuild instant `t`, after record `want`, from the newest point at or before it and the
    /// journal. A replay may refuse (`None`) only when there is nothing to start from: every
    /// point before `t` was deleted, or the journal after that point was pruned. It must never
    /// answer with another instant.
    async fn replay(&self, t: Timestamp, want: Seq) -> Option<PointRecord> {
        let seed = self.seed;
        let layout = self.layout();
        let base = match points::resolve(&layout, &PointSelector::At(t)).await {
            Ok(base) => base,
            Err(e) => {
                let first = self.markers[0].0;
                let all_deleted = self
                    .markers
                    .iter()
                    .filter(|(s, _)| *s <= want)
                    .all(|(s, _)| self.deleted.contains(s));
                assert!(
                    all_deleted,
                    "seed {seed}: no point at or before {t} (the first was at {first:?}): {e}"
                );
                return None;
            }
        };
        let replayed = Processor::new(
            layout.clone(),
            self.cache_view(),
            SIZES.to_vec(),
            self.knobs.processor.clone(),
        )
        .replay_to(&base, t)
        .await;
        let journal: Vec<Seq> = layout
            .meta
            .list(Some(&layout.journal_prefix()))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| segment::parse_object_name(o.key.file_name()))
            .collect();
        let pruned = !journal.contains(&base.segment_first_seq)
            && journal.iter().any(|s| *s > base.segment_first_seq);
        let rec = match replayed {
            Ok(rec) => rec,
            Err(_) if pruned => return None,
            Err(e) => panic!("seed {seed}: replay to {t} from point {}: {e}", base.seq.0),
        };
        if rec.seq != want {
            panic!(
                "seed {seed}: the replay to {t} stopped at record {} instead of {}; it started from \
                 point {} ({}, resuming at segment {}{}); journal window from {}; points \
                 deleted: {:?}; the journal holds {} segments from {:?}",
                rec.seq.0,
                want.0,
                base.seq.0,
                base.time,
                base.segment_first_seq.0,
                if pruned {
                    ", pruned from the journal"
                } else {
                    ""
                },
                self.window,
                self.deleted.iter().map(|s| s.0).collect::<Vec<_>>(),
                journal.len(),
                journal.iter().min().map(|s| s.0),
            );
        }
        Some(rec)
    }

    /// Heal every store, cut a last marker, and wait until it is shipped, applied and published;
    /// then stop the processor and the agent cleanly.
    async fn drain(&mut self) {
        self.heal();
        if self.processor.is_none() {
            self.start_processor();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.agent().stream.unordered_since().is_some() {
            if !matches!(self.catch_up(), Pass::Closed(_)) {
                assert!(
                    Instant::now() < deadline,
                    "seed {}: the catch-up window did not close: {:?}",
                    self.seed,
                    self.agent().stream.status()
                );
                tokio::time::sleep(ms(5)).await;
            }
        }
        let last = self.mark(MarkerKind::CrashConsistent).unwrap().0;
        let stream = self.agent().stream.clone();
        until(self.seed, "the agent to ship every record", 60, || {
            let s = stream.status();
            if s.shipped_through == Some(last) && s.pending_logs == 0 {
                Ok(())
            } else {
                Err(format!("shipped through {last}: {s:?}"))
            }
        })
        .await;
        let status = self.processor.as_ref().unwrap().status.clone();
        until(
            self.seed,
            "the processor to publish the last point",
            60,
            || {
                let s = read(&status);
                if s.applied_seq == Some(last)
                    && s.last_point.as_ref().is_some_and(|p| p.seq == last)
                {
                    Ok(())
                } else {
                    Err(format!("point at {last}: {s:?}"))
                }
            },
        )
        .await;
        let p = self.processor.take().unwrap();
        p.stop.send(true).unwrap();
        p.task.await.unwrap();
        self.count_processor(&read(&p.status));
        let a = self.agent.take().unwrap();
        a.stop.send(true).unwrap();
        a.sealer.await.unwrap();
        self.counts.segments_shipped += a.stream.status().segments_shipped;
    }

    async fn check(&mut self) {
        let seed = self.seed;
        for (i, want) in self.model.disks.iter().enumerate() {
            let got = std::fs::read(self.image(i)).unwrap();
            if let Some(d) = difference(&got, want) {
                panic!("seed {seed}: source disk {i}: {d}");
            }
        }

        // Every marker became exactly one point of its kind; every other point is a replay's.
        let layout = self.layout();
        let published = points::list(&layout).await.unwrap();
        for (seq, kind) in &self.markers {
            if self.deleted.contains(seq) {
                continue;
            }
            let want = if *kind == MarkerKind::AppConsistent {
                PointKind::AppConsistent
            } else {
                PointKind::CrashConsistent
            };
            match published.iter().find(|p| p.seq == *seq) {
                None => panic!("seed {seed}: the {kind:?} marker at {seq:?} has no recovery point"),
                Some(p) => assert_eq!(
                    p.kind, want,
                    "seed {seed}: the point of the {kind:?} marker at {seq:?}"
                ),
            }
        }
        for p in &published {
            assert!(
                self.markers.iter().any(|(s, _)| *s == p.seq) || self.replayed.contains(&p.seq),
                "seed {seed}: point {:?} is neither at a marker nor a replay's",
                p.seq
            );
        }
        let mut targets: Vec<(Seq, String, PointRecord)> = published
            .iter()
            .map(|p| {
                let label = format!("point {} ({}, {})", p.seq.0, p.kind.as_str(), p.time);
                (p.seq, label, p.clone())
            })
            .collect();

        // Sometimes the journal is pruned to a window first; instants inside it still replay.
        let mut instants = self.instants.clone();
        instants.retain(|(t, _)| *t >= self.window);
        if self.rng.random_bool(0.5) && instants.len() >= 2 {
            let start = instants[instants.len() / 2].0;
            points::prune_journal(&layout, start).await.unwrap();
            instants.retain(|(t, _)| *t >= start);
        }
        for (t, want) in instants {
            if let Some(rec) = self.replay(t, want).await {
                targets.push((want, format!("instant {t} (record {})", want.0), rec));
                self.counts.instants_checked += 1;
            }
        }

        targets.sort_by_key(|(s, _, _)| *s);
        let mut model = Cursor::new(&self.model.log);
        for (seq, label, rec) in &targets {
            let want = model.at(*seq);
            for (disk, want) in want.iter().enumerate() {
                let got = export_disk(&layout, rec, disk).await;
                if let Some(d) = difference(&got, want) {
                    panic!("seed {seed}: {label}, disk {disk}: {d}");
                }
            }
        }
        self.counts.points_checked = published.len();

        // The newest point also hydrates right to files, and the replica verifies clean.
        let last = published.last().expect("points were published");
        for (disk, want) in self.model.disks.iter().enumerate() {
            let path = self.dir.path().join(format!("hydrated{disk}.raw"));
            export::to_file(&layout, last, disk, &path).await.unwrap();
            if let Some(d) = difference(&std::fs::read(&path).unwrap(), want) {
                panic!("seed {seed}: hydrating the last point, disk {disk}: {d}");
            }
        }
        let report = verify::check(&layout).await.unwrap();
        assert!(
            report.is_clean(),
            "seed {seed}: verify found problems: {:?}",
            report.problems
        );
    }
}

async fn export_disk(layout: &ReplicaLayout, rec: &PointRecord, disk: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(SIZES[disk] as usize);
    let mut s = Box::pin(export::disk_bytes(layout, rec, disk).await.unwrap());
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    got
}

/// Poll `check` until it passes; past `secs` seconds fail with what it last said.
async fn until(seed: u64, what: &str, secs: u64, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check() {
            Ok(()) => return,
            Err(state) if Instant::now() >= deadline => {
                panic!("seed {seed}: waited {secs} s for {what}; {state}")
            }
            Err(_) => tokio::time::sleep(ms(5)).await,
        }
    }
}
