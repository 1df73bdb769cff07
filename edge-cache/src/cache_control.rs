//! Cache directives (RFC 9111 §5.2) parsed from `Cache-Control`, `CDN-Cache-Control`
//! (RFC 9213) and `Surrogate-Control` values. Pure: bytes in, a `Directives` out.

/// The directives this cache acts on. Durations are seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// Unqualified `no-cache`: every reuse needs validation.
    pub no_cache: bool,
    /// Fields named by a qualified `no-cache="..."`: not reused without validation, so not
    /// stored (lower-case names).
    pub no_cache_fields: Vec<String>,
    /// Unqualified `private`.
    pub private: bool,
    /// Fields named by a qualified `private="..."`: a shared cache stores the rest.
    pub private_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub immutable: bool,
    pub no_transform: bool,
    // Request directives.
    pub only_if_cached: bool,
    /// `max-stale` without a value accepts any staleness (`u64::MAX`).
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    /// A directive appeared twice with different values, or had a value that is not a
    /// delta-seconds: RFC 9111 §4.2.1 lets a cache treat the response as stale.
    pub conflicting: bool,
}

/// The largest delta-seconds a cache needs to represent (RFC 9111 §1.2.2).
pub const DELTA_MAX: u64 = 2_147_483_648;

impl Directives {
    /// Parses every value of one field (several field lines are one comma list).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Directives {
        let mut d = Directives::default();
        for v in values {
            for item in split_list(v) {
                d.apply(item);
            }
        }
        d
    }

    /// Whether anything at all was given (an empty or absent field gives nothing).
    pub fn is_empty(&self) -> bool {
        *self == Directives::default()
    }

    fn apply(&mut self, item: &[u8]) {
        let (name, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&item[..i]), Some(unquote(trim(&item[i + 1..])))),
            None => (trim(item), None),
        };
        let name = name.to_ascii_lowercase();
        let seconds = |conflicting: &mut bool, slot: &mut Option<u64>| {
            let v = value.as_deref().and_then(delta_seconds);
            match (v, *slot) {
                (None, _) => {
                    *conflicting = true;
                    *slot = Some(0);
                }
                (Some(v), Some(old)) if old != v => {
                    *conflicting = true;
                    *slot = Some(old.min(v));
                }
                (Some(v), _) => *slot = Some(v),
            }
        };
        match name.as_slice() {
            b"max-age" => seconds(&mut self.conflicting, &mut self.max_age),
            b"s-maxage" => seconds(&mut self.conflicting, &mut self.s_maxage),
            b"stale-while-revalidate" => {
                seconds(&mut self.conflicting, &mut self.stale_while_revalidate)
            }
            b"stale-if-error" => seconds(&mut self.conflicting, &mut self.stale_if_error),
            b"min-fresh" => seconds(&mut self.conflicting, &mut self.min_fresh),
            b"max-stale" => match value {
                None => self.max_stale = Some(u64::MAX),
                Some(_) => seconds(&mut self.conflicting, &mut self.max_stale),
            },
            b"no-store" => self.no_store = true,
            b"no-cache" => match value.as_deref() {
                Some(fields) if !fields.is_empty() => {
                    self.no_cache_fields.extend(field_names(fields))
                }
                _ => self.no_cache = true,
            },
            b"private" => match value.as_deref() {
                Some(fields) if !fields.is_empty() => {
                    self.private_fields.extend(field_names(fields))
                }
                _ => self.private = true,
            },
            b"public" => self.public = true,
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"immutable" => self.immutable = true,
            b"no-transform" => self.no_transform = true,
            b"only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }

    /// A shared cache must not serve this response stale (RFC 9111 §4.2.4, §5.2.2.2,
    /// §5.2.2.8, and §5.2.2.10: `s-maxage` implies `proxy-revalidate`).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// Splits a comma list, keeping commas inside quoted strings.
pub fn split_list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = v;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == b',' && !quoted {
                end = i;
                break;
            }
        }
        let item = trim(&rest[..end]);
        rest = if end < rest.len() {
            &rest[end + 1..]
        } else {
            &[]
        };
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Trims optional whitespace.
pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn unquote(v: &[u8]) -> Vec<u8> {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        let mut out = Vec::with_capacity(v.len() - 2);
        let mut escaped = false;
        for &b in &v[1..v.len() - 1] {
            if !escaped && b == b'\\' {
                escaped = true;
                continue;
            }
            escaped = false;
            out.push(b);
        }
        out
    } else {
        v.to_vec()
    }
}

