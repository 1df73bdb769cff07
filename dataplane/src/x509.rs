//! What ALB's mutual TLS tells a target about a client certificate: a small DER reader for the
//! leaf's serial number, issuer, subject and validity (RFC 2253 names, ISO 8601 times), and
//! the URL-encoded PEM of a chain. Pure; it reads only certificates rustls has already parsed.

/// One DER element at the front of `input`: its tag and contents, and the rest. Definite
/// lengths only (DER has no other), up to 4 length bytes.
fn element<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (body, after) = rest.split_at(len);
    *input = after;
    Some((tag, body))
}

/// The element at the front of `input` if it has tag `want`.
fn expect<'a>(input: &mut &'a [u8], want: u8) -> Option<&'a [u8]> {
    match element(input)? {
        (tag, body) if tag == want => Some(body),
        _ => None,
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The fields ALB's verify mode sends about a client's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The serial number in upper-case hex, as OpenSSL prints it (`0A1B2C3D4E5F`).
    pub serial: String,
    /// RFC 2253 distinguished names: `CN=client-1,OU=Fleet,O=Example\, Inc.,C=US`.
    pub issuer: String,
    pub subject: String,
    /// ISO 8601, UTC: `2026-12-07T06:53:10Z`.
    pub not_before: String,
    pub not_after: String,
    /// `not_after` in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Reads a certificate's serial number, issuer, validity and subject; `None` if the DER is not
/// a certificate this reader understands.
pub fn leaf_info(cert: &[u8]) -> Option<LeafInfo> {
    let mut input = cert;
    let mut certificate = expect(&mut input, SEQUENCE)?;
    let mut tbs = expect(&mut certificate, SEQUENCE)?;
    let mut first = element(&mut tbs)?;
    if first.0 == 0xa0 {
        // [0] EXPLICIT version.
        first = element(&mut tbs)?;
    }
    if first.0 != INTEGER {
        return None;
    }
    let serial = serial_hex(first.1);
    expect(&mut tbs, SEQUENCE)?; // signature algorithm
    let issuer = rfc2253(expect(&mut tbs, SEQUENCE)?)?;
    let mut validity = expect(&mut tbs, SEQUENCE)?;
    let (not_before, _) = time(&mut validity)?;
    let (not_after, not_after_unix) = time(&mut validity)?;
    let subject = rfc2253(expect(&mut tbs, SEQUENCE)?)?;
    Some(LeafInfo {
        serial,
        issuer,
        subject,
        not_before,
        not_after,
        not_after_unix,
    })
}

/// A serial number's magnitude in upper-case hex, two digits a byte (a leading zero byte that
/// only keeps the number positive is left out).
fn serial_hex(bytes: &[u8]) -> String {
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A UTCTime or GeneralizedTime (`Z` only, as RFC 5280 requires) as ISO 8601 and Unix seconds.
fn time(input: &mut &[u8]) -> Option<(String, i64)> {
    let (tag, body) = element(input)?;
    let text = std::str::from_utf8(body).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let unix = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let iso = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z");
    Some((iso, unix))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A Name (RDNSequence) as RFC 2253 writes it: the last RDN first, `,` between RDNs, `+`
/// between the values of one RDN, known attribute types by their short names, others by OID
/// with the value as `#` and its DER in hex.
fn rfc2253(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let mut set = expect(&mut name, SET)?;
        let mut values = Vec::new();
        while !set.is_empty() {
            let mut atv = expect(&mut set, SEQUENCE)?;
            let oid = expect(&mut atv, OID)?;
            let raw_value = atv;
            let (tag, body) = element(&mut atv)?;
            let mut out = match short_name(oid) {
                Some(n) => n.to_owned(),
                None => dotted(oid)?,
            };
            out.push('=');
            match string_value(tag, body) {
                Some(s) if short_name(oid).is_some() => escape_into(&mut out, &s),
                _ => {
                    out.push('#');
                    for b in raw_value {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
            values.push(out);
        }
        rdns.push(values.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// RFC 2253's short names for the attribute types it lists, plus the common ones OpenSSL
/// also names.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// An OID in dotted decimal.
fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(acc);
            acc = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The text of a directory string value, if it is one of the string types.
fn string_value(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, T61String (read as Latin-1), IA5String.
        0x0c | 0x13 | 0x16 => std::str::from_utf8(body).ok().map(str::to_owned),
        0x14 => Some(body.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UCS-2, big-endian.
        0x1e if body.len().is_multiple_of(2) => {
            char::decode_utf16(body.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// Appends `value` with RFC 2253's escapes: `,+"\<>;` anywhere, `#` or a space first, a space
/// last, and control characters as `\XX`.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() && c.is_ascii() => out.push_str(&format!("\\{:02X}", c as u8)),
            c => out.push(c),
        }
    }
}

/// Certificates as PEM, one `CERTIFICATE` block each, lines of 64 base64 characters.
pub fn pem(certs: &[&[u8]]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let mut line = 0;
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                let c = if i <= chunk.len() {
                    B64[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                };
                out.push(c);
                line += 1;
                if line == 64 {
                    out.push('\n');
                    line = 0;
                }
            }
        }
        if line > 0 {
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// URL-encodes as ALB does for its certificate fields: every byte but letters, digits,
/// `-._~` and the `+=/` of base64 as `%XX`.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+=/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(causeway_testkit::tls::cert(name))
            .unwrap()
            .to_vec()
    }

    /// The fields agree with `openssl x509 -noout -serial -subject -issuer -dates -nameopt
    /// RFC2253` (testkit/certs/README.md), UTCTime and GeneralizedTime alike.
    #[test]
    fn a_leaf_reads_as_openssl_prints_it() {
        let info = leaf_info(&der("client-1.pem")).unwrap();
        assert_eq!(info.serial, "0A1B2C3D4E5F");
        assert_eq!(
            info.subject,
            "CN=client-1,OU=Fleet,O=Causeway Test\\, Inc.,C=US"
        );
        assert_eq!(info.issuer, "CN=Causeway Test Client CA,O=Causeway Test");
        assert_eq!(info.not_before, "2025-01-01T00:00:00Z");
        assert_eq!(info.not_after, "2125-01-01T00:00:00Z");
        assert_eq!(info.not_after_unix, 4_891_363_200);
        let expired = leaf_info(&der("client-expired.pem")).unwrap();
        assert_eq!(expired.serial, "1000");
        assert_eq!(expired.subject, "CN=client-expired");
        assert_eq!(expired.not_after, "2021-01-01T00:00:00Z");
        assert_eq!(expired.not_after_unix, 1_609_459_200);
        assert_eq!(leaf_info(&der("rogue-client.pem")).unwrap().serial, "07");
    }

    #[test]
    fn anything_but_a_certificate_reads_as_none() {
        let whole = der("client-1.pem");
        for cut in [0, 1, 2, 10, 100, whole.len() - 1] {
            assert_eq!(leaf_info(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(leaf_info(b"\x30\x85\xff\xff\xff\xff\xff"), None);
        assert_eq!(leaf_info(b"not DER at all"), None);
    }

    #[test]
    fn names_escape_what_rfc_2253_escapes_and_unknown_types_go_as_hex() {
        let mut s = String::new();
        escape_into(&mut s, "#a,b+c\"d\\e<f>g;h ");
        assert_eq!(s, "\\#a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h\\ ");
        let mut s = String::new();
        escape_into(&mut s, " x\u{1}");
        assert_eq!(s, "\\ x\\01");
        // SET { SEQ { OID 1.2.3.4, UTF8String "v" } }, then SET { SEQ { CN, PrintableString "a" } }
        let name = b"\x31\x0a\x30\x08\x06\x03\x2a\x03\x04\x0c\x01v\x31\x0a\x30\x08\x06\x03\x55\x04\x03\x13\x01a";
        assert_eq!(rfc2253(name).unwrap(), "CN=a,1.2.3.4=#0C0176");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).unwrap(),
            "1.2.840.113549"
        );
    }

    #[test]
    fn pem_is_what_openssl_wrote_and_url_encoding_keeps_base64() {
        let text = std::fs::read_to_string(causeway_testkit::tls::cert("client-1.pem")).unwrap();
        assert_eq!(pem(&[&der("client-1.pem")]), text);
        let encoded = url_encode(&text);
        assert!(
            encoded.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{encoded}"
        );
        assert!(!encoded.contains(' ') && !encoded.contains('\n'));
        let decoded = {
            let b = encoded.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        assert_eq!(decoded, text);
        assert_eq!(url_encode("a+b=c/d e\u{e9}"), "a+b=c/d%20e%C3%A9");
    }
}
