//! The replica against a plain model: random writes, zeroes and trims across several disks,
//! random cut points and segment boundaries, a processor killed at a random moment and
//! restarted; every published point exports exactly what the model held at its cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_format::Digest;
use ferry_format::segment::{self, MarkerKind, Op, Record};
use ferry_replica::{Processor, ProcessorConfig, ReplicaLayout, export, gc, points};
use ferry_storage::{DynStore, Key};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use futures::StreamExt;
use proptest::prelude::*;

/// Disk 1 spans two map leaves, so its map has an index node above them.
const SIZES: [u64; 3] = [1 << 20, 9 << 20, 1 << 20];

#[derive(Debug, Clone)]
enum Step {
    Write {
        disk: u16,
        offset: u64,
        len: u64,
        seed: u8,
        zero_data: bool,
    },
    Zero {
        disk: u16,
        offset: u64,
        len: u64,
    },
    Trim {
        disk: u16,
        offset: u64,
        len: u64,
    },
    Cut(bool),
    /// The agent's ship buffer overflowed (`true`: an overflow marker) or its catch-up
    /// completed (`false`: a catch-up-done marker).
    Window(bool),
}

fn step() -> impl Strategy<Value = Step> {
    let extent = (0u16..3, 0u64..(16 << 20), 1u64..200_000);
    prop_oneof![
        6 => (extent.clone(), any::<u8>(), prop::bool::weighted(0.1)).prop_map(|((disk, offset, len), seed, zero_data)| Step::Write { disk, offset, len, seed, zero_data }),
        1 => extent.clone().prop_map(|(disk, offset, len)| Step::Zero { disk, offset, len }),
        1 => extent.prop_map(|(disk, offset, len)| Step::Trim { disk, offset, len }),
        2 => any::<bool>().prop_map(Step::Cut),
        1 => any::<bool>().prop_map(Step::Window),
    ]
}

fn clamp(disk: u16, offset: u64, len: u64) -> (u64, u64) {
    let size = SIZES[disk as usize];
    let offset = offset % size;
    (offset, len.min(size - offset))
}

/// Turn steps into records, and the model's disks at every marker.
/// The disks' contents at the point cut at a sequence.
type Snapshots = Vec<(Seq, Vec<Vec<u8>>)>;

fn records(steps: &[Step]) -> (Vec<Record>, Snapshots) {
    let mut model: Vec<Vec<u8>> = SIZES.iter().map(|&s| vec![0u8; s as usize]).collect();
    let mut recs = vec![Record {
        seq: Seq(1),
        time: Timestamp(1_000),
        disk: 0,
        op: Op::Marker(MarkerKind::InitialSyncDone),
    }];
    let mut snaps = vec![(Seq(1), model.clone())];
    // Inside a catch-up window no marker becomes a point.
    let mut window = false;
    for (i, st) in steps.iter().enumerate() {
        let seq = Seq(i as u64 + 2);
        let time = Timestamp(1_000 + i as i64 + 1);
        let (disk, op) = match *st {
            Step::Write {
                disk,
                offset,
                len,
                seed,
                zero_data,
            } => {
                let (offset, len) = clamp(disk, offset, len);
                let data: Vec<u8> = (0..len)
                    .map(|j| {
                        if zero_data {
                            0
                        } else {
                            seed.wrapping_add((j * 7 % 251) as u8)
                        }
                    })
                    .collect();
                model[disk as usize][offset as usize..(offset + len) as usize]
                    .copy_from_slice(&data);
                (disk, Op::Write { offset, data })
            }
            Step::Zero { disk, offset, len } | Step::Trim { disk, offset, len } => {
                let (offset, len) = clamp(disk, offset, len);
                model[disk as usize][offset as usize..(offset + len) as usize].fill(0);
                let op = if matches!(st, Step::Zero { .. }) {
                    Op::Zero { offset, len }
                } else {
                    Op::Trim { offset, len }
                };
                (disk, op)
            }
            Step::Window(true) => {
                window = true;
                (0, Op::Marker(MarkerKind::Overflow))
            }
            Step::Window(false) => {
                window = false;
                snaps.push((seq, model.clone()));
                (0, Op::Marker(MarkerKind::CatchUpDone))
            }
            Step::Cut(app) => {
                if !window {
                    snaps.push((seq, model.clone()));
                }
                (
                    0,
                    Op::Marker(if app {
                        MarkerKind::AppConsistent
                    } else {
                        MarkerKind::CrashConsistent
                    }),
                )
            }
        };
        recs.push(Record {
            seq,
            time,
            disk,
            op,
        });
    }
    (recs, snaps)
}

