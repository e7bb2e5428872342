//! Named failpoints for crash and race tests.
//!
//! `FERRY_FAILPOINTS` in the environment arms them, as a comma-separated list of entries:
//!
//! - `NAME`: die on the spot (`abort`, as with `kill -9`) the first time `NAME` is reached;
//! - `NAME=abort-after:N`: die the `N`-th time (`N >= 1`), so a test can crash mid-stream;
//! - `NAME=delay:MS`: pause `MS` milliseconds every time;
//! - `NAME=error-after:N`: fail the `N`-th time with an injected I/O error (where the code
//!   has such a failure: `agent-log-append`, `agent-reserve`).
//!
//! An unarmed failpoint costs a lookup in an empty list. [`hit`] pauses the calling thread;
//! async code that must not block a runtime thread asks [`check`] what to do and sleeps its own
//! way (`ferry-control` does).
//!
//! The failpoints, in the order a write meets them, then the control plane's:
//!
//! | name | where | the moment |
//! |---|---|---|
//! | `agent-log-append` | `ferry-agent` stream log (`LogWriter::append`) | a record is being written to the local log (`error-after:N` writes half of it, then fails as a full disk does) |
//! | `agent-reserve` | `ferry-agent` stream (`reserve::ensure`) | the space reserve for a full disk is being made (`error-after:N` fails as a full disk does) |
//! | `agent-after-log-append` | `ferry-agent` stream (`append`, `record`) | a record is in the local log (synced if the write asked for it), the write not yet acknowledged (for a VM's write: not yet in the disk image either) |
//! | `agent-before-image-write` | `ferry-agent` disk (`Disk::change`) | a VM's write is recorded in the stream (log or dirty bitmap), the disk image not yet changed |
//! | `agent-before-segment-put` | `ferry-agent` shipper | a closed log is sealed as a segment, not yet stored |
//! | `agent-after-segment-put` | `ferry-agent` shipper | the segment is stored in the cache account; the stream state is not updated and the log not removed |
//! | `processor-after-journal` | `ferry-replica` processor | a verified segment is in the target's journal, nothing of it applied |
//! | `processor-after-apply` | `ferry-replica` processor | a segment is applied in memory (points at its markers published), the position not yet covered by a record |
//! | `processor-after-point` | `ferry-replica` processor | a recovery point or checkpoint record (a seed's too) is stored; the segments it covers are still in the cache |
//! | `agent-hydrate-batch` | `ferry-agent` hydration | a batch of a restored disk's blocks is fetched, not yet written to the image |
//! | `failover-after-select-point` | `ferry-control` failover | the point is chosen, the job's step not yet recorded |
//! | `failover-after-create-vm` | `ferry-control` failover | the target VM is materialised, the job's step not yet recorded |
//! | `materialise-after-vm-record` | `ferry-control` failover | the target VM's record is written, its disks not yet |
//! | `reprotect-after-turn` | `ferry-control` reprotect | the item is turned around (new stream), the new replica not yet seeded |
//! | `job-before-first-step` | `ferry-control` operations | a job is admitted (stored, its item recording it), not yet started |
//! | `reconcile-before-streams` | `ferry-control` start | every VM's disks are served (a replicated VM's writes held), no stream started yet |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The failpoints ferry's code has (the table above); naming another one warns on stderr.
pub const NAMES: &[&str] = &[
    "agent-log-append",
    "agent-reserve",
    "agent-after-log-append",
    "agent-before-image-write",
    "agent-before-segment-put",
    "agent-after-segment-put",
    "processor-after-journal",
    "processor-after-apply",
    "processor-after-point",
    "agent-hydrate-batch",
    "failover-after-select-point",
    "failover-after-create-vm",
    "materialise-after-vm-record",
    "reprotect-after-turn",
    "reconcile-before-streams",
    "job-before-first-step",
];

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// Abort on the `N`-th hit (`NAME` alone is `AbortAfter(1)`).
    AbortAfter(u64),
    /// Pause on every hit.
    Delay(Duration),
    /// Fail on the `N`-th hit.
    ErrorAfter(u64),
}

/// What the caller must do at this hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Abort,
    Delay(Duration),
    /// Fail as the code's own error would (injected fault).
    Error,
}

struct Armed {
    name: String,
    spec: Spec,
    hits: AtomicU64,
}

/// A set of armed failpoints, each counting its hits.
pub struct Failpoints(Vec<Armed>);

