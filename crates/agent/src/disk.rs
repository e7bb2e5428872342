//! A protected disk's front-end: the NBD export the VM's hypervisor attaches.
//!
//! Every change is applied to the raw source image and then, when the VM is replicated,
//! appended to its write stream, both under the order locks of the regions it touches, so the
//! stream's order of overlapping writes is the image's order (writes to other regions proceed
//! in parallel). The reply to the client is sent only after both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ferry_format::segment::OpRef;
use ferry_format::{BLOCK_SIZE, Digest};
use ferry_nbd::Export;

use crate::AgentError;
use crate::hold::Hold;
use crate::hydrate::Hydration;
use crate::stream::Stream;

/// Order-lock stripes per disk.
const STRIPES: usize = 64;
/// Order locks cover regions of 1 MiB.
const REGION_SHIFT: u32 = 20;

/// One disk of a VM, served from a raw image file on the source host.
pub struct Disk {
    index: u16,
    path: PathBuf,
    file: File,
    size: u64,
    /// Order locks, one per stripe of 1 MiB regions (region `r` uses stripe `r % STRIPES`).
    order: Vec<Mutex<()>>,
    stream: RwLock<Option<Arc<Stream>>>,
    /// While the image is restored from a recovery point: the blocks still to fetch.
    hydration: RwLock<Option<Arc<Hydration>>>,
    /// At a start, until the stream attaches: writes wait ([`crate::hold`]).
    hold: Hold,
    /// See [`Disk::inject_crash_before_image_write`].
    crash_next: std::sync::atomic::AtomicBool,
}

impl Disk {
    /// Open the image at `path`, creating it (sparse, all zeroes) when missing.
    pub fn open_or_create(path: &Path, size: u64, index: u16) -> Result<Disk, AgentError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(AgentError::io("create disk directory", dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(AgentError::io("open disk image", path))?;
        let actual = file
            .metadata()
            .map_err(AgentError::io("stat disk image", path))?
            .len();
        if actual == 0 {
            file.set_len(size)
                .map_err(AgentError::io("size disk image", path))?;
        } else if actual != size {
            return Err(AgentError::SizeMismatch {
                path: path.to_path_buf(),
                expected: size,
                actual,
            });
        }
        Ok(Disk {
            index,
            path: path.to_path_buf(),
            file,
            size,
            order: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stream: RwLock::new(None),
            hydration: RwLock::new(None),
            hold: Hold::default(),
            crash_next: Default::default(),
        })
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start (or stop, with `None`) appending this disk's writes to a stream. Either way,
    /// writes held for the stream go on.
    pub fn attach(&self, stream: Option<Arc<Stream>>) {
        *self.stream.write().unwrap_or_else(|p| p.into_inner()) = stream;
        self.hold.release();
    }

    /// Make writes wait, for at most `deadline`, until a stream attaches (its directory is
    /// `stream_dir`): the disk is served before its stream starts, or its stream stops for a
    /// while (the host shuts down).
    pub(crate) fn hold(&self, deadline: std::time::Duration, stream_dir: &Path) {
        self.hold.hold(deadline, stream_dir);
    }

    /// Stop appending writes to `stream` (unless another stream replaced it), between writes:
    /// once this returns, every write made to the image before is in the stream, and every
    /// later one waits if the disk is held. Unlike `attach(None)`, a hold stays.
    pub(crate) fn detach_from(&self, stream: &Arc<Stream>) {
        let _all = self.lock_range(0, STRIPES as u64 * (1 << REGION_SHIFT));
        let mut current = self.stream.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, stream)) {
            *current = None;
        }
    }

    /// Fault injection (simulations of a crash): the next change is recorded in the stream and
    /// then fails without reaching the image, as if the agent died in between; its log is
    /// never retired by this process. Drop the agent next, as a `kill -9` would.
    pub fn inject_crash_before_image_write(&self) {
        self.crash_next.store(true, Ordering::Relaxed);
    }

    /// Let held writes go without a stream (the item cannot start; a repair follows).
    pub(crate) fn release(&self) {
        self.hold.release();
    }

