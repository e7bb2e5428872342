//! A running stream's sign of life, to see what changed a disk image while the agent was down.
//!
//! A clean stop records each image's size and modification time ([`crate::state`]). A
//! `kill -9` or a crash records nothing, so while a stream runs its directory's `alive` file is
//! touched every second. Every write the agent makes to an image happens while it is alive, so
//! after an unclean stop an image modified later than the last touch (with [`SLACK`] for a
//! late tick) was changed by something else, and nothing tracked that change.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::AgentError;

const FILE: &str = "alive";
/// How often the file is touched.
const EVERY: Duration = Duration::from_secs(1);
/// How much later than the last touch an image may have been modified by the agent itself.
pub const SLACK: Duration = Duration::from_secs(5);

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Touch the file now.
pub(crate) fn touch(dir: &Path) -> Result<(), AgentError> {
    let p = path(dir);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(AgentError::io("touch the stream's alive file", &p))
}

/// The last touch, or none when the stream never ran.
pub(crate) fn last(dir: &Path) -> Result<Option<SystemTime>, AgentError> {
    let p = path(dir);
    match std::fs::metadata(&p) {
        Ok(m) => m
            .modified()
            .map(Some)
            .map_err(AgentError::io("read the stream's alive file", &p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read the stream's alive file", &p)(e)),
    }
}

/// Forget the last touch: a new stream (a repair's) starts from nothing.
pub(crate) fn forget(dir: &Path) -> Result<(), AgentError> {
    let p = path(dir);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(AgentError::io("remove the stream's alive file", &p)(e))
        }
        _ => Ok(()),
    }
}

/// Touch the file every second until `shutdown`.
pub(crate) async fn run(dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = touch(&dir) {
                    tracing::warn!(error = %e, "the stream's sign of life");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
