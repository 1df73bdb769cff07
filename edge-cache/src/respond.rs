//! Phase `respond`, pure: the bytes of a response head (a stored head plus `Age` and
//! `X-Cache`, or one built from origin fields), conditional answers (304, RFC 9110 §13) and
//! byte ranges (206 / 416, RFC 9110 §14) served from a stored full object.

use crate::message::{get, reason, Fields, Request};
use crate::store::Object;

/// `Via` entry this edge adds.
pub const VIA: &str = "1.1 causeway";

/// Fields that describe one connection or one message's framing; never stored or relayed.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// The origin's fields as they are relayed or stored: no hop-by-hop fields (nor those its
/// Connection names), no Age (recomputed), no edge-targeted fields, none of `strip`; `Via`
/// gains this edge.
pub fn relayed_fields(fields: &Fields, tag_header: &str, strip: &[String]) -> Fields {
    let named: Vec<String> = crate::message::all(fields, "connection")
        .flat_map(|v| {
            v.split(|&b| b == b',')
                .map(|t| {
                    String::from_utf8_lossy(crate::cache_control::trim(t)).to_ascii_lowercase()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out: Fields = fields
        .iter()
        .filter(|(n, _)| {
            !is_hop_by_hop(n)
                && n != "age"
                && n != "surrogate-control"
                && n != "via"
                && n != tag_header
                && !named.contains(n)
                && !strip.contains(n)
        })
        .cloned()
        .collect();
    let mut via = crate::message::all(fields, "via")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    if !via.is_empty() {
        via.push_str(", ");
    }
    via.push_str(VIA);
    out.push(("via".into(), via.into_bytes()));
    out
}

/// A response head: status line, fields, then `content-length` (or chunked when `None`),
/// without the final blank line.
pub fn head(status: u16, fields: &Fields, length: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in fields {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) if status != 304 && status != 204 => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Some(_) => {}
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out
}

/// The status and fields of a head built by [`head`] (for writers that are not HTTP/1.1, and
/// for custom error pages). Framing fields are left out.
pub fn head_fields(head: &[u8]) -> (u16, Fields) {
    let mut full = Vec::with_capacity(head.len() + 2);
    full.extend_from_slice(head);
    full.extend_from_slice(b"\r\n");
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut storage);
    if parsed.parse(&full).is_err() {
        return (502, Vec::new());
    }
    let status = parsed.code.unwrap_or(502);
    let fields = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "transfer-encoding" | "content-length" | "connection" | "keep-alive"
            )
        })
        .collect();
    (status, fields)
}

/// The per-response tail of a head: Age, X-Cache, connection close, and the blank line.
pub fn tail(out: &mut Vec<u8>, age: Option<u64>, x_cache: &str, close: bool) {
    debug_assert!(!x_cache.is_empty());
    if let Some(age) = age {
        out.extend_from_slice(b"age: ");
        out.extend_from_slice(age.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-cache: ");
    out.extend_from_slice(x_cache.as_bytes());
    out.extend_from_slice(b" from causeway\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2).
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    strip(a) == strip(b)
}

/// Whether a GET or HEAD may be answered 304 from `obj` (RFC 9110 §13.1.2, §13.1.3, §13.2.2:
/// If-None-Match wins over If-Modified-Since).
pub fn not_modified(req: &Request, obj: &Object) -> bool {
    if !req.is_get_or_head() || obj.status != 200 {
        return false;
    }
    if let Some(inm) = req.header("if-none-match") {
        let Some(etag) = obj.etag() else { return false };
        let inm = crate::cache_control::trim(inm);
        if inm == b"*" {
            return true;
        }
        return crate::cache_control::split_list(inm).any(|t| weak_eq(t, etag));
    }
    if let (Some(ims), Some(lm)) = (req.header("if-modified-since"), obj.last_modified()) {
        let parse = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        };
        if let (Some(ims), Some(lm)) = (parse(ims), parse(lm)) {
            return lm <= ims;
        }
    }
    false
}

/// The fields a 304 carries (RFC 9110 §15.4.5).
pub fn not_modified_fields(obj: &Object) -> Fields {
    obj.fields
        .iter()
        .filter(|(n, _)| {
            matches!(
                n.as_str(),
                "cache-control"
                    | "content-location"
                    | "date"
                    | "etag"
                    | "expires"
                    | "vary"
                    | "last-modified"
                    | "via"
            )
        })
        .cloned()
        .collect()
}

/// What a Range request gets from a full stored representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// Ignore the Range header: send it all.
    Full,
    /// Inclusive byte ranges, in the order asked.
    Partial(Vec<(u64, u64)>),
    /// 416.
    Unsatisfiable,
}

/// Most ranges honoured in one request; more (or overlapping abuse) gets the whole object.
const MAX_RANGES: usize = 16;

/// Evaluates `Range` (and `If-Range`) against a stored 200 of `len` bytes.
pub fn ranges(req: &Request, obj: &Object) -> Ranged {
    if req.method != "GET" || obj.status != 200 {
        return Ranged::Full;
    }
    let Some(spec) = req.header("range") else {
        return Ranged::Full;
    };
    if let Some(ir) = req.header("if-range") {
        let ir = crate::cache_control::trim(ir);
        let strong_match = ir.starts_with(b"\"") && obj.etag() == Some(ir);
        let date_match =
            !ir.starts_with(b"\"") && !ir.starts_with(b"W/") && obj.last_modified() == Some(ir);
        if !(strong_match || date_match) {
            return Ranged::Full;
        }
    }
    parse_ranges(spec, obj.body.len() as u64)
}

/// Parses `bytes=...` against a length.
pub fn parse_ranges(spec: &[u8], len: u64) -> Ranged {
    let Some(set) = spec.strip_prefix(b"bytes=") else {
        return Ranged::Full;
    };
    let mut out = Vec::new();
    let mut any = false;
    for r in set.split(|&b| b == b',') {
        let r = crate::cache_control::trim(r);
        if r.is_empty() {
            continue;
        }
        any = true;
        let Some(dash) = r.iter().position(|&b| b == b'-') else {
            return Ranged::Full;
        };
        let num = |v: &[u8]| -> Option<u64> {
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(v).ok()?.parse().ok()
        };
        let (a, b) = (&r[..dash], &r[dash + 1..]);
        if a.is_empty() {
            let Some(n) = num(b) else { return Ranged::Full };
            if n == 0 || len == 0 {
                continue;
            }
            out.push((len.saturating_sub(n), len - 1));
        } else {
            let Some(first) = num(a) else {
                return Ranged::Full;
            };
            let last = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match num(b) {
                    Some(l) if l >= first => l.min(len.saturating_sub(1)),
                    _ => return Ranged::Full,
                }
            };
            if first >= len {
                continue;
            }
            out.push((first, last));
        }
        if out.len() > MAX_RANGES {
            return Ranged::Full;
        }
    }
    if !any {
        return Ranged::Full;
    }
    if out.is_empty() {
        return Ranged::Unsatisfiable;
    }
    Ranged::Partial(out)
}

