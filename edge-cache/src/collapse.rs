//! Request collapsing: concurrent misses for one key make one origin request. The first caller
//! leads; the others wait (up to the lock timeout) for the leader's outcome. A response that
//! was not shareable (private, no-store, Set-Cookie, too big, or a failure) sends each waiter to
//! the origin itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What the leader's fetch produced for its waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: look it up again.
    Stored,
    /// Not shared: fetch for yourself.
    NotShared,
}

type Slot = watch::Receiver<Option<Outcome>>;

/// The in-flight fetches, by key.
#[derive(Debug, Default)]
pub struct Collapser {
    inflight: Mutex<HashMap<String, Slot>>,
}

/// The caller's role for one key.
#[derive(Debug)]
pub enum Ticket {
    Leader(Leader),
    Follower(Slot),
}

/// Held by the one caller that fetches. Dropping it without [`Leader::finish`] tells the
/// waiters `NotShared`.
#[derive(Debug)]
pub struct Leader {
    key: String,
    tx: watch::Sender<Option<Outcome>>,
    owner: Arc<Collapser>,
    done: bool,
}

impl Collapser {
    /// Joins the fetch for `key`, leading it if none is in flight.
    pub fn join(self: &Arc<Self>, key: &str) -> Ticket {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            if rx.borrow().is_none() {
                return Ticket::Follower(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_string(), rx);
        Ticket::Leader(Leader {
            key: key.to_string(),
            tx,
            owner: self.clone(),
            done: false,
        })
    }

    /// Fetches in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Leader {
    /// Publishes the outcome to the waiters.
    pub fn finish(mut self, outcome: Outcome) {
        self.publish(outcome);
        self.done = true;
    }

    fn publish(&self, outcome: Outcome) {
        {
            let mut map = self
                .owner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.remove(&self.key);
        }
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(outcome);
                true
            } else {
                false
            }
        });
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.publish(Outcome::NotShared);
        }
    }
}

/// Waits for the leader; a timeout or a vanished leader counts as `NotShared`.
pub async fn wait(mut rx: Slot, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.unwrap_or(Outcome::NotShared),
        _ => Outcome::NotShared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_leader_many_followers() {
        let c = Arc::new(Collapser::default());
        let Ticket::Leader(leader) = c.join("k") else {
            panic!("first caller leads")
        };
        let mut waiters = Vec::new();
        for _ in 0..5 {
            let Ticket::Follower(rx) = c.join("k") else {
                panic!("later callers follow")
            };
            waiters.push(tokio::spawn(wait(rx, Duration::from_secs(10))));
        }
        assert!(matches!(c.join("other"), Ticket::Leader(_)));
        leader.finish(Outcome::Stored);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Outcome::Stored);
        }
        assert!(
            matches!(c.join("k"), Ticket::Leader(_)),
            "the key is free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_releases_waiters_and_the_lock_times_out() {
        let c = Arc::new(Collapser::default());
        let leader = c.join("k");
        let Ticket::Follower(rx) = c.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(wait(rx, Duration::from_secs(10)).await, Outcome::NotShared);
        let _leader = c.join("k");
        let Ticket::Follower(rx) = c.join("k") else {
            panic!()
        };
        let start = tokio::time::Instant::now();
        assert_eq!(wait(rx, Duration::from_secs(10)).await, Outcome::NotShared);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
