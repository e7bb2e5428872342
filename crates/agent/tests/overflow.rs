//! The ship buffer overflowing: the VM keeps writing while nothing can be shipped, the writes
//! past the buffer are only tracked as dirty blocks (surviving an agent crash), and the
//! catch-up copies just those blocks. Replaying the shipped stream gives exactly the disks,
//! and no point is cut inside the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_agent::AgentError;
use ferry_agent::catch_up::{self, CatchUpProgress};
use ferry_agent::disk::Disk;
use ferry_agent::sealer;
use ferry_agent::stream::{Stream, StreamConfig};
use ferry_format::Digest;
use ferry_format::segment::{self, MarkerKind, Op};
use ferry_nbd::Export;
use ferry_storage::DynStore;
use ferry_types::{Generation, StreamId};

const SIZE: u64 = 4 << 20;
const BUFFER: u64 = 256 << 10;

fn config() -> StreamConfig {
    StreamConfig {
        buffer_bytes: BUFFER,
        seal_bytes: 64 << 10,
        ..StreamConfig::default()
    }
}

fn open(dir: &std::path::Path) -> (Vec<Arc<Disk>>, Arc<Stream>) {
    let disks: Vec<Arc<Disk>> = (0..2)
        .map(|i| Arc::new(Disk::open_or_create(&dir.join(format!("d{i}.raw")), SIZE, i).unwrap()))
        .collect();
    let stream = Stream::open(
        &dir.join("stream"),
        StreamId([7; 16]),
        Generation(1),
        config(),
    )
    .unwrap();
    for d in &disks {
        d.attach(Some(stream.clone()));
    }
    (disks, stream)
}

/// The part of each disk the VM writes to.
const HOT: u64 = 1 << 20;

/// Writes of 4 KiB over the first MiB of both disks, each with its own pattern.
fn write_some(disks: &[Arc<Disk>], from: u64, count: u64) {
    for n in from..from + count {
        let d = &disks[(n % 2) as usize];
        let off = (n * 7 * 4096 + 512 * (n % 5)) % (HOT - 4096);
        d.write(off, &[(n % 250) as u8 + 1; 4096], n % 9 == 0)
            .unwrap();
        if n % 17 == 0 {
            d.write_zeroes(off & !4095, 8192, false, n.is_multiple_of(2))
                .unwrap();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replay every shipped segment in order onto zeroed disks; also return the markers.
async fn replay(cache: &DynStore) -> (Vec<Vec<u8>>, Vec<MarkerKind>) {
    let mut model = vec![vec![0u8; SIZE as usize]; 2];
    let mut markers = Vec::new();
    let mut prev = Digest::ZERO;
    let mut objects = cache.list(None).await.unwrap();
    objects.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    for o in objects {
        let seg = segment::decode(&cache.get(&o.key).await.unwrap()).unwrap();
        assert_eq!(seg.header.prev_digest, prev, "segments chain");
        prev = seg.digest;
        for r in seg.records {
            let disk = &mut model[r.disk as usize];
            match r.op {
                Op::Write { offset, data } => {
                    disk[offset as usize..offset as usize + data.len()].copy_from_slice(&data)
                }
                Op::Zero { offset, len } | Op::Trim { offset, len } => {
                    disk[offset as usize..(offset + len) as usize].fill(0)
                }
                Op::Marker(k) => markers.push(k),
            }
        }
    }
    (model, markers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_tracks_dirty_blocks_and_the_catch_up_sends_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ferry_storage::open("memory://").unwrap();
    let (disks, stream) = open(dir.path());
    write_some(&disks, 0, 20);
    stream.mark(MarkerKind::CrashConsistent).unwrap();
    sealer::seal_and_ship(&stream, &cache).await.unwrap();

    // The cache is out of reach: nothing ships, and the VM writes far more than the buffer.
    write_some(&disks, 20, 400);
    let s = stream.status();
    assert_eq!(s.tracking, "overflow");
    assert!(
        s.buffered_bytes <= BUFFER + 4096,
        "the buffer stays bounded"
    );
    assert!(s.dirty_bytes > 0);
    assert!(
        matches!(
            stream.mark(MarkerKind::CrashConsistent),
            Err(AgentError::CatchingUp { .. })
        ),
        "no point inside the window"
    );

    // kill -9 of the agent: the logs and the bitmaps are what is left.
    for d in &disks {
        d.attach(None);
    }
    drop(stream);
    let (disks, stream) = open(dir.path());
    assert_eq!(
        stream.status().tracking,
        "overflow",
        "the window survives a restart"
    );

    // The cache is back: ship, let the catch-up copy the dirty blocks, while the VM writes on.
    let (cancel, progress) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(CatchUpProgress::default()),
    );
    let worker = {
        let (disks, stream, cancel, progress) = (
            disks.clone(),
            stream.clone(),
            cancel.clone(),
            progress.clone(),
        );
        std::thread::spawn(move || catch_up::run(&disks, &stream, &progress, &cancel).unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 420;
    while stream.status().tracking != "ordered" {
        assert!(Instant::now() < deadline, "the catch-up did not complete");
        sealer::seal_and_ship(&stream, &cache).await.unwrap();
        write_some(&disks, n, 5);
        n += 5;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("a completed catch-up", || {
        progress.completed.load(Ordering::Relaxed) >= 1
    });
    stream.mark(MarkerKind::CrashConsistent).unwrap();
    sealer::seal_and_ship(&stream, &cache).await.unwrap();
    cancel.store(true, Ordering::Relaxed);
    worker.join().unwrap();

    let copied = progress.copied_bytes.load(Ordering::Relaxed);
    assert!(
        // At most the hot blocks of both disks, twice (should the buffer overflow again during
        // the catch-up): far from the 8 MiB a full resync reads.
        copied > 0 && copied <= 4 * (HOT + 65536),
        "only dirty blocks are copied ({copied} bytes of {})",
        2 * SIZE
    );
    let (model, markers) = replay(&cache).await;
    for (i, d) in disks.iter().enumerate() {
        let mut actual = vec![0u8; SIZE as usize];
        d.read(0, &mut actual).unwrap();
        assert!(
            model[i] == actual,
            "disk {i}: the replayed stream equals the disk"
        );
    }
    // Overflow (twice: again after the restart), catch-up done, then points resume.
    let first = markers
        .iter()
        .position(|k| *k == MarkerKind::Overflow)
        .unwrap();
    let done = markers
        .iter()
        .position(|k| *k == MarkerKind::CatchUpDone)
        .unwrap();
    assert!(first < done);
    assert!(
        markers[first..done]
            .iter()
            .all(|k| matches!(k, MarkerKind::Overflow)),
        "no point marker inside the window: {markers:?}"
    );
    assert_eq!(markers.last(), Some(&MarkerKind::CrashConsistent));
    assert!(
        !dir.path().join("stream").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".bitmap")),
        "the bitmaps are gone once the window closes"
    );
}
