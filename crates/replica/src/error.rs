//! Errors of the replica engine.

use ferry_format::FormatError;
use ferry_storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Format {
        what: String,
        #[source]
        source: FormatError,
    },
    #[error("segment {first_seq:016x} refused, nothing of it was applied: {reason}")]
    SegmentRefused { first_seq: u64, reason: String },
    #[error("recovery point {0} not found; list the points with `ferry recovery-point list`")]
    UnknownPoint(String),
    #[error("no recovery point yet; wait for initial replication to finish")]
    NoPoints,
    #[error("disk {disk} does not exist in this recovery point (it has {count} disks)")]
    UnknownDisk { disk: usize, count: usize },
    #[error(
        "{at} is not point-in-time recoverable: the agent's ship buffer overflowed at {since} and \
         the writes after it were sent out of order until the catch-up {}; choose an instant \
         before {since}{}",
        match until { Some(u) => format!("completed at {u}"), None => "completes".into() },
        match until { Some(u) => format!(" or after {u}"), None => String::new() }
    )]
    NotRecoverable {
        at: ferry_types::Timestamp,
        since: ferry_types::Timestamp,
        until: Option<ferry_types::Timestamp>,
    },
    #[error(
        "sequence gap: segment {missing:016x} is missing from the cache account while segment \
         {present:016x} is there; the records in between can never be applied"
    )]
    SequenceGap { missing: u64, present: u64 },
    /// The processor may no longer change the replica: another holder processes the item now
    /// ([`crate::processor::Fence`]).
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Internal(String),
}

impl ReplicaError {
    pub(crate) fn format(what: impl Into<String>) -> impl FnOnce(FormatError) -> Self {
        let what = what.into();
        move |source| ReplicaError::Format { what, source }
    }

    /// True when trying again later may succeed (a store that could not be reached).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ReplicaError::Store(e) if e.is_retryable())
    }
}
