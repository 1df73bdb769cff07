//! Phase `logging`: metrics (requests by result, hit ratio, bytes from cache and from origin,
//! origin latency, what the store holds, invalidations) and an access log line with
//! CloudFront's `x-edge-result-type`.

use crate::respond::EdgeResult;
use causeway_dataplane::accesslog::{iso8601, quote};
use metrics::{Counter, Gauge, Histogram};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Metric handles, registered once per process.
#[derive(Debug)]
pub struct Metrics {
    hit: Counter,
    refresh: Counter,
    miss: Counter,
    bypass: Counter,
    error: Counter,
    redirect: Counter,
    bytes_cache: Counter,
    bytes_origin: Counter,
    hit_ratio: Gauge,
    pub origin_latency: Histogram,
    pub objects: Gauge,
    pub stored_bytes: Gauge,
    pub collapsed: Counter,
    hits: AtomicU64,
    total: AtomicU64,
}

/// The process's metric handles.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        // Handles taken before the recorder exists would count into nothing.
        causeway_dataplane::telemetry::metrics();
        let req = |r: &'static str| metrics::counter!("causeway_edge_requests_total", "result" => r);
        Metrics {
            hit: req("hit"),
            refresh: req("refresh"),
            miss: req("miss"),
            bypass: req("bypass"),
            error: req("error"),
            redirect: req("redirect"),
            bytes_cache: metrics::counter!("causeway_edge_bytes_served_total", "source" => "cache"),
            bytes_origin: metrics::counter!("causeway_edge_bytes_served_total", "source" => "origin"),
            hit_ratio: metrics::gauge!("causeway_edge_hit_ratio"),
            origin_latency: metrics::histogram!("causeway_edge_origin_latency_seconds"),
            objects: metrics::gauge!("causeway_edge_cached_entries"),
            stored_bytes: metrics::gauge!("causeway_edge_cached_bytes"),
            collapsed: metrics::counter!("causeway_edge_collapsed_requests_total"),
            hits: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    })
}

impl Metrics {
    /// Counts one served request.
    pub fn served(&self, result: EdgeResult, bytes: u64, from_cache: bool) {
        match result {
            EdgeResult::Hit => &self.hit,
            EdgeResult::RefreshHit => &self.refresh,
            EdgeResult::Miss => &self.miss,
            EdgeResult::Bypass => &self.bypass,
            EdgeResult::Error => &self.error,
            EdgeResult::Redirect => &self.redirect,
        }
        .increment(1);
        if from_cache {
            self.bytes_cache.increment(bytes);
        } else {
            self.bytes_origin.increment(bytes);
        }
        let hit = matches!(result, EdgeResult::Hit | EdgeResult::RefreshHit);
        let hits = self.hits.fetch_add(u64::from(hit), Ordering::Relaxed) + u64::from(hit);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.hit_ratio.set(hits as f64 / total as f64);
    }

    /// Refreshes the store gauges.
    pub fn store_usage(&self, entries: u64, bytes: u64) {
        self.objects.set(entries as f64);
        self.stored_bytes.set(bytes as f64);
    }

    pub fn origin_time(&self, d: Duration) {
        self.origin_latency.record(d.as_secs_f64());
    }
}

/// Counts an invalidation of `kind` (purge, path, tag) that removed `objects`.
pub fn invalidated(kind: &'static str, objects: usize) {
    causeway_dataplane::telemetry::metrics();
    metrics::counter!("causeway_edge_invalidations_total", "kind" => kind).increment(1);
    metrics::counter!("causeway_edge_invalidated_objects_total", "kind" => kind)
        .increment(objects as u64);
}

/// What the access log records about one request.
#[derive(Debug)]
pub struct Entry<'a> {
    pub peer: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub result: EdgeResult,
    /// Why (a bypass rule, an admission refusal, an error), or "-".
    pub detail: &'a str,
    pub time_taken: Duration,
    pub classification: &'a str,
}

/// One access log line: CloudFront's standard-log fields, space-separated, in its order where
/// they exist.
pub fn access_line(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&iso8601(SystemTime::now()));
    s.push(' ');
    s.push_str(&e.peer.ip().to_string());
    s.push(' ');
    s.push_str(e.method);
    s.push(' ');
    quote(&mut s, e.host.as_bytes());
    s.push(' ');
    quote(&mut s, e.path.as_bytes());
    s.push(' ');
    s.push_str(&e.status.to_string());
    s.push(' ');
    s.push_str(&e.bytes.to_string());
    s.push(' ');
    quote(
        &mut s,
        if e.query.is_empty() {
            b"-"
        } else {
            e.query.as_bytes()
        },
    );
    s.push(' ');
    s.push_str(e.result.x_cache(e.status));
    s.push(' ');
    quote(&mut s, e.detail.as_bytes());
    s.push(' ');
    s.push_str(&format!("{:.3}", e.time_taken.as_secs_f64()));
    s.push(' ');
    s.push_str(e.classification);
    s
}
