//! A moto server fixture: moto run in-process by `testkit/moto_lifecycle.py` (with the venv's
//! python that `.ci/run` prepares) on a free loopback port. The script adds the lifecycle hooks
//! for termination that moto lacks (`Terminating:Wait`, `CompleteLifecycleAction`,
//! `RecordLifecycleActionHeartbeat`, the heartbeat timeout) and logs them as events. In CI (`CI`
//! set) a missing moto is a failure, never a skip.

use crate::process::{wait_for_port, Proc};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    _proc: Proc,
    addr: SocketAddr,
    events: PathBuf,
}

/// One lifecycle event the shim recorded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Unix time, in seconds.
    pub t: f64,
    /// `wait`, `heartbeat`, `complete` or `timeout`.
    pub event: String,
    pub instance: String,
    pub hook: String,
    /// The lifecycle action result, on `complete` and `timeout`.
    #[serde(default)]
    pub result: Option<String>,
}

impl Moto {
    /// The endpoint URL to put in `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The lifecycle events so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l}: {e}")))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.events);
    }
}

/// Where `moto_server` is: `$CAUSEWAY_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`.
/// The venv's python, with moto and boto3, is beside it.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CAUSEWAY_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
}

/// Starts moto. Returns `None` (the test should skip) only outside CI when moto is not
/// installed; in CI it panics instead.
pub fn start() -> Option<Moto> {
    let path = moto_server_path();
    if !path.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "moto_server not found at {} (CI must install it: see .ci/run)",
                path.display()
            );
        }
        eprintln!(
            "skipping: moto_server not found at {}; run .ci/run once",
            path.display()
        );
        return None;
    }
    let port = crate::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let events = std::env::temp_dir().join(format!(
        "causeway-moto-events-{}-{port}.jsonl",
        std::process::id()
    ));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto_lifecycle.py");
    let proc = Proc::spawn(
        &path.with_file_name("python"),
        &[
            script.to_str().unwrap(),
            "127.0.0.1",
            &port.to_string(),
            events.to_str().unwrap(),
        ],
    );
    wait_for_port(addr, Duration::from_secs(30));
    Some(Moto {
        _proc: proc,
        addr,
        events,
    })
}
