//! The transmission phase: a reader that parses requests and dispatches them to blocking
//! workers (the requests already received together to one worker, in order), and a writer
//! task that sends the (possibly out-of-order) simple replies.

use std::sync::{Arc, Mutex};

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::DynExport;
use crate::error::NbdError;
use crate::exports::Attachment;
use crate::protocol::*;

/// Most requests of one connection in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 64;
/// Most read/write payload bytes of one connection held in memory at once.
const MAX_IN_FLIGHT_BYTES: usize = 128 << 20;
/// Most bytes of write buffers one connection keeps for its next writes.
const POOLED_BYTES: usize = 16 << 20;
/// Most requests handed to one worker at once.
const MAX_BATCH: usize = 16;

/// Permits a request holds until its reply is sent.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A reply on its way to the writer task; the permits are released once it is sent.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Vec<u8>>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// One request handed to a worker.
enum Job {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    },
}

/// Serves requests until the client disconnects, the export is removed or `shutdown` flips;
/// in every case the replies to requests already received are sent before returning.
pub(crate) async fn transmit<R, W>(
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    attachment: Attachment,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Attachment {
        export,
        mut removed,
    } = attachment;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(writer, rx));
    let count = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    let buffers = Arc::new(Buffers::default());
    let size = export.size();
    let result = loop {
        let mut header = [0u8; Request::LEN];
        tokio::select! {
            biased;
            _ = removed.wait_for(|r| *r) => break Ok(()),
            _ = crate::listener::shutdown_requested(&mut shutdown) => break Ok(()),
            r = reader.read_exact(&mut header) => match r {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
                Err(e) => break Err(e.into()),
            },
        }
        if tx.is_closed() {
            break Ok(());
        }
        let req = match Request::decode(&header) {
            Ok(req) => req,
            Err(magic) => break Err(NbdError::Protocol(format!("bad request magic {magic:#x}"))),
        };
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let no_hole = req.flags & CMD_FLAG_NO_HOLE != 0;
        let in_range = req
            .offset
            .checked_add(u64::from(req.length))
            .is_some_and(|end| end <= size);
        if req.command == CMD_DISC {
            break Ok(());
        }
        if req.flags & !accepted_flags(req.command) != 0 {
            // A flag that does not apply or was not advertised: refused, the connection goes on.
            if req.command == CMD_WRITE
                && let Err(e) = skip(&mut reader, req.length).await
            {
                break Err(e.into());
            }
            send(&tx, req.handle, EINVAL, None, None);
            continue;
        }
        let (job, payload) = match req.command {
            CMD_WRITE => {
                if req.length > MAX_PAYLOAD || !in_range {
                    if let Err(e) = skip(&mut reader, req.length).await {
                        break Err(e.into());
                    }
                    let error = if req.length > MAX_PAYLOAD {
                        EINVAL
                    } else {
                        ENOSPC
                    };
                    send(&tx, req.handle, error, None, None);
                    continue;
                }
                let permits = acquire(&count, &bytes, req.length).await;
                let mut data = buffers.take(req.length as usize);
                // A client that stops sending mid-payload must not hold up shutdown or removal.
                let mut payload = (&mut reader).take(u64::from(req.length));
                let read = tokio::select! {
                    biased;
                    _ = removed.wait_for(|r| *r) => break Ok(()),
                    _ = crate::listener::shutdown_requested(&mut shutdown) => break Ok(()),
                    r = payload.read_to_end(&mut data) => r,
                };
                match read {
                    Ok(n) if n == req.length as usize => {}
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
                let job = Job::Write {
                    offset: req.offset,
                    data,
                    fua,
                };
                (job, permits)
            }
            CMD_READ if req.length > MAX_PAYLOAD || !in_range => {
                send(&tx, req.handle, EINVAL, None, None);
                continue;
            }
            CMD_READ => {
                let job = Job::Read {
                    offset: req.offset,
                    len: req.length as usize,
                };
                (job, acquire(&count, &bytes, req.length).await)
            }
            CMD_FLUSH => (Job::Flush, acquire(&count, &bytes, 0).await),
            CMD_TRIM | CMD_WRITE_ZEROES if !in_range => {
                let error = if req.command == CMD_TRIM {
                    EINVAL
                } else {
                    ENOSPC
                };
                send(&tx, req.handle, error, None, None);
                continue;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let (offset, len) = (req.offset, u64::from(req.length));
                let job = if req.command == CMD_TRIM {
                    Job::Trim { offset, len, fua }
                } else {
                    Job::Zero {
                        offset,
                        len,
                        fua,
                        no_hole,
                    }
                };
                (job, acquire(&count, &bytes, 0).await)
            }
            _ => {
                send(&tx, req.handle, EINVAL, None, None);
                continue;
            }
        };
        // Requests the client has already sent behind this one go to the same worker, one
        // after the other: a worker woken per request costs more than most writes.
        let mut batch = vec![(req.handle, job, payload)];
        while batch.len() < MAX_BATCH
            && !batch.last().is_some_and(|(_, job, _)| job.ends_batch())
            && let Some(next) = take_buffered(&mut reader, size, &count, &bytes, &buffers)
        {
            batch.push(next);
        }
        let export = export.clone();
        let tx = tx.clone();
        let buffers = buffers.clone();
        tokio::task::spawn_blocking(move || {
            for (handle, job, permits) in batch {
                let (command, started) = (job.name(), std::time::Instant::now());
                let (error, data) = execute(&export, job, &buffers);
                crate::metrics::observe(command, started.elapsed());
                send(&tx, handle, error, data, Some(permits));
            }
        });
    };
    drop(tx);
    // The writer ends once every worker has sent its reply and dropped its sender.
    let written = writer
        .await
        .map_err(|e| NbdError::Protocol(format!("reply writer failed: {e}")))?;
    result?;
    written.map_err(NbdError::from)
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Read { .. } => "read",
            Job::Write { .. } => "write",
            Job::Flush => "flush",
            Job::Trim { .. } => "trim",
            Job::Zero { .. } => "write_zeroes",
        }
    }

    /// A request that may take long (it syncs): the ones behind it go to another worker.
    fn ends_batch(&self) -> bool {
        match self {
            Job::Flush => true,
            Job::Write { fua, .. } | Job::Trim { fua, .. } | Job::Zero { fua, .. } => *fua,
            Job::Read { .. } => false,
        }
    }
}

