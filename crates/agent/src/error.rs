//! Errors the agent reports to its callers.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local stream log {path} is corrupt at byte {offset}: {reason}")]
    CorruptLog {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("VM {0} is not attached to this agent")]
    UnknownVm(String),
    #[error("disk image {path} is {actual} bytes but the VM's disk is {expected} bytes")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "no point can be cut now: the ship buffer overflowed at {since} and the blocks written \
         since are still being copied; wait for the catch-up to complete, or use an earlier point"
    )]
    CatchingUp { since: ferry_types::Timestamp },
    #[error("{reason}: the replica must be resynchronised (`ferry replication repair`)")]
    TrackingLost { reason: String },
    #[error(
        "stream {stream} is held at generation {held}; a command of generation {given} is stale \
         and was refused"
    )]
    StaleGeneration {
        stream: ferry_types::StreamId,
        held: ferry_types::Generation,
        given: ferry_types::Generation,
    },
    #[error("NBD server: {0}")]
    Nbd(#[from] ferry_nbd::NbdError),
    #[error("encode segment: {0}")]
    Format(#[from] ferry_format::FormatError),
    #[error("cache storage: {0}")]
    Store(#[from] ferry_storage::StoreError),
}

impl AgentError {
    /// The error of a failed `what` on `path`, for `map_err`; the path is copied only if the
    /// operation fails (some run once per write).
    pub(crate) fn io<'a, P: AsRef<Path> + ?Sized>(
        what: &'static str,
        path: &'a P,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| AgentError::Io {
            what,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
