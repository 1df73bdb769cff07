//! Passive outlier ejection (beyond ALB, like Envoy's): a target whose last N exchanges all
//! failed (5xx or connection errors) is ejected for a while, as long as no more than a set share
//! of its group is ejected at once. Pure state; the caller passes the time.

use std::time::Duration;
use tokio::time::Instant;

/// Ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject a target.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    pub ejection_time: Duration,
    /// The most of a group that may be ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// One target's outlier state.
#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    failures: u32,
    ejected_until: Option<Instant>,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// Records one exchange. `ejected_in_group` and `group_size` decide whether the cap allows an
    /// ejection. Returns true when this call ejected the target.
    pub fn record(
        &mut self,
        failed: bool,
        now: Instant,
        policy: &OutlierPolicy,
        ejected_in_group: usize,
        group_size: usize,
    ) -> bool {
        if !failed {
            self.failures = 0;
            return false;
        }
        self.failures += 1;
        if self.failures < policy.consecutive_failures || self.is_ejected(now) {
            return false;
        }
        let cap = group_size * policy.max_ejection_percent as usize / 100;
        if ejected_in_group >= cap {
            return false;
        }
        self.failures = 0;
        self.ejected_until = Some(now + policy.ejection_time);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn five_failures_eject_for_thirty_seconds() {
        let p = OutlierPolicy::default();
        let mut s = OutlierState::default();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(!s.record(true, now, &p, 0, 4));
        }
        assert!(
            !s.record(false, now, &p, 0, 4),
            "a success resets the count"
        );
        for _ in 0..4 {
            assert!(!s.record(true, now, &p, 0, 4));
        }
        assert!(s.record(true, now, &p, 0, 4));
        assert!(s.is_ejected(now));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(s.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!s.is_ejected(Instant::now()), "back after 30 s");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_half_the_group_is_ejected() {
        let p = OutlierPolicy::default();
        let now = Instant::now();
        let mut s = OutlierState::default();
        for _ in 0..10 {
            // Two of four already out: the cap (50%) holds this one in.
            assert!(!s.record(true, now, &p, 2, 4));
        }
        assert!(!s.is_ejected(now));
        // Three targets: the cap is one, so with one out the next stays in.
        let mut u = OutlierState::default();
        for _ in 0..4 {
            u.record(true, now, &p, 1, 3);
        }
        assert!(!u.record(true, now, &p, 1, 3));
        let mut t = OutlierState::default();
        for _ in 0..4 {
            t.record(true, now, &p, 0, 3);
        }
        assert!(t.record(true, now, &p, 0, 3));
    }
}
