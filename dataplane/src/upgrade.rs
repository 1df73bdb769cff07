//! Binary upgrade without a gap, as HAProxy (`-x`), pingora and sozu do it: the running process
//! offers its listening sockets on `server.upgrade_socket`; a new binary started with
//! `--upgrade` asks for them, receives the very same sockets (SCM_RIGHTS, so their accept queues
//! carry over and no connection is refused), starts serving on them, and says `ready`; the old
//! process then stops accepting, drains like on SIGTERM, and exits.
//!
//! The exchange, on a Unix stream: new → old `upgrade\n`; old → new one message with a JSON
//! header `{"pid":…,"listeners":["addr",…],"admin":"addr"}` and the descriptors, in that order;
//! new → old `ready\n`. Receiving descriptors is the one `unsafe` line of this crate.
#![allow(unsafe_code)]

use sendfd::{RecvWithFd, SendWithFd};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Descriptors in one handoff at most.
const MAX_FDS: usize = 250;
/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why an upgrade could not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("upgrade handoff: {0}")]
    Protocol(String),
    #[error("upgrade handoff: {0}")]
    Io(#[from] io::Error),
}

/// The sockets one process hands to the next.
#[derive(Debug, Default)]
pub struct Handoff {
    pub listeners: Vec<(SocketAddr, OwnedFd)>,
    pub admin: Option<(SocketAddr, OwnedFd)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    pid: u32,
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// What a new process received: listening sockets by address, and the line to the old process
/// to tell it when to let go.
#[derive(Debug)]
pub struct Inherited {
    pub listeners: HashMap<SocketAddr, std::net::TcpListener>,
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    pub from_pid: u32,
    line: UnixStream,
}

impl Inherited {
    /// Tells the old process that this one serves: it stops accepting and drains.
    pub fn ready(mut self) -> Result<(), UpgradeError> {
        self.line.write_all(b"ready\n")?;
        Ok(())
    }
}

/// New side: asks the process behind `path` for its sockets.
pub fn receive(path: &Path) -> Result<Inherited, UpgradeError> {
    let socket_err = |source| UpgradeError::Socket {
        path: path.display().to_string(),
        source,
    };
    let mut line = UnixStream::connect(path).map_err(socket_err)?;
    line.set_read_timeout(Some(TIMEOUT))?;
    line.write_all(b"upgrade\n")?;
    let mut bytes = vec![0u8; 64 * 1024];
    let mut raw: Vec<RawFd> = vec![-1; MAX_FDS];
    let (n, nfds) = line.recv_with_fd(&mut bytes, &mut raw)?;
    // SAFETY: recv_with_fd stored `nfds` descriptors that the kernel just installed in this
    // process for us (SCM_RIGHTS); nothing else owns them, so each is owned exactly once here.
    let mut fds: Vec<OwnedFd> = raw[..nfds]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let header: Header = serde_json::from_slice(&bytes[..n])
        .map_err(|e| UpgradeError::Protocol(format!("bad header: {e}")))?;
    let want = header.listeners.len() + usize::from(header.admin.is_some());
    if fds.len() != want {
        return Err(UpgradeError::Protocol(format!(
            "expected {want} descriptors, got {}",
            fds.len()
        )));
    }
    let admin = match header.admin {
        Some(a) => fds.pop().map(|fd| (a, std::net::TcpListener::from(fd))),
        None => None,
    };
    let listeners = header
        .listeners
        .into_iter()
        .zip(fds)
        .map(|(a, fd)| (a, std::net::TcpListener::from(fd)))
        .collect();
    Ok(Inherited {
        listeners,
        admin,
        from_pid: header.pid,
        line,
    })
}

/// Old side: binds `path` (replacing a stale socket file) for a later upgrade.
pub fn listen(path: &Path) -> Result<tokio::net::UnixListener, UpgradeError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| UpgradeError::Socket {
            path: path.display().to_string(),
            source,
        })?;
    }
    tokio::net::UnixListener::bind(path).map_err(|source| UpgradeError::Socket {
        path: path.display().to_string(),
        source,
    })
}

/// Old side: serves upgrade requests on `listener`, handing over what `sockets` gives at that
/// moment. Returns once a new process has taken the sockets and said it is ready.
pub async fn offer(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    sockets: impl Fn() -> Handoff,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handoff = sockets();
        let outcome = match stream.into_std() {
            Ok(s) => tokio::task::spawn_blocking(move || hand_over(s, handoff))
                .await
                .unwrap_or_else(|e| Err(UpgradeError::Protocol(e.to_string()))),
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(socket = %path.display(), "upgrade: the new process serves; draining");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "upgrade refused; still serving"),
        }
    }
}

fn hand_over(stream: UnixStream, handoff: Handoff) -> Result<(), UpgradeError> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() != "upgrade" {
        return Err(UpgradeError::Protocol(format!(
            "unexpected request {line:?}"
        )));
    }
    let header = Header {
        pid: std::process::id(),
        listeners: handoff.listeners.iter().map(|(a, _)| *a).collect(),
        admin: handoff.admin.as_ref().map(|(a, _)| *a),
    };
    let mut fds: Vec<RawFd> = handoff
        .listeners
        .iter()
        .map(|(_, fd)| fd.as_raw_fd())
        .collect();
    fds.extend(handoff.admin.as_ref().map(|(_, fd)| fd.as_raw_fd()));
    if fds.len() > MAX_FDS {
        return Err(UpgradeError::Protocol(format!(
            "{} sockets, more than {MAX_FDS}",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(&header).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    stream.send_with_fd(&body, &fds)?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim_end() != "ready" {
        return Err(UpgradeError::Protocol(
            "the new process went away before it was ready".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn the_same_sockets_cross_to_the_new_process() {
        let dir = std::env::temp_dir().join(format!("causeway-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("up.sock");
        let l = crate::listener::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let fd = l.as_fd().try_clone_to_owned().unwrap();
        let unix = listen(&path).unwrap();
        let given = std::sync::Mutex::new(Some(fd));
        let old = tokio::spawn(offer(unix, path.clone(), move || Handoff {
            listeners: vec![(addr, given.lock().unwrap().take().unwrap())],
            admin: None,
        }));
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || receive(&p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from_pid, std::process::id());
        let inherited = got.listeners.get(&addr).unwrap();
        assert_eq!(
            inherited.local_addr().unwrap(),
            addr,
            "the very same listening socket"
        );
        // A connection queued on the socket is accepted through the inherited descriptor.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        inherited.set_nonblocking(false).unwrap();
        assert!(inherited.accept().is_ok());
        assert!(!old.is_finished(), "the old side waits for ready");
        tokio::task::spawn_blocking(move || got.ready())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(TIMEOUT, old).await.unwrap().unwrap();
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
