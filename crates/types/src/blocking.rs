//! Blocking work (file I/O, fsync, SQLite) called from async code, without holding one of the
//! runtime's async workers meanwhile: those also serve the disks' NBD connections and the API.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Run `f`, which may block, handing the async worker that runs the caller's task to another
/// thread meanwhile (tokio's `block_in_place`), so the worker's other tasks go on. Outside a
/// multi-threaded runtime (a current-thread runtime in tests, a plain thread) `f` just runs.
pub fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_any_thread_and_runtime() {
        assert_eq!(off_worker(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { off_worker(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let on_worker = multi.spawn(async { off_worker(|| 3) });
        assert_eq!(multi.block_on(on_worker).unwrap(), 3);
        let on_blocking = multi.spawn_blocking(|| off_worker(|| 4));
        assert_eq!(multi.block_on(on_blocking).unwrap(), 4);
    }
}
