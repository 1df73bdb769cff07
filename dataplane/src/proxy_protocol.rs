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

/// What a received PROXY header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The original client and destination, or `None` for LOCAL / UNKNOWN (use the
    /// connection's own addresses).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// v2 TLVs as received (type, value), to pass on.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 line")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
    #[error("unsupported PROXY v2 version, command or family")]
    Unsupported,
}

/// The longest v1 line, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The largest v2 header we accept (16 + a generous TLV section).
pub const V2_MAX: usize = 16 + 2048;

/// Parses a v1 or v2 header at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `Ok(Some((header, len)))`: the header and its length; what follows is the client's data.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.len() < 12 {
        let n = buf.len();
        if SIGNATURE[..n] == *buf || b"PROXY "[..n.min(6)] == buf[..n.min(6)] {
            return Ok(None);
        }
        return Err(ParseError::NotProxy);
    }
    if buf[..12] == SIGNATURE {
        return parse_v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    Err(ParseError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::BadV1)
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ParseError::BadV1);
    }
    let line = std::str::from_utf8(&buf[6..end - 1]).map_err(|_| ParseError::BadV1)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["UNKNOWN", ..] => Header {
            addresses: None,
            tlvs: Vec::new(),
        },
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, ParseError> {
                let ip: IpAddr = s.parse().map_err(|_| ParseError::BadV1)?;
                match (*proto, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ParseError::BadV1),
                }
            };
            let port = |s: &str| -> Result<u16, ParseError> {
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err(ParseError::BadV1);
                }
                s.parse().map_err(|_| ParseError::BadV1)
            };
            Header {
                addresses: Some((
                    SocketAddr::new(ip(src)?, port(sport)?),
                    SocketAddr::new(ip(dst)?, port(dport)?),
                )),
                tlvs: Vec::new(),
            }
        }
        _ => return Err(ParseError::BadV1),
    };
    Ok(Some((header, end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::Unsupported);
    }
    if 16 + len > V2_MAX {
        return Err(ParseError::BadV2);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let (addresses, rest) = match (ver_cmd & 0x0F, fam) {
        (0x0, _) => (None, &body[body.len()..]),
        (0x1, 0x00) => (None, &body[body.len()..]),
        (0x1, 0x11) => {
            if body.len() < 12 {
                return Err(ParseError::BadV2);
            }
            let ip = |o: usize| IpAddr::from([body[o], body[o + 1], body[o + 2], body[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some((
                    SocketAddr::new(ip(0), port(8)),
                    SocketAddr::new(ip(4), port(10)),
                )),
                &body[12..],
            )
        }
        (0x1, 0x21) => {
            if body.len() < 36 {
                return Err(ParseError::BadV2);
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                IpAddr::from(a)
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some((
                    SocketAddr::new(ip(0), port(32)),
                    SocketAddr::new(ip(16), port(34)),
                )),
                &body[36..],
            )
        }
        _ => return Err(ParseError::Unsupported),
    };
    let mut tlvs = Vec::new();
    let mut r = rest;
    // The TLV section is only meaningful for PROXY; LOCAL skips it wholesale.
    if addresses.is_some() {
        while !r.is_empty() {
            if r.len() < 3 {
                return Err(ParseError::BadV2);
            }
            let l = u16::from_be_bytes([r[1], r[2]]) as usize;
            if r.len() < 3 + l {
                return Err(ParseError::BadV2);
            }
            tlvs.push((r[0], r[3..3 + l].to_vec()));
            r = &r[3 + l..];
        }
    }
    Ok(Some((Header { addresses, tlvs }, 16 + len)))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let (h, n) = parse(b"PROXY TCP4 192.0.2.1 10.0.0.5 51000 80\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!(n, 40);
        assert_eq!(
            h.addresses,
            Some((
                "192.0.2.1:51000".parse().unwrap(),
                "10.0.0.5:80".parse().unwrap()
            ))
        );
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.addresses.unwrap().0, "[2001:db8::1]:1".parse().unwrap());
        let (h, _) = parse(b"PROXY UNKNOWN whatever\r\n").unwrap().unwrap();
        assert_eq!(h.addresses, None);
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 10.0.0.5 51000 80\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 051000 80\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 70000 80\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1\r\n",
            b"PROXY UDP4 192.0.2.1 10.0.0.5 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::BadV1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::BadV1));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
    }

    #[test]
    fn partial_headers_ask_for_more() {
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(&SIGNATURE[..7]), Ok(None));
        assert_eq!(parse(b"PROXY TCP4 192.0.2.1"), Ok(None));
        let full = encode_v2(
            "192.0.2.1:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        assert_eq!(parse(&full[..20]), Ok(None));
    }

    #[test]
    fn v2_round_trips_with_tlvs() {
        let src: SocketAddr = "192.0.2.1:51000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.5:80".parse().unwrap();
        let mut bytes = encode_v2(src, dst, &[(TLV_AWS, b"\x01vpce-1"), (0x04, b"")]);
        let hlen = bytes.len();
        bytes.extend_from_slice(b"data");
        let (h, n) = parse(&bytes).unwrap().unwrap();
        assert_eq!(n, hlen);
        assert_eq!(h.addresses, Some((src, dst)));
        assert_eq!(
            h.tlvs,
            vec![(TLV_AWS, b"\x01vpce-1".to_vec()), (0x04, vec![])]
        );
        let v6 = encode_v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
            &[],
        );
        assert!(parse(&v6)
            .unwrap()
            .unwrap()
            .0
            .addresses
            .unwrap()
            .0
            .is_ipv6());
        let (h, n) = parse(&encode_v2_local()).unwrap().unwrap();
        assert_eq!((h.addresses, n), (None, 16));
    }

    #[test]
    fn v2_refusals() {
        let mut b = encode_v2(
            "192.0.2.1:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        b[12] = 0x11; // version 1 in a v2 signature
        assert_eq!(parse(&b), Err(ParseError::Unsupported));
        let mut b = encode_v2(
            "192.0.2.1:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[],
        );
        b[13] = 0x12; // UDP over IPv4
        assert_eq!(parse(&b), Err(ParseError::Unsupported));
        let mut b = encode_v2(
            "192.0.2.1:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            &[(1, b"ab")],
        );
        let l = b.len();
        b[l - 3] = 9; // a TLV longer than the section
        assert_eq!(parse(&b), Err(ParseError::BadV2));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&huge), Err(ParseError::BadV2));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ParseError::BadV2));
    }
}
