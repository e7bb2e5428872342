//! The control plane's state and its lifecycle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::AgentHost;
use ferry_agent::executor::Executor;
use tokio::sync::watch;

use crate::db::Db;
use crate::error::{ControlError, Result};
use crate::replication::runtime::ItemRuntime;
use crate::stores::Stores;

/// How long the start of one item may hold the server's start (an unreachable account); the
/// monitor tries again later.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Everything local lives under here: state database, default storage accounts, agents.
    pub data: PathBuf,
    /// Where the state lives: `state.db` in `data` (SQLite) by default, or PostgreSQL.
    pub database: crate::db::Database,
    pub regions: Vec<String>,
    /// How agents cut write streams into segments (~1 s or ~8 MiB by default).
    pub stream: ferry_agent::stream::StreamConfig,
    /// How processors checkpoint, poll and collect garbage.
    pub processor: ferry_replica::ProcessorConfig,
    /// How often to look for what no record owns ([`crate::orphans`]), and how long it may
    /// stay an orphan before it is deleted.
    pub orphan_check: Duration,
    pub orphan_grace: Duration,
    /// How long events, and jobs after they end, are kept ([`crate::history`]).
    pub event_retention: Duration,
    pub job_retention: Duration,
    /// The group of each agent's NBD unix socket (mode 0660); default the process's group.
    pub nbd_socket_group: Option<u32>,
    /// The regions whose agent also serves NBD over TCP, only with TLS; by default none.
    pub nbd_tcp: std::collections::BTreeMap<String, ferry_agent::NbdTcp>,
    /// What requests may reach on the host: storage roots, import and scripts directories.
    pub confine: crate::confine::Confinement,
}

impl ControlConfig {
    /// The embedded default: regions `east` and `west` under `data`.
    pub fn embedded(data: PathBuf) -> Self {
        ControlConfig {
            regions: vec!["east".into(), "west".into()],
            stream: ferry_agent::stream::StreamConfig::default(),
            processor: ferry_replica::ProcessorConfig::default(),
            orphan_check: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(3600),
            event_retention: Duration::from_secs(30 * 86_400),
            job_retention: Duration::from_secs(7 * 86_400),
            nbd_socket_group: None,
            nbd_tcp: Default::default(),
            database: crate::db::Database::Embedded,
            confine: crate::confine::Confinement::under(&data),
            data,
        }
    }
}

/// The control plane.
pub struct Control {
    pub(crate) cfg: ControlConfig,
    pub(crate) db: Db,
    /// The server's own agent of each region: it serves the VMs placed on no joined host.
    pub(crate) embedded: HashMap<String, Arc<Executor>>,
    /// Hosts that joined, by name (those whose agent is not connected too).
    pub(crate) joined: Mutex<HashMap<String, Arc<crate::hosts::RemoteHost>>>,
    pub(crate) stores: Arc<Stores>,
    pub(crate) items: Mutex<HashMap<String, ItemRuntime>>,
    /// The leases this server holds on items' work ([`crate::leases`]).
    pub(crate) leases: crate::leases::Leases,
    /// The server whose own agents serve the VMs placed on no joined host, when it is not
    /// this one: the first server on the database keeps them ([`crate::leases`]).
    pub(crate) embedded_owner: Option<String>,
    /// Replica layouts by stream (they cache the immutable point records).
    pub(crate) layouts: Mutex<HashMap<ferry_types::StreamId, ferry_replica::ReplicaLayout>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The last app-consistent attempt of each item.
    pub(crate) app_attempts: Mutex<HashMap<String, crate::replication::app_consistent::Attempt>>,
    /// What the monitor last saw of each item, to record what changes as events.
    pub(crate) observed: Mutex<HashMap<String, crate::events::Observed>>,
    /// Each item's recent samples: churn and whether replication keeps up.
    pub(crate) rates: Mutex<crate::replication::rates::Rates>,
    /// One lock per VM, held while it changes ([`crate::operations`]).
    pub(crate) vm_locks: crate::operations::KeyLocks,
    /// One lock per item, held while its stream and processor start or stop.
    pub(crate) runtime_locks: crate::operations::KeyLocks,
    /// The sources of the disks joined hosts restore, while they do.
    pub(crate) restores: Mutex<
        HashMap<ferry_agent::restore::RestoreDisk, Arc<dyn ferry_agent::hydrate::BlockSource>>,
    >,
    /// The seeds joined hosts are sending disks for, by upload number.
    pub(crate) uploads: Mutex<HashMap<u64, crate::failover::Upload>>,
    /// When each item's joined source host was last sent a cache SAS.
    pub(crate) sas_sent: Mutex<HashMap<String, std::time::Instant>>,
}

