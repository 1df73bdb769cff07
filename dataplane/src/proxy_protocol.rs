//! PROXY protocol version 2 (haproxy.org/download/2.9/doc/proxy-protocol.txt), the header a
//! load balancer sends a target so it learns the client's address. Pure encoding.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `PP2_TYPE_AWS`: AWS's TLV (VPC endpoint id), passed through when received.
pub const TLV_AWS: u8 = 0xEA;

/// The v2 header for a proxied TCP connection from `src` to `dst`, with extra TLVs
/// (type, value) appended as received.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + 36 + tlvs.iter().map(|(_, v)| 3 + v.len()).sum::<usize>());
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    let (src_ip, dst_ip) = (canonical(src.ip()), canonical(dst.ip()));
    let mut body = Vec::with_capacity(36);
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21); // AF_INET6, STREAM
            body.extend_from_slice(&v6(s));
            body.extend_from_slice(&v6(d));
        }
    }
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The v2 header of a connection the balancer makes on its own behalf (health checks): command
/// LOCAL, no addresses. The receiver uses the connection's real addresses.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

/// IPv4-mapped IPv6 addresses travel as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_layout_matches_the_spec() {
        let h = encode_v2(
            "192.0.2.1:51000".parse().unwrap(),
            "10.0.0.5:80".parse().unwrap(),
            &[],
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 1, 10, 0, 0, 5]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&80u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_and_tlvs() {
        let h = encode_v2(
            "[2001:db8::1]:1234".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
            &[(TLV_AWS, b"\x01vpce-0abc")],
        );
        assert_eq!(&h[12..14], &[0x21, 0x21]);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(len, 36 + 3 + 10);
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16 + 36..16 + 39], &[TLV_AWS, 0, 10]);
        assert_eq!(&h[16 + 39..], b"\x01vpce-0abc");
    }

    #[test]
    fn local_command_has_no_addresses() {
        let h = encode_v2_local();
        assert_eq!(h.len(), 16);
        assert_eq!(&h[12..], &[0x20, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn mapped_addresses_travel_as_ipv4() {
        let h = encode_v2(
            "[::ffff:192.0.2.1]:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        assert_eq!(h[13], 0x11);
    }
}