/// The next request, if it is already whole in the read buffer, valid, and its permits are
/// free at once; anything else is left for the main loop to handle.
fn take_buffered<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    size: u64,
    count: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    buffers: &Buffers,
) -> Option<(u64, Job, Permits)> {
    let buffered = reader.buffer();
    let header: &[u8; Request::LEN] = buffered.get(..Request::LEN)?.try_into().ok()?;
    let req = Request::decode(header).ok()?;
    if req.flags & !accepted_flags(req.command) != 0 {
        return None;
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let in_range = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= size);
    let (offset, len) = (req.offset, req.length as usize);
    if !in_range || req.length > MAX_PAYLOAD {
        return None;
    }
    let (payload, held) = match req.command {
        CMD_WRITE => (len, req.length),
        CMD_READ => (0, req.length),
        CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES => (0, 0),
        _ => return None,
    };
    let data = buffered.get(Request::LEN..Request::LEN + payload)?;
    let c = count.clone().try_acquire_owned().ok()?;
    let b = bytes.clone().try_acquire_many_owned(held).ok()?;
    let job = match req.command {
        CMD_WRITE => {
            let mut buf = buffers.take(len);
            buf.extend_from_slice(data);
            Job::Write {
                offset,
                data: buf,
                fua,
            }
        }
        CMD_READ => Job::Read { offset, len },
        CMD_FLUSH => Job::Flush,
        CMD_TRIM => Job::Trim {
            offset,
            len: len as u64,
            fua,
        },
        _ => Job::Zero {
            offset,
            len: len as u64,
            fua,
            no_hole: req.flags & CMD_FLAG_NO_HOLE != 0,
        },
    };
    reader.consume(Request::LEN + payload);
    Some((req.handle, job, (c, b)))
}

async fn acquire(
    count: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    len: u32,
) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    // The semaphores are never closed, so acquiring cannot fail.
    let c = count.clone().acquire_owned().await;
    let b = bytes.clone().acquire_many_owned(len).await;
    match (c, b) {
        (Ok(c), Ok(b)) => (c, b),
        _ => unreachable!("connection semaphores are never closed"),
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Reply>,
    handle: u64,
    error: u32,
    data: Option<Vec<u8>>,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
) {
    // If the writer is gone the connection is closing; the reply has nowhere to go.
    let _ = tx.send(Reply {
        handle,
        error,
        data,
        _permits: permits,
    });
}

/// Write payload buffers kept for the next requests of a connection: a fresh buffer for
/// each write costs page faults and zeroing as large as the payload (a megabyte for a
/// sequential write).
#[derive(Default)]
struct Buffers(Mutex<(Vec<Vec<u8>>, usize)>);

impl Buffers {
    /// An empty buffer with room for `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        let found = {
            let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let (bufs, held) = &mut *pool;
            let found = bufs.iter().rposition(|b| b.capacity() >= len);
            found.map(|i| {
                let b = bufs.swap_remove(i);
                *held -= b.capacity();
                b
            })
        };
        found.unwrap_or_else(|| Vec::with_capacity(len))
    }

    /// Keep a buffer for a later request, unless enough are kept already.
    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (bufs, held) = &mut *pool;
        if *held + buf.capacity() <= POOLED_BYTES {
            *held += buf.capacity();
            bufs.push(buf);
        }
    }
}

/// Runs one request against the export: `(nbd error, read data)`.
fn execute(export: &DynExport, job: Job, buffers: &Buffers) -> (u32, Option<Vec<u8>>) {
    let result = match job {
        Job::Read { offset, len } => {
            let mut buf = vec![0u8; len];
            match export.read(offset, &mut buf) {
                Ok(()) => return (0, Some(buf)),
                Err(e) => Err(e),
            }
        }
        Job::Write { offset, data, fua } => {
            let result = export.write(offset, &data, fua);
            buffers.give_back(data);
            result
        }
        Job::Flush => export.flush(),
        Job::Trim { offset, len, fua } => export.trim(offset, len, fua),
        Job::Zero {
            offset,
            len,
            fua,
            no_hole,
        } => export.write_zeroes(offset, len, fua, no_hole),
    };
    match result {
        Ok(()) => (0, None),
        Err(e) => {
            tracing::warn!(error = %e, "NBD export I/O failed");
            (errno_of(&e), None)
        }
    }
}

/// Consumes and discards `len` bytes of payload.
async fn skip<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> std::io::Result<()> {
    let n = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if n != u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Sends replies as they come, flushing the socket buffer whenever no reply is waiting.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: BufWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> std::io::Result<()> {
    while let Some(mut reply) = rx.recv().await {
        loop {
            let header = SimpleReply {
                error: reply.error,
                handle: reply.handle,
            };
            w.write_all(&header.encode()).await?;
            if let Some(data) = &reply.data {
                w.write_all(data).await?;
            }
            drop(reply);
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}
