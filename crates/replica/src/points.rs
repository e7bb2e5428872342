//! Listing, choosing and reading recovery points.

use ferry_format::point::{self, PointKind, PointRecord};
use ferry_storage::{Key, StoreError};
use ferry_types::{Seq, Timestamp};
use serde::Serialize;

use crate::{ReplicaError, ReplicaLayout};

/// A recovery point as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointInfo {
    pub id: String,
    pub time: Timestamp,
    pub kind: &'static str,
    pub seq: u64,
}

impl PointInfo {
    pub fn from_record(r: &PointRecord) -> Self {
        PointInfo {
            id: point_id(r.seq),
            time: r.time,
            kind: r.kind.as_str(),
            seq: r.seq.0,
        }
    }
}

/// The id users type for the point at `seq`.
pub fn point_id(seq: Seq) -> String {
    format!("{:016x}", seq.0)
}

/// Which point a user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSelector {
    /// The newest point (already processed).
    Latest,
    LatestAppConsistent,
    Id(Seq),
    /// The newest point at or before an instant.
    At(Timestamp),
}

impl PointSelector {
    /// Parse `latest`, `latest-processed`, `latest-app-consistent`, a point id or an RFC 3339 time.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "latest" | "latest-processed" => Some(Self::Latest),
            "latest-app-consistent" => Some(Self::LatestAppConsistent),
            _ if s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
                u64::from_str_radix(s, 16).ok().map(|v| Self::Id(Seq(v)))
            }
            _ => Timestamp::parse_rfc3339(s).map(Self::At),
        }
    }
}

async fn list_seqs(layout: &ReplicaLayout, prefix: &Key) -> Result<Vec<Seq>, ReplicaError> {
    let mut seqs: Vec<Seq> = layout
        .meta
        .list(Some(prefix))
        .await?
        .into_iter()
        .filter_map(|o| point::parse_object_name(o.key.file_name()))
        .collect();
    seqs.sort();
    Ok(seqs)
}

async fn read_record(layout: &ReplicaLayout, key: &Key) -> Result<PointRecord, ReplicaError> {
    let bytes = layout.meta.get(key).await?;
    PointRecord::decode(&bytes).map_err(ReplicaError::format(format!("recovery point {key}")))
}

/// Every published recovery point, oldest first.
pub async fn list(layout: &ReplicaLayout) -> Result<Vec<PointRecord>, ReplicaError> {
    let prefix = layout.points_prefix();
    let mut out = Vec::new();
    for seq in list_seqs(layout, &prefix).await? {
        let cached = layout
            .point_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seq)
            .cloned();
        let rec = match cached {
            Some(r) => r,
            None => {
                let r = read_record(layout, &prefix.join(&point::object_name(seq))).await?;
                layout
                    .point_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seq, r.clone());
                r
            }
        };
        out.push(rec);
    }
    Ok(out)
}

/// The newest published point, if any.
pub async fn latest_point(layout: &ReplicaLayout) -> Result<Option<PointInfo>, ReplicaError> {
    let prefix = layout.points_prefix();
    match list_seqs(layout, &prefix).await?.last() {
        Some(seq) => Ok(Some(PointInfo::from_record(
            &read_record(layout, &prefix.join(&point::object_name(*seq))).await?,
        ))),
        None => Ok(None),
    }
}

/// The newest app-consistent point among the newest `limit` points (none found there: none).
pub async fn latest_app_point(
    layout: &ReplicaLayout,
    limit: usize,
) -> Result<Option<PointInfo>, ReplicaError> {
    let prefix = layout.points_prefix();
    for seq in list_seqs(layout, &prefix).await?.iter().rev().take(limit) {
        let rec = read_record(layout, &prefix.join(&point::object_name(*seq))).await?;
        if rec.kind == ferry_format::point::PointKind::AppConsistent {
            return Ok(Some(PointInfo::from_record(&rec)));
        }
    }
    Ok(None)
}

