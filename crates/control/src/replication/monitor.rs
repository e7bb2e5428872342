//! The monitor: one loop over every replicated item, four times a second. It tells idle
//! processors what their sources shipped, moves items to
//! `protected` when their initial replication is applied, stops those whose stream can no
//! longer be trusted, restarts parts that are not running, prunes points past retention
//! (and events and jobs past theirs),
//! samples churn and RPO, records events and starts app-consistent points. It renews this
//! server's leases on items' work, and stops the processors of those it lost
//! ([`crate::leases`]).
//!
//! The loop itself reads only the state database and the running parts' status. The work that
//! waits on an item's accounts runs in that item's own tasks ([`ItemTasks`]), with a deadline:
//! one slow or unreachable account never stalls the monitoring of another item.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_storage::retry::pause;
use tokio::sync::watch;

use super::tasks::{ItemTasks, Work};
use crate::control::Control;
use crate::db::Kind;
use crate::model::{ItemState, Replication, Severity};
use crate::resources::key;

/// How often items whose stream or processor could not start are tried again.
const RESTART_EVERY: Duration = Duration::from_secs(5);

/// How often points past their policy's retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune = Instant::now();
    let mut last_restart = Instant::now();
    // The first pruning comes a minute after the start.
    let mut last_history_prune = Instant::now()
        .checked_sub(crate::history::PRUNE_EVERY - Duration::from_secs(60))
        .unwrap_or_else(Instant::now);
    let mut tasks = ItemTasks::default();
    loop {
        if pause(&mut shutdown, Duration::from_millis(250)).await {
            return;
        }
        tasks.collect();
        let reps = match control.db.list::<Replication>(Kind::Replication) {
            Ok(reps) => reps,
            Err(e) => {
                tracing::warn!(error = %e, "list the replicated items");
                continue;
            }
        };
        match control.renew_item_leases() {
            Ok(lost) => {
                for item in lost {
                    tracing::warn!(%item, "lost the item's lease; stopping its processor here");
                    let control = control.clone();
                    tokio::spawn(async move { control.drop_lost_item(&item).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "renew this server's leases"),
        }
        control.wake_processors(&reps);
        if let Err(e) = protect_when_applied(&control, &reps) {
            tracing::warn!(error = %e, "monitor replicated items");
        }
        resync_when_untrusted(&control, &reps, &mut tasks);
        if let Err(e) = control.hydrations_done() {
            tracing::warn!(error = %e, "check the VMs whose disks are being restored");
        }
        if let Err(e) = control.sample_rates() {
            tracing::warn!(error = %e, "sample the items' churn and RPO");
        }
        if let Err(e) = control.observe() {
            tracing::warn!(error = %e, "record the items' changes as events");
        }
        control.app_consistent_due(&reps);
        super::cache_access::renew_due(
            &control,
            &reps,
            &mut tasks,
            super::cache_access::RENEW_AFTER,
        );
        if last_history_prune.elapsed() >= crate::history::PRUNE_EVERY {
            last_history_prune = Instant::now();
            if let Err(e) = control.prune_history() {
                tracing::warn!(error = %e, "prune events and ended jobs");
            }
        }
        if last_restart.elapsed() >= RESTART_EVERY {
            last_restart = Instant::now();
            restart_missing(&control, &reps, &mut tasks);
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            for rep in reps
                .iter()
                .filter(|r| r.state == ItemState::Protected && control.holds_item(&r.item_key()))
            {
                // An operation on the item (a failover reading a point) goes first.
                if control
                    .busy_with(&rep.item_key())
                    .map_or(true, |j| j.is_some())
                {
                    continue;
                }
                let (control, rep) = (control.clone(), rep.clone());
                let item = rep.item_key();
                tasks.start(
                    Work::Prune,
                    &item,
                    async move { prune(&control, &rep).await },
                );
            }
        }
    }
}

/// Move items whose initial replication (or reprotection) the processor has applied to
/// `protected`. An enable or a reprotect job makes this move itself as it ends; here only the
/// items whose job ended early (it failed, the copy went on) are.
fn protect_when_applied(control: &Control, reps: &[Replication]) -> crate::error::Result<()> {
    const COPYING: [ItemState; 2] = [ItemState::InitialReplication, ItemState::Reprotecting];
    for rep in reps {
        if !COPYING.contains(&rep.state) {
            continue;
        }
        let vm_key = key(&rep.group, &rep.vm);
        let done = control
            .processor_status(&vm_key)
            .is_some_and(|s| s.initial_sync_seq.is_some());
        if done
            && control.busy_with(&vm_key)?.is_none()
            && control.move_item_if(&vm_key, &COPYING, ItemState::Protected, |_| {})?
        {
            tracing::info!(item = %vm_key, "protected");
        }
    }
    Ok(())
}

/// Start the parts of items that are not running (a start that failed, e.g. a store that was
/// unreachable when the server started).
fn restart_missing(control: &Arc<Control>, reps: &[Replication], tasks: &mut ItemTasks) {
    for rep in reps {
        let item = rep.item_key();
        let running = control
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&item);
        // An item being stopped for a resync is not running, and must not start again.
        if running || !rep.state.is_replicating() || tasks.running(Work::Resync, &item) {
            continue;
        }
        let (control, rep) = (control.clone(), rep.clone());
        tasks.start(Work::Start, &item, async move {
            control.ensure_running(&rep).await
        });
    }
}

/// An item whose stream can no longer be trusted (the processor found a persistent sequence
/// gap, or the agent could not record a write) cannot go on from it: it is stopped and goes to
/// `resync-required` with the reason, until a repair.
fn resync_when_untrusted(control: &Arc<Control>, reps: &[Replication], tasks: &mut ItemTasks) {
    for rep in reps {
        let item = rep.item_key();
        if !rep.state.is_replicating() || rep.state == ItemState::Resynchronizing {
            continue;
        }
        let gap = control.processor_status(&item).and_then(|s| s.gap);
        let lost = control
            .source_status(rep)
            .and_then(|s| s.stream.tracking_lost);
        let reason = match (gap, lost) {
            (_, Some(lost)) => lost,
            (Some((missing, present)), None) => format!(
                "sequence gap: segment {missing:016x} of the stream is missing from the cache \
                 account while segment {present:016x} is there"
            ),
            (None, None) => continue,
        };
        let (control, rep, key) = (control.clone(), rep.clone(), item.clone());
        tasks.start(Work::Resync, &key, async move {
            // Moved first: a start that comes meanwhile sees the item is not replicating.
            let untrusted = crate::replication::runtime::UNTRUSTED_FROM;
            if !control.move_item_if(&item, &untrusted, ItemState::ResyncRequired, |r| {
                r.resync_reason = Some(reason.clone());
            })? {
                return Ok(());
            }
            control.stop_item(&rep).await;
            control.event(
                Severity::Critical,
                "resync-required",
                &item,
                format!("{reason}; replication is stopped until `ferry replication repair {item}`"),
            );
            Ok(())
        });
    }
}

/// Remove an item's points older than its retention (the newest point is always kept), and its
/// journal segments past the journal window.
async fn prune(control: &Control, rep: &Replication) -> crate::error::Result<()> {
    let policy = control.policy(&rep.policy)?;
    let layout = control.layout(rep)?;
    let points = ferry_replica::points::list(&layout).await?;
    let candidates: Vec<_> = points
        .iter()
        .map(|p| ferry_replica::retention::Candidate {
            seq: p.seq,
            time: p.time,
            kind: p.kind,
        })
        .collect();
    let mut plan = ferry_replica::retention::plan(
        &candidates,
        ferry_types::Timestamp::now(),
        &policy.retention(),
    );
    // A point that a VM's disks are still restored from stays until they are whole.
    let pinned = control.pinned_points(&rep.item_key())?;
    plan.retain(|seq| !pinned.contains(&ferry_replica::points::point_id(*seq)));
    if !plan.is_empty() {
        tracing::info!(item = %rep.item_key(), points = plan.len(), "pruning recovery points past retention or thinned out");
    }
    for p in points.iter().filter(|p| plan.contains(&p.seq)) {
        ferry_replica::points::delete_point(&layout, p).await?;
    }
    let window = ferry_types::Timestamp(
        ferry_types::Timestamp::now().0 - policy.journal_seconds as i64 * 1_000_000_000,
    );
    let removed = ferry_replica::points::prune_journal(&layout, window).await?;
    if removed > 0 {
        tracing::info!(item = %rep.item_key(), removed, "pruned journal segments past the journal window");
    }
    Ok(())
}
