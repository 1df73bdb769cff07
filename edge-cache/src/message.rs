//! The edge's one request type and its header fields, independent of the wire protocol, and the
//! helpers that read them. Header names are lower-case.

use bytes::Bytes;

/// Header fields: lower-case name, raw value, in arrival order.
pub type Fields = Vec<(String, Vec<u8>)>;

/// The first value of a field.
pub fn get<'a>(h: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Every value of a field.
pub fn all<'a>(h: &'a [(String, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    h.iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// Removes every value of a field.
pub fn remove(h: &mut Fields, name: &str) {
    h.retain(|(n, _)| n != name);
}

/// A request as the cache pipeline sees it, whichever protocol carried it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// `http` or `https`: how the viewer reached the edge.
    pub scheme: &'static str,
    /// Host with port as the viewer sent it, lower-cased.
    pub authority: String,
    /// Path without the query.
    pub path: String,
    /// The query without `?`, as received ("" when absent).
    pub query: String,
    pub headers: Fields,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        get(&self.headers, name)
    }

    pub fn is_get_or_head(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// Every cookie as (name, value), across all Cookie fields.
    pub fn cookies(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        all(&self.headers, "cookie").flat_map(|v| {
            v.split(|&b| b == b';').filter_map(|c| {
                let c = crate::cache_control::trim(c);
                if c.is_empty() {
                    return None;
                }
                Some(match c.iter().position(|&b| b == b'=') {
                    Some(i) => (&c[..i], &c[i + 1..]),
                    None => (c, &[][..]),
                })
            })
        })
    }
}

/// Whether a Host value is a plain `host[:port]` (letters, digits, `-`, `.`, `_`, or a bracketed
/// IPv6 literal): anything else is refused before it can reach a key, a redirect or an origin.
pub fn valid_authority(a: &[u8]) -> bool {
    if a.is_empty() || a.len() > 255 {
        return false;
    }
    let (host, port) = if a[0] == b'[' {
        match a.iter().position(|&b| b == b']') {
            Some(i) => {
                let inner = &a[1..i];
                if inner.is_empty()
                    || !inner
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
                {
                    return false;
                }
                (&a[..=i], &a[i + 1..])
            }
            None => return false,
        }
    } else {
        match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &a[a.len()..]),
        }
    };
    let host_ok = host[0] == b'['
        || (!host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b)));
    let port_ok = port.is_empty()
        || (port.len() >= 2
            && port.len() <= 6
            && port[0] == b':'
            && port[1..].iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// Splits a query into (name, whole pair) items; `a=1&b` gives ("a", "a=1"), ("b", "b").
pub fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| (p.split('=').next().unwrap_or(p), p))
}

/// The reason phrase for a status this edge writes.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn authority_validation() {
        for ok in [
            "example.com",
            "a-b.example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(super::valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "exa mple.com",
            "evil.com/x",
            "a:b",
            "a@b",
            "[::1",
            "host:",
            "h\"x",
        ] {
            assert!(!super::valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
