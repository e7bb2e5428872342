//! What a stream finds in its directory at a start: the logs not shipped yet and the dirty
//! bitmaps of a catch-up window that was open.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::Path;

use ferry_types::{Seq, Timestamp};

use super::ClosedLog;
use crate::AgentError;
use crate::dirty::{self, DirtyMap};
use crate::log;
use crate::state::StreamState;

pub(crate) fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io("sync stream directory", dir))
}

/// The dirty bitmaps an earlier run left (a catch-up window that was open).
pub(crate) fn recover_bitmaps(dir: &Path) -> Result<BTreeMap<u16, DirtyMap>, AgentError> {
    let mut maps = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(AgentError::io("list stream directory", dir))? {
        let entry = entry.map_err(AgentError::io("list stream directory", dir))?;
        if let Some(disk) = entry.file_name().to_str().and_then(dirty::parse_file_name) {
            maps.insert(disk, DirtyMap::open(&entry.path())?);
        }
    }
    Ok(maps)
}

pub(super) fn remove_logs(dir: &Path) -> Result<(), AgentError> {
    for name in list_logs(dir)? {
        let p = dir.join(log::file_name(name));
        std::fs::remove_file(&p).map_err(AgentError::io("remove old stream log", &p))?;
    }
    for disk in recover_bitmaps(dir)?.keys() {
        let p = dir.join(dirty::file_name(*disk));
        std::fs::remove_file(&p).map_err(AgentError::io("remove old dirty bitmap", &p))?;
    }
    Ok(())
}

pub(crate) fn list_logs(dir: &Path) -> Result<Vec<Seq>, AgentError> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(AgentError::io("list stream logs", dir))? {
        let entry = entry.map_err(AgentError::io("list stream logs", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(log::parse_file_name) {
            seqs.push(seq);
        }
    }
    seqs.sort();
    Ok(seqs)
}

/// Queue every log left by an earlier run: logs already shipped are removed, everything from
/// the first torn record on (power loss) is cut, and the rest wait to be shipped in order.
pub(super) fn recover_logs(
    dir: &Path,
    state: &StreamState,
) -> Result<(VecDeque<ClosedLog>, Seq, Timestamp), AgentError> {
    let mut closed = VecDeque::new();
    let mut next = state.shipped_next;
    let mut last_time = Timestamp(0);
    let mut torn = false;
    for first in list_logs(dir)? {
        let path = dir.join(log::file_name(first));
        if torn {
            // Nothing after a torn record was ever synced (a sync covers every earlier log),
            // so no write acknowledged with FUA or FLUSH is among what is dropped here.
            tracing::warn!(path = %path.display(), "drop a stream log that follows a torn one");
            std::fs::remove_file(&path).map_err(AgentError::io("remove stream log", &path))?;
            continue;
        }
        let (records, dropped) = log::read(&path)?;
        torn = dropped > 0;
        if dropped > 0 {
            tracing::warn!(path = %path.display(), dropped, "cut a torn tail off the stream log");
            let keep = std::fs::metadata(&path)
                .map_err(AgentError::io("stat stream log", &path))?
                .len()
                - dropped;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(AgentError::io("open stream log", &path))?;
            f.set_len(keep)
                .map_err(AgentError::io("truncate stream log", &path))?;
        }
        let (Some(first_rec), Some(last_rec)) = (records.first(), records.last()) else {
            std::fs::remove_file(&path)
                .map_err(AgentError::io("remove empty stream log", &path))?;
            continue;
        };
        if last_rec.seq < state.shipped_next {
            std::fs::remove_file(&path)
                .map_err(AgentError::io("remove shipped stream log", &path))?;
            continue;
        }
        next = last_rec.seq.next();
        last_time = last_rec.time;
        let bytes = std::fs::metadata(&path)
            .map_err(AgentError::io("stat stream log", &path))?
            .len();
        closed.push_back(ClosedLog {
            path,
            first_seq: first_rec.seq,
            last_seq: last_rec.seq,
            first_time: first_rec.time,
            bytes,
            // Made again before the disks were served (`crate::redo`): nothing in flight.
            applying: Default::default(),
        });
    }
    Ok((closed, next, last_time))
}
