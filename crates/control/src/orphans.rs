//! Nothing leaks: what ferry made and no record owns any more.
//!
//! Every replica, cache stream, stream directory, VM and test network that an operation makes
//! is owned by a record: an item's `stream` owns its replica and cache prefixes
//! (`replicas/<stream>/`, `streams/<stream>/` in any account), an item's source VM owns its
//! stream directory on the agent, an item owns the VMs and networks its failovers and test
//! failovers made (`owner`) while it names them, and a VM's record owns its disk and runtime
//! directories. Records are written before what they own is made, so the check lists the
//! world first and reads the records after: whatever it finds was made before the records it
//! reads, and so is owned by one of them unless it is an orphan.
//!
//! The check runs every `orphan_check` (and on `GET /v1/orphans`). It first plans: what it
//! finds is remembered with the time it was first seen, and reported once as an
//! `orphan-found` event. Then, on schedule only, it deletes what has stayed an orphan for
//! `orphan_grace`, and says so (`orphan-deleted`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_storage::{DynStore, Key};
use ferry_types::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use crate::control::Control;
use crate::db::Kind;
use crate::error::Result;
use crate::model::{Network, Replication, Severity, StorageAccount, Vm};
use crate::operations::role_of;
use crate::resources::key;

/// What kind of thing an orphan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OrphanKind {
    /// A replica's objects (`replicas/<stream>/`) in a target account.
    Replica,
    /// A stream's segments (`streams/<stream>/`) in a cache account.
    CacheStream,
    /// A stream's directory (logs, state) on a source host.
    StreamDirectory,
    /// A VM a failover or test failover made.
    Vm,
    /// A network a test failover made.
    Network,
    /// Disk images or runtime files of a VM that has no record.
    VmDirectory,
}

/// Something no record owns.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Orphan {
    pub kind: OrphanKind,
    /// What and where: a prefix in an account, a path, a VM or network `GROUP/NAME`.
    pub name: String,
    /// Why nothing owns it.
    pub reason: String,
    pub first_seen: Timestamp,
    /// From when the scheduled check deletes it.
    pub delete_after: Timestamp,
}

/// How to delete a found orphan.
enum Delete {
    Prefix(DynStore, Key),
    Dir(PathBuf),
    Vm(Box<Vm>),
    Network(String),
}

struct Found {
    kind: OrphanKind,
    name: String,
    reason: String,
    delete: Delete,
}

/// What the world holds, listed before the records are read.
#[derive(Default)]
struct World {
    /// Per account: the streams with a replica, and with cache segments.
    accounts: Vec<(DynStore, Vec<String>, Vec<String>)>,
    /// Per region: its agent's stream directories.
    stream_dirs: Vec<(String, Vec<PathBuf>)>,
    /// `(GROUP/NAME, directory)` of every VM disk and runtime directory.
    vm_dirs: Vec<(String, PathBuf)>,
}

impl Control {
    /// Find what no record owns, remember since when, and (with `delete`) delete what has
    /// been an orphan for longer than the grace period.
    pub async fn check_orphans(&self, delete: bool) -> Result<Vec<Orphan>> {
        let world = self.list_world().await?;
        let found = self.orphans_in(world)?;
        let names: Vec<String> = found.iter().map(|f| f.name.clone()).collect();
        let now = Timestamp::now();
        let first = self.db.orphans_seen(&names, now.0 / 1_000_000_000)?;
        let grace = self.cfg.orphan_grace.as_secs() as i64;
        let mut out = Vec::new();
        for (f, (first, new)) in found.into_iter().zip(first) {
            let first_seen = Timestamp(first * 1_000_000_000);
            let delete_after = Timestamp((first + grace) * 1_000_000_000);
            if new {
                self.event(
                    Severity::Warning,
                    "orphan-found",
                    &f.name,
                    format!(
                        "{}: {}; it is deleted from {delete_after} unless a record claims it",
                        f.name, f.reason
                    ),
                );
            }
            if delete && delete_after <= now {
                match self.delete_orphan(f.delete).await {
                    Ok(()) => self.event(
                        Severity::Info,
                        "orphan-deleted",
                        &f.name,
                        format!(
                            "deleted {} ({}), an orphan since {first_seen}",
                            f.name, f.reason
                        ),
                    ),
                    Err(e) => {
                        tracing::warn!(orphan = %f.name, error = %e, "delete an orphan; will retry")
                    }
                }
                continue;
            }
            out.push(Orphan {
                kind: f.kind,
                name: f.name,
                reason: f.reason,
                first_seen,
                delete_after,
            });
        }
        Ok(out)
    }