impl Control {
    /// Open the state, start each region's agent, and bring the world in line with the state.
    pub async fn start(cfg: ControlConfig) -> Result<Arc<Control>> {
        std::fs::create_dir_all(&cfg.data).map_err(|e| {
            ControlError::Internal(format!("create data directory {}: {e}", cfg.data.display()))
        })?;
        // A scripts user that does not exist is found now, not at the first point.
        cfg.confine.script_identity()?;
        cfg.confine.create_dirs(&cfg.data)?;
        let db = Db::open(&cfg.database, &cfg.data)?;
        let mut embedded = HashMap::new();
        let stores = Arc::new(Stores::default());
        for r in &cfg.regions {
            let root = cfg.data.join("regions").join(r).join("agent");
            let access = ferry_agent::NbdAccess {
                socket_group: cfg.nbd_socket_group,
                tcp: cfg.nbd_tcp.get(r).cloned(),
            };
            let host = AgentHost::start_with(&root, &access).await?;
            let open = stores.clone();
            let open_store: ferry_agent::executor::OpenStore =
                // The server's own agent uses the account as the server opens it (its key).
                Arc::new(move |url: &str, _sas: Option<&str>| {
                    open.get(url).map_err(|e| e.to_string())
                });
            let exec = Executor::new(
                host,
                cfg.data.join("regions").join(r),
                true,
                open_store,
                None,
                env!("CARGO_PKG_VERSION").to_string(),
            );
            embedded.insert(r.clone(), Arc::new(exec));
            if let Some(gid) = cfg.nbd_socket_group {
                let_group_reach_socket(&cfg.data, &root, gid)?;
            }
        }
        let (shutdown, _) = watch::channel(false);
        let server_id = crate::leases::server_id(&cfg.data)?;
        let embedded_owner = crate::leases::embedded_owner(&db, &cfg.database, &server_id)?;
        let control = Arc::new(Control {
            cfg,
            db,
            embedded,
            joined: Mutex::new(HashMap::new()),
            stores,
            items: Mutex::new(HashMap::new()),
            leases: crate::leases::Leases::new(&server_id),
            embedded_owner,
            layouts: Mutex::new(HashMap::new()),
            shutdown,
            app_attempts: Mutex::new(HashMap::new()),
            rates: Mutex::new(Default::default()),
            observed: Mutex::new(HashMap::new()),
            vm_locks: Default::default(),
            runtime_locks: Default::default(),
            restores: Default::default(),
            uploads: Default::default(),
            sas_sent: Default::default(),
        });
        control.reconcile().await?;
        tokio::spawn(crate::replication::monitor::run(
            control.clone(),
            control.shutdown.subscribe(),
        ));
        tokio::spawn(crate::orphans::run(
            control.clone(),
            control.cfg.orphan_check,
            control.shutdown.subscribe(),
        ));
        Ok(control)
    }

