//! Sticky sessions by load-balancer cookie (`AWSALB`). The cookie names the target and an
//! expiry, signed with a keyed SipHash-2-4, so a client can neither forge a target choice nor
//! extend the session, and every replica sharing the key honours it. Pure code.

use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// ALB's duration-based stickiness cookie.
pub const LB_COOKIE: &str = "AWSALB";
/// ALB's application-based stickiness cookie (set when the application sets its own cookie).
pub const APP_COOKIE: &str = "AWSALBAPP-0";
/// ALB's target group stickiness cookie (a weighted forward keeps a client on one group).
pub const TG_COOKIE: &str = "AWSALBTG";

/// Whether a response head's Set-Cookie values set cookie `name`.
pub fn sets_cookie<'a>(mut set_cookies: impl Iterator<Item = &'a [u8]>, name: &str) -> bool {
    set_cookies.any(|v| {
        let v = trim(v);
        v.len() > name.len() && v.starts_with(name.as_bytes()) && v[name.len()] == b'='
    })
}

/// The signing key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StickyKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickyKey(..)")
    }
}

impl StickyKey {
    /// A key derived from a shared secret: replicas with the same secret agree.
    pub fn from_secret(secret: &str) -> StickyKey {
        let mut h = SipHasher24::new_with_keys(0x6361_7573_6577_6179, 0x7374_6963_6b79_2131);
        h.write(secret.as_bytes());
        let v = h.finish128();
        StickyKey { k0: v.h1, k1: v.h2 }
    }

    /// This process's key when no secret is configured: random, and stable across reloads.
    pub fn process() -> StickyKey {
        static KEY: OnceLock<StickyKey> = OnceLock::new();
        *KEY.get_or_init(|| StickyKey {
            k0: fastrand::u64(..),
            k1: fastrand::u64(..),
        })
    }

    fn mac(&self, target: &str, expires: u64) -> u128 {
        let mut h = SipHasher24::new_with_keys(self.k0, self.k1);
        h.write(target.as_bytes());
        h.write_u8(b'~');
        h.write_u64(expires);
        h.finish128().as_u128()
    }
}

/// The cookie value for `target`, valid until `expires` (Unix seconds).
pub fn encode(key: &StickyKey, target: SocketAddr, expires: u64) -> String {
    encode_name(key, &target.to_string(), expires)
}

/// The target a cookie value names, if its signature holds and it has not expired.
pub fn decode(key: &StickyKey, value: &[u8], now: u64) -> Option<SocketAddr> {
    decode_name(key, value, now)?.parse().ok()
}

/// The cookie value for any name (a target group's), signed the same way. Names with `~`, `;`
/// or spaces never come from the config (target group names are validated), so the value
/// needs no quoting.
pub fn encode_name(key: &StickyKey, name: &str, expires: u64) -> String {
    format!("{name}~{expires}~{:032x}", key.mac(name, expires))
}

/// The name a cookie value carries, if its signature holds and it has not expired.
pub fn decode_name<'v>(key: &StickyKey, value: &'v [u8], now: u64) -> Option<&'v str> {
    let v = std::str::from_utf8(value).ok()?;
    let mut parts = v.split('~');
    let (t, exp, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || mac.len() != 32 {
        return None;
    }
    let expires: u64 = exp.parse().ok()?;
    let given = u128::from_str_radix(mac, 16).ok()?;
    // Compare without an early exit.
    if (given ^ key.mac(t, expires)) != 0 || expires <= now {
        return None;
    }
    Some(t)
}

/// The value of cookie `name` in a Cookie header value.
pub fn find_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().position(|b| *b != b' ').unwrap_or(v.len());
    let e = v.iter().rposition(|b| *b != b' ').map_or(s, |e| e + 1);
    &v[s..e]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.0.1.7:80".parse().unwrap()
    }

    #[test]
    fn round_trip_and_shared_secret() {
        let k = StickyKey::from_secret("s3cret");
        let v = encode(&k, addr(), 2_000);
        assert_eq!(decode(&k, v.as_bytes(), 1_000), Some(addr()));
        let other_replica = StickyKey::from_secret("s3cret");
        assert_eq!(decode(&other_replica, v.as_bytes(), 1_000), Some(addr()));
        assert_eq!(
            decode(&StickyKey::from_secret("other"), v.as_bytes(), 1_000),
            None
        );
    }

    #[test]
    fn forged_or_expired_cookies_are_refused() {
        let k = StickyKey::from_secret("s3cret");
        let v = encode(&k, addr(), 2_000);
        assert_eq!(decode(&k, v.as_bytes(), 2_000), None, "expired");
        let forged_target = v.replacen("10.0.1.7", "10.0.1.8", 1);
        assert_eq!(decode(&k, forged_target.as_bytes(), 1_000), None);
        let extended = v.replacen("2000", "9000", 1);
        assert_eq!(decode(&k, extended.as_bytes(), 1_000), None);
        for junk in ["", "~~", "10.0.1.7:80~2000~zz", "10.0.1.7:80~2000"] {
            assert_eq!(decode(&k, junk.as_bytes(), 1_000), None, "{junk}");
        }
    }

    #[test]
    fn group_cookies_are_signed_like_target_cookies() {
        let k = StickyKey::from_secret("s3cret");
        let v = encode_name(&k, "blue", 2_000);
        assert_eq!(decode_name(&k, v.as_bytes(), 1_000), Some("blue"));
        let forged = v.replacen("blue", "green", 1);
        assert_eq!(decode_name(&k, forged.as_bytes(), 1_000), None);
        assert_eq!(decode_name(&k, v.as_bytes(), 2_001), None, "expired");
    }

    #[test]
    fn application_cookie_detection() {
        let sc = [&b"other=1; Path=/"[..], b"SESSIONID=abc; HttpOnly"];
        assert!(sets_cookie(sc.iter().copied(), "SESSIONID"));
        assert!(!sets_cookie(sc.iter().copied(), "SESSION"));
        assert!(!sets_cookie(
            [&b"SESSIONIDX=1"[..]].into_iter(),
            "SESSIONID"
        ));
    }

    #[test]
    fn cookie_lookup() {
        let h = b"a=1; AWSALB=xyz ; b=2";
        assert_eq!(find_cookie(h, "AWSALB"), Some(&b"xyz"[..]));
        assert_eq!(find_cookie(h, "b"), Some(&b"2"[..]));
        assert_eq!(find_cookie(h, "AWSAL"), None);
        assert_eq!(find_cookie(b"", "a"), None);
    }
}
