//! One operation at a time per item, and per VM.
//!
//! Every operation that changes a protected item (enable, disable, failover, test failover and
//! its cleanup, commit, reprotect, repair, verify) is a job, and it starts here, in one
//! transaction of the state database: the item is read; the job it records (`job`) must have
//! ended, unless the new operation may take the item from it (a disable stops an enable's wait
//! or a repair); the operation checks the state it starts from and moves the item; the job is
//! inserted; the item records it. A request that finds another job running gets a 409 naming
//! it. So two jobs never run on one item at once, and a job owns its item until it ends: its
//! own changes of the item check that it still does ([`Control::move_item_for`]), and so do its
//! waits ([`Control::still_owns`]).
//!
//! A VM changes state (start, stop, delete, a job powering it or replacing its disks) under its
//! own lock ([`Control::lock_vm`]): a second request waits its turn. A VM that an item's
//! running job works with (the item's source, target, failover or test VM) refuses a user's
//! request with a 409 naming the job.

use std::sync::Arc;

use serde_json::Value;

use crate::control::Control;
use crate::db::{Kind, Tx};
use crate::error::{ControlError, Result};
use crate::jobs::JobSteps;
use crate::model::{ItemState, Job, JobKind, JobState, Replication};

/// The error of an operation refused because `job` runs on `what`.
pub(crate) fn busy(what: &str, job: &Job) -> ControlError {
    ControlError::conflict(format!(
        "{what} is busy: job {} ({}) has been running on it since {}; wait for it with \
         `ferry job show {} --wait`",
        job.id, job.kind, job.created, job.id
    ))
}

/// The error of a job whose item another operation took over.
fn taken_over(rep: &Replication, job: &Job) -> ControlError {
    ControlError::conflict(format!(
        "cancelled: job {} took {} over",
        rep.job.map_or_else(|| "another".into(), |j| j.to_string()),
        job.target
    ))
}

/// The job that runs on `rep` now, as stored in `tx`.
pub(crate) fn running_job(tx: &Tx<'_>, rep: &Replication) -> Result<Option<Job>> {
    let Some(id) = rep.job else {
        return Ok(None);
    };
    // A job that cannot be read has no runner: it holds nothing.
    Ok(tx
        .job(id)
        .unwrap_or(None)
        .filter(|j| j.state == JobState::Running))
}

