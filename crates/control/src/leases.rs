//! Leases on the per-item work (processing, deleting what is applied, garbage collection,
//! pruning): several servers on one database share the items, each item worked on by the one
//! server that holds its lease (`item:GROUP/VM` in the `leases` table). A lease runs
//! [`ITEM_TTL`] by the database's clock and its holder renews all of its leases in one
//! statement every [`RENEW_EVERY`]; one that is not renewed in time (the server was killed or
//! stopped) passes to the next server that asks, one generation on. The processor asks its
//! fence before every publication and deletion, and a holder whose lease passed (or runs less
//! than [`MARGIN`] longer) is refused: a server stopped past its lease and woken again cannot
//! publish a point, delete a segment or collect garbage.
//!
//! Each server process is a holder of its own ([`Leases::server`]: the server's id, kept in
//! `DATA/server-id`, and a part new at every start). A restarted server takes the leases of
//! its earlier runs back at once, one generation on, rather than wait for them to lapse: the
//! process that held them is gone, or, were it still running on the same data directory, it is
//! fenced from then on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_replica::{Fence, ReplicaError};

use crate::control::Control;
use crate::db::LeaseRow;
use crate::error::Result;

/// How long an item's lease runs after it is taken or renewed.
pub(crate) const ITEM_TTL: Duration = Duration::from_secs(15);
/// How often a server renews its leases.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A holder publishes or deletes only while its lease runs at least this much longer.
pub(crate) const MARGIN: Duration = Duration::from_secs(5);

/// A lease as the API shows it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct LeaseView {
    /// What it is on: `item:GROUP/VM`.
    pub name: String,
    /// The server process that holds it.
    pub holder: String,
    /// Grows each time the lease passes to a new holder.
    pub generation: i64,
    /// When it ends unless renewed (by the database's clock).
    pub expires: ferry_types::Timestamp,
    /// Whether the server that answers holds it.
    pub this_server: bool,
}

/// This server's leases.
pub(crate) struct Leases {
    /// This process, as a lease holder.
    pub server: String,
    /// The item leases held, by item (`GROUP/VM`).
    held: Mutex<HashMap<String, LeaseRow>>,
    last_renewal: Mutex<Option<Instant>>,
}

