//! A running stream's sign of life, to tell after an unclean stop whether the stream log can be
//! trusted.
//!
//! A clean stop records each image's size and modification time ([`crate::state`]). A
//! `kill -9` or a crash records nothing, so while a stream runs its directory's `alive` file is
//! touched every second; it holds the host's boot id from when the stream started. After an
//! unclean stop the log is trusted, and made again on the images ([`crate::redo`]), when both
//! hold:
//!
//! - **the host did not restart.** A `kill -9` of the agent leaves the page cache, so every
//!   record appended before a change of an image is still in the log. A crash or power loss of
//!   the host may keep an image's write and lose the log's record of it (neither was synced
//!   yet), so after a boot the stream cannot be trusted and the item needs a repair.
//! - **no image was modified later than the last touch** (with [`SLACK`] for a late tick).
//!   Every change the agent makes to an image happens while it is alive, so a later one was
//!   made by something else while the agent was down, and nothing recorded it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_types::Timestamp;
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

/// The id of this boot of the host (Linux: `/proc/sys/kernel/random/boot_id`); `None` where
/// there is none.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The stream starts: the file holds this boot's id, and its time is now. Durable, so a later
/// crash of the host finds it.
pub(crate) fn begin(dir: &Path) -> Result<(), AgentError> {
    let p = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(boot_id().unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(AgentError::io("write the stream's alive file", &p))
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

/// The last sign of life of a stream.
pub(crate) struct Alive {
    pub at: SystemTime,
    /// The boot the stream started in (empty: not known, from an older agent).
    pub boot: String,
}

/// The last touch, or none when no stream runs here since its logs were made again.
pub(crate) fn last(dir: &Path) -> Result<Option<Alive>, AgentError> {
    let p = path(dir);
    let read = || -> std::io::Result<Alive> {
        let at = std::fs::metadata(&p)?.modified()?;
        let boot = std::fs::read_to_string(&p)?.trim().to_string();
        Ok(Alive { at, boot })
    };
    match read() {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read the stream's alive file", &p)(e)),
    }
}

/// After an unclean stop: an error saying why the stream's logs cannot be trusted (see the
/// module's page), or `Ok` when they can (or no stream ran).
pub(crate) fn check(dir: &Path, images: &[&Path]) -> Result<(), AgentError> {
    let Some(alive) = last(dir)? else {
        return Ok(());
    };
    let since = Timestamp::from_system(alive.at);
    if let Some(now) = boot_id()
        && !alive.boot.is_empty()
        && alive.boot != now
    {
        return Err(AgentError::TrackingLost {
            reason: format!(
                "the source host restarted while the stream was running (its last sign of \
                 life was at {since}): writes that were not flushed yet may be in the disk \
                 images but not in the stream"
            ),
        });
    }
    for (i, path) in images.iter().enumerate() {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(AgentError::io("stat disk image", *path))?;
        if modified > alive.at + SLACK {
            return Err(AgentError::TrackingLost {
                reason: format!(
                    "disk {i} ({}) was modified at {} while the agent was down (it stopped \
                     without a clean shutdown; its last sign of life was at {since})",
                    path.display(),
                    Timestamp::from_system(modified),
                ),
            });
        }
    }
    Ok(())
}

/// Forget the last touch: the logs are made again on the images (or a new stream, a repair's,
/// starts from nothing).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_of_another_boot_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk0.raw");
        std::fs::write(&image, [0u8; 512]).unwrap();
        check(dir.path(), &[&image]).expect("no stream ran here");
        begin(dir.path()).unwrap();
        check(dir.path(), &[&image]).expect("same boot, image older than the last touch");

        std::fs::write(path(dir.path()), "another-boot").unwrap();
        match check(dir.path(), &[&image]) {
            Err(AgentError::TrackingLost { reason }) => {
                assert!(reason.contains("restarted"), "{reason}")
            }
            other => panic!("a stream of another boot must not be trusted: {other:?}"),
        }
    }

    #[test]
    fn an_image_modified_after_the_last_touch_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk0.raw");
        std::fs::write(&image, [0u8; 512]).unwrap();
        begin(dir.path()).unwrap();
        let late = SystemTime::now() + SLACK + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_modified(late)
            .unwrap();
        match check(dir.path(), &[&image]) {
            Err(AgentError::TrackingLost { reason }) => {
                assert!(reason.contains("disk 0"), "{reason}")
            }
            other => panic!("a later change must not be trusted: {other:?}"),
        }
        forget(dir.path()).unwrap();
        check(dir.path(), &[&image]).expect("forgotten: nothing to check");
    }
}
