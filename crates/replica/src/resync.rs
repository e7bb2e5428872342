//! The replica's side of a repair: fence the old writer and set the position a new
//! generation's stream continues from.
//!
//! A repair replaces whatever the old stream still had in flight by a resync that compares
//! every block with the replica. Before it starts (with the item's stream and processor
//! stopped), [`fence`] deletes every segment left in the cache and writes a checkpoint at the
//! replica's newest durable state that names the new generation, resumes at the next sequence
//! and opens a catch-up window there: processing refuses any segment of an older generation,
//! publishes no point until the resync's catch-up-done marker, and no instant inside the
//! resync is point-in-time recoverable. Every point before the repair stays as it was.

use bytes::Bytes;
use ferry_format::Digest;
use ferry_format::point::PointKind;
use ferry_storage::DynStore;
use ferry_types::{Generation, Seq};

use crate::{ReplicaError, ReplicaLayout, points};

/// Fence the replica for `generation`; returns the sequence the new stream starts at. Running
/// it again with the same generation (a repair resumed after a crash) returns the same
/// sequence and changes nothing.
pub async fn fence(
    layout: &ReplicaLayout,
    cache: &DynStore,
    generation: Generation,
) -> Result<Seq, ReplicaError> {
    let Some(newest) = points::latest_record(layout).await? else {
        return Err(ReplicaError::NoPoints);
    };
    if newest.generation == generation
        && newest.kind == PointKind::Checkpoint
        && let Some(start) = newest.catch_up_seq
    {
        return Ok(start);
    }
    if newest.generation >= generation {
        return Err(ReplicaError::Internal(format!(
            "the replica is already at generation {} (asked to fence for {generation})",
            newest.generation
        )));
    }
    for object in cache.list(None).await? {
        cache.delete(&object.key).await?;
    }
    let start = newest.seq.next();
    let mut fenced = newest;
    fenced.kind = PointKind::Checkpoint;
    fenced.generation = generation;
    fenced.segment_first_seq = start;
    fenced.segment_prev_digest = Digest::ZERO;
    fenced.catch_up_seq = Some(start);
    let key = layout.checkpoints_prefix().join(&fenced.object_name());
    // Replaces a checkpoint at the same sequence, if any: the processor is stopped.
    layout.meta.put(&key, Bytes::from(fenced.encode())).await?;
    tracing::info!(stream = %layout.stream, %generation, start = %start, "replica fenced for a resync");
    Ok(start)
}
