//! The request id header, as ALB sets it: `X-Amzn-Trace-Id`. A request without a `Root` field
//! gets `Root=1-<epoch seconds, 8 hex>-<96 random bits, 24 hex>`; one with a `Root` keeps its
//! fields and gets a `Self` field of the same form in front (replacing an earlier `Self`).

/// The header's name, lower-case.
pub const HEADER: &str = "x-amzn-trace-id";

/// One request's generated id: `Root=1-XXXXXXXX-YYYYYYYYYYYYYYYYYYYYYYYY`, on the stack.
#[derive(Clone, Copy)]
pub struct TraceId {
    buf: [u8; 40],
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.buf))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceId {
    pub fn new(now_secs: u64, random: u128) -> TraceId {
        let mut buf = [0u8; 40];
        buf[..7].copy_from_slice(b"Root=1-");
        for i in 0..8 {
            buf[7 + i] = HEX[((now_secs >> (28 - 4 * i)) & 0xf) as usize];
        }
        buf[15] = b'-';
        for i in 0..24 {
            buf[16 + i] = HEX[((random >> (92 - 4 * i)) & 0xf) as usize];
        }
        TraceId { buf }
    }

    /// A new id for now.
    pub fn now() -> TraceId {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        TraceId::new(secs, fastrand::u128(..))
    }

    /// Appends the header value the target gets, given the client's value (if any).
    pub fn write(&self, client: Option<&[u8]>, out: &mut Vec<u8>) {
        let fields = || {
            client
                .into_iter()
                .flat_map(|v| v.split(|&b| b == b';'))
                .map(trim)
                .filter(|f| !f.is_empty())
        };
        let has_root = fields().any(|f| f.starts_with(b"Root="));
        if has_root {
            out.extend_from_slice(b"Self=");
        } else {
            out.extend_from_slice(b"Root=");
        }
        out.extend_from_slice(&self.buf[5..]);
        for f in fields().filter(|f| !f.starts_with(b"Self=")) {
            if !has_root && f.starts_with(b"Root=") {
                continue;
            }
            out.push(b';');
            out.extend_from_slice(f);
        }
    }
}

fn trim(f: &[u8]) -> &[u8] {
    let start = f
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(f.len());
    let end = f
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &f[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(client: Option<&str>) -> String {
        let id = TraceId::new(0x6789_1234, 0xabcdef012345678912345678);
        let mut out = Vec::new();
        id.write(client.map(str::as_bytes), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_new_root_or_a_self_in_front_of_the_clients_fields() {
        assert_eq!(value(None), "Root=1-67891234-abcdef012345678912345678");
        assert_eq!(
            value(Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")),
            "Self=1-67891234-abcdef012345678912345678;Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
        );
        // An earlier hop's Self is replaced, not stacked.
        assert_eq!(
            value(Some("Self=1-00000000-000000000000000000000000; Root=1-5759e988-bd862e3fe1be46a994272793")),
            "Self=1-67891234-abcdef012345678912345678;Root=1-5759e988-bd862e3fe1be46a994272793"
        );
        // No Root: a new one, the client's other fields kept.
        assert_eq!(
            value(Some("Sampled=0")),
            "Root=1-67891234-abcdef012345678912345678;Sampled=0"
        );
        assert_eq!(value(Some("")), "Root=1-67891234-abcdef012345678912345678");
    }

    #[test]
    fn ids_have_alb_s_shape() {
        let id = TraceId::now();
        let mut out = Vec::new();
        id.write(None, &mut out);
        let s = String::from_utf8(out).unwrap();
        let parts: Vec<&str> = s.strip_prefix("Root=1-").unwrap().split('-').collect();
        assert_eq!(parts[0].len(), 8);
        assert_eq!(parts[1].len(), 24);
        assert!(s
            .bytes()
            .skip(7)
            .all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }
}
