//! Phase `authenticate` for ALB's `jwt-validation` action, the pure part: the bearer token of a
//! request's `Authorization` field, its RS256 signature against the keys of the issuer's JWKS,
//! and its claims (`iss`, `exp`, `nbf`, `iat` and the configured ones). The JWKS is fetched and
//! kept by `idp::validate_jwt`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use causeway_config::jwt::{ClaimFormat, JwtValidation};
use std::sync::Arc;
use std::time::Instant;

/// The largest JWKS read (ALB's limit).
pub const MAX_JWKS: usize = 150 * 1024;
/// The most keys a JWKS may hold (ALB's limit).
const MAX_KEYS: usize = 10;
/// The largest token taken.
const MAX_TOKEN: usize = 16 * 1024;
/// Seconds an `nbf` or `iat` may lie ahead of this host's clock (the IdP's may run ahead).
const LEEWAY: u64 = 30;

/// An RSA public key of the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: Option<String>,
    n: Vec<u8>,
    e: Vec<u8>,
}

/// Why a request's token was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` field.
    Missing,
    /// A token that is malformed, badly signed, or whose claims do not hold: the reason.
    Invalid(&'static str),
    /// Signed with a key the JWKS does not (yet) hold.
    UnknownKey,
}

/// The keys of a JWKS document: its RSA signing keys (others are skipped).
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, &'static str> {
    if body.len() > MAX_JWKS {
        return Err("the JWKS is over 150 KB");
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "the JWKS is not JSON")?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("the JWKS has no keys array")?;
    if keys.len() > MAX_KEYS {
        return Err("the JWKS holds more than 10 keys");
    }
    let field = |k: &serde_json::Value, name: &str| {
        k.get(name)
            .and_then(|x| x.as_str())
            .and_then(|x| URL_SAFE_NO_PAD.decode(x.trim_end_matches('=')).ok())
    };
    // Big-endian integers: some publishers pad `n` with a zero byte, which ring refuses.
    let unpadded = |mut v: Vec<u8>| {
        let zeros = v.iter().take_while(|&&b| b == 0).count();
        v.drain(..zeros);
        v
    };
    Ok(keys
        .iter()
        .filter(|k| str_of(k, "kty") == Some("RSA"))
        .filter(|k| str_of(k, "use").is_none_or(|u| u == "sig"))
        .filter(|k| str_of(k, "alg").is_none_or(|a| a == "RS256"))
        .filter_map(|k| {
            Some(Key {
                kid: str_of(k, "kid").map(str::to_owned),
                n: unpadded(field(k, "n")?),
                e: unpadded(field(k, "e")?),
            })
        })
        .collect())
}

/// A JWK's string field.
fn str_of<'k>(k: &'k serde_json::Value, name: &str) -> Option<&'k str> {
    k.get(name).and_then(|x| x.as_str())
}

/// The token of an `Authorization: Bearer <token>` field value.
pub fn bearer(authorization: Option<&[u8]>) -> Result<&str, Refusal> {
    let v = authorization.ok_or(Refusal::Missing)?;
    let v = std::str::from_utf8(v).map_err(|_| Refusal::Invalid("not a bearer token"))?;
    let (scheme, token) = v.trim().split_once(' ').ok_or(Refusal::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Missing);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Refusal::Invalid("not a bearer token"));
    }
    Ok(token)
}

/// A token's segments and header, read: what can be refused before any key is needed.
pub struct Parsed<'t> {
    header: &'t str,
    claims: &'t str,
    sig: Vec<u8>,
    kid: Option<String>,
}

fn json(seg: &str) -> Result<serde_json::Value, Refusal> {
    let raw = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| Refusal::Invalid("not base64url"))?;
    serde_json::from_slice(&raw).map_err(|_| Refusal::Invalid("not JSON"))
}

/// Reads a token's shape and header: three base64url segments, `alg` RS256 (ALB takes no
/// other, which also shuts out `none` and HMAC with a public key), and no `crit` extension
/// (none is understood, RFC 7515 4.1.11).
pub fn parse(token: &str) -> Result<Parsed<'_>, Refusal> {
    let bad = Refusal::Invalid;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT"));
    };
    let header = json(h)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return Err(bad("not signed with RS256"));
    }
    if header.get("crit").is_some() {
        return Err(bad("a critical extension"));
    }
    Ok(Parsed {
        header: h,
        claims: c,
        sig: URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad("not base64url"))?,
        kid: header
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_owned),
    })
}

