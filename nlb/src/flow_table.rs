//! The UDP flow table, pure: live flows keyed by client address, bounded in total and per
//! source IP, so a flood of (spoofed) sources cannot grow it past its caps.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Why a new flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("the listener's flow table is full")]
    Total,
    #[error("this source has its most flows")]
    PerSource,
}

impl Full {
    /// The `reason` label of the rejected-flow metric.
    pub fn label(self) -> &'static str {
        match self {
            Full::Total => "total",
            Full::PerSource => "per_source",
        }
    }
}

/// Flows by client address, with per-source counts.
#[derive(Debug)]
pub struct FlowTable<V> {
    flows: HashMap<SocketAddr, V>,
    per_source: HashMap<IpAddr, u32>,
    max: u32,
    max_per_source: u32,
}

impl<V> FlowTable<V> {
    pub fn new(max: u32, max_per_source: u32) -> FlowTable<V> {
        FlowTable {
            flows: HashMap::new(),
            per_source: HashMap::new(),
            max,
            max_per_source,
        }
    }

    /// New caps (a reload); flows over them live on until they end.
    pub fn set_limits(&mut self, max: u32, max_per_source: u32) {
        self.max = max;
        self.max_per_source = max_per_source;
    }

    pub fn get(&self, client: &SocketAddr) -> Option<&V> {
        self.flows.get(client)
    }

    /// Adds a flow for a client that has none, if the caps allow it.
    pub fn insert(&mut self, client: SocketAddr, v: V) -> Result<(), Full> {
        debug_assert!(!self.flows.contains_key(&client));
        if self.flows.len() >= self.max as usize {
            return Err(Full::Total);
        }
        let n = self.per_source.entry(client.ip()).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Full::PerSource);
        }
        *n += 1;
        self.flows.insert(client, v);
        Ok(())
    }

    /// Ends a client's flow.
    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        let v = self.flows.remove(client)?;
        if let Some(n) = self.per_source.get_mut(&client.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&client.ip());
            }
        }
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// How many sources have a flow.
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }

    /// Ends every flow, returning them.
    pub fn drain(&mut self) -> Vec<V> {
        self.per_source.clear();
        self.flows.drain().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_hold_in_total_and_per_source() {
        let mut t = FlowTable::new(3, 2);
        t.insert(a("10.0.0.1:1000"), 1).unwrap();
        t.insert(a("10.0.0.1:1001"), 2).unwrap();
        assert_eq!(t.insert(a("10.0.0.1:1002"), 3), Err(Full::PerSource));
        t.insert(a("10.0.0.2:1000"), 4).unwrap();
        assert_eq!(t.insert(a("10.0.0.3:1000"), 5), Err(Full::Total));
        assert_eq!((t.len(), t.sources()), (3, 2));
        assert_eq!(t.get(&a("10.0.0.1:1001")), Some(&2));
        // An ended flow frees its slot, in total and for its source.
        assert_eq!(t.remove(&a("10.0.0.1:1000")), Some(1));
        assert_eq!(t.remove(&a("10.0.0.1:1000")), None);
        t.insert(a("10.0.0.1:1002"), 6).unwrap();
        assert_eq!(t.insert(a("10.0.0.1:1003"), 7), Err(Full::Total));
        t.set_limits(10, 2);
        assert_eq!(t.insert(a("10.0.0.1:1003"), 7), Err(Full::PerSource));
        assert_eq!(t.drain().len(), 3);
        assert_eq!((t.len(), t.sources()), (0, 0));
    }

    #[test]
    fn a_flood_of_sources_stops_at_the_total_cap() {
        let mut t = FlowTable::new(1000, 4);
        let mut refused = 0;
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            if t.insert(SocketAddr::new(ip.into(), 53), i).is_err() {
                refused += 1;
            }
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(refused, 99_000);
        t.set_limits(10, 1);
        assert_eq!(
            t.insert(a("192.0.2.1:1"), 0),
            Err(Full::Total),
            "lower caps refuse new flows at once"
        );
    }
}