    /// True while writes wait for the stream.
    pub fn is_held(&self) -> bool {
        self.hold.is_held()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Serve the image while it is hydrated (or, with `None`, as a plain image).
    pub(crate) fn set_hydration(&self, h: Option<Arc<Hydration>>) {
        *self.hydration.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    pub(crate) fn hydration(&self) -> Option<Arc<Hydration>> {
        self.hydration
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Fetch the blocks of `offset..offset + len` still missing from a hydrating image; the
    /// caller holds their order locks.
    fn fill_locked(&self, h: &Hydration, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        for block in offset / BLOCK_SIZE..=(offset + len - 1) / BLOCK_SIZE {
            h.fill(&self.file, self.size, block)?;
        }
        Ok(())
    }

    /// True when a hydrating image still misses a block of the range.
    fn any_pending(h: &Hydration, offset: u64, len: u64) -> bool {
        len > 0 && (offset / BLOCK_SIZE..=(offset + len - 1) / BLOCK_SIZE).any(|b| h.is_pending(b))
    }

    fn stream(&self) -> Option<Arc<Stream>> {
        self.stream
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lock the order stripes of every 1 MiB region of `offset..offset + len`, in ascending
    /// stripe order (so two writes never wait on each other in a cycle).
    pub(crate) fn lock_range(&self, offset: u64, len: u64) -> Vec<MutexGuard<'_, ()>> {
        let first = offset >> REGION_SHIFT;
        let last = (offset + len.max(1) - 1) >> REGION_SHIFT;
        let mut stripes: Vec<usize> = (first..=last.min(first + STRIPES as u64 - 1))
            .map(|r| (r % STRIPES as u64) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| self.order[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// Record a change in the stream, then apply it to the image, in order with every
    /// overlapping change.
    ///
    /// The record comes first (write-ahead): a `kill -9` between the two leaves a change the
    /// log holds and the image may lack, which [`crate::redo`] makes again before the disk is
    /// served, never one the image holds and the stream does not.
    fn change(
        &self,
        fua: bool,
        apply: impl FnOnce(&File) -> io::Result<()>,
        record: OpRef<'_>,
    ) -> io::Result<()> {
        let (offset, len) = match record {
            OpRef::Write { offset, data } => (offset, data.len() as u64),
            OpRef::Zero { offset, len } | OpRef::Trim { offset, len } => (offset, len),
            OpRef::Marker(_) => (0, 0),
        };
        let (_order, stream) = loop {
            self.hold.wait(self.index)?;
            let order = self.lock_range(offset, len);
            let stream = self.stream();
            // Held again while this write waited for its locks (the stream is stopping): wait
            // for the stream to come back rather than change the image unrecorded.
            if !self.hold.is_held() || stream.is_some() {
                break (order, stream);
            }
        };
        if let Some(h) = self.hydration() {
            self.fill_locked(&h, offset, len)?;
        }
        let applying = match &stream {
            Some(stream) => stream.record(self.index, record, fua).map_err(|e| {
                stream.set_error(Some(e.to_string()));
                to_io(e)
            })?,
            None => None,
        };
        ferry_types::failpoint::hit("agent-before-image-write");
        if self.crash_next.swap(false, Ordering::Relaxed) {
            // As if the agent died here: the change is recorded, its log held, the image not
            // changed.
            std::mem::forget(applying);
            return Err(io::Error::other(
                "injected: the agent died before the image write",
            ));
        }
        let applied =
            apply(&self.file).and_then(|()| if fua { self.file.sync_data() } else { Ok(()) });
        if let (Err(_), Some(stream), Some(_)) = (&applied, &stream, &applying) {
            // The log holds a change the image did not take (whole): record what the image
            // holds now, after it, so the stream ends where the image is.
            self.record_image(stream, offset, len);
        }
        drop(applying);
        applied
    }

    /// After a failed change of `offset..offset + len`: append what the image holds there to
    /// the stream (under the range's order lock, which the caller holds). Should that fail too,
    /// the stream no longer matches the image and the item needs a repair.
    fn record_image(&self, stream: &Stream, offset: u64, len: u64) {
        let end = (offset + len).min(self.size);
        let mut at = offset;
        let mut buf = vec![0u8; (end - offset).min(1 << 20) as usize];
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let piece = &mut buf[..n];
            let recorded = self
                .file
                .read_exact_at(piece, at)
                .map_err(AgentError::io("read disk image", &self.path))
                .and_then(|()| {
                    let op = if is_zero(piece) {
                        OpRef::Zero {
                            offset: at,
                            len: n as u64,
                        }
                    } else {
                        OpRef::Write {
                            offset: at,
                            data: piece,
                        }
                    };
                    stream.record(self.index, op, false)
                });
            match recorded {
                Ok(applying) => drop(applying),
                Err(e) => {
                    stream.lose_tracking(self.index, at, &e);
                    return;
                }
            }
            at += n as u64;
        }
    }

    /// Copy one block the dirty bitmap holds into the stream (a catch-up), under the block's
    /// order lock: a live write to it is either in what is read, or after the copy in the
    /// stream. Returns the bytes appended (0 when the block was no longer dirty).
    pub(crate) fn copy_dirty_block(
        &self,
        stream: &Stream,
        block: u64,
        buf: &mut [u8],
    ) -> Result<u64, AgentError> {
        let offset = block * BLOCK_SIZE;
        if offset >= self.size {
            // Past the end (a bitmap of a disk that shrank): nothing to copy.
            stream.take_dirty(self.index, block);
            return Ok(0);
        }
        let len = (self.size - offset).min(BLOCK_SIZE) as usize;
        let buf = &mut buf[..len];
        let _order = self.lock_range(offset, len as u64);
        if !stream.take_dirty(self.index, block) {
            return Ok(0);
        }
        self.read_for_copy(buf, offset)?;
        let op = if is_zero(buf) {
            OpRef::Zero {
                offset,
                len: len as u64,
            }
        } else {
            OpRef::Write { offset, data: buf }
        };
        if let Err(e) = stream.append(self.index, op, false) {
            stream.copy_failed(self.index, block, &e);
            return Err(e);
        }
        Ok(len as u64)
    }

    /// Start reading a range the copy will read next (`POSIX_FADV_WILLNEED`), so the disk works
    /// while the current range is hashed and appended. Advice only.
    pub(crate) fn read_ahead(&self, offset: u64, len: u64) {
        if offset < self.size {
            let _ = advise(
                &self.file,
                offset,
                len.min(self.size - offset),
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    /// Read a range for the initial copy without leaving it in the page cache.
    ///
    /// The copy reads the whole image once; left cached, the read-ahead would keep large clean
    /// folios (megabytes each, holes included) that every later small write of the VM then
    /// has to walk, which made 4 KiB writes several times slower. Dropping them afterwards
    /// keeps the page cache as the VM's own I/O shaped it.
    fn read_for_copy(&self, buf: &mut [u8], offset: u64) -> Result<(), AgentError> {
        if let Some(h) = self.hydration() {
            self.fill_locked(&h, offset, buf.len() as u64)
                .map_err(AgentError::io("hydrate disk image", &self.path))?;
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(AgentError::io("read disk image", &self.path))?;
        // Advice only: if the kernel declines, the copy is still correct.
        let _ = drop_cached(&self.file, offset, buf.len() as u64);
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` for the initial copy and, unless they are all
    /// zero, append them to the stream as a write — under the order lock, so a live write to
    /// the same blocks is either already in what was read or comes after it in the stream.
    /// Returns whether the block was sent.
    pub(crate) fn copy_to_stream(
        &self,
        stream: &Stream,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<bool, AgentError> {
        let _order = self.lock_range(offset, buf.len() as u64);
        self.read_for_copy(buf, offset)?;
        if is_zero(buf) {
            return Ok(false);
        }
        stream.append(self.index, OpRef::Write { offset, data: buf }, false)?;
        Ok(true)
    }

    /// As [`Disk::copy_to_stream`], but only the 64 KiB blocks whose BLAKE3 digest differs
    /// from `seed` (the replica's digests of the same blocks, [`Digest::ZERO`] for zero
    /// blocks; `offset` block-aligned). Returns the bytes appended.
    ///
    /// The range is first read and compared without the order lock (hashed on two threads): a
    /// block found equal to the replica's needs nothing, since any write to it from now on is
    /// in the stream after this point. Only blocks that differ are read again and appended
    /// under the lock, so a live write is never overtaken by older data.
    pub(crate) fn copy_delta_to_stream(
        &self,
        stream: &Stream,
        offset: u64,
        buf: &mut [u8],
        seed: &[Digest],
    ) -> Result<u64, AgentError> {
        let first = (offset / BLOCK_SIZE) as usize;
        let theirs = |i: usize| seed.get(first + i).copied().unwrap_or(Digest::ZERO);
        let differing: Vec<usize> = if self.hydration().is_some() {
            // Blocks still restoring are read under the lock (it fills them).
            (0..buf.len().div_ceil(BLOCK_SIZE as usize)).collect()
        } else {
            self.file
                .read_exact_at(buf, offset)
                .map_err(AgentError::io("read disk image", &self.path))?;
            let equal = same_blocks(buf, &theirs);
            (0..equal.len()).filter(|&i| !equal[i]).collect()
        };
        let mut sent = 0;
        if !differing.is_empty() {
            let _order = self.lock_range(offset, buf.len() as u64);
            self.read_for_copy(buf, offset)?;
            for i in differing {
                let at = offset + (i as u64) * BLOCK_SIZE;
                let block =
                    &buf[i * BLOCK_SIZE as usize..((i + 1) * BLOCK_SIZE as usize).min(buf.len())];
                if block_matches(block, theirs(i)) {
                    continue;
                }
                let op = if is_zero(block) {
                    OpRef::Zero {
                        offset: at,
                        len: block.len() as u64,
                    }
                } else {
                    OpRef::Write {
                        offset: at,
                        data: block,
                    }
                };
                stream.append(self.index, op, false)?;
                sent += block.len() as u64;
            }
        } else {
            // Advice only: if the kernel declines, the copy is still correct.
            let _ = drop_cached(&self.file, offset, buf.len() as u64);
        }
        Ok(sent)
    }
}

/// True when a block holds what the replica's digest says (`Digest::ZERO`: all zero).
fn block_matches(block: &[u8], theirs: Digest) -> bool {
    let zero = is_zero(block);
    (zero && theirs == Digest::ZERO) || (!zero && Digest::of(block) == theirs)
}

/// For each 64 KiB block of `buf`, whether it matches `theirs(i)`: the two halves of the
/// range are compared on two threads.
fn same_blocks(buf: &[u8], theirs: &(impl Fn(usize) -> Digest + Sync)) -> Vec<bool> {
    let blocks: Vec<&[u8]> = buf.chunks(BLOCK_SIZE as usize).collect();
    let half = blocks.len().div_ceil(2);
    let compare = |from: usize, part: &[&[u8]]| -> Vec<bool> {
        part.iter()
            .enumerate()
            .map(|(i, b)| block_matches(b, theirs(from + i)))
            .collect()
    };
    if blocks.len() < 2 {
        return compare(0, &blocks);
    }
    let (a, b) = blocks.split_at(half);
    std::thread::scope(|s| {
        let second = s.spawn(|| compare(half, b));
        let mut out = compare(0, a);
        out.extend(second.join().unwrap_or_else(|_| vec![false; b.len()]));
        out
    })
}

impl Export for Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        if let Some(h) = self.hydration()
            && Self::any_pending(&h, offset, len)
        {
            let _order = self.lock_range(offset, len);
            self.fill_locked(&h, offset, len)?;
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.change(
            fua,
            |f| f.write_all_at(data, offset),
            OpRef::Write { offset, data },
        )
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()?;
        if let Some(stream) = self.stream() {
            stream.sync().map_err(to_io)?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.change(
            fua,
            |f| zero_range(f, offset, len),
            OpRef::Trim { offset, len },
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool, no_hole: bool) -> io::Result<()> {
        // Recorded the same either way: the stream carries what the range reads as.
        let zero = if no_hole {
            zero_range_allocated
        } else {
            zero_range
        };
        self.change(fua, |f| zero(f, offset, len), OpRef::Zero { offset, len })
    }
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(16);
    words.all(|w| w.iter().fold(0u8, |acc, b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Make a range read as zeroes: punch a hole, or write zeroes where holes are unsupported.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    if fallocate(file, punch, offset, len).is_ok() {
        return Ok(());
    }
    write_zeroes(file, offset, len)
}

/// Make a range read as zeroes and keep it allocated (`NBD_CMD_FLAG_NO_HOLE`):
/// `FALLOC_FL_ZERO_RANGE`, or write zeroes where it is unsupported.
fn zero_range_allocated(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    if fallocate(file, zero, offset, len).is_ok() {
        return Ok(());
    }
    write_zeroes(file, offset, len)
}

fn write_zeroes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Ask the kernel to drop the clean cached pages of a range (`POSIX_FADV_DONTNEED`); dirty
/// pages stay until written back.
fn drop_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    advise(file, offset, len, libc::POSIX_FADV_DONTNEED)
}

#[allow(unsafe_code)]
fn advise(file: &File, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned by `file`.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

#[allow(unsafe_code)]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file` and open.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn to_io(e: AgentError) -> io::Error {
    match e {
        AgentError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}
