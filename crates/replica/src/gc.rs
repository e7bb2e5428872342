//! Garbage collection of chunks (packs) and map pages no record references any more, in two
//! phases with a grace period.
//!
//! Phase 1 (mark) lists every pack and page of the replica, takes away those referenced by a
//! recovery point, a checkpoint or the processor's in-memory state, and stores the rest as
//! candidates with the time (`replicas/<stream>/gc/pending.json`). The processor stops
//! deduplicating against candidate packs from then on. Phase 2 (sweep), once the grace period
//! has passed, computes the references again and deletes only candidates still unreferenced.
//! So an export, failover or test failover that loaded a point's record before the point was
//! pruned keeps every object it reads for at least the grace period, and nothing a new record
//! references is ever deleted.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ferry_format::Digest;
use ferry_format::point::PointRecord;
use ferry_storage::{Key, StoreError};
use ferry_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{ReplicaError, ReplicaLayout};
use crate::{points, tree};

/// Objects that must stay: `(disk, page digest)` and `(disk, pack id)`.
#[derive(Debug, Default, Clone)]
pub struct Referenced {
    pub pages: HashSet<(usize, Digest)>,
    pub packs: HashSet<(usize, u64)>,
}

/// What one collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Objects marked as candidates in this run.
    pub marked: usize,
    /// Objects deleted in this run (candidates of an earlier run, past the grace period).
    pub deleted: usize,
    /// Candidate packs now pending, which nothing may reference again.
    #[serde(skip)]
    pub pending_packs: BTreeSet<(usize, u64)>,
}

/// `gc/pending.json` (spec: docs/formats/gc-pending.md).
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    format: String,
    since: Timestamp,
    /// `disk<N>/packs/<id>.pack` or `disk<N>/pages/<digest>.page`, relative to the replica.
    objects: Vec<(usize, String)>,
}

/// Names the format and its version; a file without it is ignored (and marked again).
const PENDING_FORMAT: &str = "ferry-gc-pending/1";

fn pending_key(layout: &ReplicaLayout) -> Key {
    layout.gc_prefix().join("pending.json")
}

/// Run one collection step: sweep the pending candidates if their grace period has passed,
/// else leave them; with nothing pending, mark new candidates.
pub async fn collect(
    layout: &ReplicaLayout,
    in_memory: &Referenced,
    grace: Duration,
) -> Result<GcReport, ReplicaError> {
    let mut report = GcReport::default();
    let key = pending_key(layout);
    let pending: Option<Pending> = match layout.meta.get(&key).await {
        Ok(b) => serde_json::from_slice::<Pending>(&b)
            .ok()
            .filter(|p| p.format == PENDING_FORMAT),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(p) = &pending {
        let age = Timestamp::now().0 - p.since.0;
        if age < grace.as_nanos() as i64 {
            report.pending_packs = packs_of(&p.objects);
            return Ok(report);
        }
        let refs = referenced(layout, in_memory).await?;
        for (disk, name) in &p.objects {
            if is_referenced(&refs, *disk, name) {
                continue;
            }
            let k = layout.disk_prefix(*disk).concat(&Key::parse(name)?);
            match layout.disks[*disk].delete(&k).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => report.deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        match layout.meta.delete(&key).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let refs = referenced(layout, in_memory).await?;
    let mut objects = Vec::new();
    for disk in 0..layout.disks.len() {
        let prefix = layout.disk_prefix(disk);
        for o in layout.disks[disk].list(Some(&prefix)).await? {
            let Some(name) = o.key.strip_prefix(&prefix).map(str::to_string) else {
                continue;
            };
            if parse(&name).is_some() && !is_referenced(&refs, disk, &name) {
                objects.push((disk, name));
            }
        }
    }
    report.marked = objects.len();
    report.pending_packs = packs_of(&objects);
    if !objects.is_empty() {
        let p = Pending {
            format: PENDING_FORMAT.into(),
            since: Timestamp::now(),
            objects,
        };
        let body = serde_json::to_vec(&p)
            .map_err(|e| ReplicaError::Internal(format!("encode gc candidates: {e}")))?;
        layout.meta.put(&key, Bytes::from(body)).await?;
    }
    Ok(report)
}

enum Object {
    Pack(u64),
    Page(Digest),
}

fn parse(name: &str) -> Option<Object> {
    if let Some(id) = name
        .strip_prefix("packs/")
        .and_then(|n| n.strip_suffix(".pack"))
    {
        return u64::from_str_radix(id, 16).ok().map(Object::Pack);
    }
    let hex = name
        .strip_prefix("pages/")
        .and_then(|n| n.strip_suffix(".page"))?;
    Digest::from_hex(hex).map(Object::Page)
}

fn is_referenced(refs: &Referenced, disk: usize, name: &str) -> bool {
    match parse(name) {
        Some(Object::Pack(id)) => refs.packs.contains(&(disk, id)),
        Some(Object::Page(d)) => refs.pages.contains(&(disk, d)),
        None => true,
    }
}

fn packs_of(objects: &[(usize, String)]) -> BTreeSet<(usize, u64)> {
    objects
        .iter()
        .filter_map(|(d, n)| match parse(n) {
            Some(Object::Pack(id)) => Some((*d, id)),
            _ => None,
        })
        .collect()
}

/// Everything the replica's records and `in_memory` reference.
async fn referenced(
    layout: &ReplicaLayout,
    in_memory: &Referenced,
) -> Result<Referenced, ReplicaError> {
    let mut refs = in_memory.clone();
    let mut records: Vec<PointRecord> = points::list(layout).await?;
    records.extend(points::list_checkpoints(layout).await?);
    let mut seen: Vec<HashSet<Digest>> = vec![HashSet::new(); layout.disks.len()];
    for rec in &records {
        for (disk, dm) in rec.disks.iter().enumerate() {
            let Some(seen) = seen.get_mut(disk) else {
                return Err(ReplicaError::Internal(format!(
                    "record {} names disk {disk}, the replica has {}",
                    rec.object_name(),
                    layout.disks.len()
                )));
            };
            let packs = &mut refs.packs;
            tree::walk(layout, disk, dm, seen, |entries| {
                packs.extend(
                    entries
                        .iter()
                        .filter(|r| !r.is_zero())
                        .map(|r| (disk, r.pack)),
                );
            })
            .await?;
        }
    }
    for (disk, nodes) in seen.into_iter().enumerate() {
        refs.pages.extend(nodes.into_iter().map(|d| (disk, d)));
    }
    Ok(refs)
}