    /// Make the running parts match the state: every VM served by its region's agent, every
    /// replicated item's stream and processor running, every unfinished job resumed.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        for vm in self.db.list::<crate::model::Vm>(crate::db::Kind::Vm)? {
            if vm.host.is_none() && self.embedded_owner.is_some() {
                // Another server's own agents serve it.
                continue;
            }
            if let Err(e) = self.attach_vm(&vm).await {
                tracing::error!(vm = %format!("{}/{}", vm.group, vm.name), error = %e, "serve the disks of a VM");
            }
        }
        // Served, a replicated VM's writes wait until its stream starts here.
        crate::failpoint::hit("reconcile-before-streams").await;
        if let Err(e) = self.end_earlier_runs_leases() {
            tracing::warn!(error = %e, "end the leases of this server's earlier runs; they lapse by themselves");
        }
        for rep in self
            .db
            .list::<crate::model::Replication>(crate::db::Kind::Replication)?
        {
            // A start may read the replica (an unreachable account: the monitor retries).
            let started = tokio::time::timeout(START_DEADLINE, self.ensure_running(&rep)).await;
            let failed = match started {
                Ok(result) => result.err(),
                Err(_) => Some(ControlError::Internal(format!(
                    "did not start within {} s",
                    START_DEADLINE.as_secs()
                ))),
            };
            if let Some(e) = failed {
                let item = format!("{}/{}", rep.group, rep.vm);
                tracing::error!(%item, error = %e, "start replication of an item; the monitor retries");
            }
        }
        self.reconcile_compute().await;
        crate::jobs::resume(self).await
    }

    /// Stop background work (processors, streams) so the process can exit.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let items: Vec<_> = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, item) in items {
            item.stop().await;
        }
        // Their items pass to the other servers on the database at once.
        self.release_all_leases();
        // Streams stop cleanly too, so a change to a disk while the server is down is seen at
        // the next start.
        for agent in self.embedded.values() {
            agent.host().stop_all(self.cfg.stream.start_hold).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// A control plane over the state in `data` with no regions (so no agents): enough for
    /// tests of the state and the jobs.
    #[cfg(test)]
    pub(crate) async fn start_without_regions(data: &std::path::Path) -> Result<Arc<Control>> {
        Control::start(ControlConfig {
            regions: Vec::new(),
            ..ControlConfig::embedded(data.to_path_buf())
        })
        .await
    }

    /// Where the state lives, for people: the SQLite file, or PostgreSQL's host, port and
    /// database (never its credentials).
    pub fn state_location(&self) -> String {
        self.db.location()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.cfg.data
    }

    /// A 404 for a region that does not exist.
    pub(crate) fn check_region(&self, region: &str) -> Result<()> {
        if self.cfg.regions.iter().any(|r| r == region) {
            return Ok(());
        }
        Err(ControlError::not_found(format!(
            "region {region} does not exist; see `ferry region list`"
        )))
    }

    /// The server's own agent of a region.
    pub(crate) fn embedded_host(&self, region: &str) -> Result<crate::hosts::Host> {
        self.check_region(region)?;
        if let Some(owner) = &self.embedded_owner {
            return Err(ControlError::Unavailable(format!(
                "the VMs placed on no joined host live on the own agents of server {owner}, the \
                 first on this database; this server ({}) serves joined hosts only",
                self.leases.server
            )));
        }
        let exec = self.embedded.get(region).ok_or_else(|| {
            ControlError::invalid(format!(
                "region {region} has no agent of the server's own; place the VM on a joined host"
            ))
        })?;
        Ok(crate::hosts::Host::Embedded(exec.clone()))
    }

    /// A joined host by name, known from its placement even before its agent connects.
    pub(crate) fn joined_host(&self, name: &str, region: &str) -> Arc<crate::hosts::RemoteHost> {
        self.joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(crate::hosts::RemoteHost::new(name, region)))
            .clone()
    }

    /// A joined host the server has heard of since it started.
    pub(crate) fn joined_host_if_known(&self, name: &str) -> Option<Arc<crate::hosts::RemoteHost>> {
        self.joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The agent that serves a VM: its joined host's, or its region's own.
    pub(crate) fn host_of(&self, vm: &crate::model::Vm) -> Result<crate::hosts::Host> {
        match &vm.host {
            Some(h) => Ok(crate::hosts::Host::Joined(self.joined_host(h, &vm.region))),
            None => self.embedded_host(&vm.region),
        }
    }
}

/// Let the members of group `gid` reach the NBD socket in `root` through the otherwise private
/// data directory: each directory from `data` down to `root` gets that group and mode 0710
/// (traverse only: the group can list none of them, and every file stays 0600).
fn let_group_reach_socket(data: &Path, root: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(below) = root.strip_prefix(data) else {
        return Ok(());
    };
    let mut dir = data.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for part in below.components() {
        dir.push(part);
        dirs.push(dir.clone());
    }
    for d in dirs {
        std::os::unix::fs::chown(&d, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o710)))
            .map_err(|e| {
                ControlError::Internal(format!(
                    "let group {gid} reach the NBD socket through {}: {e}",
                    d.display()
                ))
            })?;
    }
    Ok(())
}