/// The newest durable record, point or checkpoint: where processing resumes.
pub async fn latest_record(layout: &ReplicaLayout) -> Result<Option<PointRecord>, ReplicaError> {
    let points = layout.points_prefix();
    let checkpoints = layout.checkpoints_prefix();
    let p = list_seqs(layout, &points)
        .await?
        .last()
        .map(|s| (*s, points.clone()));
    let c = list_seqs(layout, &checkpoints)
        .await?
        .last()
        .map(|s| (*s, checkpoints.clone()));
    let newest = match (p, c) {
        // A checkpoint at a point's sequence is the newer record (a repair's fence writes one).
        (Some(a), Some(b)) => Some(if b.0 >= a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    match newest {
        Some((seq, prefix)) => Ok(Some(
            read_record(layout, &prefix.join(&point::object_name(seq))).await?,
        )),
        None => Ok(None),
    }
}

/// Find the point a selector names.
pub async fn resolve(
    layout: &ReplicaLayout,
    sel: &PointSelector,
) -> Result<PointRecord, ReplicaError> {
    let all = list(layout).await?;
    let found = match sel {
        PointSelector::Latest => all.last(),
        PointSelector::LatestAppConsistent => all
            .iter()
            .rev()
            .find(|p| p.kind == PointKind::AppConsistent),
        PointSelector::Id(seq) => all.iter().find(|p| p.seq == *seq),
        PointSelector::At(t) => all.iter().rev().find(|p| p.time <= *t),
    };
    match (found, sel) {
        (Some(p), _) => Ok(p.clone()),
        (None, PointSelector::Latest) => Err(ReplicaError::NoPoints),
        (None, PointSelector::Id(seq)) => Err(ReplicaError::UnknownPoint(point_id(*seq))),
        (None, PointSelector::LatestAppConsistent) => {
            Err(ReplicaError::UnknownPoint("latest-app-consistent".into()))
        }
        (None, PointSelector::At(t)) => {
            Err(ReplicaError::UnknownPoint(format!("at or before {t}")))
        }
    }
}

/// Delete checkpoints older than `keep` (best effort; they are only restart positions).
pub(crate) async fn prune_checkpoints(layout: &ReplicaLayout, keep: Seq) {
    let prefix = layout.checkpoints_prefix();
    let Ok(seqs) = list_seqs(layout, &prefix).await else {
        return;
    };
    for seq in seqs.into_iter().filter(|s| *s < keep) {
        let key = prefix.join(&point::object_name(seq));
        match layout.meta.delete(&key).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(%key, error = %e, "delete old checkpoint"),
        }
    }
}

/// Delete one recovery point's record (its chunks and pages are left for garbage collection).
pub async fn delete_point(layout: &ReplicaLayout, p: &PointRecord) -> Result<(), ReplicaError> {
    match layout
        .meta
        .delete(&layout.points_prefix().join(&p.object_name()))
        .await
    {
        Ok(()) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    layout
        .point_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p.seq);
    Ok(())
}

/// Delete journal segments that only hold records before `window_start`'s base point: the
/// newest point at or before that instant is where any replay inside the window starts.
/// Returns how many were removed.
pub async fn prune_journal(
    layout: &ReplicaLayout,
    window_start: Timestamp,
) -> Result<usize, ReplicaError> {
    let all = list(layout).await?;
    let Some(base) = all.iter().rev().find(|p| p.time <= window_start) else {
        return Ok(0);
    };
    let mut removed = 0;
    for o in layout.meta.list(Some(&layout.journal_prefix())).await? {
        let Some(first) = ferry_format::segment::parse_object_name(o.key.file_name()) else {
            continue;
        };
        if first < base.segment_first_seq {
            match layout.meta.delete(&o.key).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => removed += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Every stored checkpoint record, oldest first (processor restart positions).
pub async fn list_checkpoints(layout: &ReplicaLayout) -> Result<Vec<PointRecord>, ReplicaError> {
    let prefix = layout.checkpoints_prefix();
    let mut out = Vec::new();
    for seq in list_seqs(layout, &prefix).await? {
        match read_record(layout, &prefix.join(&point::object_name(seq))).await {
            Ok(r) => out.push(r),
            // Pruned between the listing and the read.
            Err(ReplicaError::Store(StoreError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
