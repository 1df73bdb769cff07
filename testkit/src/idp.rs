//! A test OpenID Connect identity provider over HTTPS on loopback (`idp.pem`: `localhost` and
//! 127.0.0.1, under `idp-ca.pem`). Its authorization endpoint signs one user in at once and
//! redirects back with a code; its token endpoint trades a code (or a refresh token, which it
//! takes once and replaces) for tokens, checking the client's HTTP Basic credentials and the
//! redirect URI; its user info endpoint answers the user's claims for a token it issued;
//! `/jwks` publishes the test RSA key that tokens for `jwt_validation` are signed with. It
//! records every request it was asked.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// How the IdP misbehaves, for the error paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As a good IdP does.
    Normal,
    /// The authorization endpoint answers `error=access_denied`.
    Deny,
    /// The ID token names another audience.
    WrongAudience,
    /// The token endpoint answers 500.
    TokenFails,
    /// The token endpoint refuses refresh tokens (`invalid_grant`), as when the user signed
    /// out at the IdP.
    RefreshFails,
}

/// One request the IdP got.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: String,
    pub path: String,
    /// The query, decoded.
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    /// A form body, decoded.
    pub form: HashMap<String, String>,
}

#[derive(Debug)]
struct State {
    client_id: String,
    client_secret: String,
    claims: serde_json::Value,
    mode: Mode,
    /// Issued codes: the nonce and redirect URI they were issued for.
    codes: HashMap<String, (String, String)>,
    tokens: Vec<String>,
    /// Refresh tokens not yet used.
    refresh: Vec<String>,
    /// The `expires_in` of the access tokens it issues.
    access_seconds: u64,
    /// The `iss` of its ID tokens, when not its own URL (a Cognito user pool's).
    issuer: Option<String>,
    /// What `/jwks` answers (`jwks.json` of the test certificates at first).
    jwks: String,
    asked: Vec<Asked>,
    next: u64,
}