impl Control {
    /// Start `S`'s job on `item` (see the module's page). `check` sees the item as stored and
    /// the new job (its id set), in the transaction: it refuses, or changes the record (its
    /// state through the state machine, what the job works with) and sets the job's
    /// parameters. A running job of a kind in `takes_from` does not refuse: the new job takes
    /// the item from it, and it ends at its next look ([`Control::still_owns`]).
    pub(crate) async fn admit<S: JobSteps>(
        self: &Arc<Self>,
        item: &str,
        takes_from: &[JobKind],
        check: impl FnOnce(&mut Replication, &mut Job, &Tx<'_>) -> Result<()>,
    ) -> Result<Job> {
        let job = self.admit_only::<S>(item, takes_from, check).await?;
        self.launch(job.clone()).await;
        Ok(job)
    }

    /// [`Control::admit`], for a job the caller runs itself (it must end it).
    pub(crate) async fn admit_only<S: JobSteps>(
        self: &Arc<Self>,
        item: &str,
        takes_from: &[JobKind],
        check: impl FnOnce(&mut Replication, &mut Job, &Tx<'_>) -> Result<()>,
    ) -> Result<Job> {
        self.db.transact(|tx| {
            let Some(mut rep) = tx.get::<Replication>(Kind::Replication, item)? else {
                if tx.get::<crate::model::Vm>(Kind::Vm, item)?.is_none() {
                    return Err(ControlError::not_found(format!(
                        "VM {item} does not exist; see `ferry vm list`"
                    )));
                }
                return Err(ControlError::not_found(format!(
                    "VM {item} is not replicated; enable it with `ferry replication enable {item} --target-region REGION`"
                )));
            };
            if let Some(running) = running_job(tx, &rep)?
                && !takes_from.contains(&running.kind)
            {
                return Err(busy(item, &running));
            }
            let mut job = Job::start::<S>(item, Value::Null);
            tx.new_job(&mut job)?;
            check(&mut rep, &mut job, tx)?;
            tx.put_job(&job)?;
            rep.job = Some(job.id);
            tx.put(Kind::Replication, item, &rep)?;
            Ok(job)
        })
    }

    /// Run an admitted job in the background. Between its insert and here a crash leaves a
    /// running job that the next start resumes.
    pub(crate) async fn launch(self: &Arc<Self>, job: Job) {
        crate::failpoint::hit("job-before-first-step").await;
        crate::jobs::spawn(self.clone(), job);
    }

    /// The 409 an operation gets before its own checks when a job runs on the item (its
    /// admission checks again, in its transaction).
    pub(crate) fn refuse_if_busy(&self, item: &str, takes_from: &[JobKind]) -> Result<()> {
        match self.busy_with(item)? {
            Some(job) if !takes_from.contains(&job.kind) => Err(busy(item, &job)),
            _ => Ok(()),
        }
    }

    /// The job running on `item` now, if any.
    pub(crate) fn busy_with(&self, item: &str) -> Result<Option<Job>> {
        self.db.transact(|tx| {
            let Some(rep) = tx.get::<Replication>(Kind::Replication, item)? else {
                return Ok(None);
            };
            running_job(tx, &rep)
        })
    }

    /// An error unless `job` still owns its item: another operation took it over (a disable
    /// over an enable or a repair), or the item is gone.
    pub(crate) fn still_owns(&self, job: &Job) -> Result<()> {
        let rep: Option<Replication> = self.db.get(Kind::Replication, &job.target)?;
        match rep {
            Some(rep) if rep.job == Some(job.id) => Ok(()),
            Some(rep) => Err(taken_over(&rep, job)),
            None => Err(self.gone(job)),
        }
    }

    /// The error of a job whose item is gone: the disable that took it over has already
    /// removed it. Names that job when it can: the item's first job after `job` (none other
    /// could start while `job` owned the item).
    fn gone(&self, job: &Job) -> ControlError {
        let after = crate::db::JobQuery {
            after: job.id,
            ..Default::default()
        };
        let taker = self.db.jobs_page(&after).ok().and_then(|jobs| {
            jobs.into_iter()
                .filter(|j| j.target == job.target && j.id > job.id)
                .map(|j| j.id)
                .min()
        });
        match taker {
            Some(id) => ControlError::conflict(format!(
                "cancelled: job {id} took {} over; it is no longer replicated",
                job.target
            )),
            None => {
                ControlError::conflict(format!("cancelled: {} is no longer replicated", job.target))
            }
        }
    }

    /// Change `job`'s item in one transaction, moving it to `to` through the state machine,
    /// only while the job owns it (see [`Control::still_owns`]).
    pub(crate) fn move_item_for(
        &self,
        job: &Job,
        to: ItemState,
        f: impl FnOnce(&mut Replication),
    ) -> Result<Replication> {
        self.change_item_for(job, Some(to), f)
    }

    /// Change `job`'s item in one transaction (its state unchanged), only while the job owns
    /// it.
    pub(crate) fn update_item_for(
        &self,
        job: &Job,
        f: impl FnOnce(&mut Replication),
    ) -> Result<Replication> {
        self.change_item_for(job, None, f)
    }

    /// End `job` well and move its item to `to` (changed with `f`), in one transaction: no
    /// request sees the item in its new state while the job still holds it.
    pub(crate) fn succeed_moving(
        &self,
        job: &mut Job,
        to: ItemState,
        f: impl FnOnce(&mut Replication),
    ) -> Result<Replication> {
        job.succeeded();
        let done = job.clone();
        let rep = self.change_item_in(&done, Some(to), f, |tx| tx.put_job(&done))?;
        self.job_succeeded_event(job);
        Ok(rep)
    }

    fn change_item_for(
        &self,
        job: &Job,
        to: Option<ItemState>,
        f: impl FnOnce(&mut Replication),
    ) -> Result<Replication> {
        self.change_item_in(job, to, f, |_| Ok(()))
    }

    fn change_item_in(
        &self,
        job: &Job,
        to: Option<ItemState>,
        f: impl FnOnce(&mut Replication),
        also: impl FnOnce(&Tx<'_>) -> Result<()>,
    ) -> Result<Replication> {
        let changed = self.db.transact(|tx| {
            let Some(mut rep) = tx.get::<Replication>(Kind::Replication, &job.target)? else {
                return Ok(None);
            };
            if rep.job != Some(job.id) {
                return Err(taken_over(&rep, job));
            }
            if let Some(to) = to {
                rep.state = rep.state.move_to(to).map_err(|e| {
                    ControlError::conflict(format!(
                        "cannot move {} from {} to {}",
                        job.target, e.from, e.to
                    ))
                })?;
            }
            f(&mut rep);
            tx.put(Kind::Replication, &job.target, &rep)?;
            also(tx)?;
            Ok(Some(rep))
        })?;
        // Looked up once the transaction is over: it holds the database.
        changed.ok_or_else(|| self.gone(job))
    }

    /// Move `item` from one of the states `from` to `to` and change it with `f`, in one
    /// transaction; `false` (nothing written) when it is in another state or gone. For the
    /// moves no job makes (the reconciler and the monitor: the initial copy is applied, the
    /// stream turned out untrustworthy): they do not wait for the item's job, which sees the
    /// new state at its next look.
    pub(crate) fn move_item_if(
        &self,
        item: &str,
        from: &[ItemState],
        to: ItemState,
        f: impl FnOnce(&mut Replication),
    ) -> Result<bool> {
        self.db.transact(|tx| {
            let Some(mut rep) = tx.get::<Replication>(Kind::Replication, item)? else {
                return Ok(false);
            };
            if !from.contains(&rep.state) {
                return Ok(false);
            }
            rep.state = rep.state.move_to(to)?;
            f(&mut rep);
            tx.put(Kind::Replication, item, &rep)?;
            Ok(true)
        })
    }

    /// The item running the job on a VM a user asks to change, if any: the item's source,
    /// target, failover or test VM.
    pub(crate) fn vm_busy(&self, vm_key: &str) -> Result<Option<(String, Job)>> {
        self.db.transact(|tx| {
            for rep in tx.list::<Replication>(Kind::Replication)? {
                if !involves(&rep, vm_key) {
                    continue;
                }
                if let Some(job) = running_job(tx, &rep)? {
                    return Ok(Some((rep.item_key(), job)));
                }
            }
            Ok(None)
        })
    }

    /// Serialise changes of one VM: held while it is started, stopped, deleted, or its disks
    /// replaced. Never held while waiting for another VM's.
    pub(crate) async fn lock_vm(&self, vm_key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        lock_key(&self.vm_locks, vm_key).await
    }

    /// Serialise starting and stopping an item's stream and processor.
    pub(crate) async fn lock_runtime(&self, item: &str) -> tokio::sync::OwnedMutexGuard<()> {
        lock_key(&self.runtime_locks, item).await
    }
}

/// The lock of `key` in `locks` (made on first use), once held.
async fn lock_key(locks: &KeyLocks, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
    let lock = locks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.to_string())
        .or_default()
        .clone();
    lock.lock_owned().await
}

/// Locks by name (a VM, an item).
pub(crate) type KeyLocks =
    std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// What the VM `vm_key` is to an item other than its own (named `vm_key`): the VM it
/// replicates from (after a reprotect), the VM it failed over to, its test VM, or the VM a
/// failover writes into (after a reprotect: the VM it came from).
pub(crate) fn role_of(rep: &Replication, vm_key: &str) -> Option<&'static str> {
    if rep.source_key() == vm_key {
        Some("source")
    } else if rep.failover.as_ref().is_some_and(|f| f.vm == vm_key) {
        Some("failed-over VM")
    } else if rep.test_failover.as_ref().is_some_and(|t| t.vm == vm_key) {
        Some("test VM")
    } else if rep.target_vm.as_deref() == Some(vm_key) {
        Some("failover target")
    } else {
        None
    }
}

/// Whether an item works with the VM `vm_key`: as its source, the VM its failover boots (or
/// booted), its test VM, or its target.
pub(crate) fn involves(rep: &Replication, vm_key: &str) -> bool {
    rep.item_key() == vm_key
        || rep.source_key() == vm_key
        || rep.failover_vm_key() == vm_key
        || rep.failover.as_ref().is_some_and(|f| f.vm == vm_key)
        || rep.test_failover.as_ref().is_some_and(|t| t.vm == vm_key)
        || rep.target_vm.as_deref() == Some(vm_key)
}