    /// List the accounts' stream prefixes and the hosts' directories.
    async fn list_world(&self) -> Result<World> {
        let mut world = World::default();
        for acct in self.db.list::<StorageAccount>(Kind::Storage)? {
            let store = match self.stores.get(&acct.url) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(account = %acct.url, error = %e, "open an account to look for orphans");
                    continue;
                }
            };
            let children = |p: &'static str| {
                let store = store.clone();
                async move { store.list_children(&Key::parse(p)?).await }
            };
            match tokio::try_join!(children("replicas"), children("streams")) {
                Ok((replicas, streams)) => world.accounts.push((store, replicas, streams)),
                Err(e) => {
                    tracing::warn!(account = %acct.url, error = %e, "list an account's streams to look for orphans")
                }
            }
        }
        let data = self.cfg.data.clone();
        let regions = self.cfg.regions.clone();
        let (dirs, vms) = tokio::task::spawn_blocking(move || {
            let mut dirs = Vec::new();
            let mut vms = Vec::new();
            for r in regions {
                let root = data.join("regions").join(&r);
                dirs.push((r, subdirs(&root.join("agent").join("streams"))));
                for top in ["disks", "vms"] {
                    for group in subdirs(&root.join(top)) {
                        for vm in subdirs(&group) {
                            let name = key(&file_name(&group), &file_name(&vm));
                            vms.push((name, vm));
                        }
                    }
                }
            }
            (dirs, vms)
        })
        .await
        .map_err(|e| crate::error::ControlError::Internal(format!("list directories: {e}")))?;
        world.stream_dirs = dirs;
        world.vm_dirs = vms;
        Ok(world)
    }

    /// What in `world` no record owns, with the records read now.
    fn orphans_in(&self, world: World) -> Result<Vec<Found>> {
        let items: Vec<Replication> = self.db.list(Kind::Replication)?;
        let vms: Vec<Vm> = self.db.list(Kind::Vm)?;
        let networks: Vec<Network> = self.db.list(Kind::Network)?;
        let streams: HashSet<String> = items.iter().map(|r| r.stream.to_string()).collect();
        // A job may have made a VM or a network it records as it ends.
        let mut busy = HashSet::new();
        for r in &items {
            if self.busy_with(&r.item_key())?.is_some() {
                busy.insert(r.item_key());
            }
        }
        let mut found = Vec::new();
        for (store, replicas, caches) in world.accounts {
            let sets = [
                (OrphanKind::Replica, "replicas", replicas),
                (OrphanKind::CacheStream, "streams", caches),
            ];
            for (kind, top, ids) in sets {
                for id in ids.into_iter().filter(|id| !streams.contains(id)) {
                    let prefix = Key::from_segments([top, id.as_str()])?;
                    found.push(Found {
                        kind,
                        name: format!("{prefix} in {}", store.url()),
                        reason: format!("no replicated item has stream {id}"),
                        delete: Delete::Prefix(store.clone(), prefix),
                    });
                }
            }
        }
        for (region, dirs) in world.stream_dirs {
            for dir in dirs {
                let name = file_name(&dir);
                let owned = items
                    .iter()
                    .any(|r| r.source_region == region && r.source_key().replace('/', ".") == name);
                if !owned {
                    found.push(Found {
                        kind: OrphanKind::StreamDirectory,
                        name: dir.display().to_string(),
                        reason: format!("no replicated item replicates VM {name} from {region}"),
                        delete: Delete::Dir(dir),
                    });
                }
            }
        }
        for (vm, dir) in world.vm_dirs {
            if !vms.iter().any(|v| key(&v.group, &v.name) == vm) {
                found.push(Found {
                    kind: OrphanKind::VmDirectory,
                    name: dir.display().to_string(),
                    reason: format!("VM {vm} does not exist"),
                    delete: Delete::Dir(dir),
                });
            }
        }
        for vm in vms {
            let Some(owner) = vm.owner.clone().filter(|o| !busy.contains(o)) else {
                continue;
            };
            let vm_key = key(&vm.group, &vm.name);
            let item = items.iter().find(|r| r.item_key() == owner);
            if item.is_none_or(|r| role_of(r, &vm_key).is_none()) {
                found.push(Found {
                    kind: OrphanKind::Vm,
                    name: vm_key.clone(),
                    reason: format!("made for item {owner}, which no longer names it"),
                    delete: Delete::Vm(Box::new(vm)),
                });
            }
        }
        for net in networks {
            let Some(owner) = net.owner.clone().filter(|o| !busy.contains(o)) else {
                continue;
            };
            let net_key = key(&net.group, &net.name);
            let named = items.iter().any(|r| {
                r.item_key() == owner
                    && r.test_failover
                        .as_ref()
                        .is_some_and(|t| key(&r.target.group, &t.network) == net_key)
            });
            if !named {
                found.push(Found {
                    kind: OrphanKind::Network,
                    name: net_key.clone(),
                    reason: format!("made for a test failover of {owner}, which is over"),
                    delete: Delete::Network(net_key),
                });
            }
        }
        Ok(found)
    }

    async fn delete_orphan(&self, delete: Delete) -> Result<()> {
        match delete {
            Delete::Prefix(store, prefix) => {
                for o in store.list(Some(&prefix)).await? {
                    store.delete(&o.key).await?;
                }
            }
            Delete::Dir(dir) => {
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
                .map_err(|e| crate::error::ControlError::Internal(e.to_string()))?
                .map_err(|e| crate::error::ControlError::Internal(format!("remove: {e}")))?;
            }
            Delete::Vm(vm) => self.remove_vm(&vm).await?,
            Delete::Network(net) => {
                self.db.delete(Kind::Network, &net)?;
            }
        }
        Ok(())
    }
}

