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
    Ok(keys
        .iter()
        .filter(|k| k.get("kty").and_then(|t| t.as_str()) == Some("RSA"))
        .filter(|k| {
            k.get("use")
                .and_then(|u| u.as_str())
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            Some(Key {
                kid: k.get("kid").and_then(|x| x.as_str()).map(str::to_owned),
                n: field(k, "n")?,
                e: field(k, "e")?,
            })
        })
        .collect())
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

/// Checks `token` against the JWKS `keys` and `cfg` at `now` (Unix seconds).
pub fn check(cfg: &JwtValidation, keys: &[Key], token: &str, now: u64) -> Result<(), Refusal> {
    let bad = Refusal::Invalid;
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT"));
    };
    let json = |seg: &str| -> Result<serde_json::Value, Refusal> {
        let raw = URL_SAFE_NO_PAD
            .decode(seg)
            .map_err(|_| bad("not base64url"))?;
        serde_json::from_slice(&raw).map_err(|_| bad("not JSON"))
    };
    let header = json(h)?;
    // ALB takes RS256 only; naming the algorithm also shuts out `none` and HMAC with a public
    // key.
    if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return Err(bad("not signed with RS256"));
    }
    let kid = header.get("kid").and_then(|k| k.as_str());
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad("not base64url"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
    let candidates: Vec<&Key> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None => keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(Refusal::UnknownKey);
    }
    let verified = candidates.iter().any(|k| {
        ring::signature::RsaPublicKeyComponents { n: &k.n, e: &k.e }
            .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
            .is_ok()
    });
    if !verified {
        return Err(bad("bad signature"));
    }
    claims(cfg, &json(c)?, now).map_err(bad)
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
            Some(Some(t)) if t <= now => {}
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

/// A `jwt-validation` action as compiled at load: its config, the TLS client settings for its
/// JWKS endpoint, and the keys last fetched.
pub struct Validator {
    pub cfg: Arc<JwtValidation>,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The JWKS's keys and when they were fetched; `None` before the first fetch.
    pub keys: std::sync::RwLock<Option<(Arc<Vec<Key>>, Instant)>>,
    /// Held while the JWKS is fetched, so that one request fetches it and the others wait;
    /// when the last fetch for an unknown key began.
    pub fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

impl Validator {
    pub fn new(cfg: Arc<JwtValidation>, tls: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        Validator {
            cfg,
            tls,
            keys: std::sync::RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
        }
    }

    /// The keys last fetched, and when.
    pub fn keys(&self) -> Option<(Arc<Vec<Key>>, Instant)> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
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

    fn signer() -> ring::signature::RsaKeyPair {
        let pem = std::fs::read_to_string(causeway_testkit::tls::cert("jwt-signing.key")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap()
    }

    fn jwks() -> Vec<Key> {
        let text = std::fs::read(causeway_testkit::tls::cert("jwks.json")).unwrap();
        parse_jwks(&text).unwrap()
    }

    fn token(header: serde_json::Value, claims: serde_json::Value) -> String {
        let mut t = URL_SAFE_NO_PAD.encode(header.to_string());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0; signer().public().modulus_len()];
        signer()
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                t.as_bytes(),
                &mut sig,
            )
            .unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
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
            ("nbf", serde_json::json!(1_001)),
            ("iat", serde_json::json!(1_001)),
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
