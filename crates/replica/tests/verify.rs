//! Verify and repair against a replica built by the processor: a flipped byte in a chunk is
//! found with exactly the points that read it, repaired in place from a source that still holds
//! the block (every point then exports the model again), and refused when the source changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_format::segment::{self, MarkerKind, Op, Record};
use ferry_format::{Digest, pack};
use ferry_replica::verify::{self, BlockSource, ObjectKind};
use ferry_replica::{PointInfo, Processor, ProcessorConfig, ReplicaLayout, export, points};
use ferry_storage::{DynStore, Key};
use ferry_types::{Generation, Seq, StreamId, Timestamp};
use futures::StreamExt;

const BS: usize = 64 * 1024;
const SIZES: [u64; 2] = [1 << 20, 1 << 20];

fn mem() -> DynStore {
    ferry_storage::open("memory://").unwrap()
}

fn block(seed: u8) -> Vec<u8> {
    (0..BS)
        .map(|j| seed.wrapping_add((j * 7 % 251) as u8) ^ (j / 977) as u8)
        .collect()
}

/// The replica and the model: disk contents at each point, oldest first.
struct Fixture {
    layout: ReplicaLayout,
    models: Vec<Vec<Vec<u8>>>,
}

/// Point 1: initial (empty). Point 3: disk 0 blocks 0..6 = seeds 10..16, disk 1 block 2 = 50.
/// Point 5: disk 0 block 1 rewritten with seed 99. Every chunk of point 3 but block 1's is read
/// by point 5 too.
async fn build() -> Fixture {
    let stream = StreamId([3; 16]);
    let mut model: Vec<Vec<u8>> = SIZES.iter().map(|&s| vec![0; s as usize]).collect();
    let mut first: Vec<u8> = Vec::new();
    for seed in 10..16u8 {
        first.extend(block(seed));
    }
    model[0][..first.len()].copy_from_slice(&first);
    let mut models = vec![
        SIZES.iter().map(|&s| vec![0; s as usize]).collect(),
        model.clone(),
    ];
    model[1][2 * BS..3 * BS].copy_from_slice(&block(50));
    models[1] = model.clone();
    model[0][BS..2 * BS].copy_from_slice(&block(99));
    models.push(model);
    let rec = |seq: u64, disk: u16, op: Op| Record {
        seq: Seq(seq),
        time: Timestamp(1_000 + seq as i64),
        disk,
        op,
    };
    let recs = [
        rec(1, 0, Op::Marker(MarkerKind::InitialSyncDone)),
        rec(
            2,
            0,
            Op::Write {
                offset: 0,
                data: first,
            },
        ),
        rec(
            3,
            1,
            Op::Write {
                offset: 2 * BS as u64,
                data: block(50),
            },
        ),
        rec(4, 0, Op::Marker(MarkerKind::CrashConsistent)),
        rec(
            5,
            0,
            Op::Write {
                offset: BS as u64,
                data: block(99),
            },
        ),
        rec(6, 0, Op::Marker(MarkerKind::CrashConsistent)),
    ];
    let layout = ReplicaLayout::new(stream, mem(), vec![mem(), mem()]);
    let cache = mem();
    let mut prev = Digest::ZERO;
    for part in [&recs[..4], &recs[4..]] {
        let (bytes, digest) = segment::encode(stream, Generation(1), prev, part, 1).unwrap();
        let key = Key::parse(&segment::object_name(part[0].seq)).unwrap();
        cache.put_new(&key, Bytes::from(bytes)).await.unwrap();
        prev = digest;
    }
    process(&layout, &cache, Seq(6)).await;
    Fixture { layout, models }
}

