//! Fuzzes the alb's authenticate-oidc parsing of what a client sends: the Cookie lookup, the
//! session cookies, and the `/oauth2/idpresponse` query with its state. No panic; nothing a
//! client makes up opens a session or a sign-in; a session the alb sealed opens again, and a
//! changed byte never does. The same bytes as a bearer token for `jwt_validation` and as a
//! JWKS: no panic, and no made-up token passes against the test key.
#![no_main]

use causeway_alb::auth::{self, Keys, Provider, Session};
use causeway_config::oidc::{AuthenticateOidc, HttpsUrl, OnUnauthenticated};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn fixture() -> &'static (Keys, Provider) {
    static F: OnceLock<(Keys, Provider)> = OnceLock::new();
    F.get_or_init(|| {
        let url = |p: &str| HttpsUrl::parse(&format!("https://idp.example.com{p}")).unwrap();
        let cfg = AuthenticateOidc {
            issuer: "https://idp.example.com".into(),
            authorization_endpoint: url("/authorize"),
            token_endpoint: url("/token"),
            user_info_endpoint: url("/userinfo"),
            client_id: "client".into(),
            client_secret: "secret".into(),
            scope: "openid".into(),
            session_cookie_name: "AWSELBAuthSessionCookie".into(),
            session_timeout: std::time::Duration::from_secs(3600),
            on_unauthenticated: OnUnauthenticated::Authenticate,
            extra_params: Vec::new(),
            trusted_ca_file: None,
        };
        let keys = Keys::new(Some("fuzzing secret, 16+ bytes"), None, "fuzz".into()).unwrap();
        let tls = causeway_alb::idp::client_config(None).unwrap();
        (keys, Provider::new(Arc::new(cfg), tls))
    })
}

/// A jwt-validation action and the test JWKS's keys.
fn jwt_fixture() -> &'static (causeway_config::jwt::JwtValidation, Vec<causeway_alb::jwt::Key>) {
    static F: OnceLock<(causeway_config::jwt::JwtValidation, Vec<causeway_alb::jwt::Key>)> =
        OnceLock::new();
    F.get_or_init(|| {
        let cfg = causeway_config::jwt::JwtValidation {
            issuer: "https://idp.example.com".into(),
            jwks_endpoint: HttpsUrl::parse("https://idp.example.com/jwks").unwrap(),
            claims: Vec::new(),
            trusted_ca_file: None,
        };
        let jwks = include_bytes!("../../testkit/certs/jwks.json");
        (cfg, causeway_alb::jwt::parse_jwks(jwks).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let (cfg, jwt_keys) = jwt_fixture();
    let _ = causeway_alb::jwt::parse_jwks(data);
    if let Ok(token) = causeway_alb::jwt::bearer(Some(data)) {
        assert!(causeway_alb::jwt::check(cfg, jwt_keys, token, 1_000).is_err());
    }
    let (keys, p) = fixture();
    let fields = [data];
    let _ = auth::cookie(&fields, auth::NONCE_COOKIE);
    assert!(auth::session(keys, p, &fields, 1_000).is_none(), "a made-up session");
    let found = |prio| (prio == 1).then_some(p);
    if let Ok((_, cb)) = auth::read_callback(keys, found, data, &fields, 1_000) {
        panic!("a made-up state opened: {cb:?}");
    }
    // Round trip of a session with these bytes as its claims.
    let s = Session {
        expires: 5_000,
        sub: "user-1".into(),
        access_token: "at".into(),
        refresh_token: String::from_utf8_lossy(&data[..data.len().min(64)]).into_owned(),
        access_expires: 900,
        claims: String::from_utf8_lossy(&data[..data.len().min(2048)]).into_owned(),
    };
    // These bytes as a token endpoint's answer to the session's refresh token: whatever it
    // says, the access token that would go to targets is visible ASCII, and a refresh token
    // is kept.
    if let Ok(t) = auth::read_renewal(p, &s, data, 1_000) {
        assert!(!t.access_token.is_empty());
        assert!(t.access_token.bytes().all(|b| (b'!'..=b'~').contains(&b)));
        assert!(t.refresh_token == s.refresh_token || !t.refresh_token.is_empty());
    }
    let set = auth::session_cookies(keys, p, &s, 1_000).unwrap();
    let back: Vec<String> = set
        .iter()
        .filter(|c| !c.contains("Max-Age=-1"))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect();
    let joined = back.join("; ");
    assert_eq!(auth::session(keys, p, &[joined.as_bytes()], 1_000), Some(s));
    if let Some(&flip) = data.last() {
        let mut bad = joined.clone().into_bytes();
        let at = bad.iter().position(|&b| b == b'=').unwrap() + 1;
        let i = at + flip as usize % (bad.len() - at);
        if bad[i] != b';' && bad[i] != b' ' {
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(auth::session(keys, p, &[bad.as_slice()], 1_000).is_none());
        }
    }
});
