//! Phase `response_filter`: the response head the client gets. The status line is kept; hop-by-hop
//! headers (and those the Connection header names) are dropped; framing and connection headers
//! are set for the client's side of the exchange.

use causeway_config::listener_headers::ResponseHeaders;
use causeway_dataplane::http1::head::ConnectionList;
use causeway_dataplane::http1::{Framing, ResponseHead};

/// Writes the client's response head into `out`, with the target stickiness cookie
/// (`sticky`) and the alb's other cookies (`cookies`: group stickiness, a renewed session;
/// each unless the target's answer sets a cookie of its name).
/// The listener's header modification (`mods`) replaces the target's fields of the names it
/// sets.
#[allow(clippy::too_many_arguments)]
pub fn build_response_head(
    out: &mut Vec<u8>,
    ubuf: &[u8],
    resp: &ResponseHead,
    framing: Framing,
    close: bool,
    sticky: Option<&str>,
    cookies: &[&str],
    mods: &ResponseHeaders,
) {
    out.clear();
    let status_line_end = ubuf.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    // Always answer as HTTP/1.1, keeping the status code and reason phrase.
    out.extend_from_slice(b"HTTP/1.1");
    out.extend_from_slice(&ubuf[8.min(status_line_end)..status_line_end]);
    out.extend_from_slice(b"\r\n");
    let listed = ConnectionList::of(ubuf, &resp.headers);
    for h in &resp.headers {
        let name = h.name.get(ubuf);
        if listed.drops(name) || (!mods.set.is_empty() && mods.replaces(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.get(ubuf));
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    crate::action::push_set_fields(out, mods);
    if let Some(c) = sticky {
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    push_added_cookies(out, ubuf, resp, cookies);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a `Set-Cookie` line for each of the alb's `cookies` that the target's answer
/// (`resp` in `ubuf`) does not set itself: the target's own cookie of a name wins, so an
/// application that logs its user out by expiring the session cookie does not see a renewal
/// set it again.
pub fn push_added_cookies(out: &mut Vec<u8>, ubuf: &[u8], resp: &ResponseHead, cookies: &[&str]) {
    for c in cookies {
        let name = c.split('=').next().unwrap_or_default();
        let sets = resp
            .headers
            .iter()
            .filter(|h| h.name.get(ubuf).eq_ignore_ascii_case(b"set-cookie"))
            .map(|h| h.value.get(ubuf));
        if !crate::sticky::sets_cookie(sets, name) {
            out.extend_from_slice(b"Set-Cookie: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The target's 101 head (`ubuf`, the head `resp` and any bytes after it) with the alb's
/// `cookies` added as for any answer; borrowed as it is when there are none.
pub fn switching_head<'a>(
    ubuf: &'a [u8],
    resp: &ResponseHead,
    cookies: &[&str],
) -> std::borrow::Cow<'a, [u8]> {
    if cookies.is_empty() {
        return std::borrow::Cow::Borrowed(ubuf);
    }
    // Before the blank line that ends the head (CRLF, or a bare LF).
    let end = if ubuf[..resp.len].ends_with(b"\r\n\r\n") {
        resp.len - 2
    } else {
        resp.len - 1
    };
    let mut out = Vec::with_capacity(ubuf.len() + 256);
    out.extend_from_slice(&ubuf[..end]);
    push_added_cookies(&mut out, ubuf, resp, cookies);
    out.extend_from_slice(&ubuf[end..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_dataplane::http1::parse_response;

    #[test]
    fn drops_hop_by_hop_and_sets_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nX-Private: 1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, 65536, &mut h).unwrap());
        let mut out = Vec::new();
        build_response_head(
            &mut out,
            raw,
            &h,
            Framing::Chunked,
            true,
            Some("AWSALB=x; Path=/"),
            &["AWSALBTG=y; Path=/"],
            &ResponseHeaders::default(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nSet-Cookie: AWSALB=x; Path=/\r\nSet-Cookie: AWSALBTG=y; Path=/\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn the_targets_own_cookie_of_a_name_wins_over_the_albs() {
        // The application logs its user out by expiring shard 0 while the alb renewed.
        let raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: S-0=; Max-Age=-1\r\nContent-Length: 0\r\n\r\n";
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, 65536, &mut h).unwrap());
        let mut out = Vec::new();
        build_response_head(
            &mut out,
            raw,
            &h,
            Framing::Length(0),
            false,
            None,
            &["S-0=renewed; Secure", "S-1=; Max-Age=-1", "S-00=other"],
            &ResponseHeaders::default(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nSet-Cookie: S-0=; Max-Age=-1\r\nContent-Length: 0\r\nSet-Cookie: S-1=; Max-Age=-1\r\nSet-Cookie: S-00=other\r\n\r\n"
        );
    }

    #[test]
    fn a_switching_head_gets_the_albs_cookies_before_its_end() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, 65536, &mut h).unwrap());
        assert_eq!(&*switching_head(raw, &h, &[]), raw);
        assert_eq!(
            &*switching_head(raw, &h, &["S-0=x; Secure"]),
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSet-Cookie: S-0=x; Secure\r\n\r\n\x81\x02hi"[..]
        );
    }

    #[test]
    fn http10_upstream_is_answered_as_http11() {
        let raw = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, 65536, &mut h).unwrap());
        let mut out = Vec::new();
        build_response_head(
            &mut out,
            raw,
            &h,
            Framing::Length(0),
            false,
            None,
            &[],
            &ResponseHeaders::default(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn header_modification_replaces_the_targets_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nx-frame-options: ALLOWALL\r\nServer: nginx\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 0\r\n\r\n";
        let mut h = ResponseHead::default();
        assert!(parse_response(raw, 65536, &mut h).unwrap());
        let mods = ResponseHeaders {
            set: vec![
                ("X-Frame-Options", "DENY".into()),
                ("Strict-Transport-Security", "max-age=63072000".into()),
            ],
            server: false,
        };
        let mut out = Vec::new();
        build_response_head(
            &mut out,
            raw,
            &h,
            Framing::Length(0),
            false,
            Some("AWSALB=x; Path=/"),
            &[],
            &mods,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\nX-Frame-Options: DENY\r\nStrict-Transport-Security: max-age=63072000\r\nSet-Cookie: AWSALB=x; Path=/\r\n\r\n",
            "the target's own Server field is its own business"
        );
    }
}
