//! Failover, test failover, commit and reprotect: the state machine of a protected item and
//! the jobs that move it.
//!
//! ```text
//!  protected ──failover run──▶ failing-over ──▶ failed-over ──commit──▶ failover-committed
//!      ▲                                         │   ▲  (run again: another point)     │
//!      │                                         └───┘                             reprotect
//!      └───────────────────────────── reprotecting ◀────────────────────────────────────┘
//! ```
//! A test failover runs beside `protected` (replication goes on) until its cleanup.

mod hydrate;
mod materialise;
mod reprotect;
mod restore;
mod run;
mod seed_upload;
mod site_loss;
mod test;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::command::MarkWire;
use ferry_format::point::PointRecord;
use ferry_replica::{PointSelector, points};
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{ItemState, Job, Replication};

pub(crate) use reprotect::{CommitStep, ReprotectStep, run_commit, run_reprotect};
pub(crate) use run::{FailoverStep, run_failover};
pub(crate) use seed_upload::Upload;
pub(crate) use test::{TestCleanupStep, TestFailoverStep, run_test_cleanup, run_test_failover};

/// How long `latest` waits for the processor to reach the point it asked the agent to cut.
const DRAIN_DEADLINE: Duration = Duration::from_secs(180);

/// `ferry failover run` and `ferry failover test`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// `latest` (default), `latest-processed`, `latest-app-consistent`, an id or a time.
    #[serde(default)]
    pub recovery_point: Option<String>,
    /// Planned failover: stop the source VM and drain its writes first.
    #[serde(default)]
    pub shutdown_source: bool,
    /// Test failover only: the isolated network to boot in (in the target group).
    #[serde(default)]
    pub network: Option<String>,
}

impl FailoverRequest {
    pub(crate) fn point(&self) -> &str {
        self.recovery_point.as_deref().unwrap_or("latest")
    }
}

fn refuse(rep: &Replication, what: &str, hint: &str) -> ControlError {
    ControlError::conflict(format!(
        "cannot {what} {}: it is {}; {hint}",
        rep.item_key(),
        rep.state
    ))
}

/// Why the item cannot fail over (to change its point, when failed over) as `req` asks.
fn refuse_failover(rep: &Replication, req: &FailoverRequest) -> Result<()> {
    match rep.state {
        ItemState::Protected | ItemState::FailedOver => {}
        _ => {
            return Err(refuse(
                rep,
                "fail over",
                "only a protected item (or one already failed over, to change its point) fails over",
            ));
        }
    }
    if rep.state == ItemState::FailedOver && req.shutdown_source {
        return Err(ControlError::invalid(
            "the item is already failed over; --shutdown-source only applies to the first failover",
        ));
    }
    Ok(())
}

/// Why the item cannot start a test failover.
fn refuse_test_failover(rep: &Replication) -> Result<()> {
    if rep.state != ItemState::Protected {
        return Err(refuse(
            rep,
            "test-fail over",
            "test failover needs a protected item",
        ));
    }
    if let Some(t) = &rep.test_failover {
        return Err(ControlError::conflict(format!(
            "a test failover of {} is in progress (VM {}); clean it up first with `ferry failover test-cleanup {}`",
            rep.item_key(),
            t.vm,
            rep.item_key()
        )));
    }
    Ok(())
}

impl Control {
    /// Check a selector names a point that exists (`latest` always does once protected).
    async fn check_point(&self, rep: &Replication, sel: &str) -> Result<()> {
        let selector = PointSelector::parse(sel).ok_or_else(|| {
            ControlError::invalid(format!(
                "invalid recovery point {sel:?}: use latest, latest-processed, latest-app-consistent, a point id or an RFC 3339 time"
            ))
        })?;
        match selector {
            PointSelector::Latest => {}
            // Checked for the window here; rebuilt by the job.
            PointSelector::At(t) => {
                self.check_in_journal_window(rep, t)?;
                points::resolve(&self.layout(rep)?, &selector).await?;
            }
            _ => {
                points::resolve(&self.layout(rep)?, &selector).await?;
            }
        }
        Ok(())
    }

