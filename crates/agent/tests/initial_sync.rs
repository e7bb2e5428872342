//! Initial replication while the VM keeps writing: replaying the shipped stream in order gives
//! exactly the final disk, so no live write is lost or overtaken by the copy's older data.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_agent::disk::Disk;
use ferry_agent::initial_sync::{self, Progress};
use ferry_agent::sealer;
use ferry_agent::stream::{Stream, StreamConfig};
use ferry_format::Digest;
use ferry_format::segment::{self, MarkerKind, Op};
use ferry_nbd::Export;
use ferry_types::{Generation, StreamId};

const SIZE: u64 = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_during_the_initial_copy_are_never_overtaken() {
    let dir = tempfile::tempdir().unwrap();
    // Existing data on two disks before replication starts.
    let disks: Vec<Arc<Disk>> = (0..2)
        .map(|i| {
            Arc::new(Disk::open_or_create(&dir.path().join(format!("d{i}.raw")), SIZE, i).unwrap())
        })
        .collect();
    for (i, d) in disks.iter().enumerate() {
        for block in (0..SIZE).step_by(1 << 20).skip(i).step_by(2) {
            d.write(block, &vec![0xA0 + i as u8; 1 << 20], false)
                .unwrap();
        }
    }
    let stream = Stream::open(
        &dir.path().join("stream"),
        StreamId([1; 16]),
        Generation(1),
        StreamConfig::default(),
    )
    .unwrap();
    for d in &disks {
        d.attach(Some(stream.clone()));
    }
    let cache = ferry_storage::open("memory://").unwrap();

    // The copy and a writer hammering the same regions run at once.
    let progress = Arc::new(Progress::default());
    let copy = {
        let (disks, stream, progress) = (disks.clone(), stream.clone(), progress.clone());
        std::thread::spawn(move || initial_sync::run(&disks, &stream, &progress, None).unwrap())
    };
    let writer = {
        let disks = disks.clone();
        std::thread::spawn(move || {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for n in 0..3000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let d = &disks[(x % 2) as usize];
                let off = (x >> 8) % (SIZE - 8192);
                match n % 10 {
                    0 => d
                        .write_zeroes(off, 8192, false, (x >> 3).is_multiple_of(2))
                        .unwrap(),
                    1 => d.trim(off & !4095, 4096, false).unwrap(),
                    _ => d
                        .write(off, &[(n % 251) as u8 + 1; 3000], n % 7 == 0)
                        .unwrap(),
                }
            }
        })
    };
    let end = copy.join().unwrap().expect("copy finished");
    writer.join().unwrap();
    assert_eq!(progress.scanned_bytes.load(Ordering::Relaxed), 2 * SIZE);
    sealer::seal_and_ship(&stream, &cache).await.unwrap();

    // Replay the shipped segments in order onto zeroed disks.
    let mut model = vec![vec![0u8; SIZE as usize]; 2];
    let mut prev = Digest::ZERO;
    let mut seen_end = false;
    let mut objects = cache.list(None).await.unwrap();
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut next = 1;
    for o in objects {
        let seg = segment::decode(&cache.get(&o.key).await.unwrap()).unwrap();
        assert_eq!(seg.header.first_seq.0, next, "segments are contiguous");
        assert_eq!(seg.header.prev_digest, prev, "segments are chained");
        next = seg.header.last_seq.0 + 1;
        prev = seg.digest;
        for r in seg.records {
            let m = &mut model[r.disk as usize];
            match r.op {
                Op::Write { offset, data } => {
                    m[offset as usize..offset as usize + data.len()].copy_from_slice(&data)
                }
                Op::Zero { offset, len } | Op::Trim { offset, len } => {
                    m[offset as usize..(offset + len) as usize].fill(0)
                }
                Op::Marker(MarkerKind::InitialSyncDone) => {
                    assert_eq!(r.seq, end);
                    seen_end = true;
                }
                Op::Marker(_) => {}
            }
        }
    }
    assert!(seen_end, "the copy's end marker was shipped");
    for (i, d) in disks.iter().enumerate() {
        let mut img = vec![0u8; SIZE as usize];
        d.read(0, &mut img).unwrap();
        assert!(
            img == model[i],
            "disk {i}: replaying the stream does not give the disk"
        );
    }
}
