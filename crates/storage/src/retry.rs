//! [`retry`]: the one retry loop for storage calls.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        let first = p.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let late = p.backoff(30);
        assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
    }
}
