//! What the test knows of the item, and the check that the world is what its state implies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::requests::{list, replication};
use crate::support::*;
use crate::{DISKS, FAILED_OVER, ITEM};

/// The states an item can stay in, and none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Absent,
    Protected,
    FailedOver,
    Committed,
}

/// What the test knows of the item between rounds.
#[derive(Debug, Clone, Default)]
pub(crate) struct World {
    /// `replication show`; none when the item does not exist.
    pub(crate) rep: Option<Value>,
    /// Reprotected since it was enabled: the VM it came from and the one it failed over to
    /// both stay (the item's record names the first only while it is the source).
    pub(crate) turned: bool,
    /// VMs a disable kept (it deletes none of the item's own), until the test deletes them.
    pub(crate) kept: BTreeSet<String>,
}

impl World {
    /// The item as it is now, after `self`.
    pub(crate) fn next(&self, s: &Server) -> World {
        let rep = replication(s);
        let Some(r) = &rep else {
            let mut kept = self.expected_vms();
            if let Some(test) = self.test_vm() {
                kept.remove(&test);
            }
            return World {
                rep,
                turned: false,
                kept,
            };
        };
        World {
            turned: self.turned || r["source_vm"] != ITEM,
            rep,
            kept: self.kept.clone(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        let Some(rep) = &self.rep else {
            return Phase::Absent;
        };
        match rep["state"].as_str().unwrap() {
            "protected" => Phase::Protected,
            "failed-over" => Phase::FailedOver,
            "failover-committed" => Phase::Committed,
            other => panic!("the item is {other}, not a state it can stay in: {rep}"),
        }
    }

    pub(crate) fn field(&self, pointer: &str) -> Option<String> {
        self.rep
            .as_ref()
            .and_then(|r| r.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    pub(crate) fn source(&self) -> String {
        self.field("/source_vm").unwrap_or_else(|| ITEM.into())
    }

    pub(crate) fn failover_vm(&self) -> Option<String> {
        self.field("/failover/vm")
    }

    pub(crate) fn test_vm(&self) -> Option<String> {
        self.field("/test_failover/vm")
    }

    /// The VM a test failover would create: `-test` after the source's name, in the target
    /// group.
    pub(crate) fn test_vm_to_be(&self) -> String {
        let source = self.source();
        let name = source.split_once('/').unwrap().1;
        let group = self.field("/target/group").expect("a target group");
        format!("{group}/{name}-test")
    }

    /// The VMs the item's state implies (and the ones a disable kept).
    pub(crate) fn expected_vms(&self) -> BTreeSet<String> {
        let mut vms = self.kept.clone();
        vms.insert(ITEM.into());
        if self.rep.is_some() {
            vms.insert(self.source());
            vms.extend(self.failover_vm());
            vms.extend(self.test_vm());
            if self.turned {
                vms.insert(FAILED_OVER.into());
            }
        }
        vms
    }
}

/// Every file under `dir`, recursively (none when it does not exist).
pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The entries of a directory (none when it does not exist).
pub(crate) fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

/// `REGION/NAME` of every agent's stream directory.
pub(crate) fn stream_dirs(data: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (region, path) in entries(&data.join("regions")) {
        for (name, _) in entries(&path.join("agent/streams")) {
            out.insert(format!("{region}/{name}"));
        }
    }
    out
}

/// `replicas/ID` and `streams/ID` prefixes holding an object in any local account, with the
/// account (`REGION/GROUP/ACCOUNT`).
pub(crate) fn store_prefixes(data: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (region, r) in entries(&data.join("regions")) {
        for (group, g) in entries(&r.join("storage")) {
            for (account, a) in entries(&g) {
                for top in ["replicas", "streams"] {
                    for (id, p) in entries(&a.join(top)) {
                        if !files(&p).is_empty() {
                            out.insert((
                                format!("{region}/{group}/{account}"),
                                format!("{top}/{id}"),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

pub(crate) fn names(list: &[Value]) -> BTreeSet<String> {
    list.iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["group"].as_str().unwrap(),
                v["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// The world is what the item's state implies: no job runs; the VMs, their disk images, the
/// test networks, the stream directories and the store prefixes are the item's and no
/// more; a failed-over VM's disks equal the point the item records.
pub(crate) fn check_world(s: &Server, w: &World, dir: &Path, ctx: &str) {
    let running: Vec<Value> = list(s, "jobs")
        .into_iter()
        .filter(|j| j["state"] == "running")
        .collect();
    assert!(running.is_empty(), "{ctx}: jobs still run: {running:?}");
    check_vms(s, w, ctx);
    check_test_network(s, w, ctx);
    check_streams(s, w, ctx);
    // The server's own check agrees: nothing it made is unowned.
    let orphans = s.json(&["orphan", "list"]);
    assert_eq!(orphans, serde_json::json!([]), "{ctx}: orphans left behind");
    if matches!(w.phase(), Phase::FailedOver | Phase::Committed) {
        check_failed_over_disks(s, w, dir, ctx);
    }
}

/// The VMs are the ones the item implies, and the disk images on the hosts are theirs.
fn check_vms(s: &Server, w: &World, ctx: &str) {
    let vms = list(s, "vms");
    assert_eq!(
        names(&vms),
        w.expected_vms(),
        "{ctx}: the VMs, for {:?}",
        w.rep
    );
    let images: BTreeSet<PathBuf> = vms
        .iter()
        .flat_map(|v| v["disks"].as_array().unwrap().clone())
        .map(|d| PathBuf::from(d["image"].as_str().unwrap()))
        .collect();
    let on_disk: BTreeSet<PathBuf> = entries(&s.data.join("regions"))
        .into_iter()
        .flat_map(|(_, r)| files(&r.join("disks")))
        .collect();
    assert_eq!(on_disk, images, "{ctx}: the disk images are the VMs' own");
}

/// A `-test` network exists only while the item has a test failover: its own.
fn check_test_network(s: &Server, w: &World, ctx: &str) {
    let tests: BTreeSet<String> = names(&list(s, "networks"))
        .into_iter()
        .filter(|n| n.ends_with("-test"))
        .collect();
    let expected: BTreeSet<String> = w
        .field("/test_failover/network")
        .map(|n| format!("{}/{n}", w.field("/target/group").unwrap()))
        .into_iter()
        .collect();
    assert_eq!(tests, expected, "{ctx}: the test networks");
}

/// A stream directory exists only for the item's source, on its host, and the accounts hold
/// cache segments and replica objects only of the item's stream (a replica among them).
fn check_streams(s: &Server, w: &World, ctx: &str) {
    let streams = stream_dirs(&s.data);
    let prefixes = store_prefixes(&s.data);
    let Some(rep) = &w.rep else {
        assert!(
            streams.is_empty(),
            "{ctx}: stream directories left: {streams:?}"
        );
        assert!(
            prefixes.is_empty(),
            "{ctx}: cache or replica objects left: {prefixes:?}"
        );
        return;
    };
    let expected = format!(
        "{}/{}",
        rep["source_region"].as_str().unwrap(),
        w.source().replace('/', ".")
    );
    assert_eq!(
        streams,
        BTreeSet::from([expected]),
        "{ctx}: stream directories"
    );
    let stream = rep["stream"].as_str().expect("the item shows its stream");
    let others: Vec<_> = prefixes
        .iter()
        .filter(|(_, p)| !p.ends_with(stream))
        .collect();
    assert!(
        others.is_empty(),
        "{ctx}: objects of another stream than {stream}: {others:?}"
    );
    assert!(
        prefixes.iter().any(|(_, p)| p.starts_with("replicas/")),
        "{ctx}: the item has no replica"
    );
}

/// The failed-over VM, restored, holds the recovery point the item records, byte for byte.
fn check_failed_over_disks(s: &Server, w: &World, dir: &Path, ctx: &str) {
    let vm = w.failover_vm().expect("a failed-over item names its VM");
    let point = w.field("/failover/point/id").expect("the failover's point");
    assert!(
        s.json(&["vm", "show", &vm]).get("hydration").is_none(),
        "{ctx}: {vm} is still being restored"
    );
    for disk in 0..DISKS.len() {
        let (got, want) = (dir.join("vm.raw"), dir.join("point.raw"));
        read_disk(&s.disk_uri(&vm, disk), &got);
        s.export(ITEM, disk, &point, &want);
        assert!(
            same_image(&got, &want),
            "{ctx}: disk {disk} of {vm} differs from point {point}"
        );
    }
}