/// Checks `token` against the JWKS `keys` and `cfg` at `now` (Unix seconds). `UnknownKey`
/// when no key of the JWKS can have signed it: none has the `kid` it names (keys without a
/// `kid` are tried for any), or, for a token without a `kid`, none verifies; the JWKS may
/// be out of date.
pub fn check(cfg: &JwtValidation, keys: &[Key], token: &str, now: u64) -> Result<(), Refusal> {
    let t = parse(token)?;
    let signed = &token.as_bytes()[..t.header.len() + 1 + t.claims.len()];
    let candidates: Vec<&Key> = keys
        .iter()
        .filter(|k| t.kid.is_none() || k.kid.is_none() || k.kid == t.kid)
        .collect();
    if candidates.is_empty() {
        return Err(Refusal::UnknownKey);
    }
    let verified = candidates.iter().any(|k| {
        ring::signature::RsaPublicKeyComponents { n: &k.n, e: &k.e }
            .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed, &t.sig)
            .is_ok()
    });
    match (verified, &t.kid) {
        (true, _) => claims(cfg, &json(t.claims)?, now).map_err(Refusal::Invalid),
        (false, None) => Err(Refusal::UnknownKey),
        (false, Some(_)) => Err(Refusal::Invalid("bad signature")),
    }
}

/// The claims' checks: `iss` is the issuer; `exp` is present and to come; `nbf` and `iat`, if
/// present, have come; and each configured claim holds its values.
fn claims(cfg: &JwtValidation, c: &serde_json::Value, now: u64) -> Result<(), &'static str> {
    if c.get("iss").and_then(|i| i.as_str()) != Some(cfg.issuer.as_str()) {
        return Err("another issuer");
    }
    let time = |name: &str| c.get(name).map(|t| t.as_f64().map(|t| t.floor() as u64));
    match time("exp") {
        Some(Some(exp)) if exp > now => {}
        Some(Some(_)) => return Err("expired"),
        _ => return Err("no exp"),
    }
    for name in ["nbf", "iat"] {
        match time(name) {
            None => {}
            Some(Some(t)) if t <= now + LEEWAY => {}
            Some(_) => return Err("not valid yet"),
        }
    }
    for claim in &cfg.claims {
        let v = c.get(&claim.name);
        let holds = match (claim.format, v) {
            (ClaimFormat::SingleString, Some(serde_json::Value::String(s))) => {
                claim.values.iter().any(|x| x == s)
            }
            (ClaimFormat::StringArray, Some(serde_json::Value::Array(a))) => claim
                .values
                .iter()
                .all(|x| a.iter().any(|y| y.as_str() == Some(x))),
            (ClaimFormat::SpaceSeparated, Some(serde_json::Value::String(s))) => {
                claim.values.iter().all(|x| s.split(' ').any(|y| y == x))
            }
            _ => false,
        };
        if !holds {
            return Err("a required claim does not hold");
        }
    }
    Ok(())
}