fn field_names(v: &[u8]) -> impl Iterator<Item = String> + '_ {
    v.split(|&b| b == b',')
        .map(trim)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
}

/// Parses delta-seconds: digits only, saturating at [`DELTA_MAX`].
pub fn delta_seconds(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(n.min(DELTA_MAX))
}

/// Whether a `CDN-Cache-Control` value is a valid structured-field dictionary of the shape
/// this cache understands (RFC 9213 §2.1: an invalid value is ignored, and `Cache-Control`
/// applies instead).
pub fn is_valid_dictionary(v: &[u8]) -> bool {
    let mut any = false;
    for item in split_list(v) {
        any = true;
        let (key, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let key_ok = key
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || *b == b'*')
            && key
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(b));
        if !key_ok {
            return false;
        }
        if let Some(v) = value {
            let int = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
            let string = v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"';
            let token = v.first().is_some_and(u8::is_ascii_alphabetic)
                && v.iter().all(|b| b.is_ascii_graphic() && *b != b'"');
            if !(int || string || token) {
                return false;
            }
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Directives {
        Directives::parse([v.as_bytes()])
    }

    #[test]
    fn parses_the_directives_a_shared_cache_uses() {
        let d = p(
            "public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30, stale-if-error=600",
        );
        assert_eq!(d.max_age, Some(60));
        assert_eq!(
            d.s_maxage,
            Some(120),
            "quoted values are accepted from senders"
        );
        assert!(d.public);
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert!(d.forbids_stale(), "s-maxage implies proxy-revalidate");
        let d = p("No-Store, PRIVATE, no-cache");
        assert!(d.no_store && d.private && d.no_cache);
        assert!(!d.forbids_stale());
    }

    #[test]
    fn qualified_forms_name_fields() {
        let d = p("private=\"Set-Cookie, X-User\", no-cache=\"X-Token\", max-age=5");
        assert!(!d.private && !d.no_cache);
        assert_eq!(d.private_fields, vec!["set-cookie", "x-user"]);
        assert_eq!(d.no_cache_fields, vec!["x-token"]);
        assert_eq!(d.max_age, Some(5));
    }

    #[test]
    fn conflicting_or_invalid_values_mean_stale() {
        let d = Directives::parse([b"max-age=60".as_slice(), b"max-age=10"]);
        assert!(d.conflicting);
        assert_eq!(d.max_age, Some(10));
        let d = p("max-age=abc");
        assert_eq!(d.max_age, Some(0));
        let d = p("max-age=-5");
        assert_eq!(d.max_age, Some(0));
        let d = p("max-age=99999999999999999999999");
        assert_eq!(d.max_age, Some(DELTA_MAX));
        let d = Directives::parse([b"max-age=60".as_slice(), b"max-age=60"]);
        assert!(!d.conflicting, "the same value twice is no conflict");
    }

    #[test]
    fn request_directives() {
        let d = p("max-stale, min-fresh=10, only-if-cached");
        assert_eq!(d.max_stale, Some(u64::MAX));
        assert_eq!(d.min_fresh, Some(10));
        assert!(d.only_if_cached);
    }

    #[test]
    fn lists_split_outside_quotes_only() {
        let items: Vec<&[u8]> = split_list(b" a, b=\"x, y\" ,, c ").collect();
        assert_eq!(items, vec![&b"a"[..], b"b=\"x, y\"", b"c"]);
    }

    #[test]
    fn cdn_cache_control_must_be_a_dictionary() {
        assert!(is_valid_dictionary(b"max-age=60, stale-if-error=30"));
        assert!(is_valid_dictionary(b"no-store"));
        assert!(!is_valid_dictionary(b"Max-Age=60"), "keys are lower-case");
        assert!(!is_valid_dictionary(b"max-age=6 0"));
        assert!(!is_valid_dictionary(b""));
    }
}