impl Failpoints {
    /// Parse `NAME[=abort-after:N|=delay:MS],...`.
    pub fn parse(list: &str) -> Result<Failpoints, String> {
        let mut armed = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, spec) = match entry.split_once('=') {
                None => (entry, Spec::AbortAfter(1)),
                Some((name, spec)) => (
                    name.trim(),
                    parse_spec(spec.trim()).map_err(|e| format!("failpoint {entry:?}: {e}"))?,
                ),
            };
            if name.is_empty() {
                return Err(format!("failpoint {entry:?}: no name"));
            }
            armed.push(Armed {
                name: name.to_string(),
                spec,
                hits: AtomicU64::new(0),
            });
        }
        Ok(Failpoints(armed))
    }

    /// The armed names that no code has (a typo in a test would otherwise wait for nothing).
    pub fn unknown(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|a| a.name.as_str())
            .filter(|n| !NAMES.contains(n))
            .collect()
    }

    /// Count a hit of `name` and say what to do (the first entry naming it decides).
    pub fn check(&self, name: &str) -> Action {
        let Some(a) = self.0.iter().find(|a| a.name == name) else {
            return Action::Continue;
        };
        match a.spec {
            Spec::Delay(d) => Action::Delay(d),
            Spec::AbortAfter(n) => {
                if a.hits.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    Action::Abort
                } else {
                    Action::Continue
                }
            }
            Spec::ErrorAfter(n) => {
                if a.hits.fetch_add(1, Ordering::SeqCst) + 1 == n {
                    Action::Error
                } else {
                    Action::Continue
                }
            }
        }
    }
}

fn parse_spec(spec: &str) -> Result<Spec, String> {
    if let Some(n) = spec.strip_prefix("abort-after:") {
        match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Spec::AbortAfter(n)),
            _ => Err(format!("abort-after needs a count of 1 or more, not {n:?}")),
        }
    } else if let Some(n) = spec.strip_prefix("error-after:") {
        match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Spec::ErrorAfter(n)),
            _ => Err(format!("error-after needs a count of 1 or more, not {n:?}")),
        }
    } else if let Some(ms) = spec.strip_prefix("delay:") {
        ms.parse::<u64>()
            .map(|ms| Spec::Delay(Duration::from_millis(ms)))
            .map_err(|_| format!("delay needs milliseconds, not {ms:?}"))
    } else {
        Err(format!(
            "unknown action {spec:?} (use abort-after:N, error-after:N or delay:MS)"
        ))
    }
}

/// The failpoints armed by `FERRY_FAILPOINTS`, read once. A list that does not parse arms
/// nothing and says why on stderr.
fn armed() -> &'static Failpoints {
    static ARMED: OnceLock<Failpoints> = OnceLock::new();
    ARMED.get_or_init(|| {
        let list = std::env::var("FERRY_FAILPOINTS").unwrap_or_default();
        match Failpoints::parse(&list) {
            Ok(f) => {
                for name in f.unknown() {
                    eprintln!("FERRY_FAILPOINTS: no failpoint is named {name:?}");
                }
                f
            }
            Err(e) => {
                eprintln!("FERRY_FAILPOINTS ignored: {e}");
                Failpoints(Vec::new())
            }
        }
    })
}

/// Count a hit of the failpoint `name` and say what to do; for callers that pause their own
/// way (async code). Call [`abort`] on [`Action::Abort`].
pub fn check(name: &str) -> Action {
    armed().check(name)
}

/// Stop the process at the failpoint `name`, as a crash would.
pub fn abort(name: &str) -> ! {
    eprintln!("failpoint {name}: stopping the process");
    std::process::abort()
}

/// Die or pause (this thread, off the async workers when it is one of them) here if the
/// failpoint `name` is armed.
pub fn hit(name: &str) {
    match check(name) {
        Action::Continue | Action::Error => {}
        Action::Abort => abort(name),
        Action::Delay(d) => crate::blocking::off_worker(|| std::thread::sleep(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_aborts_at_the_first_hit_only() {
        let f = Failpoints::parse("a").unwrap();
        assert_eq!(f.check("b"), Action::Continue);
        assert_eq!(f.check("a"), Action::Abort);
        assert_eq!(f.check("a"), Action::Continue);
    }

    #[test]
    fn abort_after_counts_hits_of_its_own_name() {
        let f = Failpoints::parse(" a=abort-after:3 , b=delay:25,").unwrap();
        assert_eq!(f.check("a"), Action::Continue);
        assert_eq!(f.check("b"), Action::Delay(Duration::from_millis(25)));
        assert_eq!(f.check("a"), Action::Continue);
        assert_eq!(f.check("a"), Action::Abort);
        assert_eq!(f.check("a"), Action::Continue);
        assert_eq!(f.check("b"), Action::Delay(Duration::from_millis(25)));
    }

    #[test]
    fn bad_lists_are_refused_and_unknown_names_reported() {
        assert!(Failpoints::parse("").unwrap().0.is_empty());
        for bad in [
            "a=abort-after:0",
            "a=abort-after:x",
            "a=delay:",
            "a=panic",
            "=delay:5",
        ] {
            assert!(Failpoints::parse(bad).is_err(), "{bad}");
        }
        let f = Failpoints::parse("agent-after-segment-put=abort-after:2,agent-after-sgment-put")
            .unwrap();
        assert_eq!(f.unknown(), vec!["agent-after-sgment-put"]);
    }
}
