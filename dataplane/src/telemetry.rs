//! Logging (tracing) and the process-wide Prometheus recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets, in seconds (latencies from 1 ms to 10 s).
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// How often histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The Prometheus recorder, installed on first use. Its histograms need [`spawn_upkeep`]:
/// without upkeep the exporter keeps every histogram sample until a scrape, memory that grows
/// with traffic when nobody scrapes (`docs/reliability.md`, "Memory under abuse").
pub fn metrics() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(&BUCKETS) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("metrics buckets refused: {e}");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Only possible if some other recorder was installed first; say so once.
            eprintln!("metrics recorder already installed: {e}");
        }
        handle
    })
}

/// Runs the recorder's upkeep every second, as a task of the current runtime. A task, not a
/// thread: a process with one worker thread then has an fd table of its own, and the kernel
/// takes each socket syscall's file without the reference count a shared table needs (`fget`
/// and `fput`, about 1.5% of a data plane's CPU per request).
pub fn spawn_upkeep() {
    let handle = metrics().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .is_err()
    {
        tracing::debug!("logging already initialised");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histograms_are_bucketed() {
        let handle = super::metrics();
        metrics::histogram!("causeway_test_latency_seconds").record(0.003);
        // Upkeep (here run at once) folds samples into buckets; rendering shows them.
        handle.run_upkeep();
        let text = handle.render();
        assert!(
            text.contains("causeway_test_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("causeway_test_latency_seconds_count 1"),
            "{text}"
        );
    }
}
