//! Instant serving of a disk restored from a recovery point: the VM boots from an image that is
//! still being filled, and every block it touches first is fetched from the replica on demand.
//!
//! The image starts sparse (all zeroes) with a **hydration bitmap** beside it
//! (`<image>.hydrating`, spec `docs/formats/hydration-bitmap.md`) whose set bits are the blocks
//! that still have to come from the replica. A read or write of such a block first *fills* it:
//! the block is fetched, written to the image, the image is synced, and only then is its bit
//! cleared in the file (one `pwrite` of its word). A background task fills the rest in order, in
//! batches (one sync per batch). Because a bit is cleared only after its block is durable, and
//! before the VM's write to it can happen, neither `kill -9` nor power loss can make the
//! hydration overwrite what the VM wrote, or leave a block marked filled that holds zeroes.
//! Once every bit is clear, the file is removed and the image is a plain disk.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_format::BLOCK_SIZE;
use ferry_storage::retry::{Backoff, pause, stop_requested, stopped};
use tokio::sync::watch;

use crate::AgentError;
use crate::disk::Disk;

pub(crate) const MAGIC: &[u8; 8] = b"FERRYHYD";
pub(crate) const VERSION: u16 = 1;
/// Header: magic, version, reserved, block count, blocks to fetch at the start, CRC32C.
const HEADER: usize = 40;

/// Blocks the background task fetches per batch (8 MiB), and batches in flight.
const BATCH: usize = 128;
const BATCHES_AT_ONCE: usize = 4;
/// Blocks written between two syncs of the image (64 MiB).
const SYNC_EVERY: usize = 1024;

/// A future the hydration awaits.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Blocks fetched from a [`BlockSource`]: `(block, contents)`, or why they could not be.
pub type Fetched = Result<Vec<(u64, Vec<u8>)>, String>;

/// Where a hydrating disk's blocks come from (a recovery point in the replica).
pub trait BlockSource: Send + Sync + 'static {
    /// The contents of `blocks` (each [`BLOCK_SIZE`] bytes, or shorter at the end of the disk),
    /// in any order. Errors are reported to the VM as an I/O error and retried by the
    /// background task.
    fn fetch(&self, blocks: Vec<u64>) -> BoxFuture<Fetched>;
}

/// The file beside an image that holds its hydration bitmap.
pub fn bitmap_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".hydrating");
    PathBuf::from(name)
}

