//! The flow tuple and its hash: the key Maglev looks up, equal on every replica.

use causeway_dataplane::select::maglev::hash64;
use std::net::SocketAddr;

/// The transport of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

/// Hash of (protocol, source address and port, destination address and port).
pub fn hash(proto: Proto, src: SocketAddr, dst: SocketAddr) -> u64 {
    let mut buf = [0u8; 1 + 18 + 18];
    buf[0] = proto as u8;
    put(&mut buf[1..19], src);
    put(&mut buf[19..37], dst);
    hash64(0x6e6c62, &buf)
}

fn put(out: &mut [u8], a: SocketAddr) {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    out[..16].copy_from_slice(&ip);
    out[16..18].copy_from_slice(&a.port().to_be_bytes());
}

/// Hash of (protocol, source address) only: `source_ip` stickiness, so every flow of one
/// client lands on one target.
pub fn hash_source(proto: Proto, src: std::net::IpAddr) -> u64 {
    hash(proto, SocketAddr::new(src, 0), SocketAddr::new(src, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_tuple_counts() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let base = hash(Proto::Tcp, a, b);
        assert_eq!(base, hash(Proto::Tcp, a, b));
        assert_ne!(base, hash(Proto::Udp, a, b));
        assert_ne!(base, hash(Proto::Tcp, "10.0.0.1:5001".parse().unwrap(), b));
        assert_ne!(base, hash(Proto::Tcp, a, "10.0.0.2:81".parse().unwrap()));
        assert_ne!(base, hash(Proto::Tcp, b, a));
    }

    #[test]
    fn source_hash_ignores_ports_and_destination() {
        let ip = "10.0.0.1".parse().unwrap();
        assert_eq!(hash_source(Proto::Tcp, ip), hash_source(Proto::Tcp, ip));
        assert_ne!(
            hash_source(Proto::Tcp, ip),
            hash_source(Proto::Tcp, "10.0.0.2".parse().unwrap())
        );
    }
}
