//! Child processes for end-to-end tests: start a binary, signal it, wait for its ports, and
//! kill it when the test ends (even on panic).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            drop(self.child.kill());
            drop(self.child.wait());
        }
    }
}

impl Proc {
    /// Starts `bin` with `args`; its stderr goes to the test's stderr.
    pub fn spawn(bin: &Path, args: &[&str]) -> Proc {
        Proc::spawn_env(bin, args, &[])
    }

    /// Starts `bin` with `args` and these environment variables added.
    pub fn spawn_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// The exit status, if the process exited within `wait`.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Waits until something accepts TCP connections on `addr`; panics after `wait`.
pub fn wait_for_port(addr: SocketAddr, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if listens(addr) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr} after {wait:?}");
}

/// Whether a listener accepts on `addr`. Test ports come from the ephemeral range, so a connect
/// to a port nobody has bound yet can pick that same port as its source and connect to itself
/// (TCP simultaneous open); such a self-connection is not a listener.
pub fn listens(addr: SocketAddr) -> bool {
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(s) => !self_connected(&s),
        Err(_) => false,
    }
}

fn self_connected(s: &std::net::TcpStream) -> bool {
    matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

/// A plain blocking HTTP/1.1 GET, for tests that do not run a tokio runtime.
/// Returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http(addr, "GET", path)
}

/// A plain blocking HTTP/1.1 request without a body. Returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let r = crate::raw::RawResponse::parse(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
    })?;
    Ok((r.status, r.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound to a port and connected to that same port, with nothing listening, is
    /// connected to itself: the case `listens` must not take for a listener.
    #[tokio::test]
    async fn a_self_connection_is_not_a_listener() {
        let addr = crate::closed_port().await;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(addr).unwrap();
        let s = sock.connect(addr).await.unwrap().into_std().unwrap();
        assert!(self_connected(&s));
        drop(s);

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(!self_connected(&s));
        assert!(listens(l.local_addr().unwrap()));
    }
}
