use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use ferry_nbd::Export;

use super::*;

const B: usize = BLOCK_SIZE as usize;

/// A replica beside the real image file: block contents in memory, counting fetches, and
/// failing on demand (to inject faults).
#[derive(Default)]
struct MemorySource {
    blocks: HashMap<u64, Vec<u8>>,
    fetched: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl BlockSource for MemorySource {
    fn fetch(&self, blocks: Vec<u64>) -> BoxFuture<Fetched> {
        self.fetched.fetch_add(blocks.len(), Ordering::SeqCst);
        let out = if self.fail.load(Ordering::SeqCst) {
            Err("the replica is unreachable".to_string())
        } else {
            Ok(blocks
                .iter()
                .map(|b| (*b, self.blocks.get(b).cloned().unwrap_or(vec![0; B])))
                .collect())
        };
        Box::pin(async move { out })
    }
}

fn source(blocks: &[u64]) -> Arc<MemorySource> {
    Arc::new(MemorySource {
        blocks: blocks.iter().map(|&b| (b, vec![b as u8 + 1; B])).collect(),
        ..Default::default()
    })
}

/// The disk as the point holds it, `blocks` of `size` bytes.
fn model(src: &MemorySource, size: u64) -> Vec<u8> {
    let mut m = vec![0u8; size as usize];
    for (b, data) in &src.blocks {
        let at = *b as usize * B;
        m[at..at + B].copy_from_slice(data);
    }
    m
}

fn serve(image: &Path, size: u64, src: Arc<MemorySource>) -> (Arc<Disk>, Arc<Hydration>) {
    let disk = Arc::new(Disk::open_or_create(image, size, 0).unwrap());
    let h = Hydration::open(image, size, src, tokio::runtime::Handle::current())
        .unwrap()
        .expect("a bitmap");
    disk.set_hydration(Some(Arc::new(h)));
    let h = disk.hydration().unwrap();
    (disk, h)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_disk_reads_right_at_once_and_keeps_writes_made_before_it_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk0.raw");
    let size = 16 * BLOCK_SIZE;
    let src = source(&[0, 2, 5, 15]);
    prepare(&image, size, &[0, 2, 5, 15]).unwrap();
    let (disk, h) = serve(&image, size, src.clone());
    assert_eq!(h.pending(), 4);
    let mut want = model(&src, size);

    // Reads fetch what they touch, and only that.
    let d = disk.clone();
    let got = blocking(move || {
        let mut buf = vec![0u8; 3 * B];
        d.read(B as u64, &mut buf).map(|()| buf)
    })
    .await
    .unwrap();
    assert_eq!(got, want[B..4 * B]);
    assert_eq!(src.fetched.load(Ordering::SeqCst), 1, "block 2 only");
    assert_eq!(h.pending(), 3);

    // A write into part of a missing block lands on the block's restored contents.
    let d = disk.clone();
    blocking(move || d.write(5 * BLOCK_SIZE + 100, &[9; 10], false))
        .await
        .unwrap();
    want[5 * B + 100..5 * B + 110].fill(9);
    assert!(!h.is_pending(5));

    // A crash now (nothing finishes) and a restart: the write survives, the rest is fetched.
    drop((disk, h));
    let (disk, h) = serve(&image, size, src.clone());
    assert_eq!(h.pending(), 2, "blocks 0 and 15 are still to come");
    let (_stop, rx) = watch::channel(false);
    run(disk.clone(), h.clone(), rx).await;
    assert!(h.last_error().is_none());
    assert!(disk.hydration().is_none(), "the disk is plain again");
    assert!(!bitmap_path(&image).exists());
    assert_eq!(std::fs::read(&image).unwrap(), want);
    assert_eq!(
        Hydration::open(&image, size, src, tokio::runtime::Handle::current())
            .unwrap()
            .map(|_| ()),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_fails_the_read_and_the_background_task_retries() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk0.raw");
    let size = 4 * BLOCK_SIZE + 512;
    let src = source(&[1, 3]);
    src.fail.store(true, Ordering::SeqCst);
    prepare(&image, size, &[1, 3]).unwrap();
    let (disk, h) = serve(&image, size, src.clone());
    let d = disk.clone();
    let err = blocking(move || d.read(BLOCK_SIZE, &mut vec![0u8; 4096]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert_eq!(h.pending(), 2, "nothing was marked filled");

    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run(disk.clone(), h.clone(), rx));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.last_error().is_none() {
        assert!(std::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    src.fail.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("hydration finishes once the replica is back")
        .unwrap();
    drop(stop);
    let mut want = model(&src, 5 * BLOCK_SIZE);
    want.truncate(size as usize);
    assert_eq!(std::fs::read(&image).unwrap(), want);
}

#[test]
fn a_damaged_bitmap_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk0.raw");
    prepare(&image, 8 * BLOCK_SIZE, &[1]).unwrap();
    let path = bitmap_path(&image);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = |size| {
        Hydration::open(&image, size, source(&[]), rt.handle().clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(open(16 * BLOCK_SIZE).contains("covers 8 blocks"));
    let mut data = std::fs::read(&path).unwrap();
    data[20] ^= 1;
    std::fs::write(&path, &data).unwrap();
    assert!(open(8 * BLOCK_SIZE).contains("checksum"));
    data[0] = b'X';
    std::fs::write(&path, &data).unwrap();
    assert!(open(8 * BLOCK_SIZE).contains("bad magic"));
}

/// A source that answers without the block asked for.
struct Forgetful;

impl BlockSource for Forgetful {
    fn fetch(&self, _blocks: Vec<u64>) -> BoxFuture<Fetched> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_the_replica_does_not_return_stays_pending() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk0.raw");
    let size = 4 * BLOCK_SIZE;
    prepare(&image, size, &[2]).unwrap();
    let disk = Arc::new(Disk::open_or_create(&image, size, 0).unwrap());
    let h = Hydration::open(
        &image,
        size,
        Arc::new(Forgetful),
        tokio::runtime::Handle::current(),
    )
    .unwrap()
    .unwrap();
    disk.set_hydration(Some(Arc::new(h)));
    let d = disk.clone();
    let err = blocking(move || d.read(2 * BLOCK_SIZE, &mut vec![0u8; 512]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no data for block 2"), "{err}");
    assert!(disk.hydration().unwrap().is_pending(2));
}

/// A header with a right checksum claiming the given counts.
fn header_claiming(blocks: u64, total: u64) -> Vec<u8> {
    header(blocks, total).to_vec()
}

#[test]
fn a_bitmap_whose_counts_claim_more_than_it_holds_is_refused() {
    let size = 8 * BLOCK_SIZE;
    // Right checksum, but a block count of a disk of 2^64 bytes.
    let e = parse(&header_claiming(u64::MAX, 0), size).unwrap_err();
    assert!(e.contains("covers 18446744073709551615 blocks"), "{e}");
    let e = parse(&header_claiming(1 << 48, 0), u64::MAX).unwrap_err();
    assert!(e.contains("bytes, expected"), "{e}");
    // More blocks to fetch than the disk has.
    let mut data = header_claiming(8, 9);
    data.extend_from_slice(&[0; 8]);
    let e = parse(&data, size).unwrap_err();
    assert!(e.contains("total 9"), "{e}");
    let mut data = header_claiming(8, 8);
    data.extend_from_slice(&[0xff; 8]);
    assert_eq!(parse(&data, size).unwrap().words, vec![u64::MAX]);

    // A file longer than the disk's bitmap is refused before it is read.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk0.raw");
    prepare(&image, size, &[1]).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(bitmap_path(&image))
        .unwrap();
    f.set_len(1 << 40).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = Hydration::open(&image, size, source(&[]), rt.handle().clone())
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("1099511627776 bytes, expected 48"),
        "{e}"
    );
}