/// Encode records as a chain of segments cut at the given lengths.
fn segments(stream: StreamId, recs: &[Record], cuts: &[usize]) -> Vec<(Seq, Bytes)> {
    let mut out = Vec::new();
    let mut prev = Digest::ZERO;
    let mut i = 0;
    let mut c = 0;
    while i < recs.len() {
        let n = cuts[c % cuts.len()].max(1).min(recs.len() - i);
        c += 1;
        let (bytes, digest) =
            segment::encode(stream, Generation(1), prev, &recs[i..i + n], 1).unwrap();
        out.push((recs[i].seq, Bytes::from(bytes)));
        prev = digest;
        i += n;
    }
    out
}

fn mem() -> DynStore {
    ferry_storage::open("memory://").unwrap()
}

async fn put_all(cache: &DynStore, segs: &[(Seq, Bytes)]) {
    for (first, bytes) in segs {
        cache
            .put_new(
                &Key::parse(&segment::object_name(*first)).unwrap(),
                bytes.clone(),
            )
            .await
            .unwrap();
    }
}

fn config() -> ProcessorConfig {
    ProcessorConfig {
        pack_bytes: 200_000,
        checkpoint_bytes: 256 * 1024,
        checkpoint_interval: Duration::from_millis(50),
        poll_interval: Duration::from_millis(5),
        retry_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn run_until(
    layout: &ReplicaLayout,
    cache: &DynStore,
    last: Seq,
    abort_after: Option<Duration>,
) {
    let p = Processor::new(layout.clone(), cache.clone(), SIZES.to_vec(), config());
    let status = p.status();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(p.run(rx));
    if let Some(d) = abort_after {
        tokio::time::sleep(d).await;
        task.abort();
        let _ = task.await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status.lock().unwrap().clone();
        assert!(s.error.is_none(), "processor error: {:?}", s.error);
        if s.applied_seq == Some(last.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processor did not reach {last:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.send(true).unwrap();
    task.await.unwrap();
}

async fn check(steps: Vec<Step>, cuts: Vec<usize>, crash_at: usize, abort_ms: u64) {
    let stream = StreamId([7; 16]);
    let (recs, snaps) = records(&steps);
    let segs = segments(stream, &recs, &cuts);
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem(), mem()]);
    let cache = mem();
    let split = crash_at % segs.len();
    put_all(&cache, &segs[..split]).await;
    run_until(
        &layout,
        &cache,
        Seq(0),
        Some(Duration::from_millis(abort_ms)),
    )
    .await;
    put_all(&cache, &segs[split..]).await;
    run_until(&layout, &cache, recs.last().unwrap().seq, None).await;

    let published = points::list(&layout).await.unwrap();
    let expected: Vec<Seq> = snaps.iter().map(|(s, _)| *s).collect();
    let got: Vec<Seq> = published.iter().map(|p| p.seq).collect();
    assert_eq!(got, expected, "every marker must become exactly one point");
    for (point, (seq, model)) in published.iter().zip(&snaps) {
        assert_eq!(point.seq, *seq);
        for (disk, want) in model.iter().enumerate() {
            let mut got = Vec::new();
            let mut s = Box::pin(export::disk_bytes(&layout, point, disk).await.unwrap());
            while let Some(b) = s.next().await {
                got.extend_from_slice(&b.unwrap());
            }
            assert!(
                got == *want,
                "point {seq:?} disk {disk} differs from the model"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn every_point_equals_the_model(
        steps in prop::collection::vec(step(), 1..60),
        cuts in prop::collection::vec(1usize..8, 1..6),
        crash_at in any::<usize>(),
        abort_ms in 0u64..30,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(steps, cuts, crash_at, abort_ms));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_is_refused_and_nothing_of_it_is_applied() {
    let stream = StreamId([9; 16]);
    let steps = vec![
        Step::Write {
            disk: 0,
            offset: 0,
            len: 4096,
            seed: 1,
            zero_data: false,
        },
        Step::Cut(false),
        Step::Write {
            disk: 0,
            offset: 0,
            len: 4096,
            seed: 2,
            zero_data: false,
        },
        Step::Cut(false),
    ];
    let (recs, _) = records(&steps);
    // Segments: [initial marker, write 1, cut] and [write 2, cut].
    let segs = segments(stream, &recs, &[3, 2]);
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem(), mem()]);
    let cache = mem();
    put_all(&cache, &segs[..1]).await;
    let mut bad = segs[1].1.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    let bad_key = Key::parse(&segment::object_name(segs[1].0)).unwrap();
    cache.put_new(&bad_key, Bytes::from(bad)).await.unwrap();

    let p = Processor::new(layout.clone(), cache.clone(), SIZES.to_vec(), config());
    let status = p.status();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(p.run(rx));
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        if let Some(e) = status.lock().unwrap().error.clone() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt segment was not refused"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        err.contains("checksum") && err.contains("nothing of it was applied"),
        "{err}"
    );
    assert_eq!(status.lock().unwrap().refused_segment, Some(segs[1].0.0));
    assert_eq!(
        status.lock().unwrap().applied_seq,
        Some(3),
        "nothing after the good segment is applied"
    );
    let pts = points::list(&layout).await.unwrap();
    assert_eq!(pts.iter().map(|p| p.seq.0).collect::<Vec<_>>(), vec![1, 3]);

    // The good segment replaces the bad one: processing continues and the error clears.
    cache.put(&bad_key, segs[1].1.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status.lock().unwrap().applied_seq != Some(5) {
        assert!(Instant::now() < deadline, "processing did not resume");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(status.lock().unwrap().error.is_none());
    tx.send(true).unwrap();
    task.await.unwrap();
    // Applied segments are gone from the cache.
    let left = cache.list(None).await.unwrap();
    assert!(left.is_empty(), "segments left in the cache: {left:?}");
}

async fn read_disk(layout: &ReplicaLayout, point: &ferry_format::point::PointRecord) -> Vec<u8> {
    let mut got = Vec::new();
    let mut s = Box::pin(export::disk_bytes(layout, point, 0).await.unwrap());
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    got
}

async fn objects(store: &DynStore) -> usize {
    store.list(None).await.unwrap().len()
}

/// A pruned point's chunks stay for the grace period (an export that loaded the point before
/// the prune reads it whole), then garbage collection frees them; the other points are intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_waits_out_the_grace_period_then_frees_what_nothing_references() {
    let stream = StreamId([5; 16]);
    let write = |seed| Step::Write {
        disk: 0,
        offset: 0,
        len: 256 * 1024,
        seed,
        zero_data: false,
    };
    let steps = vec![
        write(1),
        Step::Cut(false),
        write(2),
        Step::Cut(false),
        write(3),
        Step::Cut(false),
    ];
    let (recs, snaps) = records(&steps);
    let segs = segments(stream, &recs, &[2]);
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem(), mem()]);
    let cache = mem();
    put_all(&cache, &segs).await;
    run_until(&layout, &cache, recs.last().unwrap().seq, None).await;
    let all = points::list(&layout).await.unwrap();
    let first = all.iter().find(|p| p.seq == snaps[1].0).unwrap().clone();

    // An export loads the point, then the point is pruned and collection marks its chunks.
    let mut export = Box::pin(export::disk_bytes(&layout, &first, 0).await.unwrap());
    points::delete_point(&layout, &first).await.unwrap();
    let before = objects(&layout.disks[0]).await;
    let grace = Duration::from_secs(3600);
    let marked = gc::collect(&layout, &gc::Referenced::default(), grace)
        .await
        .unwrap();
    assert!(marked.marked > 0, "nothing marked: {marked:?}");
    let again = gc::collect(&layout, &gc::Referenced::default(), grace)
        .await
        .unwrap();
    assert_eq!(again.deleted, 0, "deleted within the grace period");
    let mut got = Vec::new();
    while let Some(b) = export.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    assert!(
        got == snaps[1].1[0],
        "the export started before the prune is wrong"
    );

    // Past the grace period the candidates go, and only they.
    let swept = gc::collect(&layout, &gc::Referenced::default(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.deleted, marked.marked);
    assert!(objects(&layout.disks[0]).await < before);
    for (seq, model) in &snaps[2..] {
        let p = all.iter().find(|p| p.seq == *seq).unwrap();
        assert!(
            read_disk(&layout, p).await == model[0],
            "point {seq:?} damaged by collection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instant_inside_a_catch_up_window_is_recoverable() {
    let write = |seed| Step::Write {
        disk: 1,
        offset: 4096,
        len: 4096,
        seed,
        zero_data: false,
    };
    // Records at times 1001.. (seq 2..): write, cut, write, overflow, write, cut (ignored),
    // write, catch-up done, write.
    let steps = vec![
        write(1),
        Step::Cut(false),
        write(2),
        Step::Window(true),
        write(3),
        Step::Cut(false),
        write(4),
        Step::Window(false),
        write(5),
    ];
    let stream = StreamId([5; 16]);
    let (recs, snaps) = records(&steps);
    let segs = segments(stream, &recs, &[2, 3]);
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem(), mem()]);
    let cache = mem();
    put_all(&cache, &segs).await;
    run_until(&layout, &cache, recs.last().unwrap().seq, None).await;
    let published: Vec<u64> = points::list(&layout)
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq.0)
        .collect();
    assert_eq!(published, vec![1, 3, 9], "no point inside the window");

    let p = Processor::new(layout.clone(), cache.clone(), SIZES.to_vec(), config());
    let base = points::list(&layout).await.unwrap()[1].clone(); // seq 3, time 1002
    // Time 1003 (the write before the overflow): recoverable, and exactly the model there.
    let rec = p.replay_to(&base, Timestamp(1_003)).await.unwrap();
    assert_eq!(rec.seq, Seq(4));
    let mut got = Vec::new();
    let mut s = Box::pin(export::disk_bytes(&layout, &rec, 1).await.unwrap());
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    assert_eq!(got[4096], 2u8, "the second write is in");
    // Times 1004..1007 are inside the window: refused, naming both ends.
    for t in [1_004, 1_005, 1_007] {
        let err = p.replay_to(&base, Timestamp(t)).await.unwrap_err();
        match err {
            ferry_replica::ReplicaError::NotRecoverable { since, until, .. } => {
                assert_eq!(since, Timestamp(1_004));
                assert_eq!(until, Some(Timestamp(1_008)));
            }
            other => panic!("instant {t}: expected not recoverable, got {other}"),
        }
    }
    // The catch-up-done instant and after: recoverable again.
    let all = points::list(&layout).await.unwrap();
    let base9 = all.iter().find(|p| p.seq == Seq(9)).unwrap().clone();
    assert_eq!(snaps.last().unwrap().0, Seq(9));
    let rec = p.replay_to(&base9, Timestamp(1_009)).await.unwrap();
    assert_eq!(rec.seq, Seq(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_processor_publishes_nothing_and_deletes_nothing_more() {
    let stream = StreamId([5; 16]);
    let write = |seed| Step::Write {
        disk: 0,
        offset: 0,
        len: 4096,
        seed,
        zero_data: false,
    };
    let steps = vec![write(1), Step::Cut(false), write(2), Step::Cut(false)];
    let (recs, _) = records(&steps);
    // Segments: [initial marker, write 1, cut] and [write 2, cut].
    let segs = segments(stream, &recs, &[3, 2]);
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem(), mem()]);
    let cache = mem();
    put_all(&cache, &segs[..1]).await;

    // The processor holds the item until the fence turns; then another holder has it.
    let holds = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fence: ferry_replica::Fence = {
        let (holds, asked) = (holds.clone(), asked.clone());
        Arc::new(move || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match holds.load(std::sync::atomic::Ordering::SeqCst) {
                true => Ok(()),
                false => Err(ferry_replica::ReplicaError::Fenced(
                    "the lease of item rg/vm passed to server b".into(),
                )),
            }
        })
    };
    let p =
        Processor::new(layout.clone(), cache.clone(), SIZES.to_vec(), config()).with_fence(fence);
    let status = p.status();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(p.run(rx));
    let deadline = Instant::now() + Duration::from_secs(20);
    while status.lock().unwrap().applied_seq != Some(3) {
        assert!(
            Instant::now() < deadline,
            "the first segment was not applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the fence is asked"
    );
    let published = points::list(&layout).await.unwrap();
    assert_eq!(
        published.iter().map(|p| p.seq.0).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(
        cache.list(None).await.unwrap().is_empty(),
        "applied, so deleted"
    );

    // Fenced: the next segment may be read, but no record of it is published, the processor
    // stops with an error that says why, and the segment stays for the new holder.
    holds.store(false, std::sync::atomic::Ordering::SeqCst);
    put_all(&cache, &segs[1..]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        if let Some(e) = status.lock().unwrap().error.clone() {
            break e;
        }
        assert!(Instant::now() < deadline, "the processor went on unfenced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(err, "fenced: the lease of item rg/vm passed to server b");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("a fenced processor stops by itself")
        .unwrap();
    let after = points::list(&layout).await.unwrap();
    assert_eq!(
        after.len(),
        published.len(),
        "no point published once fenced"
    );
    let left = cache.list(None).await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "the segment is left for the new holder: {left:?}"
    );
}
