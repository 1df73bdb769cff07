//! A moto server fixture: starts `moto_server` from the venv that `.ci/run` prepares, on a free
//! loopback port. In CI (`CI` set) a missing moto is a failure, never a skip.

use crate::process::{wait_for_port, Proc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    _proc: Proc,
    addr: SocketAddr,
}

impl Moto {
    /// The endpoint URL to put in `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Where `moto_server` is: `$CAUSEWAY_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`.
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
    let proc = Proc::spawn(&path, &["-H", "127.0.0.1", "-p", &port.to_string()]);
    wait_for_port(addr, Duration::from_secs(30));
    Some(Moto { _proc: proc, addr })
}