/// The boundary of multipart/byteranges responses.
pub const BOUNDARY: &str = "causeway-byteranges";

/// A 206 body and its extra fields for `ranges` of `obj`.
pub fn partial(obj: &Object, ranges: &[(u64, u64)]) -> (Fields, Vec<u8>) {
    let len = obj.body.len() as u64;
    let mut fields: Fields = obj
        .fields
        .iter()
        .filter(|(n, _)| ranges.len() == 1 || n != "content-type")
        .cloned()
        .collect();
    if let [(a, b)] = ranges {
        fields.push((
            "content-range".into(),
            format!("bytes {a}-{b}/{len}").into_bytes(),
        ));
        return (fields, obj.body[*a as usize..=*b as usize].to_vec());
    }
    let ctype = get(&obj.fields, "content-type").map(|v| String::from_utf8_lossy(v).into_owned());
    let mut body = Vec::new();
    for (a, b) in ranges {
        body.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
        if let Some(t) = &ctype {
            body.extend_from_slice(format!("content-type: {t}\r\n").as_bytes());
        }
        body.extend_from_slice(format!("content-range: bytes {a}-{b}/{len}\r\n\r\n").as_bytes());
        body.extend_from_slice(&obj.body[*a as usize..=*b as usize]);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    fields.push((
        "content-type".into(),
        format!("multipart/byteranges; boundary={BOUNDARY}").into_bytes(),
    ));
    (fields, body)
}

/// How a request was served, in CloudFront's words (`X-Cache`, `x-edge-result-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeResult {
    Hit,
    RefreshHit,
    Miss,
    /// Sent around the cache (a bypass rule or an uncached method); shown as `Miss`.
    Bypass,
    Error,
    Redirect,
}

impl EdgeResult {
    /// The `X-Cache` word for a response with this status: CloudFront says `Error` for any
    /// error status, stored or not.
    pub fn x_cache(self, status: u16) -> &'static str {
        if status >= 400 {
            return "Error";
        }
        match self {
            EdgeResult::Hit => "Hit",
            EdgeResult::RefreshHit => "RefreshHit",
            EdgeResult::Miss | EdgeResult::Bypass => "Miss",
            EdgeResult::Error => "Error",
            EdgeResult::Redirect => "Redirect",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EdgeResult::Hit => "hit",
            EdgeResult::RefreshHit => "refresh",
            EdgeResult::Miss => "miss",
            EdgeResult::Bypass => "bypass",
            EdgeResult::Error => "error",
            EdgeResult::Redirect => "redirect",
        }
    }
}

/// The start of a response head: a stored object's (shared, not copied) or one built now.
#[derive(Debug)]
pub enum Head {
    Stored(bytes::Bytes),
    Built(Vec<u8>),
}

/// A response body.
#[derive(Debug)]
pub enum ReplyBody {
    Empty,
    Full(bytes::Bytes),
    /// Too big to store: relayed as it arrives.
    Stream(crate::origin::Streaming),
}

