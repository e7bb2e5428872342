//! Which recovery points to keep: the retention horizon and the thinning ladders, planned as a
//! pure function of the points and the clock before anything is deleted.
//!
//! A ladder is a list of rungs `(after, every)`: a point older than `after` is kept only if it
//! is the newest of its kind in its `every`-long slot (slots aligned to the epoch), for the
//! highest rung it has reached. The default for crash-consistent points is like Azure's: every
//! point for 2 h, then one per hour; app-consistent points have their own ladder (every point
//! for 2 h, then one per 4 h). The newest point, and the newest app-consistent one, are always
//! kept, whatever their age.

use std::collections::BTreeMap;

use ferry_format::point::PointKind;
use ferry_types::{Seq, Timestamp};
use serde::{Deserialize, Serialize};

/// One rung of a thinning ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Rung {
    /// Points older than this...
    pub after_seconds: u64,
    /// ...are kept one per slot of this length.
    pub every_seconds: u64,
}

/// How long and how densely points are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub retention_seconds: u64,
    pub crash_ladder: Vec<Rung>,
    pub app_ladder: Vec<Rung>,
}

pub fn default_crash_ladder() -> Vec<Rung> {
    vec![Rung {
        after_seconds: 2 * 3600,
        every_seconds: 3600,
    }]
}

pub fn default_app_ladder() -> Vec<Rung> {
    vec![Rung {
        after_seconds: 2 * 3600,
        every_seconds: 4 * 3600,
    }]
}

/// Check a ladder: rungs in increasing `after`, slots that grow, nothing zero.
pub fn check_ladder(ladder: &[Rung]) -> Result<(), String> {
    for r in ladder {
        if r.every_seconds == 0 {
            return Err("a thinning slot must be at least 1 s".into());
        }
    }
    for w in ladder.windows(2) {
        if w[1].after_seconds <= w[0].after_seconds || w[1].every_seconds < w[0].every_seconds {
            return Err(
                "thinning rungs must be in increasing age, each keeping no more than the one before"
                    .into(),
            );
        }
    }
    Ok(())
}

/// A point as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub seq: Seq,
    pub time: Timestamp,
    pub kind: PointKind,
}

