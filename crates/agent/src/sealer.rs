//! The sealer: closes the open log every `seal_interval` (or sooner when it is full or a
//! marker asks), and has the shipper send every closed log, oldest first.

use std::sync::Arc;

use ferry_storage::DynStore;
use tokio::sync::watch;

use crate::shipper;
use crate::stream::Stream;

/// Seal the open log now and ship everything pending (used by tests and by a drain).
pub async fn seal_and_ship(
    stream: &Arc<Stream>,
    cache: &DynStore,
) -> Result<(), crate::AgentError> {
    stream.rotate()?;
    shipper::ship_pending(stream, cache).await
}

/// Run until `shutdown` turns true. Failures are kept in the stream's status and retried on
/// the next tick; nothing is dropped.
pub async fn run(stream: Arc<Stream>, cache: DynStore, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(stream.config.seal_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stream.seal_now.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = stream.rotate() {
            tracing::error!(error = %e, "seal stream log");
            stream.set_error(Some(e.to_string()));
            continue;
        }
        if let Err(e) = shipper::ship_pending(&stream, &cache).await {
            tracing::warn!(error = %e, "ship segments to the cache account; will retry");
            stream.set_error(Some(format!("ship segments to the cache account: {e}")));
        }
    }
}
