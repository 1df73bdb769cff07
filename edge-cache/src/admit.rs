//! Phase `admit`, pure: may a response be stored (RFC 9111 §3 for a shared cache), for how
//! long (§4.2.1 explicit freshness, §4.2.2 heuristics, then CloudFront's min/default/max TTL
//! algebra), how old it already is (§4.2.3), and how it may be served stale (RFC 5861).

use crate::cache_control::{is_valid_dictionary, Directives};
use crate::message::{all, get, Fields};
use std::time::{Duration, SystemTime};

/// The behavior's TTL policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    pub min: Duration,
    pub default: Duration,
    pub max: Duration,
    /// How long an error status without explicit freshness is kept (CloudFront's error
    /// caching minimum TTL).
    pub error_min: Duration,
}

/// What the request contributes to storability.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    pub authorization: bool,
    /// The request carried `Cache-Control: no-store` (§5.2.1.5).
    pub no_store: bool,
}

/// How a stored response may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Never served stale (must-revalidate, proxy-revalidate, s-maxage).
    pub forbids_stale: bool,
    /// Every reuse needs validation first (`no-cache`).
    pub always_revalidate: bool,
    /// Header fields that must not be stored (qualified `private` / `no-cache`).
    pub strip_fields: Vec<String>,
}

/// The verdict on one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Store(Freshness),
    /// Not stored, for this reason (logged).
    Refuse(&'static str),
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Error statuses CloudFront caches for the error-caching minimum TTL.
pub fn is_cached_error(status: u16) -> bool {
    matches!(
        status,
        400 | 403 | 404 | 405 | 414 | 416 | 500 | 501 | 502 | 503 | 504
    )
}

/// Statuses this cache understands well enough to store (RFC 9111 §3, "understood").
fn understood(status: u16) -> bool {
    matches!(
        status,
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 410
            | 414
            | 416
            | 451
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

/// The directives that govern this cache: the first valid targeted field
/// (`CDN-Cache-Control`, then `Surrogate-Control`), else `Cache-Control` (RFC 9213 §2.2).
/// The flag says whether a targeted field was used (then `Expires` is ignored too).
pub fn edge_directives(h: &Fields) -> (Directives, bool) {
    let cdn: Vec<&[u8]> = all(h, "cdn-cache-control").collect();
    if !cdn.is_empty() && cdn.iter().all(|v| is_valid_dictionary(v)) {
        return (Directives::parse(cdn), true);
    }
    let surrogate: Vec<&[u8]> = all(h, "surrogate-control").collect();
    if !surrogate.is_empty() {
        let d = Directives::parse(surrogate);
        if !d.is_empty() {
            return (d, true);
        }
    }
    (Directives::parse(all(h, "cache-control")), false)
}

/// A date header's value, if it parses.
pub fn date(h: &Fields, name: &str) -> Option<SystemTime> {
    let v = std::str::from_utf8(get(h, name)?).ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

/// The response's age when it arrived (§4.2.3: corrected initial age).
pub fn initial_age(h: &Fields, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let age_value = get(h, "age")
        .and_then(|v| crate::cache_control::delta_seconds(crate::cache_control::trim(v)))
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = date(h, "date")
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent.max(age_value + delay)
}

/// Decides whether a response to a GET may be stored, and how it may be reused.
pub fn admit(
    req: &RequestFacts,
    status: u16,
    h: &Fields,
    policy: &TtlPolicy,
    response_time: SystemTime,
) -> Admission {
    if !understood(status) {
        return Admission::Refuse("status not cacheable");
    }
    if req.no_store {
        return Admission::Refuse("request no-store");
    }
    let (d, targeted) = edge_directives(h);
    // Never shared, whatever the TTL policy says: a session leak is worse than a miss.
    if d.private {
        return Admission::Refuse("private");
    }
    if get(h, "set-cookie").is_some() && !d.private_fields.iter().any(|f| f == "set-cookie") {
        return Admission::Refuse("set-cookie");
    }
    if all(h, "vary").any(|v| crate::cache_control::split_list(v).any(|f| f == b"*")) {
        return Admission::Refuse("vary *");
    }
    if req.authorization && !(d.must_revalidate || d.public || d.s_maxage.is_some()) {
        // §3.5.
        return Admission::Refuse("authorization");
    }
    let validator = get(h, "etag").is_some() || get(h, "last-modified").is_some();
    if d.no_store || (d.no_cache && !validator) {
        // CloudFront keeps such responses for the minimum TTL when it is above zero.
        if policy.min.is_zero() {
            return Admission::Refuse(if d.no_store { "no-store" } else { "no-cache" });
        }
        return Admission::Store(Freshness {
            lifetime: policy.min,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            forbids_stale: true,
            always_revalidate: false,
            strip_fields: strip_fields(&d),
        });
    }
    let clamp = |v: Duration| v.clamp(policy.min, policy.max);
    // §4.2.1: s-maxage, then max-age, then Expires - Date.
    let explicit = d
        .s_maxage
        .or(d.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            if targeted {
                return None;
            }
            get(h, "expires")?;
            // An invalid Expires (e.g. "0") means already expired (§5.3).
            let e = date(h, "expires").unwrap_or(SystemTime::UNIX_EPOCH);
            let base = date(h, "date").unwrap_or(response_time);
            Some(e.duration_since(base).unwrap_or_default())
        });
    let lifetime = match explicit {
        Some(v) => clamp(v),
        None if d.conflicting => Duration::ZERO,
        None if is_cached_error(status) => policy.error_min.max(policy.min),
        None if heuristically_cacheable(status) || d.public => {
            if !policy.default.is_zero() {
                policy.default
            } else {
                heuristic(h, response_time).map(clamp).unwrap_or(policy.min)
            }
        }
        None => {
            if policy.min.is_zero() {
                return Admission::Refuse("no explicit freshness");
            }
            policy.min
        }
    };
    if lifetime.is_zero() && !validator {
        return Admission::Refuse("zero lifetime and no validator");
    }
    Admission::Store(Freshness {
        lifetime,
        stale_while_revalidate: Duration::from_secs(d.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(d.stale_if_error.unwrap_or(0)),
        forbids_stale: d.forbids_stale(),
        always_revalidate: d.no_cache,
        strip_fields: strip_fields(&d),
    })
}

fn strip_fields(d: &Directives) -> Vec<String> {
    d.private_fields
        .iter()
        .chain(&d.no_cache_fields)
        .cloned()
        .collect()
}

/// §4.2.2: a tenth of the time since Last-Modified, at most a day.
fn heuristic(h: &Fields, response_time: SystemTime) -> Option<Duration> {
    let lm = date(h, "last-modified")?;
    let base = date(h, "date").unwrap_or(response_time);
    let since = base.duration_since(lm).ok()?;
    Some((since / 10).min(Duration::from_secs(86_400)))
}

/// Whether an unsafe method's response invalidates stored responses (§4.4): a non-error
/// status to POST, PUT, DELETE or PATCH.
pub fn invalidates(method: &[u8], status: u16) -> bool {
    matches!(method, b"POST" | b"PUT" | b"DELETE" | b"PATCH") && (200..400).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const P: TtlPolicy = TtlPolicy {
        min: Duration::ZERO,
        default: Duration::from_secs(86_400),
        max: Duration::from_secs(31_536_000),
        error_min: Duration::from_secs(10),
    };
    const STRICT: TtlPolicy = TtlPolicy {
        min: Duration::ZERO,
        default: Duration::ZERO,
        max: Duration::from_secs(31_536_000),
        error_min: Duration::from_secs(10),
    };

    fn life(a: Admission) -> Duration {
        match a {
            Admission::Store(f) => f.lifetime,
            Admission::Refuse(why) => panic!("refused: {why}"),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn s_maxage_then_max_age_then_expires() {
        let r = RequestFacts::default();
        let t = now();
        let d = httpdate::fmt_http_date(t);
        let e = httpdate::fmt_http_date(t + Duration::from_secs(300));
        let a = admit(
            &r,
            200,
            &h(&[("cache-control", "max-age=60, s-maxage=120")]),
            &P,
            t,
        );
        assert_eq!(life(a), Duration::from_secs(120));
        let a = admit(
            &r,
            200,
            &h(&[
                ("cache-control", "max-age=60"),
                ("expires", &e),
                ("date", &d),
            ]),
            &P,
            t,
        );
        assert_eq!(life(a), Duration::from_secs(60));
        let a = admit(&r, 200, &h(&[("expires", &e), ("date", &d)]), &P, t);
        assert_eq!(life(a), Duration::from_secs(300));
        let a = admit(&r, 200, &h(&[("expires", "0"), ("etag", "\"x\"")]), &P, t);
        assert_eq!(life(a), Duration::ZERO, "an invalid Expires is in the past");
    }

    #[test]
    fn cloudfront_ttl_algebra_clamps() {
        let r = RequestFacts::default();
        let p = TtlPolicy {
            min: Duration::from_secs(100),
            default: Duration::from_secs(500),
            max: Duration::from_secs(1000),
            error_min: Duration::from_secs(10),
        };
        let cc = |v: &str| h(&[("cache-control", v)]);
        assert_eq!(
            life(admit(&r, 200, &cc("max-age=10"), &p, now())),
            Duration::from_secs(100)
        );
        assert_eq!(
            life(admit(&r, 200, &cc("max-age=5000"), &p, now())),
            Duration::from_secs(1000)
        );
        assert_eq!(
            life(admit(&r, 200, &h(&[]), &p, now())),
            Duration::from_secs(500)
        );
        // min > 0 keeps even no-store for the minimum TTL, as CloudFront does...
        assert_eq!(
            life(admit(&r, 200, &cc("no-store"), &p, now())),
            Duration::from_secs(100)
        );
        // ...but never private or Set-Cookie.
        assert_eq!(
            admit(&r, 200, &cc("private"), &p, now()),
            Admission::Refuse("private")
        );
        let sc = h(&[("set-cookie", "a=b")]);
        assert_eq!(
            admit(&r, 200, &sc, &p, now()),
            Admission::Refuse("set-cookie")
        );
    }

    #[test]
    fn strict_policy_follows_the_rfc_heuristics() {
        let r = RequestFacts::default();
        let t = now();
        let lm = httpdate::fmt_http_date(t - Duration::from_secs(1000));
        let a = admit(&r, 200, &h(&[("last-modified", &lm)]), &STRICT, t);
        assert_eq!(
            life(a),
            Duration::from_secs(100),
            "10% of the time since Last-Modified"
        );
        assert_eq!(
            admit(&r, 302, &h(&[]), &STRICT, t),
            Admission::Refuse("no explicit freshness")
        );
        assert_eq!(
            admit(&r, 200, &h(&[]), &STRICT, t),
            Admission::Refuse("zero lifetime and no validator")
        );
        // A 302 is not heuristically cacheable even with a default TTL.
        assert_eq!(
            admit(&r, 302, &h(&[]), &P, t),
            Admission::Refuse("no explicit freshness")
        );
        assert_eq!(
            life(admit(&r, 302, &h(&[("cache-control", "max-age=5")]), &P, t)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn errors_use_the_error_caching_minimum() {
        let r = RequestFacts::default();
        assert_eq!(
            life(admit(&r, 503, &h(&[]), &P, now())),
            Duration::from_secs(10)
        );
        assert_eq!(
            life(admit(
                &r,
                503,
                &h(&[("cache-control", "max-age=2")]),
                &P,
                now()
            )),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn authorization_needs_an_explicit_permission() {
        let r = RequestFacts {
            authorization: true,
            no_store: false,
        };
        let cc = |v: &str| h(&[("cache-control", v)]);
        assert_eq!(
            admit(&r, 200, &cc("max-age=60"), &P, now()),
            Admission::Refuse("authorization")
        );
        for ok in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert!(
                matches!(admit(&r, 200, &cc(ok), &P, now()), Admission::Store(_)),
                "{ok}"
            );
        }
    }

    #[test]
    fn targeted_fields_override_cache_control() {
        let r = RequestFacts::default();
        let hs = h(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=30"),
        ]);
        assert_eq!(
            life(admit(&r, 200, &hs, &P, now())),
            Duration::from_secs(30)
        );
        let hs = h(&[
            ("cache-control", "max-age=30"),
            ("cdn-cache-control", "no-store"),
        ]);
        assert_eq!(
            admit(&r, 200, &hs, &P, now()),
            Admission::Refuse("no-store")
        );
        let hs = h(&[
            ("cache-control", "max-age=30"),
            ("cdn-cache-control", "Bad Value"),
        ]);
        assert_eq!(
            life(admit(&r, 200, &hs, &P, now())),
            Duration::from_secs(30),
            "invalid is ignored"
        );
        let hs = h(&[
            ("cache-control", "max-age=30"),
            ("surrogate-control", "max-age=90"),
        ]);
        assert_eq!(
            life(admit(&r, 200, &hs, &P, now())),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn no_cache_stores_only_with_a_validator_and_always_revalidates() {
        let r = RequestFacts::default();
        let hs = h(&[
            ("cache-control", "no-cache, max-age=60"),
            ("etag", "\"v1\""),
        ]);
        match admit(&r, 200, &hs, &P, now()) {
            Admission::Store(f) => assert!(f.always_revalidate),
            a => panic!("{a:?}"),
        }
        let hs = h(&[("cache-control", "no-cache")]);
        assert_eq!(
            admit(&r, 200, &hs, &P, now()),
            Admission::Refuse("no-cache")
        );
    }

    #[test]
    fn age_is_corrected_for_delay_and_date() {
        let t = now();
        let d = httpdate::fmt_http_date(t - Duration::from_secs(30));
        let hs = h(&[("age", "10"), ("date", &d)]);
        assert_eq!(
            initial_age(&hs, t - Duration::from_secs(2), t),
            Duration::from_secs(30)
        );
        let hs = h(&[("age", "100")]);
        assert_eq!(
            initial_age(&hs, t - Duration::from_secs(2), t),
            Duration::from_secs(102)
        );
    }

    #[test]
    fn unsafe_methods_invalidate_on_success_only() {
        assert!(invalidates(b"POST", 200));
        assert!(invalidates(b"DELETE", 204));
        assert!(!invalidates(b"POST", 500));
        assert!(!invalidates(b"GET", 200));
    }
}
