//! A retry budget (after linkerd's and Envoy's): retries may add at most a fixed share of the
//! requests, plus a small floor per second, so a failing target group cannot be hammered by
//! retries. Pure state; the caller passes the time.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Tokens are counted in thousandths of a retry, so shares add up exactly.
const ONE: u64 = 1000;
/// Share of requests that may be retried: 20%.
pub const PER_REQUEST: u64 = ONE / 5;
/// Retries always allowed per second, however few the requests.
pub const MIN_PER_SECOND: u64 = 10;
/// The most saved up, so a long quiet spell does not allow a retry storm.
const MAX_TOKENS: u64 = 100 * ONE;

#[derive(Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

/// A target group's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    bucket: Mutex<Bucket>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            bucket: Mutex::new(Bucket {
                tokens: MIN_PER_SECOND * ONE,
                last: Instant::now(),
            }),
        }
    }
}

impl RetryBudget {
    fn refill(b: &mut Bucket, now: Instant) {
        let dt = now
            .saturating_duration_since(b.last)
            .min(Duration::from_secs(10));
        b.tokens = (b.tokens + dt.as_millis() as u64 * MIN_PER_SECOND).min(MAX_TOKENS);
        b.last = now;
    }

    /// Every first attempt earns a fraction of a retry.
    pub fn deposit(&self) {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.tokens = (b.tokens + PER_REQUEST).min(MAX_TOKENS);
    }

    /// Takes one retry from the budget if there is one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        Self::refill(&mut b, now);
        if b.tokens >= ONE {
            b.tokens -= ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_share_and_floor() {
        let b = RetryBudget::default();
        let now = Instant::now();
        // The floor: 10 retries at once, then none.
        for _ in 0..10 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
        // 100 requests earn 20 retries.
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..50).filter(|_| b.withdraw(now)).count();
        assert_eq!(allowed, 20);
        // A second later the floor has refilled 10.
        tokio::time::advance(Duration::from_secs(1)).await;
        let allowed = (0..50).filter(|_| b.withdraw(Instant::now())).count();
        assert_eq!(allowed, 10);
    }
}
