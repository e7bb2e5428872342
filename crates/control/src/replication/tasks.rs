//! The monitor's work on one item that waits on the item's accounts (pruning its points,
//! reading its replica to start it, stopping it): each runs in a task of its own with a
//! deadline, so one slow or unreachable account never delays the monitoring of another item.
//! An item whose previous task of the same kind still runs is skipped; one whose task failed
//! is tried again after a pause that grows while the failures last, and the failure is logged
//! once per change, not once per try.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use ferry_storage::retry::Backoff;
use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::error::{ControlError, Result};

/// The longest a task may run; after that it is dropped and tried again later.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// The pauses after a failed task: from 5 s, doubling up to 60 s.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// Kinds of work on an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Work {
    /// Start its stream and processor (they are not running).
    Start,
    /// Delete its points past retention and its journal past the window.
    Prune,
    /// Stop it: its stream can no longer be trusted.
    Resync,
    /// Send its source host a fresh SAS for the cache account.
    Renew,
}

impl Work {
    fn what(self) -> &'static str {
        match self {
            Work::Start => "start replication of an item",
            Work::Prune => "prune recovery points past retention",
            Work::Resync => "stop an item whose stream cannot be trusted",
            Work::Renew => "renew the source host's access to the cache account",
        }
    }
}

struct Slot {
    task: Option<JoinHandle<Result<()>>>,
    backoff: Backoff,
    not_before: Instant,
}

/// The tasks running (or failed lately) per item and kind of work.
#[derive(Default)]
pub(crate) struct ItemTasks {
    slots: HashMap<(Work, String), Slot>,
}

impl ItemTasks {
    /// Start `work` on `item` as a task, unless the previous one still runs or the item waits
    /// out its pause after a failure.
    pub fn start<F>(&mut self, work: Work, item: &str, f: F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let slot = self
            .slots
            .entry((work, item.to_string()))
            .or_insert_with(|| Slot {
                task: None,
                backoff: Backoff::new(FIRST_RETRY, LAST_RETRY),
                not_before: Instant::now(),
            });
        if slot.task.is_some() || Instant::now() < slot.not_before {
            return;
        }
        slot.task = Some(tokio::spawn(async move {
            tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| {
                Err(ControlError::Internal(format!(
                    "did not finish within {} s",
                    DEADLINE.as_secs()
                )))
            })
        }));
    }

    /// True while `work` on `item` runs.
    pub fn running(&self, work: Work, item: &str) -> bool {
        self.slots
            .get(&(work, item.to_string()))
            .is_some_and(|s| s.task.is_some())
    }

    /// Take in the outcome of every task that finished.
    pub fn collect(&mut self) {
        for ((work, item), slot) in &mut self.slots {
            let Some(task) = slot.task.as_mut() else {
                continue;
            };
            if !task.is_finished() {
                continue;
            }
            let outcome = task.now_or_never().map(|joined| {
                joined.unwrap_or_else(|e| Err(ControlError::Internal(e.to_string())))
            });
            let Some(outcome) = outcome else { continue };
            slot.task = None;
            match outcome {
                Ok(()) => {
                    if slot.backoff.succeeded() {
                        tracing::info!(%item, "{}: done after earlier failures", work.what());
                    }
                }
                Err(e) => {
                    if slot.backoff.failed(&e) {
                        tracing::warn!(%item, error = %e, "{}; will retry", work.what());
                    }
                    slot.not_before = Instant::now() + slot.backoff.delay();
                }
            }
        }
        self.slots
            .retain(|_, s| s.task.is_some() || s.backoff.failures() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_task_is_skipped_and_others_run() {
        let mut tasks = ItemTasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.start(Work::Prune, "rg/slow", async move {
            let _ = rx.await;
            Ok(())
        });
        assert!(tasks.running(Work::Prune, "rg/slow"));
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        for _ in 0..3 {
            let r = ran.clone();
            tasks.start(Work::Prune, "rg/fast", async move {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            });
            tokio::task::yield_now().await;
            while tasks.running(Work::Prune, "rg/fast") {
                tokio::task::yield_now().await;
                tasks.collect();
            }
            // The slow item's task is never started twice.
            tasks.start(Work::Prune, "rg/slow", async { panic!("started twice") });
        }
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(tasks.running(Work::Prune, "rg/slow"));
        tx.send(()).unwrap();
        while tasks.running(Work::Prune, "rg/slow") {
            tokio::task::yield_now().await;
            tasks.collect();
        }
    }

    #[tokio::test]
    async fn a_failed_task_waits_before_its_next_try() {
        let mut tasks = ItemTasks::default();
        tasks.start(Work::Start, "rg/a", async {
            Err(ControlError::Internal("unreachable".into()))
        });
        while tasks.running(Work::Start, "rg/a") {
            tokio::task::yield_now().await;
            tasks.collect();
        }
        tasks.start(Work::Start, "rg/a", async { panic!("tried again at once") });
        assert!(!tasks.running(Work::Start, "rg/a"));
    }
}
