//! [`retry`]: the one retry loop for storage calls; [`Backoff`] and [`pause`]: the pauses of
//! the loops that run until shutdown and try again after a failure (the agent's sealer, the
//! processor, the control plane's monitor).

use std::fmt::Display;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::sync::watch;

use crate::StoreError;

/// How often and how patiently [`retry`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles after each retry.
    pub initial_backoff: Duration,
    /// Cap of the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 200 ms doubling to at most 10 s (about 20 s in all).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` (`attempt` ≥ 1), with jitter: uniformly in
    /// `[b/2, b]` where `b` is the exponential backoff.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let b = exp.min(self.max_backoff);
        let half = b / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random_u64() % jitter_ns.max(1))
    }
}

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Run `f` until it succeeds, fails with a non-retryable error (returned at once), or
/// `policy.max_attempts` attempts failed (the last error is returned). Each retry is logged once
/// at warn level with `what`. No cancellation: the caller bounds the time through the policy.
pub async fn retry<T, F, Fut>(what: &str, policy: RetryPolicy, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < policy.max_attempts.max(1) => {
                let wait = policy.backoff(attempt);
                tracing::warn!(
                    what,
                    attempt,
                    max_attempts = policy.max_attempts,
                    wait_ms = wait.as_millis() as u64,
                    error = %e,
                    "storage call failed; retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pauses of a loop that tries again after each failure: growing (doubling, with jitter)
/// while the failures last, from the start again after a success. It also tells which failures
/// are worth a log line, so a lasting failure is logged once per change, not once per retry.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    last: Option<String>,
}

impl Backoff {
    /// Pauses from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            policy: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: initial,
                max_backoff: max.max(initial),
            },
            failures: 0,
            last: None,
        }
    }

    /// Record a failure. True when it is news (log it): the first of a run of failures, or
    /// one that reads differently from the one before, numbers aside (a message that only
    /// names another duration or count is the same failure).
    pub fn failed(&mut self, error: &impl Display) -> bool {
        self.failures = self.failures.saturating_add(1);
        let text: String = error
            .to_string()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let news = self.last.as_ref() != Some(&text);
        self.last = Some(text);
        news
    }

    /// Record a success: the pauses start over. True when it ends a run of failures (log
    /// the recovery).
    pub fn succeeded(&mut self) -> bool {
        self.last = None;
        std::mem::take(&mut self.failures) > 0
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The pause before the next attempt: none before a failure.
    pub fn delay(&self) -> Duration {
        if self.failures == 0 {
            Duration::ZERO
        } else {
            self.policy.backoff(self.failures)
        }
    }
}

/// True once the loop owning `shutdown` is to stop: it turned true, or its sender is gone (the
/// owner dropped it without a word, and nobody can ask any more).
pub fn stop_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Wait until [`stop_requested`].
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sleep for `d`, or less when the loop is to stop; true when it is ([`stop_requested`]).
pub async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => stop_requested(shutdown),
        _ = stopped(shutdown) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_failure_is_news_once_and_waits_longer() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(), Duration::ZERO);
        assert!(b.failed(&"unreachable after 3 retries in 412 ms"));
        let first = b.delay();
        assert!(
            !b.failed(&"unreachable after 3 retries in 380 ms"),
            "numbers aside"
        );
        assert!(!b.failed(&"unreachable after 3 retries in 401 ms"));
        assert!(b.delay() > first, "{:?} after {first:?}", b.delay());
        assert!(b.failed(&"forbidden"), "a different failure is news");
        for _ in 0..20 {
            b.failed(&"forbidden");
        }
        assert!(b.delay() <= Duration::from_secs(1));
        assert!(b.succeeded());
        assert!(!b.succeeded());
        assert_eq!(b.delay(), Duration::ZERO);
        assert!(b.failed(&"forbidden"), "news again after a success");
    }

    #[tokio::test]
    async fn a_dropped_sender_is_a_shutdown() {
        let (tx, mut rx) = watch::channel(false);
        assert!(!stop_requested(&rx));
        let started = std::time::Instant::now();
        assert!(!pause(&mut rx, Duration::from_millis(10)).await);
        drop(tx);
        assert!(stop_requested(&rx));
        assert!(pause(&mut rx, Duration::from_secs(60)).await);
        stopped(&mut rx).await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        let first = p.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let late = p.backoff(30);
        assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
    }
}