impl Leases {
    /// The leases of a run of the server whose id is `id`.
    pub(crate) fn new(id: &str) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Leases {
            server: format!("{id}.{}", &run[..8]),
            held: Mutex::new(HashMap::new()),
            last_renewal: Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaseRow>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The id of the server on `data`: read from `DATA/server-id`, or made (random, mode 0600).
pub(crate) fn server_id(data: &std::path::Path) -> Result<String> {
    let path = data.join("server-id");
    crate::api::load_or_create_private(&path, || {
        format!(
            "server-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    })
    .map_err(|e| crate::error::ControlError::Internal(format!("write {}: {e}", path.display())))
}

/// The server on the database whose own agents serve the VMs placed on no joined host: the
/// first server that started on it keeps that claim for good (a lease that never lapses,
/// held by the server's id, not by one run). None when it is `server_id` itself, and always
/// with the embedded database, which serves one server only.
pub(crate) fn embedded_owner(
    db: &crate::db::Db,
    database: &crate::db::Database,
    server_id: &str,
) -> Result<Option<String>> {
    const FOREVER_MS: i64 = 100 * 365 * 86_400_000;
    if matches!(database, crate::db::Database::Embedded) {
        return Ok(None);
    }
    if db
        .acquire_lease("embedded-hosts", server_id, FOREVER_MS)?
        .is_some()
    {
        return Ok(None);
    }
    let owner = db
        .leases()?
        .into_iter()
        .find(|l| l.name == "embedded-hosts")
        .map(|l| l.holder)
        .unwrap_or_default();
    tracing::info!(%owner, "another server's own agents serve the VMs placed on no joined host; this server serves joined hosts only");
    Ok(Some(owner))
}

fn lease_name(item: &str) -> String {
    format!("item:{item}")
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Control {
    /// Take the lease on `item`'s work, or keep it: false when another server holds it.
    pub(crate) fn take_item_lease(&self, item: &str) -> Result<bool> {
        let taken =
            self.db
                .acquire_lease(&lease_name(item), &self.leases.server, millis(ITEM_TTL))?;
        let mut held = self.leases.held();
        match taken {
            Some(lease) => {
                if held
                    .get(item)
                    .is_none_or(|l| l.generation != lease.generation)
                {
                    tracing::info!(%item, server = %self.leases.server, generation = lease.generation, "took the item's lease");
                }
                held.insert(item.to_string(), lease);
                Ok(true)
            }
            None => {
                held.remove(item);
                Ok(false)
            }
        }
    }

    /// Give the lease on `item` up (its work stopped here): another server may take it now.
    pub(crate) fn release_item_lease(&self, item: &str) {
        let lease = self.leases.held().remove(item);
        if let Some(lease) = lease
            && let Err(e) = self.db.release_lease(&lease)
        {
            tracing::warn!(%item, error = %e, "give up the item's lease; it lapses by itself");
        }
    }

    /// The fence of `item`'s processor: whether this server still holds the lease it took,
    /// for [`MARGIN`] more at least.
    pub(crate) fn item_fence(self: &Arc<Self>, item: &str) -> Fence {
        let control: Weak<Control> = Arc::downgrade(self);
        let item = item.to_string();
        Arc::new(move || {
            let Some(c) = control.upgrade() else {
                return Err(ReplicaError::Fenced("the server is stopping".into()));
            };
            let Some(lease) = c.leases.held().get(&item).cloned() else {
                return Err(ReplicaError::Fenced(format!(
                    "this server ({}) no longer holds the lease of item {item}",
                    c.leases.server
                )));
            };
            match c.db.lease_holds(&lease, millis(MARGIN)) {
                Ok(true) => Ok(()),
                Ok(false) => Err(ReplicaError::Fenced(format!(
                    "the lease of item {item} (generation {}) that this server ({}) took has \
                     passed or ends in less than {} s",
                    lease.generation,
                    c.leases.server,
                    MARGIN.as_secs()
                ))),
                Err(e) => Err(ReplicaError::Internal(format!(
                    "read the lease of item {item}: {e}"
                ))),
            }
        })
    }

    /// Renew this server's leases, at most every [`RENEW_EVERY`]. Returns the items whose
    /// lease was lost meanwhile (it lapsed, and may have passed to another server).
    pub(crate) fn renew_item_leases(&self) -> Result<Vec<String>> {
        {
            let mut last = self
                .leases
                .last_renewal
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < RENEW_EVERY) {
                return Ok(Vec::new());
            }
            *last = Some(Instant::now());
        }
        let renewed = self
            .db
            .renew_leases(&self.leases.server, millis(ITEM_TTL))?;
        let mut held = self.leases.held();
        let mut lost = Vec::new();
        held.retain(|item, lease| {
            match renewed
                .iter()
                .find(|r| r.name == lease.name && r.generation == lease.generation)
            {
                Some(r) => {
                    *lease = r.clone();
                    true
                }
                None => {
                    lost.push(item.clone());
                    false
                }
            }
        });
        Ok(lost)
    }

    /// Every lease on the database, for the API.
    pub fn lease_views(&self) -> Result<Vec<LeaseView>> {
        Ok(self
            .db
            .leases()?
            .into_iter()
            .map(|l| LeaseView {
                this_server: l.holder == self.leases.server,
                expires: ferry_types::Timestamp(l.expires_ms * 1_000_000),
                name: l.name,
                holder: l.holder,
                generation: l.generation,
            })
            .collect())
    }

    /// Whether this server holds the lease on `item`'s work (as it last knew).
    pub(crate) fn holds_item(&self, item: &str) -> bool {
        self.leases.held().contains_key(item)
    }

    /// End the leases of this server's earlier runs, so that this run takes their items at
    /// once.
    pub(crate) fn end_earlier_runs_leases(&self) -> Result<()> {
        let (id, _) = self
            .leases
            .server
            .rsplit_once('.')
            .expect("a holder is ID.RUN");
        let ended = self.db.end_leases_like(&format!("{id}.%"))?;
        if ended > 0 {
            tracing::info!(
                leases = ended,
                "ended the leases of this server's earlier runs"
            );
        }
        Ok(())
    }

    /// Give every lease up (a clean stop): the other servers take the items at once.
    pub(crate) fn release_all_leases(&self) {
        let items: Vec<String> = self.leases.held().keys().cloned().collect();
        for item in items {
            self.release_item_lease(&item);
        }
    }
}
