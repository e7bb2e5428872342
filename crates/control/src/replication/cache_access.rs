//! What a joined host's agent is given to reach an item's cache account: for an Azure account
//! whose key the server holds, a shared access signature (read and create on the container,
//! for [`SAS_LIFETIME`]) instead of credentials of its own. The server's own agent uses the
//! account as the server opens it.
//!
//! Renewal: the monitor sends the item's start-stream again (idempotent: a running stream goes
//! on, its cache store is renewed with the new SAS) once the SAS the host holds is
//! [`RENEW_AFTER`] old, and a host whose link opens gets a fresh one with its streams' start.
//! A host cut off for longer than the lifetime stops shipping (its segments wait in the ship
//! buffer) until its link is back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_agent::command::CacheWire;

use crate::control::Control;
use crate::error::Result;
use crate::model::Replication;

use super::tasks::{ItemTasks, Work};

/// How long a SAS sent to a host is valid.
pub(crate) const SAS_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How old a host's SAS may grow before the monitor sends a fresh one: half its lifetime, so
/// a renewal that fails has hours to be tried again.
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(12 * 3600);

impl Control {
    /// The cache account of an item as its source agent opens it: the account's URL, the
    /// item's own prefix and, for a joined host (`sign`) on an Azure account whose key the
    /// server holds, a SAS (none otherwise: the host uses its own credentials).
    pub(crate) fn item_cache_wire(&self, rep: &Replication, sign: bool) -> Result<CacheWire> {
        let (group, account) = rep
            .target
            .cache_storage
            .split_once('/')
            .unwrap_or((&rep.group, &rep.target.cache_storage));
        let acct = self.storage(group, account)?;
        let sas = if sign {
            ferry_storage::container_sas(&acct.url, SystemTime::now(), SAS_LIFETIME)?
        } else {
            None
        };
        Ok(CacheWire {
            prefix: format!("streams/{}", rep.stream),
            url: acct.url,
            sas: sas.map(|s| s.token().to_owned()),
        })
    }

    /// Note that the source host of `item` was sent a SAS minted at `at` (none: no SAS, there
    /// is nothing to renew).
    pub(crate) fn sas_sent(&self, item: &str, at: Option<Instant>) {
        let mut sent = self.sas_sent.lock().unwrap_or_else(|p| p.into_inner());
        match at {
            Some(at) => sent.insert(item.to_owned(), at),
            None => sent.remove(item),
        };
    }

    fn sas_due(&self, item: &str, renew_after: Duration) -> bool {
        self.sas_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(item)
            .is_some_and(|at| at.elapsed() >= renew_after)
    }
}

/// Send a fresh SAS to the source host of every running item whose SAS is due.
pub(crate) fn renew_due(
    control: &Arc<Control>,
    reps: &[Replication],
    tasks: &mut ItemTasks,
    renew_after: Duration,
) {
    for rep in reps {
        let item = rep.item_key();
        if !rep.state.is_replicating() || !control.sas_due(&item, renew_after) {
            continue;
        }
        let (control, rep) = (control.clone(), rep.clone());
        tasks.start(Work::Renew, &item, async move {
            control.ensure_running(&rep).await
        });
    }
}