/// A running test IdP.
#[derive(Debug)]
pub struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn decode(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Idp {
    /// An IdP on 127.0.0.1 for one client, signing in a user with these claims (which must
    /// hold `sub`).
    pub async fn start(client_id: &str, client_secret: &str, claims: serde_json::Value) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            claims,
            mode: Mode::Normal,
            codes: HashMap::new(),
            tokens: Vec::new(),
            refresh: Vec::new(),
            access_seconds: 3600,
            issuer: None,
            jwks: std::fs::read_to_string(crate::tls::cert("jwks.json")).unwrap(),
            asked: Vec::new(),
            next: 0,
        }));
        let acceptor = crate::tls::acceptor("idp", &[b"http/1.1"]);
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(req, &st, addr).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Idp { addr, state }
    }

    /// `https://127.0.0.1:PORT`, the issuer.
    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// The lifetime (`expires_in`) of the access tokens issued from now on: 0 makes each
    /// one end as it is issued.
    pub fn set_access_seconds(&self, seconds: u64) {
        self.state.lock().unwrap().access_seconds = seconds;
    }

    /// The `iss` of the ID tokens issued from now on, as a Cognito user pool names itself
    /// (`https://cognito-idp.<region>.amazonaws.com/<pool id>`).
    pub fn set_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().issuer = Some(issuer.into());
    }

    /// What `/jwks` answers from now on.
    pub fn set_jwks(&self, jwks: &str) {
        self.state.lock().unwrap().jwks = jwks.into();
    }

    /// The user's claims from now on (they must hold the same `sub`).
    pub fn set_claims(&self, claims: serde_json::Value) {
        self.state.lock().unwrap().claims = claims;
    }

    /// Every request so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.state.lock().unwrap().asked.clone()
    }

    /// The fields of an `authenticate_oidc` table for this IdP and its client (TOML, one
    /// per line), trusting its CA.
    pub fn toml(&self) -> String {
        let st = self.state.lock().unwrap();
        let i = self.issuer();
        format!(
            "issuer = \"{i}\"\nauthorization_endpoint = \"{i}/authorize\"\n\
             token_endpoint = \"{i}/token\"\nuser_info_endpoint = \"{i}/userinfo\"\n\
             client_id = \"{}\"\nclient_secret = \"{}\"\ntrusted_ca_file = \"{}\"\n",
            st.client_id,
            st.client_secret,
            crate::tls::cert("idp-ca.pem")
        )
    }
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    st: &Mutex<State>,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let asked = Asked {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: decode(parts.uri.query().unwrap_or("")),
        authorization: parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        form: decode(std::str::from_utf8(&body).unwrap_or("")),
    };
    let mut st = st.lock().unwrap();
    st.asked.push(asked.clone());
    st.next += 1;
    let n = st.next;
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    // A Cognito user pool's domain serves the same endpoints under /oauth2/.
    let endpoint = match asked.path.as_str() {
        "/oauth2/authorize" => "/authorize",
        "/oauth2/token" => "/token",
        "/oauth2/userInfo" => "/userinfo",
        p => p,
    };
    match endpoint {
        "/authorize" => {
            let q = &asked.query;
            let (Some(redirect), Some(state)) = (q.get("redirect_uri"), q.get("state")) else {
                return reply(400, "{\"error\":\"invalid_request\"}".into());
            };
            if q.get("client_id") != Some(&st.client_id) {
                return reply(400, "{\"error\":\"unauthorized_client\"}".into());
            }
            let mut back = form_urlencoded::Serializer::new(String::new());
            if st.mode == Mode::Deny {
                back.append_pair("error", "access_denied");
            } else {
                let code = format!("code-{n}");
                let nonce = q.get("nonce").cloned().unwrap_or_default();
                st.codes.insert(code.clone(), (nonce, redirect.clone()));
                back.append_pair("code", &code);
            }
            back.append_pair("state", state);
            Response::builder()
                .status(302)
                .header("location", format!("{redirect}?{}", back.finish()))
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        "/token" => {
            if st.mode == Mode::TokenFails {
                return reply(500, "{}".into());
            }
            let basic = format!(
                "Basic {}",
                crate::idp::b64std(format!("{}:{}", st.client_id, st.client_secret).as_bytes())
            );
            if asked.method != "POST" || asked.authorization.as_deref() != Some(basic.as_str()) {
                return reply(401, "{\"error\":\"invalid_client\"}".into());
            }
            let f = &asked.form;
            let invalid = || reply(400, "{\"error\":\"invalid_grant\"}".into());
            let nonce = match f.get("grant_type").map(String::as_str) {
                Some("authorization_code") => {
                    let code = f.get("code").cloned().unwrap_or_default();
                    match st.codes.remove(&code) {
                        Some((nonce, redirect)) if f.get("redirect_uri") == Some(&redirect) => {
                            Some(nonce)
                        }
                        _ => return invalid(),
                    }
                }
                Some("refresh_token") => {
                    let token = f.get("refresh_token").cloned().unwrap_or_default();
                    let Some(i) = st.refresh.iter().position(|t| *t == token) else {
                        return invalid();
                    };
                    st.refresh.remove(i);
                    if st.mode == Mode::RefreshFails {
                        return invalid();
                    }
                    // A refreshed ID token carries no nonce (OpenID Connect Core 12.2).
                    None
                }
                _ => return invalid(),
            };
            let aud = if st.mode == Mode::WrongAudience {
                "someone-else".to_owned()
            } else {
                st.client_id.clone()
            };
            let mut payload = serde_json::json!({
                "iss": st.issuer.clone().unwrap_or(format!("https://127.0.0.1:{}", addr.port())),
                "aud": aud,
                "sub": st.claims["sub"],
                "exp": now() + 3600,
                "iat": now(),
            });
            if let Some(nonce) = nonce {
                payload["nonce"] = nonce.into();
            }
            let id_token = format!(
                "{}.{}.{}",
                b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
                b64url(payload.to_string().as_bytes()),
                b64url(b"not checked: the token came straight from the token endpoint")
            );
            let (access, refresh) = (format!("access-{n}"), format!("refresh-{n}"));
            st.tokens.push(access.clone());
            st.refresh.push(refresh.clone());
            reply(
                200,
                serde_json::json!({
                    "access_token": access, "token_type": "Bearer",
                    "expires_in": st.access_seconds, "id_token": id_token,
                    "refresh_token": refresh,
                })
                .to_string(),
            )
        }
        "/jwks" => reply(200, st.jwks.clone()),
        "/userinfo" => {
            let token = asked
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !st.tokens.iter().any(|t| t == token) {
                return reply(401, "{\"error\":\"invalid_token\"}".into());
            }
            reply(200, st.claims.to_string())
        }
        _ => reply(404, "{}".into()),
    }
}

/// Standard base64 (with padding), for HTTP Basic.
pub fn b64std(data: &[u8]) -> String {
    let mut s = b64url(data).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}