/// Make `image` a fresh, all-zero image of `size` bytes that will be hydrated with `blocks`
/// (the blocks of the point that hold data): the image is truncated, then the bitmap is
/// written and synced. Serve it with [`crate::AgentHost::attach_vm`] and a source.
pub fn prepare(image: &Path, size: u64, blocks: &[u64]) -> Result<(), AgentError> {
    if let Some(dir) = image.parent() {
        std::fs::create_dir_all(dir).map_err(AgentError::io("create disk directory", dir))?;
    }
    let path = bitmap_path(image);
    let count = size.div_ceil(BLOCK_SIZE);
    let mut words = vec![0u64; count.div_ceil(64) as usize];
    for &b in blocks.iter().filter(|&&b| b < count) {
        words[(b / 64) as usize] |= 1 << (b % 64);
    }
    let pending: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    // The bitmap is whole and durable before the image is emptied: a crash in between leaves
    // an image that the next start hydrates again from scratch.
    let tmp = path.with_extension("hydrating.tmp");
    let mut data = header(count, pending).to_vec();
    for w in &words {
        data.extend_from_slice(&w.to_le_bytes());
    }
    let file = File::create(&tmp).map_err(AgentError::io("create hydration bitmap", &tmp))?;
    file.write_all_at(&data, 0)
        .and_then(|()| file.sync_all())
        .map_err(AgentError::io("write hydration bitmap", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(AgentError::io("install hydration bitmap", &path))?;
    let img = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .map_err(AgentError::io("create disk image", image))?;
    img.set_len(size)
        .and_then(|()| img.sync_all())
        .map_err(AgentError::io("size disk image", image))?;
    sync_dir(image)
}

fn header(blocks: u64, pending: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&blocks.to_le_bytes());
    h[24..32].copy_from_slice(&pending.to_le_bytes());
    let crc = crc32c::crc32c(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

fn sync_dir(path: &Path) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io("sync directory", dir))
}

/// Bytes of the bitmap file of a disk of `size` bytes.
fn file_len(size: u64) -> u64 {
    HEADER as u64 + 8 * size.div_ceil(BLOCK_SIZE).div_ceil(64)
}

/// A hydration bitmap file's contents.
#[derive(Debug)]
pub(crate) struct Bitmap {
    pub blocks: u64,
    pub total: u64,
    pub words: Vec<u64>,
}

/// Parse the bitmap file of a disk of `size` bytes, or say why it is not one. Every count is
/// checked against the disk and the bytes present before anything is allocated for it.
pub(crate) fn parse(data: &[u8], size: u64) -> Result<Bitmap, String> {
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err("not a hydration bitmap (bad magic)".into());
    }
    let version = u16::from_le_bytes([data[8], data[9]]);
    if version != VERSION {
        return Err(format!(
            "hydration bitmap version {version}; this agent reads version {VERSION}"
        ));
    }
    let field = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(data[32..36].try_into().unwrap_or_default());
    if crc32c::crc32c(&data[..32]) != crc {
        return Err("the hydration bitmap's header fails its checksum".into());
    }
    let (blocks, total) = (field(16), field(24));
    if blocks != size.div_ceil(BLOCK_SIZE) {
        return Err(format!(
            "the bitmap covers {blocks} blocks but the disk has {}",
            size.div_ceil(BLOCK_SIZE)
        ));
    }
    if total > blocks {
        return Err(format!(
            "total {total} is more blocks than the disk's {blocks}"
        ));
    }
    let expected = file_len(size);
    if data.len() as u64 != expected {
        return Err(format!(
            "{} bytes, expected {expected} for {blocks} blocks",
            data.len()
        ));
    }
    let words = data[HEADER..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Ok(Bitmap {
        blocks,
        total,
        words,
    })
}

/// How far a disk's hydration has come.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct HydrationProgress {
    /// Bytes of the point that had to be fetched.
    pub total_bytes: u64,
    /// Of those, bytes in the image now.
    pub done_bytes: u64,
    /// The last failure of the background fetch (it retries), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The hydration state of one disk being served.
pub(crate) struct Hydration {
    image: PathBuf,
    path: PathBuf,
    file: File,
    words: Vec<AtomicU64>,
    blocks: u64,
    total: u64,
    pending: AtomicU64,
    /// Held while a word is read from memory and written to the file, so the file always ends
    /// with the newest value of each word.
    persist: Mutex<()>,
    source: Arc<dyn BlockSource>,
    runtime: tokio::runtime::Handle,
    last_error: Mutex<Option<String>>,
}

impl Hydration {
    /// Open the bitmap of `image` (left by [`prepare`] or an earlier run); `None` when there is
    /// none (the image is whole).
    pub fn open(
        image: &Path,
        size: u64,
        source: Arc<dyn BlockSource>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<Hydration>, AgentError> {
        let path = bitmap_path(image);
        let corrupt = |reason: String| AgentError::CorruptLog {
            path: path.clone(),
            offset: 0,
            reason,
        };
        // The file's length is known from the disk's size: a longer one is refused unread.
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AgentError::io("read hydration bitmap", &path)(e)),
        };
        let expected = file_len(size);
        if len > expected {
            return Err(corrupt(format!(
                "{len} bytes, expected {expected} for a disk of {size} bytes"
            )));
        }
        let data = std::fs::read(&path).map_err(AgentError::io("read hydration bitmap", &path))?;
        let bitmap = parse(&data, size).map_err(corrupt)?;
        let words: Vec<AtomicU64> = bitmap.words.into_iter().map(AtomicU64::new).collect();
        let (blocks, total) = (bitmap.blocks, bitmap.total);
        let pending = words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(AgentError::io("open hydration bitmap", &path))?;
        Ok(Some(Hydration {
            image: image.to_path_buf(),
            path,
            file,
            words,
            blocks,
            total: total.max(pending),
            pending: AtomicU64::new(pending),
            persist: Mutex::new(()),
            source,
            runtime,
            last_error: Mutex::new(None),
        }))
    }

    pub fn is_pending(&self, block: u64) -> bool {
        block < self.blocks
            && self.words[(block / 64) as usize].load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    pub fn progress(&self, size: u64) -> HydrationProgress {
        let bytes = |blocks: u64| (blocks * BLOCK_SIZE).min(size);
        HydrationProgress {
            total_bytes: bytes(self.total),
            done_bytes: bytes(self.total.saturating_sub(self.pending())),
            error: self.last_error(),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Clear the bits of `blocks` (their data is durable in the image) in memory, then in the
    /// file.
    fn clear(&self, blocks: &[u64]) -> Result<(), AgentError> {
        let mut words: Vec<usize> = Vec::new();
        for &b in blocks {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.words[w].fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
            words.push(w);
        }
        words.dedup();
        let _one = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        for w in words {
            let value = self.words[w].load(Ordering::Acquire);
            self.file
                .write_all_at(&value.to_le_bytes(), (HEADER + 8 * w) as u64)
                .map_err(AgentError::io("write hydration bitmap", &self.path))?;
        }
        Ok(())
    }

    /// Fetch `blocks` from the source (blocking the calling thread, which is not one of the
    /// runtime's workers).
    fn fetch_blocking(&self, blocks: Vec<u64>) -> Fetched {
        self.runtime.block_on(self.source.fetch(blocks))
    }

    /// Fill one block that a request touches; the caller holds the block's order lock.
    pub fn fill(&self, image: &File, size: u64, block: u64) -> std::io::Result<()> {
        if !self.is_pending(block) {
            return Ok(());
        }
        let fetched = self.fetch_blocking(vec![block]).map_err(|e| {
            std::io::Error::other(format!(
                "fetch block {block} of {} from the replica: {e}",
                self.image.display()
            ))
        })?;
        let (_, data) = fetched.iter().find(|(b, _)| *b == block).ok_or_else(|| {
            std::io::Error::other(format!(
                "the replica returned no data for block {block} of {}",
                self.image.display()
            ))
        })?;
        write_block(image, size, block, data)?;
        image.sync_data()?;
        self.clear(&[block]).map_err(std::io::Error::other)
    }

    /// The hydration is complete: make sure of it on disk, then remove the bitmap.
    fn finish(&self, image: &File) -> Result<(), AgentError> {
        image
            .sync_all()
            .map_err(AgentError::io("sync disk image", &self.image))?;
        std::fs::remove_file(&self.path)
            .map_err(AgentError::io("remove hydration bitmap", &self.path))?;
        sync_dir(&self.path)
    }
}

fn write_block(image: &File, size: u64, block: u64, data: &[u8]) -> std::io::Result<()> {
    let at = block * BLOCK_SIZE;
    let len = (size.saturating_sub(at)).min(BLOCK_SIZE) as usize;
    if data.len() < len {
        return Err(std::io::Error::other(format!(
            "block {block} came back {} bytes long, expected {len}",
            data.len()
        )));
    }
    image.write_all_at(&data[..len], at)
}

/// Fill every block still pending, in order, with a few batches in flight; the image is synced
/// (and the filled bits cleared) every [`SYNC_EVERY`] blocks. Then remove the bitmap and serve
/// the disk as a plain image. A failed fetch leaves its blocks pending: they are tried again on
/// the next pass, after a pause that grows while the failures last (logged once per change of
/// error). Stops early on `shutdown`, or when its sender is gone.
pub(crate) async fn run(disk: Arc<Disk>, h: Arc<Hydration>, mut shutdown: watch::Receiver<bool>) {
    let mut next = 0u64;
    let mut fetches = tokio::task::JoinSet::new();
    let mut unsynced: Vec<u64> = Vec::new();
    let mut failed = false;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        if stop_requested(&shutdown) {
            return;
        }
        while fetches.len() < BATCHES_AT_ONCE {
            let batch: Vec<u64> = (next..h.blocks)
                .filter(|&b| h.is_pending(b))
                .take(BATCH)
                .collect();
            let Some(&last) = batch.last() else { break };
            next = last + 1;
            let source = h.source.clone();
            fetches.spawn(async move { source.fetch(batch).await });
        }
        let joined = tokio::select! {
            j = fetches.join_next() => j,
            _ = stopped(&mut shutdown) => return,
        };
        let Some(joined) = joined else {
            // A pass is over: what was written is made durable before its bits are cleared.
            if let Err(e) = sync_and_clear(&disk, &h, std::mem::take(&mut unsynced)).await {
                if backoff.failed(&e) {
                    tracing::warn!(image = %h.image.display(), error = %e, "hydrate disk; retrying");
                }
                failed = true;
                h.set_error(Some(e));
            }
            if h.pending() == 0 {
                break;
            }
            next = 0;
            if failed && pause(&mut shutdown, backoff.delay()).await {
                return;
            }
            failed = false;
            continue;
        };
        match ferry_types::failpoint::check("agent-hydrate-batch") {
            ferry_types::failpoint::Action::Continue | ferry_types::failpoint::Action::Error => {}
            ferry_types::failpoint::Action::Abort => {
                ferry_types::failpoint::abort("agent-hydrate-batch")
            }
            ferry_types::failpoint::Action::Delay(d) => tokio::time::sleep(d).await,
        }
        let written = match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(blocks) => {
                let (d, h2) = (disk.clone(), h.clone());
                tokio::task::spawn_blocking(move || d.write_fetched(&h2, blocks))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(blocks) => {
                unsynced.extend(blocks);
                if !failed {
                    h.set_error(None);
                    if backoff.succeeded() {
                        tracing::info!(image = %h.image.display(), "hydration goes on again");
                    }
                }
            }
            Err(e) => {
                if backoff.failed(&e) {
                    tracing::warn!(image = %h.image.display(), error = %e, "hydrate disk; retrying");
                }
                h.set_error(Some(e));
                failed = true;
            }
        }
        if unsynced.len() >= SYNC_EVERY
            && let Err(e) = sync_and_clear(&disk, &h, std::mem::take(&mut unsynced)).await
        {
            if backoff.failed(&e) {
                tracing::warn!(image = %h.image.display(), error = %e, "hydrate disk; retrying");
            }
            failed = true;
            h.set_error(Some(e));
        }
    }
    let (d, h2) = (disk.clone(), h.clone());
    match tokio::task::spawn_blocking(move || d.end_hydration(&h2)).await {
        Ok(Ok(())) => tracing::info!(image = %h.image.display(), "disk hydrated"),
        Ok(Err(e)) => {
            tracing::error!(image = %h.image.display(), error = %e, "finish hydration");
            h.set_error(Some(e.to_string()));
        }
        Err(e) => tracing::error!(error = %e, "finish hydration"),
    }
}

/// Make the blocks written so far durable, then clear their bits.
async fn sync_and_clear(
    disk: &Arc<Disk>,
    h: &Arc<Hydration>,
    blocks: Vec<u64>,
) -> Result<(), String> {
    if blocks.is_empty() {
        return Ok(());
    }
    let (d, h) = (disk.clone(), h.clone());
    tokio::task::spawn_blocking(move || {
        d.file()
            .sync_data()
            .map_err(AgentError::io("sync disk image", d.path()))?;
        h.clear(&blocks)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

impl Disk {
    /// Write fetched blocks that are still pending, each under its order lock; returns the
    /// blocks written (their bits stay set until they are synced).
    pub(crate) fn write_fetched(
        &self,
        h: &Hydration,
        blocks: Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<u64>, AgentError> {
        let mut written = Vec::with_capacity(blocks.len());
        for (block, data) in blocks {
            let _order = self.lock_range(block * BLOCK_SIZE, BLOCK_SIZE);
            if h.is_pending(block) {
                write_block(self.file(), self.size(), block, &data)
                    .map_err(AgentError::io("write disk image", self.path()))?;
                written.push(block);
            }
        }
        Ok(written)
    }

    /// Every block is in: remove the bitmap and stop consulting it.
    pub(crate) fn end_hydration(&self, h: &Hydration) -> Result<(), AgentError> {
        h.finish(self.file())?;
        self.set_hydration(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
