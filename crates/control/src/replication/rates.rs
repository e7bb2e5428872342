//! What the monitor samples of each item once a second (bytes changed per disk, bytes shipped,
//! the ship buffer's fill): churn per disk, and whether replication keeps up with it. It also
//! stores the item's RPO in the database every 30 s, and at once when the item gains or loses
//! an RPO (it became protected, or stopped being): the RPO history, kept for 7 days.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::control::Control;
use crate::db::Kind;
use crate::model::{ItemState, Replication};

/// How often an item is sampled, and how far back rates look.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(30);
/// How often the RPO is stored, and for how long.
const RPO_EVERY: Duration = Duration::from_secs(30);
const RPO_KEEP: Duration = Duration::from_secs(7 * 86_400);
const MB: f64 = 1e6;

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    changed: Vec<u64>,
    shipped: u64,
    buffered: u64,
}

/// The samples of every item, newest last.
#[derive(Default)]
pub(crate) struct Rates {
    samples: HashMap<String, VecDeque<Sample>>,
    /// When each item's RPO was last stored, and whether it had one.
    rpo_stored: HashMap<String, (Instant, bool)>,
}

/// Churn and what the pipeline does with it, over the last 30 s.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct ChurnView {
    /// MB/s the VM changed, per disk and in all.
    pub per_disk_mb_per_second: Vec<f64>,
    pub mb_per_second: f64,
    /// MB/s of segments stored in the cache account.
    pub shipped_mb_per_second: f64,
    /// How fast the ship buffer fills (MB/s; negative: it drains).
    pub buffer_growth_mb_per_second: f64,
    /// Seconds the samples span (rates need two samples).
    pub window_seconds: f64,
}

impl Rates {
    fn add(&mut self, item: &str, s: Sample) {
        let q = self.samples.entry(item.to_string()).or_default();
        if q.back()
            .is_some_and(|b| s.at.duration_since(b.at) < SAMPLE_EVERY)
        {
            return;
        }
        // Counters restart with the agent's stream: start over.
        if q.back().is_some_and(|b| {
            b.shipped > s.shipped || b.changed.iter().zip(&s.changed).any(|(x, y)| x > y)
        }) {
            q.clear();
        }
        q.push_back(s);
        while q
            .front()
            .is_some_and(|f| q.back().unwrap().at.duration_since(f.at) > WINDOW)
        {
            q.pop_front();
        }
    }

    pub(crate) fn churn(&self, item: &str) -> Option<ChurnView> {
        let q = self.samples.get(item)?;
        let (first, last) = (q.front()?, q.back()?);
        let dt = last.at.duration_since(first.at).as_secs_f64();
        if dt < 1.0 {
            return None;
        }
        let rate = |a: u64, b: u64| (b as f64 - a as f64) / dt / MB;
        let per_disk: Vec<f64> = last
            .changed
            .iter()
            .enumerate()
            .map(|(i, &b)| rate(first.changed.get(i).copied().unwrap_or(0), b))
            .collect();
        Some(ChurnView {
            mb_per_second: per_disk.iter().sum(),
            per_disk_mb_per_second: per_disk,
            shipped_mb_per_second: rate(first.shipped, last.shipped),
            buffer_growth_mb_per_second: rate(first.buffered, last.buffered),
            window_seconds: dt,
        })
    }

    pub(crate) fn forget(&mut self, item: &str) {
        self.samples.remove(item);
        self.rpo_stored.remove(item);
    }
}

/// The "churn above capacity" health reason: the ship buffer has grown for the whole window,
/// by more than it can take for long, because the VM changes its disks faster than
/// replication ships.
pub(crate) fn above_capacity(c: &ChurnView, buffered: u64, limit: u64) -> Option<String> {
    let growth = c.buffer_growth_mb_per_second;
    if c.window_seconds < WINDOW.as_secs_f64() * 0.8 || growth < 1.0 || limit == 0 {
        return None;
    }
    let room = limit.saturating_sub(buffered) as f64 / MB;
    Some(format!(
        "churn {:.1} MB/s is above what replication keeps up with ({:.1} MB/s shipped): the \
         ship buffer grows {growth:.1} MB/s and is {:.0}% full; at this rate it overflows in \
         about {:.0} s, after which no point can be cut until a catch-up",
        c.mb_per_second,
        c.shipped_mb_per_second,
        buffered as f64 / limit as f64 * 100.0,
        room / growth
    ))
}

