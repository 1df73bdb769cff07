//! Counts live connections so shutdown can wait for them, bounded by a grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
}

/// Tracks live connections.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Inner>);

/// Held by a connection while it lives.
#[derive(Debug)]
pub struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    pub fn enter(&self) -> Guard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        Guard(self.0.clone())
    }

    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Waits until no connection is live, or `grace` passes. True when all finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.0.idle.notified();
            if self.live() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.live() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_connections_up_to_the_grace_period() {
        let t = Tracker::default();
        assert!(t.wait_idle(Duration::from_secs(1)).await);
        let g = t.enter();
        let t2 = t.clone();
        let h = tokio::spawn(async move { t2.wait_idle(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(g);
        assert!(h.await.unwrap());
        let _stuck = t.enter();
        let start = tokio::time::Instant::now();
        assert!(!t.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