async fn process(layout: &ReplicaLayout, cache: &DynStore, last: Seq) {
    let config = ProcessorConfig {
        poll_interval: Duration::from_millis(5),
        retry_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let p = Processor::new(layout.clone(), cache.clone(), SIZES.to_vec(), config);
    let status = p.status();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(p.run(rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.lock().unwrap().applied_seq != Some(last.0) {
        assert!(status.lock().unwrap().error.is_none());
        assert!(Instant::now() < deadline, "the processor did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.send(true).unwrap();
    task.await.unwrap();
}

/// Flip one byte in the middle of the chunk holding `raw`; returns the pack's key, the chunk's
/// offset and the pack's bytes before the damage.
async fn corrupt_chunk(layout: &ReplicaLayout, disk: usize, raw: &[u8]) -> (Key, u32, Bytes) {
    let store = &layout.disks[disk];
    let hash = Digest::of(raw);
    for o in store
        .list(Some(&layout.disk_prefix(disk).join("packs")))
        .await
        .unwrap()
    {
        let data = store.get(&o.key).await.unwrap();
        let (_, entries) = pack::decode_index(&data).unwrap();
        if let Some(e) = entries.iter().find(|e| e.hash == hash) {
            let mut bad = data.to_vec();
            bad[(e.offset + e.len / 2) as usize] ^= 0x40;
            store.put(&o.key, Bytes::from(bad)).await.unwrap();
            return (o.key, e.offset, data);
        }
    }
    panic!("no pack holds the chunk");
}

async fn point_ids(layout: &ReplicaLayout) -> Vec<String> {
    points::list(layout)
        .await
        .unwrap()
        .iter()
        .map(|r| PointInfo::from_record(r).id)
        .collect()
}

/// A source that holds the model's newest disks.
fn source_of(model: &[Vec<u8>]) -> Arc<dyn BlockSource> {
    let disks = model.to_vec();
    Arc::new(move |disk: usize, b: u64| {
        let start = b as usize * BS;
        disks.get(disk)?.get(start..start + BS).map(<[u8]>::to_vec)
    })
}

async fn assert_exports_model(f: &Fixture) {
    let pts = points::list(&f.layout).await.unwrap();
    assert_eq!(pts.len(), f.models.len());
    for (p, model) in pts.iter().zip(&f.models) {
        for (disk, want) in model.iter().enumerate() {
            let mut got = Vec::new();
            let mut s = Box::pin(export::disk_bytes(&f.layout, p, disk).await.unwrap());
            while let Some(b) = s.next().await {
                got.extend_from_slice(&b.unwrap());
            }
            assert!(got == *want, "point {:?} disk {disk} differs", p.seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_replica_verifies_clean() {
    let f = build().await;
    let r = verify::check(&f.layout).await.unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.points, 3);
    // Distinct chunks: 6 on disk 0 at point 3, block 1's new content, 1 on disk 1.
    assert_eq!(r.chunks, 8, "{r:?}");
    assert!(r.pages >= 3 && r.bytes_read > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_found_with_its_points_and_repaired_from_the_source() {
    let f = build().await;
    let ids = point_ids(&f.layout).await;
    // Block 3 (seed 13) is read by points 3 and 5, in a pack read whole (6 chunks).
    let (key, offset, good) = corrupt_chunk(&f.layout, 0, &block(13)).await;

    let r = verify::check(&f.layout).await.unwrap();
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    let p = &r.problems[0];
    assert_eq!(p.kind, ObjectKind::Chunk);
    assert_eq!((p.disk, p.key.as_str()), (0, key.as_str()));
    let place = p.chunk.as_ref().unwrap();
    assert_eq!(place.hash, Digest::of(&block(13)).to_hex());
    assert_eq!(place.offset, offset);
    assert_eq!(p.points, ids[1..].to_vec(), "points 3 and 5 read the chunk");
    assert!(!r.is_clean() && !p.repaired && p.unrepairable.is_none());

    let model = f.models.last().unwrap();
    let r = verify::check_and_repair(&f.layout, source_of(model), 1)
        .await
        .unwrap();
    assert_eq!((r.repaired, r.unrepaired), (1, 0), "{r:#?}");
    assert!(r.problems[0].repaired);
    let fixed = f.layout.disks[0].get(&key).await.unwrap();
    assert_eq!(
        fixed, good,
        "the repaired pack is byte for byte the original"
    );
    assert!(verify::check(&f.layout).await.unwrap().is_clean());
    assert_exports_model(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_the_source_no_longer_holds_is_unrepairable() {
    let f = build().await;
    let ids = point_ids(&f.layout).await;
    // Block 1's first content (seed 11) is only in point 3; the source holds seed 99 there now.
    corrupt_chunk(&f.layout, 0, &block(11)).await;
    let model = f.models.last().unwrap();
    let r = verify::check_and_repair(&f.layout, source_of(model), 1)
        .await
        .unwrap();
    assert_eq!((r.repaired, r.unrepaired), (0, 1), "{r:#?}");
    let p = &r.problems[0];
    assert_eq!(p.points, vec![ids[1].clone()]);
    let why = p.unrepairable.as_deref().unwrap();
    assert!(why.contains("no longer holds"), "{why}");

    // A source with other data everywhere cannot repair a chunk of a small pack either.
    corrupt_chunk(&f.layout, 1, &block(50)).await;
    let other: Arc<dyn BlockSource> = Arc::new(|_: usize, _: u64| Some(vec![0xee; BS]));
    let r = verify::check_and_repair(&f.layout, other, 1).await.unwrap();
    assert_eq!((r.repaired, r.unrepaired), (0, 2), "{r:#?}");
    assert!(r.problems.iter().all(|p| p.unrepairable.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pack_is_rebuilt_and_a_lost_page_is_reported() {
    let f = build().await;
    let ids = point_ids(&f.layout).await;
    let store = &f.layout.disks[1];
    let packs = store
        .list(Some(&f.layout.disk_prefix(1).join("packs")))
        .await
        .unwrap();
    assert_eq!(packs.len(), 1);
    store.delete(&packs[0].key).await.unwrap();
    let r = verify::check(&f.layout).await.unwrap();
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    assert_eq!(r.problems[0].kind, ObjectKind::Pack);
    assert_eq!(r.problems[0].points, ids[1..].to_vec());

    let model = f.models.last().unwrap();
    let r = verify::check_and_repair(&f.layout, source_of(model), 1)
        .await
        .unwrap();
    assert_eq!((r.repaired, r.unrepaired), (1, 0), "{r:#?}");
    assert_exports_model(&f).await;

    let pages = store
        .list(Some(&f.layout.disk_prefix(1).join("pages")))
        .await
        .unwrap();
    store.delete(&pages[0].key).await.unwrap();
    let r = verify::check_and_repair(&f.layout, source_of(model), 1)
        .await
        .unwrap();
    assert_eq!(r.unrepaired, 1, "{r:#?}");
    assert_eq!(r.problems[0].kind, ObjectKind::Page);
    assert!(!r.problems[0].points.is_empty());
}