    /// `ferry failover run`: a job that boots the item in its target region.
    pub async fn failover(
        self: &Arc<Self>,
        group: &str,
        vm: &str,
        req: FailoverRequest,
    ) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.refuse_if_busy(&rep.item_key(), &[])?;
        if req.network.is_some() {
            return Err(ControlError::invalid(
                "--network is for test failovers; a failover boots in the target network",
            ));
        }
        if req.shutdown_source && req.point() != "latest" {
            return Err(ControlError::invalid(
                "a planned failover (--shutdown-source) fails over to the final point: leave --recovery-point out or use latest",
            ));
        }
        refuse_failover(&rep, &req)?;
        self.check_point(&rep, req.point()).await?;
        self.admit::<FailoverStep>(&rep.item_key(), &[], |r, job, _| {
            refuse_failover(r, &req)?;
            job.params = serde_json::json!({ "request": req, "from_state": r.state });
            r.state = r.state.move_to(ItemState::FailingOver)?;
            Ok(())
        })
        .await
    }

    /// `ferry failover test`: a job that boots a copy in an isolated network.
    pub async fn test_failover(
        self: &Arc<Self>,
        group: &str,
        vm: &str,
        req: FailoverRequest,
    ) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.refuse_if_busy(&rep.item_key(), &[])?;
        if req.shutdown_source {
            return Err(ControlError::invalid(
                "--shutdown-source is for failovers; a test failover leaves the source running",
            ));
        }
        refuse_test_failover(&rep)?;
        if let Some(net) = &req.network {
            if *net == rep.target.network {
                return Err(ControlError::invalid(format!(
                    "{net} is the production target network; a test failover needs an isolated network (leave --network out to create one)"
                )));
            }
            self.network(&rep.target.group, net)?;
        }
        self.check_point(&rep, req.point()).await?;
        self.admit::<TestFailoverStep>(&rep.item_key(), &[], |r, job, _| {
            refuse_test_failover(r)?;
            job.params = serde_json::json!({ "request": req });
            r.test_failover = Some(test::placeholder(r, &req, job.id));
            Ok(())
        })
        .await
    }

    /// `ferry failover test-cleanup`.
    pub async fn test_failover_cleanup(self: &Arc<Self>, group: &str, vm: &str) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.admit::<TestCleanupStep>(&rep.item_key(), &[], |r, _, _| {
            if r.test_failover.is_none() {
                return Err(ControlError::conflict(format!(
                    "{} has no test failover to clean up; start one with `ferry failover test {}`",
                    r.item_key(),
                    r.item_key()
                )));
            }
            Ok(())
        })
        .await
    }

    /// `ferry failover commit`.
    pub async fn commit_failover(self: &Arc<Self>, group: &str, vm: &str) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.refuse_if_busy(&rep.item_key(), &[])?;
        self.admit::<CommitStep>(&rep.item_key(), &[], |r, _, _| {
            if r.state != ItemState::FailedOver {
                return Err(refuse(
                    r,
                    "commit",
                    "commit follows a finished `ferry failover run`",
                ));
            }
            Ok(())
        })
        .await
    }

    /// `ferry reprotect`: replicate the failed-over VM back to where the item came from.
    pub async fn reprotect(self: &Arc<Self>, group: &str, vm: &str) -> Result<Job> {
        let rep = self.replication(group, vm)?;
        self.refuse_if_busy(&rep.item_key(), &[])?;
        self.admit::<ReprotectStep>(&rep.item_key(), &[], |r, _, _| {
            if r.state != ItemState::FailoverCommitted {
                return Err(refuse(
                    r,
                    "reprotect",
                    "reprotect follows `ferry failover commit`",
                ));
            }
            // The reprotect turns the target around (the test's network is named in the old
            // target group) and deletes the replica the test VM was restored from.
            if let Some(t) = &r.test_failover {
                return Err(ControlError::conflict(format!(
                    "cannot reprotect {}: its test failover (VM {}) is still up; clean it up \
                     first with `ferry failover test-cleanup {}`",
                    r.item_key(),
                    t.vm,
                    r.item_key()
                )));
            }
            r.state = r.state.move_to(ItemState::Reprotecting)?;
            Ok(())
        })
        .await
    }

    /// Resolve a selector to a point; `latest` first has the agent cut a point now and waits
    /// until the processor has applied everything up to it.
    pub(crate) async fn select_point(&self, rep: &Replication, sel: &str) -> Result<PointRecord> {
        let layout = self.layout(rep)?;
        let selector = PointSelector::parse(sel)
            .ok_or_else(|| ControlError::invalid(format!("invalid recovery point {sel:?}")))?;
        if selector != PointSelector::Latest {
            return self.resolve_selector(rep, &selector).await;
        }
        let agent = self.source_host(rep)?;
        if !agent.reachable() {
            return self.point_after_site_loss(rep).await;
        }
        let marked = agent
            .mark(&rep.source_key(), rep.generation, MarkWire::CrashConsistent)
            .await;
        let marker = match marked {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(item = %rep.item_key(), error = %e, "the source agent cannot cut a point; using the latest processed point");
                return Ok(points::resolve(&layout, &PointSelector::Latest).await?);
            }
        };
        let start = Instant::now();
        loop {
            if let Some(p) = points::list(&layout)
                .await?
                .into_iter()
                .find(|p| p.seq >= marker)
            {
                return Ok(p);
            }
            if start.elapsed() > DRAIN_DEADLINE {
                return Err(ControlError::Internal(format!(
                    "the processor did not reach the point cut at sequence {} within {} s; see `ferry replication show {}`, or fail over to latest-processed",
                    marker.0,
                    DRAIN_DEADLINE.as_secs(),
                    rep.item_key()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