impl Control {
    /// Sample every replicating item; store the RPO of each every 30 s.
    pub(crate) fn sample_rates(&self) -> crate::error::Result<()> {
        let reps = self.db.list::<Replication>(Kind::Replication)?;
        let now = Instant::now();
        for rep in &reps {
            let item = rep.item_key();
            let status = self.source_status(rep);
            if let Some(s) = status {
                self.rates().add(
                    &item,
                    Sample {
                        at: now,
                        changed: s.stream.bytes_changed_per_disk.clone(),
                        shipped: s.stream.bytes_shipped,
                        buffered: s.stream.buffered_bytes,
                    },
                );
            }
            // An item has an RPO exactly while it is protected: the whole view is built only
            // when a sample is due, not on every tick.
            let has_rpo = rep.state == ItemState::Protected;
            let due = self
                .rates()
                .rpo_stored
                .get(&item)
                .is_none_or(|(t, had)| now.duration_since(*t) >= RPO_EVERY || *had != has_rpo);
            if due {
                let rpo = self.view(rep).rpo_seconds;
                let t = ferry_types::Timestamp::now().0 / 1_000_000_000;
                let keep = t - RPO_KEEP.as_secs() as i64;
                self.db.add_rpo_sample(&item, t, rpo, keep)?;
                self.rates().rpo_stored.insert(item, (now, has_rpo));
            }
        }
        Ok(())
    }

    pub(crate) fn rates(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.rates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, changed: u64, shipped: u64, buffered: u64) -> Sample {
        Sample {
            at,
            changed: vec![changed, changed / 2],
            shipped,
            buffered,
        }
    }

    #[test]
    fn churn_is_the_rate_over_the_window_and_restarts_with_the_counters() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        for i in 0..=40u64 {
            let at = t0 + Duration::from_secs(i);
            r.add("a", sample(at, i * 4_000_000, i * 1_000_000, i * 3_000_000));
        }
        let c = r.churn("a").unwrap();
        assert_eq!(c.window_seconds, 30.0);
        assert!((c.per_disk_mb_per_second[0] - 4.0).abs() < 1e-9, "{c:?}");
        assert!((c.per_disk_mb_per_second[1] - 2.0).abs() < 1e-9, "{c:?}");
        assert!((c.mb_per_second - 6.0).abs() < 1e-9);
        assert!((c.shipped_mb_per_second - 1.0).abs() < 1e-9);
        assert!((c.buffer_growth_mb_per_second - 3.0).abs() < 1e-9);
        let reason = above_capacity(&c, 1 << 30, 2 << 30).unwrap();
        assert!(
            reason.contains("50% full") && reason.contains("overflows"),
            "{reason}"
        );
        assert!(above_capacity(&c, 1 << 30, 0).is_none());

        // A sample less than a second after the last is ignored; a counter going back (the
        // agent restarted) starts the window over.
        r.add("a", sample(t0 + Duration::from_millis(40_500), 0, 0, 0));
        assert_eq!(r.churn("a").unwrap().window_seconds, 30.0);
        r.add("a", sample(t0 + Duration::from_secs(41), 0, 0, 0));
        assert!(r.churn("a").is_none());
    }

    #[test]
    fn a_draining_buffer_is_not_above_capacity() {
        let c = ChurnView {
            per_disk_mb_per_second: vec![50.0],
            mb_per_second: 50.0,
            shipped_mb_per_second: 80.0,
            buffer_growth_mb_per_second: -30.0,
            window_seconds: 30.0,
        };
        assert!(above_capacity(&c, 1 << 30, 2 << 30).is_none());
    }
}
