//! The non-forward actions, as pure functions that render a whole response: fixed-response, and
//! redirect with `#{protocol}`, `#{host}`, `#{port}`, `#{path}` and `#{query}` (never reflecting a
//! Host that is not a valid host name).

use causeway_config::alb::Redirect;
use causeway_config::listener_headers::ResponseHeaders;

/// The reason phrase of the statuses we generate.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        460 => "Client Closed Request",
        464 => "Incompatible Protocol",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        // ALB's own: the identity provider answered a sign-in with an error.
        561 => "Unauthorized",
        _ => "Unknown",
    }
}

/// Writes the fields a listener's header modification sets, each as `Name: value\r\n`.
pub fn push_set_fields(out: &mut Vec<u8>, mods: &ResponseHeaders) {
    for (name, value) in &mods.set {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a complete response with a body into `out`, with the listener's header
/// modification (`mods`): its `Server` field or none, and the fields it sets.
pub fn render(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
    extra: &[(&str, &[u8])],
    mods: &ResponseHeaders,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa(status as u64).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    if mods.server {
        out.extend_from_slice(b"\r\nServer: causeway");
    }
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa(body.len() as u64).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in extra {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    push_set_fields(out, mods);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A small integer as decimal text, without allocating a `String` for the common sizes.
pub fn itoa(mut n: u64) -> ItoaBuf {
    let mut b = ItoaBuf {
        buf: [0; 20],
        start: 20,
    };
    loop {
        b.start -= 1;
        b.buf[b.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return b;
        }
    }
}

/// Decimal digits on the stack.
#[derive(Debug, Clone, Copy)]
pub struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

/// Whether `host` (without port) is a plausible DNS name or IP literal: only these may be
/// reflected into a Location header.
pub fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && (host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (host.first() == Some(&b'[')
                && host.last() == Some(&b']')
                && host[1..host.len() - 1]
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')))
}

/// What a redirect's placeholders stand for in this request.
#[derive(Debug, Clone, Copy)]
pub struct RedirectInput<'a> {
    /// `http` or `https`.
    pub protocol: &'a str,
    /// The Host, without port.
    pub host: &'a [u8],
    pub port: u16,
    /// The path, with its leading `/`.
    pub path: &'a [u8],
    /// The query, without `?`.
    pub query: &'a [u8],
}

fn substitute(template: &str, input: &RedirectInput<'_>, out: &mut Vec<u8>) {
    let port = itoa(input.port as u64);
    let mut rest = template.as_bytes();
    while let Some(i) = rest.iter().position(|&b| b == b'#') {
        out.extend_from_slice(&rest[..i]);
        rest = &rest[i..];
        let (sub, len): (&[u8], usize) = if rest.starts_with(b"#{protocol}") {
            (input.protocol.as_bytes(), 11)
        } else if rest.starts_with(b"#{host}") {
            (input.host, 7)
        } else if rest.starts_with(b"#{port}") {
            (port.as_bytes(), 7)
        } else if rest.starts_with(b"#{path}") {
            (input.path.strip_prefix(b"/").unwrap_or(input.path), 7)
        } else if rest.starts_with(b"#{query}") {
            (input.query, 8)
        } else {
            (b"#", 1)
        };
        out.extend_from_slice(sub);
        rest = &rest[len..];
    }
    out.extend_from_slice(rest);
}

/// The Location of a redirect, or `None` when the Host cannot be reflected safely.
pub fn location(r: &Redirect, input: &RedirectInput<'_>) -> Option<Vec<u8>> {
    if !valid_host(input.host) {
        return None;
    }
    let mut proto = Vec::new();
    substitute(&r.protocol, input, &mut proto);
    proto.make_ascii_lowercase();
    let mut host = Vec::new();
    substitute(&r.host, input, &mut host);
    let mut port = Vec::new();
    substitute(&r.port, input, &mut port);
    let mut out = proto.clone();
    out.extend_from_slice(b"://");
    out.extend_from_slice(&host);
    let default_port: &[u8] = if proto == b"https" { b"443" } else { b"80" };
    if port != default_port {
        out.push(b':');
        out.extend_from_slice(&port);
    }
    substitute(&r.path, input, &mut out);
    let mut query = Vec::new();
    substitute(&r.query, input, &mut query);
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&query);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(protocol: &str, host: &str, port: &str, path: &str, query: &str) -> Redirect {
        Redirect {
            status: 301,
            protocol: protocol.into(),
            host: host.into(),
            port: port.into(),
            path: path.into(),
            query: query.into(),
        }
    }

    fn input<'a>(host: &'a str, path: &'a str, query: &'a str) -> RedirectInput<'a> {
        RedirectInput {
            protocol: "http",
            host: host.as_bytes(),
            port: 80,
            path: path.as_bytes(),
            query: query.as_bytes(),
        }
    }

    #[test]
    fn http_to_https_keeps_host_path_query() {
        let r = redirect("HTTPS", "#{host}", "443", "/#{path}", "#{query}");
        let l = location(&r, &input("www.example.com", "/a/b", "x=1")).unwrap();
        assert_eq!(l, b"https://www.example.com/a/b?x=1");
    }

    #[test]
    fn defaults_keep_everything_and_show_odd_ports() {
        let r = redirect("#{protocol}", "#{host}", "#{port}", "/#{path}", "#{query}");
        let mut i = input("example.com", "/", "");
        i.port = 8082;
        assert_eq!(location(&r, &i).unwrap(), b"http://example.com:8082/");
        let r = redirect(
            "#{protocol}",
            "new.example.com",
            "#{port}",
            "/moved/#{path}",
            "from=#{host}",
        );
        assert_eq!(
            location(&r, &input("old.example.com", "/p", "")).unwrap(),
            b"http://new.example.com/moved/p?from=old.example.com"
        );
    }

    #[test]
    fn an_invalid_host_is_never_reflected() {
        let r = redirect("HTTPS", "#{host}", "443", "/#{path}", "#{query}");
        for bad in ["evil.com/x", "a b", "evil.com\r\nSet-Cookie: x", "", "a@b"] {
            assert_eq!(location(&r, &input(bad, "/", "")), None, "{bad:?}");
        }
        assert!(location(&r, &input("[::1]", "/", "")).is_some());
    }

    #[test]
    fn render_fixed_response() {
        let mut out = Vec::new();
        render(
            &mut out,
            503,
            "text/plain",
            b"down",
            true,
            &[("Retry-After", b"5")],
            &ResponseHeaders::default(),
        );
        assert_eq!(
            out,
            b"HTTP/1.1 503 Service Unavailable\r\nServer: causeway\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nRetry-After: 5\r\nConnection: close\r\n\r\ndown"
        );
        // Header modification: no Server field, and the listener's fields.
        let mods = ResponseHeaders {
            set: vec![("X-Frame-Options", "DENY".into())],
            server: false,
        };
        out.clear();
        render(&mut out, 200, "text/plain", b"", false, &[], &mods);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nX-Frame-Options: DENY\r\n\r\n"
        );
        assert_eq!(itoa(0).as_bytes(), b"0");
        assert_eq!(itoa(1234567).as_bytes(), b"1234567");
    }
}
