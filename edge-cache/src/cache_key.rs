//! Phase `cache_key`, pure: the primary key (scheme, host, port, path, and the query as the
//! behavior's policy says: never the path alone) and the variant key (the policy's headers and
//! cookies), plus the normalised `Accept-Encoding`.

use crate::message::{all, query_pairs, Request};
use causeway_config::edge::{CacheKeyPolicy, Selection};

/// Query parameters the WordPress preset strips from keys and origin requests.
pub fn is_tracking_param(name: &str) -> bool {
    name.starts_with("utm_") || name == "fbclid" || name == "gclid"
}

/// The query as `sel` keeps it (order preserved), without tracking parameters when asked.
pub fn filter_query(query: &str, sel: &Selection, strip_tracking: bool) -> String {
    let mut out = String::new();
    for (name, pair) in query_pairs(query) {
        if !sel.selects(name.as_bytes()) || (strip_tracking && is_tracking_param(name)) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
    }
    out
}

/// The Host with the scheme's default port removed and lower-cased.
pub fn normalize_authority(scheme: &str, authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    match a.strip_suffix(default) {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => a,
    }
}

/// The primary key: `scheme://host[:port]/path[?query]`.
pub fn primary(req: &Request, policy: &CacheKeyPolicy, strip_tracking: bool) -> String {
    let host = normalize_authority(req.scheme, &req.authority);
    let q = filter_query(&req.query, &policy.query_strings, strip_tracking);
    let mut k =
        String::with_capacity(req.scheme.len() + 3 + host.len() + req.path.len() + q.len() + 1);
    k.push_str(req.scheme);
    k.push_str("://");
    k.push_str(&host);
    k.push_str(&req.path);
    if !q.is_empty() {
        k.push('?');
        k.push_str(&q);
    }
    k
}

/// The variant key: the policy's headers and cookies, each as `name=value` lines.
pub fn variant(req: &Request, policy: &CacheKeyPolicy) -> Vec<u8> {
    let mut v = Vec::new();
    for name in &policy.headers {
        v.extend_from_slice(name.as_bytes());
        v.push(b':');
        if name == "accept-encoding" {
            v.extend_from_slice(accept_encoding(req).as_bytes());
        } else {
            v.extend_from_slice(&normalize_field(all(&req.headers, name)));
        }
        v.push(b'\n');
    }
    if policy.cookies != Selection::None {
        let mut cookies: Vec<(&[u8], &[u8])> = req
            .cookies()
            .filter(|(n, _)| policy.cookies.selects(n))
            .collect();
        cookies.sort();
        for (n, val) in cookies {
            v.extend_from_slice(b"cookie ");
            v.extend_from_slice(n);
            v.push(b'=');
            v.extend_from_slice(val);
            v.push(b'\n');
        }
    }
    v
}

/// The request's `Accept-Encoding` reduced to what the edge distinguishes: `br,gzip`, `gzip`,
/// `br` or nothing (CloudFront's normalisation). This value, not the client's, goes to the
/// origin, so a stored variant always matches what its key says.
pub fn accept_encoding(req: &Request) -> &'static str {
    let mut gzip = false;
    let mut br = false;
    for v in all(&req.headers, "accept-encoding") {
        for item in crate::cache_control::split_list(v) {
            let mut parts = item.split(|&b| b == b';');
            let coding = crate::cache_control::trim(parts.next().unwrap_or_default());
            let refused = parts.any(|p| {
                let p = crate::cache_control::trim(p);
                p.eq_ignore_ascii_case(b"q=0")
                    || p.eq_ignore_ascii_case(b"q=0.0")
                    || p.eq_ignore_ascii_case(b"q=0.00")
                    || p.eq_ignore_ascii_case(b"q=0.000")
            });
            if refused {
                continue;
            }
            if coding.eq_ignore_ascii_case(b"gzip") {
                gzip = true;
            } else if coding.eq_ignore_ascii_case(b"br") {
                br = true;
            }
        }
    }
    match (br, gzip) {
        (true, true) => "br,gzip",
        (false, true) => "gzip",
        (true, false) => "br",
        (false, false) => "",
    }
}

