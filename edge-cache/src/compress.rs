//! Edge compression under CloudFront's rules, pure: brotli or gzip for a compressible content
//! type, a body of 1,000 to 10,000,000 bytes, status 200, 403 or 404, no Content-Encoding yet,
//! and a viewer that accepts it. The ETag becomes weak and `Vary: Accept-Encoding` is added.

use crate::message::{all, get, Fields};
use bytes::Bytes;
use std::io::Write;

/// Bodies CloudFront compresses: at least this many bytes...
pub const MIN_SIZE: usize = 1_000;
/// ...and at most this many.
pub const MAX_SIZE: usize = 10_000_000;

/// Content types worth compressing (CloudFront's list, trimmed of the obsolete ones).
const TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "text/plain",
    "text/javascript",
    "text/xml",
    "text/csv",
    "text/markdown",
    "text/x-component",
    "text/x-script",
    "text/richtext",
    "text/vtt",
    "application/javascript",
    "application/x-javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "application/x-font-opentype",
    "application/x-font-truetype",
    "application/x-web-app-manifest+json",
    "font/eot",
    "font/opentype",
    "font/otf",
    "font/ttf",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
];

/// A coding the edge produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding for a normalised Accept-Encoding (`br,gzip`, `gzip`, `br`, ``): brotli
    /// first, as CloudFront does.
    pub fn for_accept(normalised: &str) -> Option<Coding> {
        if normalised.split(',').any(|c| c == "br") {
            Some(Coding::Br)
        } else if normalised.split(',').any(|c| c == "gzip") {
            Some(Coding::Gzip)
        } else {
            None
        }
    }
}

/// Whether CloudFront's rules allow compressing this response.
pub fn eligible(status: u16, fields: &Fields, body_len: usize) -> bool {
    if !matches!(status, 200 | 403 | 404) || !(MIN_SIZE..=MAX_SIZE).contains(&body_len) {
        return false;
    }
    if get(fields, "content-encoding").is_some_and(|v| !v.eq_ignore_ascii_case(b"identity")) {
        return false;
    }
    if all(fields, "cache-control").any(|v| {
        crate::cache_control::split_list(v).any(|d| d.eq_ignore_ascii_case(b"no-transform"))
    }) {
        return false;
    }
    let Some(ct) = get(fields, "content-type") else {
        return false;
    };
    let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    TYPES.contains(&mime)
}

/// Compresses `body` and rewrites the fields to match: Content-Encoding, a weak ETag, and
/// Accept-Encoding in Vary.
pub fn apply(coding: Coding, fields: &Fields, body: &[u8]) -> std::io::Result<(Fields, Bytes)> {
    let out = match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 3),
                flate2::Compression::new(6),
            );
            e.write_all(body)?;
            e.finish()?
        }
        Coding::Br => {
            let mut out = Vec::with_capacity(body.len() / 3);
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(body)?;
                w.flush()?;
            }
            out
        }
    };
    let mut f: Fields = fields
        .iter()
        .filter(|(n, _)| n != "content-encoding" && n != "etag")
        .cloned()
        .collect();
    f.push((
        "content-encoding".into(),
        coding.token().as_bytes().to_vec(),
    ));
    if let Some(etag) = get(fields, "etag") {
        let weak = if etag.starts_with(b"W/") {
            etag.to_vec()
        } else {
            [b"W/".as_slice(), etag].concat()
        };
        f.push(("etag".into(), weak));
    }
    let varies = all(fields, "vary").any(|v| {
        crate::cache_control::split_list(v).any(|t| t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !varies {
        f.push(("vary".into(), b"Accept-Encoding".to_vec()));
    }
    Ok((f, out.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fields(ct: &str) -> Fields {
        vec![
            ("content-type".into(), ct.as_bytes().to_vec()),
            ("etag".into(), b"\"abc\"".to_vec()),
        ]
    }

    #[test]
    fn cloudfront_eligibility() {
        let html = fields("text/html; charset=UTF-8");
        assert!(eligible(200, &html, 5000));
        assert!(eligible(404, &html, 5000));
        assert!(!eligible(200, &html, 999), "too small");
        assert!(!eligible(200, &html, 10_000_001), "too big");
        assert!(!eligible(301, &html, 5000), "status");
        assert!(!eligible(200, &fields("image/jpeg"), 5000), "type");
        let mut enc = html.clone();
        enc.push(("content-encoding".into(), b"gzip".to_vec()));
        assert!(!eligible(200, &enc, 5000), "already encoded");
        let mut nt = html;
        nt.push(("cache-control".into(), b"max-age=5, no-transform".to_vec()));
        assert!(!eligible(200, &nt, 5000), "no-transform");
    }

    #[test]
    fn gzip_and_brotli_round_trip_with_a_weak_etag() {
        let body = "hello compressible world ".repeat(200);
        let (f, gz) = apply(Coding::Gzip, &fields("text/html"), body.as_bytes()).unwrap();
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        assert!(gz.len() < body.len() / 10);
        assert_eq!(get(&f, "content-encoding").unwrap(), b"gzip");
        assert_eq!(get(&f, "etag").unwrap(), b"W/\"abc\"");
        assert_eq!(get(&f, "vary").unwrap(), b"Accept-Encoding");
        let (f, br) = apply(Coding::Br, &fields("text/css"), body.as_bytes()).unwrap();
        let mut plain = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, body.as_bytes());
        assert_eq!(get(&f, "content-encoding").unwrap(), b"br");
        assert_eq!(Coding::for_accept("br,gzip"), Some(Coding::Br));
        assert_eq!(Coding::for_accept("gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::for_accept(""), None);
    }
}
