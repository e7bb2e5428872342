//! The monitor: moves items to `protected` when initial replication is applied.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::control::Control;
use crate::db::Kind;
use crate::model::{ItemState, Replication, Severity};
use crate::resources::key;

/// How often items whose stream or processor could not start are tried again.
const RESTART_EVERY: Duration = Duration::from_secs(5);

/// Start the parts of items that are not running (a start that failed, e.g. a store that was
/// unreachable when the server started).
async fn restart_missing(control: &Arc<Control>) {
    let Ok(reps) = control.db.list::<Replication>(Kind::Replication) else {
        return;
    };
    for rep in reps {
        let vm_key = key(&rep.group, &rep.vm);
        let running = control
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&vm_key);
        if running || !rep.state.is_replicating() {
            continue;
        }
        if let Err(e) = control.ensure_running(&rep).await {
            tracing::warn!(item = %vm_key, error = %e, "start replication of an item; will retry");
        }
    }
}

/// An item whose stream can no longer be trusted (the processor found a persistent sequence
/// gap, or the agent could not record a write) cannot go on from it: it is stopped and goes to
/// `resync-required` with the reason, until a repair.
async fn resync_when_untrusted(control: &Arc<Control>) -> crate::error::Result<()> {
    for rep in control.db.list::<Replication>(Kind::Replication)? {
        let item = rep.item_key();
        if !rep.state.is_replicating() || rep.state == ItemState::Resynchronizing {
            continue;
        }
        let gap = control.processor_status(&item).and_then(|s| s.gap);
        let lost = control
            .agent(&rep.source_region)
            .ok()
            .and_then(|a| a.status(&rep.source_key()))
            .and_then(|s| s.stream.tracking_lost);
        let reason = match (gap, lost) {
            (_, Some(lost)) => lost,
            (Some((missing, present)), None) => format!(
                "sequence gap: segment {missing:016x} of the stream is missing from the cache \
                 account while segment {present:016x} is there"
            ),
            (None, None) => continue,
        };
        let untrusted = crate::replication::runtime::UNTRUSTED_FROM;
        if !control.move_item_if(&item, &untrusted, ItemState::ResyncRequired, |r| {
            r.resync_reason = Some(reason.clone());
        })? {
            continue;
        }
        control.stop_item(&rep).await;
        control.event(
            Severity::Critical,
            "resync-required",
            &item,
            format!("{reason}; replication is stopped until `ferry replication repair {item}`"),
        );
    }
    Ok(())
}

/// How often points past their policy's retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune = std::time::Instant::now();
    let mut last_restart = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = tick(&control) {
            tracing::warn!(error = %e, "monitor replicated items");
        }
        if let Err(e) = resync_when_untrusted(&control).await {
            tracing::warn!(error = %e, "check whether the items' streams can be trusted");
        }
        if let Err(e) = control.hydrations_done() {
            tracing::warn!(error = %e, "check the VMs whose disks are being restored");
        }
        if let Err(e) = control.sample_rates() {
            tracing::warn!(error = %e, "sample the items' churn and RPO");
        }
        if let Err(e) = control.observe() {
            tracing::warn!(error = %e, "record the items' changes as events");
        }
        if let Ok(reps) = control.db.list::<Replication>(Kind::Replication) {
            control.app_consistent_due(&reps);
        }
        if last_restart.elapsed() >= RESTART_EVERY {
            last_restart = std::time::Instant::now();
            restart_missing(&control).await;
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            if let Err(e) = prune(&control).await {
                tracing::warn!(error = %e, "prune recovery points past retention");
            }
        }
    }
}

/// Remove points older than each item's retention (the newest point is always kept).
async fn prune(control: &Control) -> crate::error::Result<()> {
    for rep in control.db.list::<Replication>(Kind::Replication)? {
        // An operation on the item (a failover reading a point) goes first.
        if rep.state != ItemState::Protected || control.busy_with(&rep.item_key())?.is_some() {
            continue;
        }
        let policy = control.policy(&rep.policy)?;
        let layout = control.layout(&rep)?;
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
            tracing::info!(item = %key(&rep.group, &rep.vm), points = plan.len(), "pruning recovery points past retention or thinned out");
        }
        for p in points.iter().filter(|p| plan.contains(&p.seq)) {
            ferry_replica::points::delete_point(&layout, p).await?;
        }
        let window = ferry_types::Timestamp(
            ferry_types::Timestamp::now().0 - policy.journal_seconds as i64 * 1_000_000_000,
        );
        let removed = ferry_replica::points::prune_journal(&layout, window).await?;
        if removed > 0 {
            tracing::info!(item = %key(&rep.group, &rep.vm), removed, "pruned journal segments past the journal window");
        }
    }
    Ok(())
}

fn tick(control: &Control) -> crate::error::Result<()> {
    const COPYING: [ItemState; 2] = [ItemState::InitialReplication, ItemState::Reprotecting];
    for rep in control.db.list::<Replication>(Kind::Replication)? {
        let vm_key = key(&rep.group, &rep.vm);
        if !COPYING.contains(&rep.state) {
            continue;
        }
        // An enable or a reprotect job makes this move itself as it ends; here only the
        // items whose job ended early (it failed, the copy went on) are.
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
