//! Connection limits, global and per source IP, for one listener. The counts live for the
//! process (keyed by listener address), so a reload neither resets nor doubles them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

/// The live connection counts of one listener.
#[derive(Debug, Default)]
pub struct Limiter {
    counts: Mutex<Counts>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerSource,
}

/// Held while a counted connection lives.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

impl Limiter {
    /// The process-wide limiter of the listener at `addr`.
    pub fn for_listener(addr: SocketAddr) -> Arc<Limiter> {
        static ALL: OnceLock<Mutex<HashMap<SocketAddr, Arc<Limiter>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(addr).or_default().clone()
    }

    /// Counts a new connection from `source`, unless a limit (0 = none) is reached.
    pub fn acquire(
        self: &Arc<Self>,
        source: IpAddr,
        max_total: u32,
        max_per_source: u32,
    ) -> Result<Slot, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if max_total > 0 && c.total >= max_total {
            return Err(Refused::Total);
        }
        let n = c.by_source.get(&source).copied().unwrap_or(0);
        if max_per_source > 0 && n >= max_per_source {
            return Err(Refused::PerSource);
        }
        c.total += 1;
        c.by_source.insert(source, n + 1);
        Ok(Slot {
            limiter: self.clone(),
            source,
        })
    }

    pub fn total(&self) -> u32 {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_source_limits() {
        let l = Arc::new(Limiter::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, 3, 2).unwrap();
        let _s2 = l.acquire(a, 3, 2).unwrap();
        assert_eq!(l.acquire(a, 3, 2).unwrap_err(), Refused::PerSource);
        let _s3 = l.acquire(b, 3, 2).unwrap();
        assert_eq!(l.acquire(b, 3, 2).unwrap_err(), Refused::Total);
        drop(s1);
        assert_eq!(l.total(), 2);
        assert!(l.acquire(a, 3, 2).is_ok(), "a slot freed is reusable");
        assert!(l.acquire(b, 0, 0).is_ok(), "0 means no limit");
    }

    #[test]
    fn limiters_are_per_listener_and_survive_lookups() {
        let x = Limiter::for_listener("127.0.0.1:1".parse().unwrap());
        let _s = x.acquire("10.0.0.1".parse().unwrap(), 0, 0).unwrap();
        let again = Limiter::for_listener("127.0.0.1:1".parse().unwrap());
        assert_eq!(again.total(), 1);
        assert_eq!(
            Limiter::for_listener("127.0.0.1:2".parse().unwrap()).total(),
            0
        );
    }
}
