//! Replicated items: enabling (with the target resources it derives), showing with health
//! and RPO, listing points, exporting a disk at a point, and disabling.

pub(crate) mod app_consistent;
pub(crate) mod cache_access;
pub(crate) mod disable;
pub(crate) mod enable;
pub(crate) mod monitor;
pub(crate) mod rates;
pub(crate) mod repair;
pub(crate) mod runtime;
mod targets;
pub(crate) mod tasks;
pub(crate) mod verify;
mod view;

use ferry_replica::{PointSelector, ReplicaLayout, points};
use ferry_types::Timestamp;

use crate::control::Control;
use crate::db::Kind;
use crate::error::{ControlError, Result};
use crate::model::Replication;
use crate::resources::key;

pub use view::{PointView, ReplicationView, RpoSample};

/// Which replicated items to list.
#[derive(Debug, Clone, Default)]
pub struct ReplicationFilter {
    pub state: Option<crate::model::ItemState>,
    pub health: Option<crate::model::Health>,
    /// Only items whose `GROUP/VM` sorts after this one (the last of the previous page).
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl Control {
    /// The item `GROUP/VM`.
    pub(crate) fn replication_by_key(&self, item: &str) -> Result<Replication> {
        let (group, vm) = item.split_once('/').unwrap_or((item, ""));
        self.replication(group, vm)
    }

    pub(crate) fn replication(&self, group: &str, vm: &str) -> Result<Replication> {
        if let Some(rep) = self.db.get(Kind::Replication, &key(group, vm))? {
            return Ok(rep);
        }
        if self
            .db
            .get::<crate::model::Vm>(Kind::Vm, &key(group, vm))?
            .is_none()
        {
            return Err(ControlError::not_found(format!(
                "VM {group}/{vm} does not exist; see `ferry vm list`"
            )));
        }
        Err(ControlError::not_found(format!(
            "VM {group}/{vm} is not replicated; enable it with `ferry replication enable {group}/{vm} --target-region REGION`"
        )))
    }

    pub fn replications(&self) -> Result<Vec<ReplicationView>> {
        self.list_replications(&ReplicationFilter::default())
    }

    /// The items `filter` selects, in `GROUP/VM` order, one page of them when it sets a limit.
    pub fn list_replications(&self, filter: &ReplicationFilter) -> Result<Vec<ReplicationView>> {
        let mut reps: Vec<Replication> = self.db.list(Kind::Replication)?;
        reps.retain(|r| {
            filter.state.is_none_or(|s| r.state == s)
                && filter.after.as_ref().is_none_or(|a| r.item_key() > *a)
        });
        reps.sort_by_key(|r| r.item_key());
        let mut out = Vec::new();
        for r in &reps {
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let v = self.view(r);
            if filter.health.is_none_or(|h| v.health == h) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// An item with everything known about it, its RPO over the last hour included.
    pub fn show_replication(&self, group: &str, vm: &str) -> Result<ReplicationView> {
        let rep = self.replication(group, vm)?;
        let mut v = self.view(&rep);
        v.rpo_history = Some(self.rpo_history(group, vm, 3600)?);
        Ok(v)
    }

    /// An item's stored RPO samples (one every 30 s) over the last `seconds`, oldest first.
    pub fn rpo_history(&self, group: &str, vm: &str, seconds: u64) -> Result<Vec<RpoSample>> {
        let rep = self.replication(group, vm)?;
        let now = ferry_types::Timestamp::now().0 / 1_000_000_000;
        let rows = self
            .db
            .rpo_history(&rep.item_key(), now - seconds.min(i64::MAX as u64) as i64)?;
        Ok(rows
            .into_iter()
            .map(|(t, rpo)| RpoSample {
                time: ferry_types::Timestamp(t * 1_000_000_000).to_string(),
                rpo_seconds: rpo,
            })
            .collect())
    }

    /// The accounts of an item's replica.
    pub(crate) fn layout(&self, rep: &Replication) -> Result<ReplicaLayout> {
        if let Some(l) = self
            .layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rep.stream)
        {
            return Ok(l.clone());
        }
        let vm = self.source_vm(rep)?;
        let mut disks = Vec::new();
        for d in &vm.disks {
            let target = rep.target.storage.get(&d.storage).ok_or_else(|| {
                ControlError::Internal(format!(
                    "no target account is mapped for source account {}",
                    d.storage
                ))
            })?;
            let acct = self.storage(&rep.target.group, target)?;
            disks.push(self.stores.get(&acct.url)?);
        }
        let meta = disks[0].clone();
        let layout = ReplicaLayout::new(rep.stream, meta, disks);
        self.layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rep.stream, layout.clone());
        Ok(layout)
    }

    pub async fn recovery_points(&self, group: &str, vm: &str) -> Result<Vec<PointView>> {
        let rep = self.replication(group, vm)?;
        let layout = self.layout(&rep)?;
        Ok(points::list(&layout)
            .await?
            .iter()
            .map(PointView::from)
            .collect())
    }

    /// Resolve a point selector for an item.
    pub async fn resolve_point(
        &self,
        group: &str,
        vm: &str,
        sel: &str,
    ) -> Result<(ReplicaLayout, ferry_format::point::PointRecord)> {
        let rep = self.replication(group, vm)?;
        let selector = PointSelector::parse(sel).ok_or_else(|| {
            ControlError::invalid(format!(
                "invalid recovery point {sel:?}: use latest, latest-processed, latest-app-consistent, a point id or an RFC 3339 time"
            ))
        })?;
        let layout = self.layout(&rep)?;
        let rec = self.resolve_selector(&rep, &selector).await?;
        Ok((layout, rec))
    }

    /// Resolve a selector; an RFC 3339 time is rebuilt exactly, from the newest point at or
    /// before it plus the journal's records up to it.
    pub(crate) async fn resolve_selector(
        &self,
        rep: &Replication,
        selector: &PointSelector,
    ) -> Result<ferry_format::point::PointRecord> {
        let layout = self.layout(rep)?;
        let PointSelector::At(t) = selector else {
            return Ok(points::resolve(&layout, selector).await?);
        };
        self.check_in_journal_window(rep, *t)?;
        self.wait_processed_through(rep, *t).await?;
        self.replay_to(rep, *t).await
    }

    /// A point of the disks exactly as they were at `t`, from the newest point at or before
    /// it and the journal's records up to `t` (every write up to `t` must be processed).
    pub(crate) async fn replay_to(
        &self,
        rep: &Replication,
        t: Timestamp,
    ) -> Result<ferry_format::point::PointRecord> {
        let layout = self.layout(rep)?;
        let base = points::resolve(&layout, &PointSelector::At(t)).await?;
        let sizes = base.disks.iter().map(|d| d.size).collect();
        let processor = ferry_replica::Processor::new(
            layout,
            self.item_cache(rep)?,
            sizes,
            ferry_replica::ProcessorConfig::default(),
        );
        Ok(processor.replay_to(&base, t).await?)
    }

    /// Refuse an instant before the policy's journal window or in the future.
    pub(crate) fn check_in_journal_window(&self, rep: &Replication, t: Timestamp) -> Result<()> {
        let policy = self.policy(&rep.policy)?;
        let now = Timestamp::now();
        let window = Timestamp(now.0 - policy.journal_seconds as i64 * 1_000_000_000);
        if t < window {
            return Err(ControlError::invalid(format!(
                "{t} is before the journal window (the last {} s); pick a recovery point id from `ferry recovery-point list {}`",
                policy.journal_seconds,
                rep.item_key()
            )));
        }
        if t > now {
            return Err(ControlError::invalid(format!("{t} is in the future")));
        }
        Ok(())
    }

    /// Wait until every write the source acknowledged up to `t` has been applied (and so is
    /// in the journal). Items whose stream is not running have nothing more coming.
    async fn wait_processed_through(&self, rep: &Replication, t: Timestamp) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let Some(agent) = self.source_status(rep) else {
                return Ok(());
            };
            let shipped = agent.stream.oldest_unshipped.is_none_or(|o| o > t);
            let applied = self
                .processor_status(&rep.item_key())
                .and_then(|p| p.applied_seq)
                .unwrap_or(0);
            if shipped && agent.stream.shipped_through.is_none_or(|s| applied >= s) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(ControlError::conflict(format!(
                    "{} has not processed its writes up to {t} yet (see `ferry replication show`); try again shortly",
                    rep.item_key()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
