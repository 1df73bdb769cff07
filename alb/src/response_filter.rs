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
    // The target's own cookie of a name wins over the alb's: an application that logs its user
    // out by expiring the session cookie must not see a renewal set it again.
    let theirs = |c: &&str| {
        let name = c.split('=').next().unwrap_or_default();
        let sets = resp
            .headers
            .iter()
            .filter(|h| h.name.get(ubuf).eq_ignore_ascii_case(b"set-cookie"))
            .map(|h| h.value.get(ubuf));
        crate::sticky::sets_cookie(sets, name)
    };
    for c in sticky.iter().chain(cookies.iter().filter(|c| !theirs(c))) {
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
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
