//! The stream's small persistent state on the source host, replaced atomically.

use std::path::{Path, PathBuf};

use ferry_format::Digest;
use ferry_types::{Generation, Seq, StreamId};
use serde::{Deserialize, Serialize};

use crate::AgentError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StreamState {
    pub stream: StreamId,
    pub generation: Generation,
    /// Digest of the last segment shipped (the next segment's `prev_digest`), hex; empty for none.
    pub prev_digest: String,
    /// Sequence of the next record after everything shipped or logged locally.
    pub shipped_next: Seq,
    /// Set once the initial copy's end marker is in the stream.
    pub initial_sync_done_seq: Option<Seq>,
    /// A repair's resync is in progress: every block is compared with the replica and the
    /// ones that differ are sent; the stream is not ordered until it completes.
    #[serde(default)]
    pub resync: bool,
    /// Set when the stream stopped: each disk image's size and modification time then. A
    /// different stamp at the next start means the image changed while nothing tracked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<Vec<ImageStamp>>,
}

/// What a disk image looked like when its stream stopped.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageStamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl ImageStamp {
    pub fn of(path: &Path) -> std::io::Result<ImageStamp> {
        let m = std::fs::metadata(path)?;
        let mtime = m.modified()?;
        let mtime_ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        };
        Ok(ImageStamp {
            size: m.len(),
            mtime_ns,
        })
    }
}

impl StreamState {
    pub fn prev_digest(&self) -> Digest {
        Digest::from_hex(&self.prev_digest).unwrap_or(Digest::ZERO)
    }

    fn check(&self) -> Result<(), String> {
        if !self.prev_digest.is_empty() && Digest::from_hex(&self.prev_digest).is_none() {
            return Err(format!(
                "prev_digest {:?} is not a 64-digit hex digest",
                self.prev_digest
            ));
        }
        Ok(())
    }
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub(crate) fn load(dir: &Path) -> Result<Option<StreamState>, AgentError> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(data) => {
            let state: StreamState =
                serde_json::from_slice(&data).map_err(|e| AgentError::CorruptLog {
                    path: p.clone(),
                    offset: 0,
                    reason: e.to_string(),
                })?;
            state.check().map_err(|reason| AgentError::CorruptLog {
                path: p,
                offset: 0,
                reason,
            })?;
            Ok(Some(state))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read stream state", &p)(e)),
    }
}

/// Write the state to a temporary file, sync it, rename it into place, sync the directory.
pub(crate) fn store(dir: &Path, state: &StreamState) -> Result<(), AgentError> {
    let p = path(dir);
    let tmp = dir.join("state.json.tmp");
    let data = serde_json::to_vec_pretty(state).expect("stream state serialises");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(AgentError::io("write stream state", &p))
}
