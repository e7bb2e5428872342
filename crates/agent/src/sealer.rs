//! The sealer: closes the open log every `seal_interval` (or sooner when it is full or a
//! marker asks), and has the shipper send every closed log, oldest first.

use std::sync::Arc;

use ferry_storage::DynStore;
use ferry_storage::retry::{Backoff, pause, stopped};
use tokio::sync::watch;

use crate::shipper;
use crate::stream::Stream;

/// The longest pause between two attempts while sealing or shipping keeps failing, in seal
/// intervals (30 s by default).
const MAX_BACKOFF_INTERVALS: u32 = 30;

/// Seal the open log now and ship everything pending (used by tests and by a drain).
pub async fn seal_and_ship(
    stream: &Arc<Stream>,
    cache: &DynStore,
) -> Result<(), crate::AgentError> {
    stream.rotate()?;
    shipper::ship_pending(stream, cache).await
}

/// Run until `shutdown` turns true (or its sender is gone). Failures are kept in the stream's
/// status and tried again after a pause that grows while they last (logged once per change of
/// error); nothing is dropped. A shipment in flight at shutdown is left where it is, as a crash
/// would leave it: the next start finds what it stored.
pub async fn run(stream: Arc<Stream>, cache: DynStore, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(stream.config.seal_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interval = stream.config.seal_interval;
    let mut backoff = Backoff::new(interval, interval * MAX_BACKOFF_INTERVALS);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stream.seal_now.notified() => {}
            _ = stopped(&mut shutdown) => return,
        }
        let sealed = async {
            stream.rotate().map_err(|e| e.to_string())?;
            shipper::ship_pending(&stream, &cache)
                .await
                .map_err(|e| format!("ship segments to the cache account: {e}"))
        };
        let result = tokio::select! {
            r = sealed => r,
            _ = stopped(&mut shutdown) => return,
        };
        match result {
            Ok(()) => {
                if backoff.succeeded() {
                    tracing::info!(stream = %stream.id(), "sealing and shipping work again");
                }
            }
            Err(e) => {
                if backoff.failed(&e) {
                    tracing::warn!(stream = %stream.id(), error = %e, "seal and ship the stream's logs; will retry");
                }
                stream.set_error(Some(e));
                if pause(&mut shutdown, backoff.delay()).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ferry_format::segment::MarkerKind;
    use ferry_storage::fault::{FaultyStore, Op};
    use ferry_types::{Generation, StreamId};

    use super::*;
    use crate::stream::StreamConfig;

    #[tokio::test]
    async fn an_unreachable_cache_is_tried_less_and_less_and_a_dropped_sender_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = StreamConfig {
            seal_interval: Duration::from_millis(10),
            ..StreamConfig::default()
        };
        let stream = Stream::open(dir.path(), StreamId([7; 16]), Generation(1), config).unwrap();
        stream.mark(MarkerKind::CrashConsistent).unwrap();
        let cache = Arc::new(FaultyStore::new(ferry_storage::open("memory://").unwrap()));
        cache.set_offline(true);
        let (tx, rx) = watch::channel(false);
        let sealer = tokio::spawn(run(stream.clone(), cache.clone() as DynStore, rx));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One a tick (10 ms) would be about 100; doubling pauses make it a handful.
        let puts = cache.calls(Op::PutNew);
        assert!((2..=12).contains(&puts), "{puts} attempts in 1 s");
        assert!(stream.status().last_error.is_some());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(2), sealer)
            .await
            .expect("the sealer stops when its sender is gone")
            .unwrap();
    }
}
