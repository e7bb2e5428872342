//! The conformance suite every [`Store`](crate::Store) backend must pass — the executable form of
//! `CONTRACT.md`. Other crates call it on their own implementations or wrappers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! let store = ferry_storage::open("memory://").map_err(|e| e.to_string())?;
//! ferry_storage::conformance::run_all(store).await
//! # }
//! ```
//!
//! Every check works under its own fresh key prefix (`conformance-<unique>/<check>`), so runs
//! against a shared container or bucket never collide, and deletes what it wrote when it passes.
//! `run_all` runs every check and reports every failure, one line each.

mod listing;
mod reads;
mod writes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{DynStore, Key, StoreError};

pub use listing::{check_list, check_list_sequence_names};
pub use reads::{check_binary_and_large, check_get_range, check_head};
pub use writes::{check_delete, check_put, check_put_if_match, check_put_new, check_put_new_race};

/// What one check returns: `Err` holds a one-line description of the first violation.
pub type CheckResult = Result<(), String>;

type Check = for<'a> fn(&'a DynStore, &'a Key) -> futures::future::BoxFuture<'a, CheckResult>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|s, b| Box::pin($name(s, b))) as Check)),*]
    };
}

/// Run every check against `store`, each under a fresh prefix. Returns all failures joined.
pub async fn run_all(store: DynStore) -> CheckResult {
    let base = unique_prefix();
    let mut failures = Vec::new();
    let all = checks![
        check_put_new,
        check_put_new_race,
        check_put,
        check_put_if_match,
        check_get_range,
        check_head,
        check_list,
        check_list_sequence_names,
        check_delete,
        check_binary_and_large,
    ];
    for (name, check) in all {
        let prefix = base.join(name);
        match check(&store, &prefix).await {
            Ok(()) => cleanup(&store, &prefix).await,
            Err(e) => failures.push(format!("{name} on {}: {e}", store.url())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// A prefix no other run uses: `conformance-<time><pid><counter>`.
pub fn unique_prefix() -> Key {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Key::parse(&format!(
        "conformance-{nanos:x}-{:x}-{n}",
        std::process::id()
    ))
    .expect("generated prefix is a valid key")
}

async fn cleanup(store: &DynStore, prefix: &Key) {
    if let Ok(objects) = store.list(Some(prefix)).await {
        for o in objects {
            let _ = store.delete(&o.key).await;
        }
    }
}

/// `Err(msg)` unless `cond`.
pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CheckResult {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Turn an unexpected store error into a check failure.
pub(crate) fn op<T>(what: &str, r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error: {e} ({e:?})"))
}

/// Expect an error matching `pred`.
pub(crate) fn expect_err<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, StoreError>,
    expected: &str,
    pred: impl FnOnce(&StoreError) -> bool,
) -> CheckResult {
    match r {
        Err(e) if pred(&e) => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {expected}, got error {e} ({e:?})"
        )),
        Ok(v) => Err(format!("{what}: expected {expected}, got Ok({v:?})")),
    }
}