/// A `jwt-validation` action as compiled at load: its config and the keys of its JWKS.
pub struct Validator {
    pub cfg: Arc<JwtValidation>,
    pub cache: Arc<KeyCache>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

/// The keys of one JWKS endpoint, shared by the actions that name it and kept across reloads
/// (a reload while the IdP is down keeps the keys it had).
pub struct KeyCache {
    pub endpoint: causeway_config::oidc::HttpsUrl,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The keys and when they were fetched; `None` before the first fetch that worked.
    keys: std::sync::RwLock<Option<(Arc<Vec<Key>>, Instant)>>,
    /// Fetches ended, for requests that waited on one to take its result.
    pub attempts: std::sync::atomic::AtomicU64,
    /// Held while fetching; what spaces the fetches out.
    pub state: tokio::sync::Mutex<FetchState>,
}

/// What spaces a JWKS endpoint's fetches out.
#[derive(Debug, Default)]
pub struct FetchState {
    /// When the last fetch failed (cleared by one that works).
    pub failed_at: Option<Instant>,
    /// When the last fetch for a token signed with an unknown key began.
    pub unknown_at: Option<Instant>,
}

impl KeyCache {
    /// The keys last fetched, and when.
    pub fn keys(&self) -> Option<(Arc<Vec<Key>>, Instant)> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stores freshly fetched keys.
    pub fn store(&self, keys: Vec<Key>) -> (Arc<Vec<Key>>, Instant) {
        let entry = (Arc::new(keys), Instant::now());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
        entry
    }
}

/// The key cache of `endpoint` (with CAs from `ca`), made on first use (with the TLS client
/// settings `tls` makes) and then shared by every action and every config load naming them.
pub fn cache_for(
    endpoint: &causeway_config::oidc::HttpsUrl,
    ca: Option<&std::path::Path>,
    tls: impl FnOnce() -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String>,
) -> Result<Arc<KeyCache>, String> {
    type Caches = std::collections::HashMap<(String, Option<std::path::PathBuf>), Arc<KeyCache>>;
    static CACHES: std::sync::OnceLock<std::sync::Mutex<Caches>> = std::sync::OnceLock::new();
    let mut caches = CACHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (endpoint.raw.clone(), ca.map(|p| p.to_path_buf()));
    if let Some(c) = caches.get(&key) {
        return Ok(c.clone());
    }
    let cache = Arc::new(KeyCache {
        endpoint: endpoint.clone(),
        tls: tls()?,
        keys: std::sync::RwLock::new(None),
        attempts: std::sync::atomic::AtomicU64::new(0),
        state: tokio::sync::Mutex::new(FetchState::default()),
    });
    caches.insert(key, cache.clone());
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_config::jwt::Claim;

    fn cfg(claims: Vec<Claim>) -> JwtValidation {
        JwtValidation {
            issuer: "https://idp.example.com".into(),
            jwks_endpoint: causeway_config::oidc::HttpsUrl::parse("https://idp.example.com/jwks")
                .unwrap(),
            claims,
            trusted_ca_file: None,
        }
    }

    fn jwks() -> Vec<Key> {
        let text = std::fs::read(causeway_testkit::tls::cert("jwks.json")).unwrap();
        parse_jwks(&text).unwrap()
    }

    fn token(header: serde_json::Value, claims: serde_json::Value) -> String {
        causeway_testkit::jwt::sign(&header, &claims)
    }

    fn rs256() -> serde_json::Value {
        serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": "test-key-1" })
    }

    #[test]
    fn a_token_is_taken_only_signed_by_the_jwks_and_with_its_claims_holding() {
        let claim = |name: &str, format, values: &[&str]| Claim {
            name: name.into(),
            format,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let c = cfg(vec![
            claim("aud", ClaimFormat::SingleString, &["orders", "billing"]),
            claim("scope", ClaimFormat::SpaceSeparated, &["read", "write"]),
            claim("groups", ClaimFormat::StringArray, &["ops"]),
        ]);
        let keys = jwks();
        let good = serde_json::json!({
            "iss": "https://idp.example.com", "exp": 2_000, "nbf": 900, "iat": 900,
            "aud": "billing", "scope": "write admin read", "groups": ["dev", "ops"],
        });
        assert_eq!(
            check(&c, &keys, &token(rs256(), good.clone()), 1_000),
            Ok(())
        );
        let refused = |claims: serde_json::Value| check(&c, &keys, &token(rs256(), claims), 1_000);
        for (field, value) in [
            ("iss", serde_json::json!("https://evil.example.com")),
            ("exp", serde_json::json!(1_000)),
            ("nbf", serde_json::json!(1_031)),
            ("iat", serde_json::json!(1_031)),
            ("aud", serde_json::json!("other")),
            ("scope", serde_json::json!("read")),
            ("groups", serde_json::json!(["dev"])),
            ("groups", serde_json::json!("ops")),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert!(matches!(refused(bad), Err(Refusal::Invalid(_))), "{field}");
        }
        for field in ["iss", "exp", "aud", "scope", "groups"] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(field);
            assert!(
                matches!(refused(bad), Err(Refusal::Invalid(_))),
                "without {field}"
            );
        }
        // nbf and iat are optional.
        let mut fine = good.clone();
        fine.as_object_mut().unwrap().remove("nbf");
        fine.as_object_mut().unwrap().remove("iat");
        assert_eq!(refused(fine), Ok(()));
        // The signature: a changed claim, another algorithm, an unknown key.
        let t = token(rs256(), good.clone());
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged = good.clone();
        forged["groups"] = serde_json::json!(["ops", "admin"]);
        let forged = format!(
            "{head}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(forged.to_string())
        );
        assert_eq!(
            check(&c, &keys, &forged, 1_000),
            Err(Refusal::Invalid("bad signature"))
        );
        for alg in ["none", "HS256", "RS512"] {
            let h = serde_json::json!({ "alg": alg, "kid": "test-key-1" });
            let t = format!("{}.{}.", URL_SAFE_NO_PAD.encode(h.to_string()), rest);
            assert!(
                matches!(check(&c, &keys, &t, 1_000), Err(Refusal::Invalid(_))),
                "{alg}"
            );
        }
        let other = serde_json::json!({ "alg": "RS256", "kid": "key-2" });
        assert_eq!(
            check(&c, &keys, &token(other, good), 1_000),
            Err(Refusal::UnknownKey)
        );
        assert!(matches!(
            check(&c, &keys, "a.b", 1_000),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn keys_without_a_kid_and_tokens_without_one_and_the_clock_s_leeway() {
        let c = cfg(Vec::new());
        let good = serde_json::json!({ "iss": "https://idp.example.com", "exp": 2_000 });
        let plain = serde_json::json!({ "alg": "RS256" });
        // A token without a kid: any key that verifies it.
        assert_eq!(
            check(&c, &jwks(), &token(plain.clone(), good.clone()), 1_000),
            Ok(())
        );
        // A JWKS whose key has no kid serves a token that names one; a zero-padded modulus and
        // a key for another algorithm are handled.
        let text =
            String::from_utf8(std::fs::read(causeway_testkit::tls::cert("jwks.json")).unwrap())
                .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut key = v["keys"][0].clone();
        key.as_object_mut().unwrap().remove("kid");
        let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
        key["n"] = URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()).into();
        let mut rs512 = v["keys"][0].clone();
        rs512["alg"] = "RS512".into();
        let doc = serde_json::json!({ "keys": [rs512, key] });
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1, "the RS512 key is skipped");
        assert_eq!(
            check(&c, &keys, &token(rs256(), good.clone()), 1_000),
            Ok(())
        );
        // A token without a kid that no key verifies may mean new keys.
        let other = serde_json::json!({ "keys": [] });
        assert_eq!(
            check(
                &c,
                &parse_jwks(other.to_string().as_bytes()).unwrap(),
                &token(plain, good.clone()),
                1_000
            ),
            Err(Refusal::UnknownKey)
        );
        // nbf and iat may be 30 s ahead of this clock, not more.
        for (t, ok) in [(1_030, true), (1_031, false)] {
            let mut c2 = good.clone();
            c2["nbf"] = t.into();
            assert_eq!(
                check(&c, &jwks(), &token(rs256(), c2), 1_000).is_ok(),
                ok,
                "{t}"
            );
        }
        // A critical extension is refused.
        let crit = serde_json::json!({ "alg": "RS256", "kid": "test-key-1", "crit": ["exp"] });
        assert!(matches!(
            check(&c, &jwks(), &token(crit, good), 1_000),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn the_bearer_token_is_read_from_authorization() {
        assert_eq!(bearer(Some(b"Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(Refusal::Missing));
        assert_eq!(bearer(Some(b"Basic dXNlcjpwdw==")), Err(Refusal::Missing));
        assert!(bearer(Some(b"Bearer ")).is_err());
    }

    #[test]
    fn a_jwks_gives_its_rsa_signing_keys_within_alb_s_limits() {
        let keys = jwks();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("test-key-1"));
        let ec = br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"},{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#;
        assert_eq!(parse_jwks(ec), Ok(Vec::new()));
        let many = serde_json::json!({ "keys": vec![serde_json::json!({"kty":"RSA","n":"AQAB","e":"AQAB"}); 11] });
        assert!(parse_jwks(many.to_string().as_bytes()).is_err());
        assert!(parse_jwks(&vec![b' '; MAX_JWKS + 1]).is_err());
        assert!(parse_jwks(b"{}").is_err());
    }
}