/// Check for orphans every `every` until shutdown, deleting those past their grace period.
pub(crate) async fn run(
    control: Arc<Control>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Sent, or the sender is gone: either way the server stops.
            _ = shutdown.changed() => return,
        }
        if let Err(e) = control.check_orphans(true).await {
            tracing::warn!(error = %e, "look for what no record owns");
        }
    }
}

/// The directories right under `dir` (none when it does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::model::{ItemState, TestFailover, VmState};

    fn vm(vm_key: &str, owner: Option<&str>) -> Vm {
        let (group, name) = vm_key.split_once('/').unwrap();
        Vm {
            group: group.into(),
            name: name.into(),
            region: "west".into(),
            state: VmState::Stopped,
            compute: "external".into(),
            boot: Default::default(),
            app_consistency: Default::default(),
            availability_set: None,
            disks: Vec::new(),
            nics: Vec::new(),
            created_by: owner.map(|_| "failover".into()),
            owner: owner.map(Into::into),
            host: None,
            created: Timestamp::now(),
            hydration: None,
        }
    }

    fn network(net_key: &str, owner: Option<&str>) -> Network {
        let (group, name) = net_key.split_once('/').unwrap();
        Network {
            group: group.into(),
            name: name.into(),
            region: "west".into(),
            address_space: "10.1.0.0/16".into(),
            subnets: Vec::new(),
            owner: owner.map(Into::into),
        }
    }

    /// An item in a test failover, and around it one of each thing it owns and one of each
    /// thing nothing owns: exactly the latter are orphans.
    #[tokio::test]
    async fn what_no_record_names_is_an_orphan_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::start_without_regions(dir.path()).await.unwrap();
        let mut item = Replication::sample("rg1/vm1", ItemState::Protected);
        item.test_failover = Some(TestFailover {
            vm: "rg1-asr/vm1-test".into(),
            network: "net1-asr-test".into(),
            created_network: true,
            point: None,
            job: 1,
            started: Timestamp::now(),
            cleaned_up: None,
            outcome: None,
        });
        control.db.put(Kind::Replication, "rg1/vm1", &item).unwrap();
        for (k, owner) in [
            ("rg1/vm1", None),
            ("rg1-asr/vm1-test", Some("rg1/vm1")),
            ("rg1-asr/vm1", Some("rg1/vm1")),
            ("rg1-asr/ghost", Some("rg9/gone")),
        ] {
            control.db.put(Kind::Vm, k, &vm(k, owner)).unwrap();
        }
        for (k, owner) in [
            ("rg1-asr/net1-asr", None),
            ("rg1-asr/net1-asr-test", Some("rg1/vm1")),
            ("rg1-asr/old-test", Some("rg1/vm1")),
        ] {
            control
                .db
                .put(Kind::Network, k, &network(k, owner))
                .unwrap();
        }
        let store = ferry_storage::open("memory://").unwrap();
        let other = ferry_types::StreamId::random().to_string();
        for k in [
            format!("replicas/{}/points/1", item.stream),
            format!("streams/{}/1.seg", item.stream),
            format!("replicas/{other}/points/1"),
            format!("streams/{other}/1.seg"),
        ] {
            store
                .put(&Key::parse(&k).unwrap(), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let children = |p: &str| {
            let store = store.clone();
            let p = p.to_string();
            async move { store.list_children(&Key::parse(&p).unwrap()).await.unwrap() }
        };
        let world = World {
            accounts: vec![(
                store.clone(),
                children("replicas").await,
                children("streams").await,
            )],
            stream_dirs: vec![
                (
                    "east".into(),
                    vec!["/a/rg1.vm1".into(), "/a/rg1.other".into()],
                ),
                ("west".into(), vec!["/b/rg1.vm1".into()]),
            ],
            vm_dirs: vec![
                ("rg1-asr/vm1-test".into(), "/d/rg1-asr/vm1-test".into()),
                ("rg1-asr/nobody".into(), "/d/rg1-asr/nobody".into()),
            ],
        };

        let mut found: Vec<(OrphanKind, String)> = control
            .orphans_in(world)
            .unwrap()
            .into_iter()
            .map(|f| (f.kind, f.name))
            .collect();
        found.sort_by(|a, b| a.1.cmp(&b.1));
        let mut want = vec![
            (OrphanKind::StreamDirectory, "/a/rg1.other".to_string()),
            (OrphanKind::StreamDirectory, "/b/rg1.vm1".to_string()),
            (OrphanKind::VmDirectory, "/d/rg1-asr/nobody".to_string()),
            (
                OrphanKind::Replica,
                format!("replicas/{other} in {}", store.url()),
            ),
            (
                OrphanKind::CacheStream,
                format!("streams/{other} in {}", store.url()),
            ),
            (OrphanKind::Vm, "rg1-asr/ghost".to_string()),
            (OrphanKind::Vm, "rg1-asr/vm1".to_string()),
            (OrphanKind::Network, "rg1-asr/old-test".to_string()),
        ];
        want.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(found, want);
        control.shutdown().await;
    }

    /// A stray replica is reported once, then deleted after the grace period; the item's own
    /// replica stays.
    #[tokio::test]
    async fn an_orphan_is_reported_then_deleted_after_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::start(crate::ControlConfig {
            regions: Vec::new(),
            orphan_grace: Duration::from_secs(2),
            ..crate::ControlConfig::embedded(dir.path().to_path_buf())
        })
        .await
        .unwrap();
        let root = dir.path().join("account");
        let url = format!("file://{}", root.display());
        let acct = StorageAccount {
            group: "rg1".into(),
            name: "sa1".into(),
            region: "west".into(),
            url: url.clone(),
        };
        control.db.put(Kind::Storage, "rg1/sa1", &acct).unwrap();
        let item = Replication::sample("rg1/vm1", ItemState::Protected);
        control.db.put(Kind::Replication, "rg1/vm1", &item).unwrap();
        let store = control.stores.get(&url).unwrap();
        let stray = ferry_types::StreamId::random();
        for s in [item.stream, stray] {
            let k = Key::parse(&format!("replicas/{s}/disk0/packs/1")).unwrap();
            store.put(&k, Bytes::from_static(b"x")).await.unwrap();
        }

        let listed = control.check_orphans(true).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            listed[0].name,
            format!("replicas/{stray} in {}", store.url())
        );
        // Within the grace period nothing is deleted, and the event says once what was found.
        let again = control.check_orphans(true).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].first_seen, listed[0].first_seen);
        let found = control
            .events(&crate::EventFilter {
                kind: Some("orphan-found".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");

        // Past it, the scheduled check deletes it (a listing alone does not).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while Timestamp::now() <= listed[0].delete_after {
            assert!(
                std::time::Instant::now() < deadline,
                "the grace period ends"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(control.check_orphans(false).await.unwrap().len(), 1);
        assert!(control.check_orphans(true).await.unwrap().is_empty());
        let left: Vec<String> = store
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect();
        assert_eq!(left, [format!("replicas/{}/disk0/packs/1", item.stream)]);
        assert!(control.check_orphans(true).await.unwrap().is_empty());
        control.shutdown().await;
    }
}
