//! The control plane's failpoints: [`ferry_types::failpoint`] (names, `FERRY_FAILPOINTS`
//! syntax) with pauses that yield to the runtime instead of blocking its thread.

use ferry_types::failpoint::{self, Action};

/// Die or pause here if the failpoint `name` is armed.
pub(crate) async fn hit(name: &str) {
    match failpoint::check(name) {
        Action::Continue | Action::Error => {}
        Action::Abort => failpoint::abort(name),
        Action::Delay(d) => tokio::time::sleep(d).await,
    }
}
