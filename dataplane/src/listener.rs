//! Listening sockets (SO_REUSEPORT, so a new process or a reload can bind beside the old one)
//! and the accept loop, which backs off on EMFILE instead of spinning.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Binds a TCP listener with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Whether an accept error means the process is out of a resource (back off) rather than a
/// single connection failing (carry on).
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// Linux errno values, to avoid a libc dependency for four constants.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// How long the accept loop pauses when the process is out of descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts until `stop` turns true, handing each connection to `on_conn`.
pub async fn accept_loop(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut on_conn: impl FnMut(TcpStream, SocketAddr),
) {
    let local = listener.local_addr().ok();
    loop {
        // Stop first: once told, accept nothing more (the queue stays for whoever listens on).
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
                }
                metrics::counter!("causeway_connections_accepted_total").increment(1);
                on_conn(stream, peer);
            }
            Err(e) if is_resource_exhaustion(&e) => {
                metrics::counter!("causeway_accept_errors_total", "kind" => "resource")
                    .increment(1);
                tracing::warn!(listener = ?local, error = %e, "accept: out of resources, backing off");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = stop.changed() => break,
                }
            }
            Err(e) => {
                metrics::counter!("causeway_accept_errors_total", "kind" => "other").increment(1);
                tracing::debug!(listener = ?local, error = %e, "accept failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_sockets_can_share_a_port() {
        let a = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_tcp(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn emfile_is_resource_exhaustion() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(24)));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(103)));
    }
}
