//! The shipper: turns closed logs into segments and stores them, create-only, in the cache
//! account under names that sort by sequence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_format::{Digest, segment};
use ferry_storage::{DynStore, Key, StoreError};
use ferry_types::failpoint::Action;

use crate::AgentError;
use crate::log;
use crate::stream::{ClosedLog, Stream};

/// Most segments shipped before the stream's state is stored and their logs retired.
const BATCH: usize = 32;
/// Retire what is shipped at least this often while a long backlog drains.
const RETIRE_EVERY: Duration = Duration::from_millis(500);

/// Buffers one sealing leaves for the next: the log read back, the compression context.
#[derive(Default)]
struct Scratch {
    log: Vec<u8>,
    encoder: Option<segment::RawEncoder>,
}

/// Ship every closed log, oldest first. Stops at the first failure (the rest stays queued).
///
/// The segments of a batch are put one after another, then the stream's state is stored once
/// (one fsync, not one per segment) and their logs are retired. A crash in between leaves
/// logs whose segments are already in the cache: the next run finds them there
/// ([`already_shipped`]) and continues the chain from them.
pub async fn ship_pending(stream: &Arc<Stream>, cache: &DynStore) -> Result<(), AgentError> {
    let _one = stream.shipping.lock().await;
    let mut scratch = Some(Scratch::default());
    loop {
        let (batch, mut prev) = stream.next_to_ship(BATCH);
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (mut done, mut bytes, mut failed) = (0, 0, None);
        for closed in &batch {
            let sealed = seal(stream, closed, prev, scratch.take().unwrap_or_default()).await;
            let (data, digest, back) = match sealed {
                Ok(s) => s,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            scratch = Some(back);
            let len = data.len() as u64;
            match put(cache, closed, prev, data, digest).await {
                Ok(digest) => prev = digest,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            done += 1;
            bytes += len;
            if started.elapsed() >= RETIRE_EVERY {
                break;
            }
        }
        if done > 0 {
            // A change recorded in these logs may still be on its way to its image; after a
            // crash, the logs left on the host are what is made again (`crate::redo`), so they
            // stay until it is there (a matter of microseconds: the order lock is held).
            for log in &batch[..done] {
                while !log.applied() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Not on a blocking thread: a sealer stopped at an await point (a task aborted as
            // a crash is) must leave nothing running that still changes the stream. In place,
            // then, but off the async worker: it syncs the stream's state.
            ferry_types::blocking::off_worker(|| stream.shipped(&batch[..done], prev, bytes))?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// Store one segment create-only; returns the digest the next segment chains to.
async fn put(
    cache: &DynStore,
    closed: &ClosedLog,
    prev: Digest,
    data: Bytes,
    digest: Digest,
) -> Result<Digest, AgentError> {
    let key = Key::parse(&segment::object_name(closed.first_seq))?;
    // Paused the async way: a delay here must not hold one of the runtime's workers.
    match ferry_types::failpoint::check("agent-before-segment-put") {
        Action::Delay(d) => tokio::time::sleep(d).await,
        Action::Abort => ferry_types::failpoint::abort("agent-before-segment-put"),
        Action::Continue | Action::Error => {}
    }
    let digest = match cache.put_new(&key, data).await {
        Ok(_) => digest,
        Err(StoreError::AlreadyExists { .. }) => already_shipped(cache, &key, closed, prev).await?,
        Err(e) => return Err(e.into()),
    };
    ferry_types::failpoint::hit("agent-after-segment-put");
    Ok(digest)
}

/// Encode a closed log as a segment (on a blocking thread); the scratch buffers come back
/// for the next one.
async fn seal(
    stream: &Arc<Stream>,
    closed: &ClosedLog,
    prev: Digest,
    mut scratch: Scratch,
) -> Result<(Bytes, Digest, Scratch), AgentError> {
    let closed = closed.clone();
    let id = stream.id();
    let generation = stream.generation();
    let level = stream.config.zstd_level;
    let path = closed.path.clone();
    tokio::task::spawn_blocking(move || {
        let (first, last) = (closed.first_seq, closed.last_seq);
        let corrupt = |reason: String| AgentError::CorruptLog {
            path: closed.path.clone(),
            offset: 0,
            reason,
        };
        let raw_len = log::body_len(closed.bytes, last.0.saturating_sub(first.0) + 1)
            .ok_or_else(|| corrupt(format!("too short for sequences {first}..={last}")))?;
        let Scratch { log: buf, encoder } = &mut scratch;
        let encoder = match encoder {
            Some(e) => e,
            None => encoder.insert(segment::RawEncoder::new(level)?),
        };
        let mut segment = encoder.start(raw_len)?;
        let log = log::read_raw(&closed.path, buf, |piece| Ok(segment.push(piece)?))?;
        if (log.first.0, log.last.0) != (first, last) {
            return Err(corrupt(format!(
                "it no longer holds sequences {first}..={last}"
            )));
        }
        let (bytes, digest) =
            segment.finish(id, generation, prev, log.count, log.first, log.last)?;
        Ok((Bytes::from(bytes), digest, scratch))
    })
    .await
    .map_err(|e| AgentError::Io {
        what: "seal segment",
        path,
        source: std::io::Error::other(e),
    })?
}

/// A segment with this name exists: an earlier run stored it and stopped before retiring the
/// log. Continue the chain from the stored object, after checking it is the same range.
async fn already_shipped(
    cache: &DynStore,
    key: &Key,
    closed: &ClosedLog,
    prev: Digest,
) -> Result<Digest, AgentError> {
    let existing = cache.get(key).await?;
    let seg = segment::decode(&existing)?;
    if seg.header.first_seq != closed.first_seq
        || seg.header.last_seq != closed.last_seq
        || seg.header.prev_digest != prev
    {
        return Err(AgentError::CorruptLog {
            path: closed.path.clone(),
            offset: 0,
            reason: format!(
                "the cache already holds a different segment {key} (sequences {}..={})",
                seg.header.first_seq, seg.header.last_seq
            ),
        });
    }
    Ok(seg.digest)
}
