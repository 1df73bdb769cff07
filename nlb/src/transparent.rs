//! Client IP preservation (`preserve_client_ip.enabled`): a target connection (TCP) or flow
//! socket (UDP) that leaves from the client's IP address through a transparent socket, so the
//! target sees the client as an NLB's targets do. Its one `unsafe` setsockopt
//! (IP_BIND_ADDRESS_NO_PORT, which socket2 lacks) is here.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use tokio::net::{TcpSocket, UdpSocket};

/// Why a connection could not leave from the client's address. None of these is the target's
/// fault, so none counts against it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("a transparent socket was refused (the nlb needs CAP_NET_ADMIN): {0}")]
    Transparent(io::Error),
    #[error("no local port from the client's address {0}: {1}")]
    Bind(IpAddr, io::Error),
    #[error("opening a socket: {0}")]
    Socket(io::Error),
}

/// The source address a flow's target connection should leave from: the client's, when the
/// two are of one family (an IPv4 client mapped into IPv6 counts as IPv4). Otherwise `None`,
/// and the connection leaves from the nlb's own address, as NLB does for a flow it translates
/// between IPv6 and IPv4.
pub fn source_for(client: IpAddr, target: SocketAddr) -> Option<IpAddr> {
    let client = client.to_canonical();
    (client.is_ipv4() == target.is_ipv4()).then_some(client)
}

/// A socket bound to `source` (any port), ready to connect to a target of the same family.
/// Kept apart from the connect so that its errors are told from the target's.
pub fn socket_from(source: IpAddr) -> Result<TcpSocket, SourceError> {
    let v4 = source.is_ipv4();
    let socket = if v4 {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(SourceError::Socket)?;
    set_transparent(&socket, v4).map_err(SourceError::Transparent)?;
    // Let connect pick the port, so that one client address can reach many targets from the
    // same port range without binding a port per (address, port) first.
    if let Err(e) = set(&socket, libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT) {
        tracing::debug!(error = %e, "IP_BIND_ADDRESS_NO_PORT refused");
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| SourceError::Bind(source, e))?;
    Ok(socket)
}

/// A UDP socket bound to `source` (any port) for one flow, to be connected to its target.
pub fn udp_from(source: IpAddr) -> Result<UdpSocket, SourceError> {
    let domain = if source.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(SourceError::Socket)?;
    set_transparent(&socket, source.is_ipv4()).map_err(SourceError::Transparent)?;
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .map_err(|e| SourceError::Bind(source, e))?;
    UdpSocket::from_std(socket.into()).map_err(SourceError::Socket)
}

/// Whether this process may open transparent sockets: checked when a config asks for client
/// IP preservation, so that a host that cannot do it refuses the config instead of every flow.
pub fn available() -> io::Result<()> {
    set_transparent(&TcpSocket::new_v4()?, true)
}

fn set_transparent(socket: &impl AsFd, v4: bool) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    if v4 {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    }
}

/// Sets an integer socket option to 1 (socket2 has no IP_BIND_ADDRESS_NO_PORT).
fn set(socket: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes at the pointer, which points at
    // `one`, a live c_int for the whole call; the descriptor is borrowed from a live socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_kept_only_within_one_family() {
        let v4: SocketAddr = "10.0.0.5:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:80".parse().unwrap();
        let c4: IpAddr = "192.0.2.7".parse().unwrap();
        let c6: IpAddr = "2001:db8::7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_for(c4, v4), Some(c4));
        assert_eq!(source_for(c6, v6), Some(c6));
        assert_eq!(
            source_for(mapped, v4),
            Some(c4),
            "a mapped IPv4 client is IPv4"
        );
        assert_eq!(source_for(c6, v4), None, "IPv6 to IPv4 leaves from the nlb");
        assert_eq!(source_for(c4, v6), None);
    }
}