/// A response, ready for any wire protocol's writer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Status line and fields (with framing), without `Age`, `X-Cache` or the blank line.
    pub head: Head,
    pub age: Option<u64>,
    pub result: EdgeResult,
    pub body: ReplyBody,
    /// Bytes of this reply that came from the cache rather than the origin.
    pub from_cache: bool,
}

/// What the logs need of a reply once its body is gone.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub status: u16,
    pub result: EdgeResult,
    pub from_cache: bool,
}

impl Reply {
    /// What the logs need of this reply.
    pub fn served(&self) -> Served {
        Served {
            status: self.status,
            result: self.result,
            from_cache: self.from_cache,
        }
    }

    /// A refused request's answer: the status and the reason as text.
    pub fn refusal(status: u16, why: &str) -> Reply {
        Reply::local(
            status,
            &[],
            "text/plain",
            &format!("{why}\n"),
            EdgeResult::Error,
        )
    }

    /// A short local answer (errors, redirects, purge results).
    pub fn local(
        status: u16,
        extra: &[(&str, &str)],
        content_type: &str,
        body: &str,
        result: EdgeResult,
    ) -> Reply {
        let mut fields: Fields = extra
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        fields.push(("content-type".into(), content_type.as_bytes().to_vec()));
        fields.push(("cache-control".into(), b"no-store".to_vec()));
        Reply {
            status,
            head: Head::Built(head(status, &fields, Some(body.len() as u64))),
            age: None,
            result,
            body: ReplyBody::Full(bytes::Bytes::copy_from_slice(body.as_bytes())),
            from_cache: false,
        }
    }

    /// A stored object answering `req`: 304, 206, 416 or the whole object.
    pub fn stored(
        req: &Request,
        obj: &Object,
        now: tokio::time::Instant,
        result: EdgeResult,
    ) -> Reply {
        let age = Some(obj.age(now).as_secs());
        let reply = |status, head, body| Reply {
            status,
            head,
            age,
            result,
            body,
            from_cache: true,
        };
        if not_modified(req, obj) {
            let h = head(304, &not_modified_fields(obj), Some(0));
            return reply(304, Head::Built(h), ReplyBody::Empty);
        }
        match ranges(req, obj) {
            Ranged::Full => reply(
                obj.status,
                Head::Stored(obj.head.clone()),
                ReplyBody::Full(obj.body.clone()),
            ),
            Ranged::Partial(r) => {
                let (fields, body) = partial(obj, &r);
                let h = head(206, &fields, Some(body.len() as u64));
                reply(206, Head::Built(h), ReplyBody::Full(body.into()))
            }
            Ranged::Unsatisfiable => {
                let mut fields = not_modified_fields(obj);
                fields.push((
                    "content-range".into(),
                    format!("bytes */{}", obj.body.len()).into_bytes(),
                ));
                let h = head(416, &fields, Some(0));
                reply(416, Head::Built(h), ReplyBody::Empty)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_14_1_range_forms() {
        assert_eq!(
            parse_ranges(b"bytes=0-4", 10),
            Ranged::Partial(vec![(0, 4)])
        );
        assert_eq!(parse_ranges(b"bytes=5-", 10), Ranged::Partial(vec![(5, 9)]));
        assert_eq!(parse_ranges(b"bytes=-3", 10), Ranged::Partial(vec![(7, 9)]));
        assert_eq!(
            parse_ranges(b"bytes=8-100", 10),
            Ranged::Partial(vec![(8, 9)])
        );
        assert_eq!(
            parse_ranges(b"bytes=0-1, 4-5", 10),
            Ranged::Partial(vec![(0, 1), (4, 5)])
        );
        assert_eq!(parse_ranges(b"bytes=20-30", 10), Ranged::Unsatisfiable);
        assert_eq!(
            parse_ranges(b"bytes=5-1", 10),
            Ranged::Full,
            "invalid: ignored"
        );
        assert_eq!(parse_ranges(b"items=0-1", 10), Ranged::Full);
        assert_eq!(parse_ranges(b"bytes=a-b", 10), Ranged::Full);
        let many = format!(
            "bytes={}",
            (0..20)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(parse_ranges(many.as_bytes(), 100), Ranged::Full);
    }

    #[test]
    fn relayed_fields_drop_hop_by_hop_and_add_via() {
        let f: Fields = vec![
            ("connection".into(), b"close, x-secret".to_vec()),
            ("x-secret".into(), b"1".to_vec()),
            ("transfer-encoding".into(), b"chunked".to_vec()),
            ("age".into(), b"5".to_vec()),
            ("cache-tag".into(), b"post-1".to_vec()),
            ("content-type".into(), b"text/html".to_vec()),
            ("via".into(), b"1.1 nginx".to_vec()),
        ];
        let out = relayed_fields(&f, "cache-tag", &[]);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["content-type", "via"]);
        assert_eq!(get(&out, "via").unwrap(), b"1.1 nginx, 1.1 causeway");
    }
}
