//! Test JWTs for `jwt_validation`: RS256 tokens signed with the test key (`jwt-signing.key`,
//! whose public half `jwks.json` publishes as `test-key-1`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// A JWT with this header and these claims, signed RS256 with the test key.
pub fn sign(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let pem = std::fs::read_to_string(crate::tls::cert("jwt-signing.key")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&STANDARD.decode(body).unwrap()).unwrap();
    let mut t = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
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
