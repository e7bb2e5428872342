//! What an idle item costs: how a processor with no next segment in the cache account waits.
//!
//! A busy stream is looked for every `poll_interval` (a segment shipped is applied within
//! it). Once nothing has come for [`BUSY_FOR`], the pause doubles with every empty look, up to
//! `idle_poll_max`, so a thousand idle disks send a few hundred requests a second to the cache
//! account in all rather than ten thousand. The source says when it has shipped something
//! ([`Waker::shipped_through`], fed from the agent's reports): a waiting processor then looks
//! at once and goes back to the short pause, so an idle disk that starts writing again is not
//! held back by the long one.
//!
//! The gap check (a LIST) runs every [`GAP_CHECK_EVERY`] while a gap is suspected or the
//! source has shipped past the segment awaited, and every `gap_grace / 2` otherwise (a source
//! that went silent): a gap is declared within `gap_grace` and a few seconds of its first sight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_storage::retry::pause;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How long a stream with nothing new is still looked for every `poll_interval`.
pub(super) const BUSY_FOR: Duration = Duration::from_secs(2);

/// How often the cache is listed for a gap while one is suspected.
pub(super) const GAP_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Tells a processor what its source has shipped. Cheap to clone; every clone wakes the same
/// processor.
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    notify: Notify,
    /// The newest sequence the source has said it shipped, plus one (0: nothing said).
    shipped_end: AtomicU64,
}

impl Waker {
    /// The source has shipped every record through `seq`: a processor waiting for a segment
    /// at or before it looks for it now.
    pub fn shipped_through(&self, seq: u64) {
        let end = seq.saturating_add(1);
        if self.0.shipped_end.fetch_max(end, Ordering::AcqRel) < end {
            self.0.notify.notify_one();
        }
    }

    /// Look for the next segment now, whatever the pause (a failover wants all there is).
    pub fn look_now(&self) {
        self.0.notify.notify_one();
    }

    /// Whether the source has said it shipped a record at or after `seq`.
    pub(super) fn shipped_from(&self, seq: u64) -> bool {
        self.0.shipped_end.load(Ordering::Acquire) > seq
    }
}

/// The pause before the next look for a segment that is not there yet.
pub(super) struct IdlePoll {
    min: Duration,
    max: Duration,
    next: Duration,
    empty_since: Option<Instant>,
}

impl IdlePoll {
    pub(super) fn new(min: Duration, max: Duration) -> IdlePoll {
        IdlePoll {
            min,
            max: max.max(min),
            next: min,
            empty_since: None,
        }
    }

    /// A segment came (or is known to be coming): look again soon.
    pub(super) fn busy(&mut self) {
        self.next = self.min;
        self.empty_since = None;
    }

    /// The pause after an empty look.
    pub(super) fn empty(&mut self) -> Duration {
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        if since.elapsed() < BUSY_FOR {
            return self.min;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Wait `d`, or less when the source ships something or the processor is to stop.
    pub(super) async fn wait(d: Duration, waker: &Waker, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = pause(shutdown, d) => {}
            _ = waker.0.notify.notified() => {}
        }
    }
}

/// How long after the last gap check the next one is due.
pub(super) fn gap_check_every(suspected: bool, gap_grace: Duration) -> Duration {
    if suspected {
        GAP_CHECK_EVERY
    } else {
        (gap_grace / 2).max(GAP_CHECK_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pause_stays_short_while_busy_then_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut p = IdlePoll::new(min, max);
        assert_eq!(p.empty(), min);
        tokio::time::advance(BUSY_FOR).await;
        let pauses: Vec<_> = (0..9).map(|_| p.empty()).collect();
        let ms: Vec<u128> = pauses.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        p.busy();
        assert_eq!(p.empty(), min);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shipped_record_ends_the_wait_and_an_old_one_does_not() {
        let w = Waker::default();
        let (_tx, mut rx) = watch::channel(false);
        w.shipped_through(10);
        assert!(w.shipped_from(10));
        assert!(!w.shipped_from(11));
        let t = tokio::time::Instant::now();
        // The permit of the first report ends this wait at once.
        IdlePoll::wait(Duration::from_secs(60), &w, &mut rx).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // A report of what was already said wakes nobody.
        w.shipped_through(7);
        IdlePoll::wait(Duration::from_secs(60), &w, &mut rx).await;
        assert_eq!(t.elapsed(), Duration::from_secs(60));
        let w2 = w.clone();
        let wake = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w2.shipped_through(11);
        });
        IdlePoll::wait(Duration::from_secs(60), &w, &mut rx).await;
        assert_eq!(t.elapsed(), Duration::from_secs(61));
        wake.await.unwrap();
    }

    #[test]
    fn the_gap_check_is_slow_only_while_nothing_is_suspected() {
        let grace = Duration::from_secs(30);
        assert_eq!(gap_check_every(true, grace), GAP_CHECK_EVERY);
        assert_eq!(gap_check_every(false, grace), Duration::from_secs(15));
        assert_eq!(
            gap_check_every(false, Duration::from_secs(1)),
            GAP_CHECK_EVERY
        );
    }
}
