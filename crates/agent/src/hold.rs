//! Writes held at a start until the VM's stream is attached.
//!
//! After a restart the agent serves a protected VM's disks as soon as it is told to, and the
//! control plane starts the VM's stream a moment later. A write acknowledged in between would
//! reach the image but not the stream, and so never the replica. A disk attached as held makes
//! its writes wait until the stream attaches (or the stream is stopped on purpose, or the item
//! cannot start: then a repair's full compare follows anyway).
//!
//! Holding forever would stall the VM for as long as replication cannot start. After the
//! deadline the writes go ahead untracked, and a file in the stream's directory says so: the
//! stream then refuses to continue ([`check`]) and the item needs a repair, which compares
//! every block. Nothing is lost silently either way.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_types::Timestamp;

use crate::AgentError;

const FILE: &str = "untracked";

/// The gate of one disk.
#[derive(Default)]
pub(crate) struct Hold {
    held: Mutex<Option<Held>>,
    released: Condvar,
    /// Whether `held` is set, read without the lock: every write asks, and almost always the
    /// answer is no. Changed only under the lock.
    on: AtomicBool,
}

struct Held {
    until: Instant,
    deadline: Duration,
    /// The stream's directory, where a write let through untracked is recorded.
    dir: PathBuf,
}

impl Hold {
    /// Hold writes for at most `deadline` from now.
    pub fn hold(&self, deadline: Duration, dir: &Path) {
        let mut held = self.lock();
        *held = Some(Held {
            until: Instant::now() + deadline,
            deadline,
            dir: dir.to_path_buf(),
        });
        self.on.store(true, Ordering::SeqCst);
    }

    /// Let writes go (the stream is attached, stopped on purpose, or cannot start).
    pub fn release(&self) {
        Self::open(&mut self.lock(), &self.on);
        self.released.notify_all();
    }

    pub fn is_held(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    fn open(held: &mut Option<Held>, on: &AtomicBool) {
        *held = None;
        on.store(false, Ordering::SeqCst);
    }

    /// Wait while held. At the deadline, record that disk `index` took a write no stream
    /// tracked, then release: the record is durable before the write is made.
    pub fn wait(&self, index: u16) -> io::Result<()> {
        if !self.is_held() {
            return Ok(());
        }
        let mut held = self.lock();
        loop {
            let Some(h) = held.as_ref() else {
                return Ok(());
            };
            let now = Instant::now();
            if now >= h.until {
                record(&h.dir, index, h.deadline)?;
                Self::open(&mut held, &self.on);
                self.released.notify_all();
                return Ok(());
            }
            let left = h.until - now;
            held = self
                .released
                .wait_timeout(held, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn record(dir: &Path, index: u16, deadline: Duration) -> io::Result<()> {
    let reason = format!(
        "disk {index} took writes from {} on that no stream recorded: replication did not \
         start within {} s of the agent's start",
        Timestamp::now(),
        deadline.as_secs_f64()
    );
    record_reason(dir, &reason)
}

/// Record, durably, why the stream kept in `dir` no longer holds every change of its disks:
/// it refuses to continue ([`check`]) until a repair. The first reason stays.
pub(crate) fn record_reason(dir: &Path, reason: &str) -> io::Result<()> {
    let p = path(dir);
    if p.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(reason.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(dir)?.sync_all()
}

/// At a stream's start: an error when writes went untracked while it was not running, unless
/// the stream's initial copy is still to come (it reads every block anyway).
pub(crate) fn check(dir: &Path, initial_copy_done: bool) -> Result<(), AgentError> {
    let p = path(dir);
    let reason = match std::fs::read_to_string(&p) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(AgentError::io(
                "read the stream's untracked-writes file",
                &p,
            )(e));
        }
    };
    if initial_copy_done {
        return Err(AgentError::TrackingLost { reason });
    }
    forget(dir)
}

/// Forget untracked writes: a new stream (a repair's) compares every block.
pub(crate) fn forget(dir: &Path) -> Result<(), AgentError> {
    let p = path(dir);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AgentError::io(
            "remove the stream's untracked-writes file",
            &p,
        )(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_held_write_waits_for_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Arc::new(Hold::default());
        hold.hold(Duration::from_secs(60), dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = hold.clone();
        let writer = std::thread::spawn(move || {
            h.wait(0).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a held write must wait"
        );
        hold.release();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the write goes on once released");
        writer.join().unwrap();
        check(dir.path(), true).expect("nothing went untracked");
    }

    #[test]
    fn a_write_past_the_deadline_is_recorded_as_untracked() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Hold::default();
        hold.hold(Duration::from_millis(50), dir.path());
        hold.wait(3).unwrap();
        assert!(!hold.is_held());
        match check(dir.path(), true) {
            Err(AgentError::TrackingLost { reason }) => {
                assert!(reason.contains("disk 3"), "{reason}")
            }
            other => panic!("expected tracking lost, got {other:?}"),
        }
        // Before the initial copy the record is dropped: the copy reads every block.
        check(dir.path(), false).unwrap();
        check(dir.path(), true).unwrap();
    }
}