/// A request field's values as one normalised value, for Vary matching: lines joined by `,`
/// and whitespace around list items removed (RFC 9111 §4.1).
pub fn normalize_field<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<u8>, item: &[u8]| {
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(item);
    };
    for v in values {
        if v.contains(&b'"') {
            // Quoted strings may hold commas and spaces: such a line is kept as sent (found by
            // the `cache_directives` fuzz target: splitting an unbalanced quote is ambiguous).
            let v = crate::cache_control::trim(v);
            if !v.is_empty() {
                push(&mut out, v);
            }
            continue;
        }
        for item in crate::cache_control::split_list(v) {
            push(&mut out, item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(authority: &str, path: &str, query: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            scheme: "http",
            authority: authority.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Default::default(),
        }
    }

    fn policy(q: Selection, headers: &[&str], cookies: Selection) -> CacheKeyPolicy {
        CacheKeyPolicy {
            query_strings: q,
            headers: headers.iter().map(|s| s.to_string()).collect(),
            cookies,
        }
    }

    #[test]
    fn the_key_holds_scheme_host_port_path_and_query() {
        let p = policy(Selection::All, &[], Selection::None);
        assert_eq!(
            primary(&req("Example.COM:80", "/a", "x=1", &[]), &p, false),
            "http://example.com/a?x=1"
        );
        assert_eq!(
            primary(&req("example.com:8080", "/a", "", &[]), &p, false),
            "http://example.com:8080/a"
        );
        let none = policy(Selection::None, &[], Selection::None);
        assert_eq!(
            primary(&req("h", "/a", "x=1", &[]), &none, false),
            "http://h/a"
        );
    }

    #[test]
    fn query_selections_and_tracking_parameters() {
        let allow = Selection::AllowList(vec!["p".into(), "s".into()]);
        assert_eq!(filter_query("s=1&x=2&p=3", &allow, false), "s=1&p=3");
        let except = Selection::AllExcept(vec!["x".into()]);
        assert_eq!(filter_query("s=1&x=2&p", &except, false), "s=1&p");
        assert_eq!(
            filter_query(
                "utm_source=a&page=2&fbclid=z&gclid=q&utm_x",
                &Selection::All,
                true
            ),
            "page=2"
        );
    }

    #[test]
    fn variant_holds_keyed_headers_and_cookies() {
        let p = policy(
            Selection::All,
            &["accept-language"],
            Selection::AllowList(vec!["lang".into()]),
        );
        let a = req(
            "h",
            "/",
            "",
            &[("accept-language", "de"), ("cookie", "x=1; lang=de")],
        );
        let b = req(
            "h",
            "/",
            "",
            &[("accept-language", "de"), ("cookie", "lang=de; y=2")],
        );
        let c = req(
            "h",
            "/",
            "",
            &[("accept-language", "fr"), ("cookie", "lang=de")],
        );
        assert_eq!(
            variant(&a, &p),
            variant(&b, &p),
            "unkeyed cookies do not split the cache"
        );
        assert_ne!(variant(&a, &p), variant(&c, &p));
    }

    #[test]
    fn vary_values_normalise_whitespace_but_keep_quoted_lines() {
        let n = |v: &[&str]| normalize_field(v.iter().map(|s| s.as_bytes()));
        assert_eq!(n(&["a , b", "c"]), b"a,b,c");
        assert_eq!(n(&["\"x, y\" , z"]), b"\"x, y\" , z");
        // Regression (fuzz): an unbalanced quote normalises the same way twice.
        let once = n(&["\"", "-\"a,a,"]);
        assert_eq!(normalize_field(std::iter::once(once.as_slice())), once);
    }

    #[test]
    fn accept_encoding_is_normalised() {
        let ae = |v: &str| accept_encoding(&req("h", "/", "", &[("accept-encoding", v)]));
        assert_eq!(ae("gzip, deflate, br"), "br,gzip");
        assert_eq!(ae("GZIP;q=0.5"), "gzip");
        assert_eq!(ae("br;q=0, gzip"), "gzip");
        assert_eq!(ae("identity"), "");
        assert_eq!(accept_encoding(&req("h", "/", "", &[])), "");
    }
}
