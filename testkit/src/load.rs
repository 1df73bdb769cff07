//! Background clients for end-to-end tests: each sends GETs, a new connection per request,
//! until stopped or past a deadline, and counts answers that pass a check and those that do not.

use crate::raw::{self, RawResponse};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients running on the test's runtime.
#[derive(Debug)]
pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Clients {
    /// `n` clients sending `GET path` to `addr` for at most `limit`; an answer counts as served
    /// when `good` says so.
    pub fn start(
        n: usize,
        addr: SocketAddr,
        path: &'static str,
        limit: Duration,
        good: fn(&RawResponse) -> bool,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let deadline = Instant::now() + limit;
        let tasks = (0..n)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match raw::get(addr, path, &[]).await {
                            Ok(r) if good(&r) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("status {}", r.status));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e.to_string());
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Clients {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Answers served so far.
    pub fn served(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` answers beyond `since` have been served, or panics after `wait`.
    pub async fn wait_for(&self, since: usize, more: usize, wait: Duration, what: &str) {
        let t = Instant::now();
        while self.served() < since + more {
            assert!(t.elapsed() < wait, "{what}: no traffic");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients: (served, failed, what failed).
    pub async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap_or_default());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}