/// The points to delete, oldest first.
pub fn plan(points: &[Candidate], now: Timestamp, policy: &Retention) -> Vec<Seq> {
    let newest = points.iter().max_by_key(|p| p.seq).map(|p| p.seq);
    let newest_app = points
        .iter()
        .filter(|p| p.kind == PointKind::AppConsistent)
        .max_by_key(|p| p.seq)
        .map(|p| p.seq);
    // (kind is app, rung index, slot) -> newest point in it
    let mut slots: BTreeMap<(bool, usize, i64), Candidate> = BTreeMap::new();
    let mut delete = Vec::new();
    for p in points {
        if Some(p.seq) == newest || Some(p.seq) == newest_app {
            continue;
        }
        let age = (now.0 - p.time.0).max(0) as u64 / 1_000_000_000;
        if age > policy.retention_seconds {
            delete.push(p.seq);
            continue;
        }
        let app = p.kind == PointKind::AppConsistent;
        let ladder = if app {
            &policy.app_ladder
        } else {
            &policy.crash_ladder
        };
        let Some((i, rung)) = ladder
            .iter()
            .enumerate()
            .rev()
            .find(|(_, r)| age >= r.after_seconds)
        else {
            continue;
        };
        let slot = p
            .time
            .0
            .div_euclid(rung.every_seconds as i64 * 1_000_000_000);
        match slots.get(&(app, i, slot)) {
            Some(kept) if kept.seq > p.seq => delete.push(p.seq),
            Some(kept) => {
                delete.push(kept.seq);
                slots.insert((app, i, slot), *p);
            }
            None => {
                slots.insert((app, i, slot), *p);
            }
        }
    }
    delete.sort();
    delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000_000;

    fn policy() -> Retention {
        Retention {
            retention_seconds: 24 * 3600,
            crash_ladder: vec![
                Rung {
                    after_seconds: 2 * 3600,
                    every_seconds: 3600,
                },
                Rung {
                    after_seconds: 12 * 3600,
                    every_seconds: 4 * 3600,
                },
            ],
            app_ladder: default_app_ladder(),
        }
    }

    fn points(spec: &[(i64, bool)], now: i64) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = spec
            .iter()
            .map(|&(age, app)| (now - age * S, app))
            .map(|(t, app)| Candidate {
                seq: Seq(0),
                time: Timestamp(t),
                kind: if app {
                    PointKind::AppConsistent
                } else {
                    PointKind::CrashConsistent
                },
            })
            .collect();
        v.sort_by_key(|p| p.time);
        for (i, p) in v.iter_mut().enumerate() {
            p.seq = Seq(i as u64 + 1);
        }
        v
    }

    #[test]
    fn keeps_recent_points_and_one_per_hour_after_two_hours() {
        let now = 100_000 * S;
        // Every 10 minutes for 5 hours.
        let spec: Vec<(i64, bool)> = (0..30).map(|i| (i * 600, false)).collect();
        let pts = points(&spec, now);
        let del = plan(&pts, Timestamp(now), &policy());
        let kept: Vec<&Candidate> = pts.iter().filter(|p| !del.contains(&p.seq)).collect();
        let young = kept.iter().filter(|p| now - p.time.0 < 7200 * S).count();
        assert_eq!(young, 12, "every point of the last 2 h is kept");
        let old: Vec<i64> = kept
            .iter()
            .filter(|p| now - p.time.0 >= 7200 * S)
            .map(|p| p.time.0.div_euclid(3600 * S))
            .collect();
        let mut slots = old.clone();
        slots.dedup();
        assert_eq!(old, slots, "one point per hour after 2 h");
        assert!(old.len() >= 3);
    }

    #[test]
    fn the_newest_point_survives_retention() {
        let now = 1_000_000 * S;
        let pts = points(&[(200_000, false), (300_000, true)], now);
        let del = plan(&pts, Timestamp(now), &policy());
        assert!(!del.contains(&pts[1].seq), "newest point deleted");
        assert!(del.is_empty(), "{del:?}");
        let pts = points(&[(200_000, false), (300_000, false)], now);
        assert_eq!(plan(&pts, Timestamp(now), &policy()), vec![pts[0].seq]);
    }

    #[test]
    fn ladders_are_checked() {
        assert!(check_ladder(&policy().crash_ladder).is_ok());
        let bad = [
            Rung {
                after_seconds: 10,
                every_seconds: 5,
            },
            Rung {
                after_seconds: 5,
                every_seconds: 10,
            },
        ];
        assert!(check_ladder(&bad).is_err());
    }

    proptest! {
        /// Whatever the points: the plan deletes only listed points, keeps the newest (and the
        /// newest app-consistent), deletes everything past retention but those, keeps every
        /// point younger than its ladder's first rung, and keeps exactly one point in every
        /// occupied slot of every rung.
        #[test]
        fn plans_keep_what_the_ladder_promises(
            spec in proptest::collection::vec((0i64..30 * 3600, any::<bool>()), 0..120),
        ) {
            let now = 10_000_000 * S;
            let pol = policy();
            let pts = points(&spec, now);
            let del = plan(&pts, Timestamp(now), &pol);
            let kept: Vec<&Candidate> = pts.iter().filter(|p| !del.contains(&p.seq)).collect();
            prop_assert!(del.iter().all(|d| pts.iter().any(|p| p.seq == *d)));
            if let Some(n) = pts.iter().max_by_key(|p| p.seq) {
                prop_assert!(!del.contains(&n.seq));
            }
            let newest_app = pts.iter().filter(|p| p.kind == PointKind::AppConsistent).max_by_key(|p| p.seq);
            if let Some(n) = newest_app {
                prop_assert!(!del.contains(&n.seq));
            }
            for p in &pts {
                let age = (now - p.time.0) / S;
                let app = p.kind == PointKind::AppConsistent;
                let ladder = if app { &pol.app_ladder } else { &pol.crash_ladder };
                let protected_newest = Some(p) == pts.iter().max_by_key(|q| q.seq)
                    || Some(p) == newest_app;
                if age as u64 > pol.retention_seconds && !protected_newest {
                    prop_assert!(del.contains(&p.seq), "past retention but kept");
                }
                if (age as u64) < ladder[0].after_seconds {
                    prop_assert!(!del.contains(&p.seq), "young point deleted");
                }
            }
            // Exactly one kept per occupied slot of each rung (among points within retention
            // that are not the protected newest ones).
            for (app, ladder) in [(false, &pol.crash_ladder), (true, &pol.app_ladder)] {
                for (i, rung) in ladder.iter().enumerate() {
                    let in_rung = |p: &Candidate| {
                        let age = ((now - p.time.0) / S) as u64;
                        (p.kind == PointKind::AppConsistent) == app
                            && age <= pol.retention_seconds
                            && age >= rung.after_seconds
                            && ladder.get(i + 1).is_none_or(|n| age < n.after_seconds)
                    };
                    let mut occupied: BTreeMap<i64, usize> = BTreeMap::new();
                    for p in pts.iter().filter(|p| in_rung(p)) {
                        occupied.entry(p.time.0.div_euclid(rung.every_seconds as i64 * S)).or_default();
                    }
                    for p in kept.iter().filter(|p| in_rung(p)) {
                        *occupied.entry(p.time.0.div_euclid(rung.every_seconds as i64 * S)).or_default() += 1;
                    }
                    for (slot, n) in occupied {
                        prop_assert!(n >= 1, "slot {slot} of rung {i} lost all its points");
                        prop_assert!(n <= 2, "slot {slot} of rung {i} kept {n}");
                    }
                }
            }
        }
    }
}
