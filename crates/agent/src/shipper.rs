//! The shipper: turns closed logs into segments and stores them, create-only, in the cache
//! account under names that sort by sequence.

use std::sync::Arc;

use bytes::Bytes;
use ferry_format::{Digest, segment};
use ferry_storage::{DynStore, Key, StoreError};

use crate::AgentError;
use crate::log;
use crate::stream::{ClosedLog, Stream};

/// Ship every closed log, oldest first. Stops at the first failure (the rest stays queued).
pub async fn ship_pending(stream: &Arc<Stream>, cache: &DynStore) -> Result<(), AgentError> {
    while let Some((closed, prev)) = stream.next_to_ship() {
        let (bytes, digest) = seal(stream, &closed, prev).await?;
        let key = Key::parse(&segment::object_name(closed.first_seq))?;
        let len = bytes.len() as u64;
        ferry_types::failpoint::hit("agent-before-segment-put");
        let digest = match cache.put_new(&key, bytes).await {
            Ok(_) => digest,
            Err(StoreError::AlreadyExists { .. }) => {
                already_shipped(cache, &key, &closed, prev).await?
            }
            Err(e) => return Err(e.into()),
        };
        ferry_types::failpoint::hit("agent-after-segment-put");
        stream.shipped(&closed, digest, len)?;
    }
    Ok(())
}

async fn seal(
    stream: &Arc<Stream>,
    closed: &ClosedLog,
    prev: Digest,
) -> Result<(Bytes, Digest), AgentError> {
    let path = closed.path.clone();
    let id = stream.id();
    let generation = stream.generation();
    let level = stream.config.zstd_level;
    let (first, last) = (closed.first_seq, closed.last_seq);
    tokio::task::spawn_blocking(move || {
        let log = log::read_raw(&path)?;
        if (log.first.0, log.last.0) != (first, last) {
            return Err(AgentError::CorruptLog {
                path: path.clone(),
                offset: 0,
                reason: format!("it no longer holds sequences {first}..={last}"),
            });
        }
        let body = segment::RawBody {
            raw: &log.raw,
            count: log.count,
            first: log.first,
            last: log.last,
        };
        let (bytes, digest) = segment::encode_raw(id, generation, prev, &body, level)?;
        Ok((Bytes::from(bytes), digest))
    })
    .await
    .map_err(|e| AgentError::Io {
        what: "seal segment",
        path: closed.path.clone(),
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
