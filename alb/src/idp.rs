//! The alb's calls to an OpenID Connect identity provider for phase `authenticate`: the token
//! endpoint (an authorization code, or a refresh token, traded for tokens) and the user info
//! endpoint, over HTTPS with the IdP's certificate verified, each bounded by a timeout and a
//! size.

use crate::auth::{self, Answer, Callback, Keys, Provider, Renewed, Session, Verdict, View};
use bytes::Bytes;
use causeway_config::oidc::HttpsUrl;
use http_body_util::{BodyExt, Full, Limited};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};

/// How long one call to the IdP may take, connection and answer together.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from the IdP (a JWKS may take ALB's 150 KB).
const MAX_BODY: usize = crate::jwt::MAX_JWKS;
/// Where Debian (and most Linux hosts) keep the system's CA certificates.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a call to the IdP failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, hyper::Error),
    #[error("{0}: timed out")]
    Timeout(String),
    #[error("{0}: answered {1}")]
    Status(String, u16),
    #[error("{0}: the answer is over 150 KiB or broken")]
    Body(String),
    #[error("{0}: {1}")]
    Request(String, String),
}

/// The TLS client settings for an IdP: the system's CAs, plus those of `trusted` (a PEM
/// file, which must hold at least one). Built at load, so a bad file refuses the config.
pub fn client_config(trusted: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(file) = trusted {
        let name = file.display();
        let before = roots.len();
        for cert in CertificateDer::pem_file_iter(file).map_err(|e| format!("{name}: {e}"))? {
            let cert = cert.map_err(|e| format!("{name}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{name}: not a CA certificate: {e}"))?;
        }
        if roots.len() == before {
            return Err(format!("{name}: no certificate"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The system's CA certificates, read once per process: every authenticate action on every
/// load would otherwise parse the same bundle of a hundred-odd certificates again.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        CertificateDer::pem_file_iter(SYSTEM_ROOTS)
            .map(|iter| iter.flatten().collect())
            .unwrap_or_default()
    })
}

/// One HTTP/1.1 exchange with `url` over a fresh TLS connection: the status and body.
async fn call(
    tls: &Arc<rustls::ClientConfig>,
    url: &HttpsUrl,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Bytes, IdpError> {
    let what = url.raw.clone();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| IdpError::Io(what.clone(), e))?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| IdpError::Request(what.clone(), e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| IdpError::Io(what.clone(), e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| IdpError::Http(what.clone(), e))?;
        let driver = tokio::spawn(conn);
        let resp = send.send_request(req).await;
        let out = match resp {
            Err(e) => Err(IdpError::Http(what.clone(), e)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                match Limited::new(resp.into_body(), MAX_BODY).collect().await {
                    Ok(_) if !(200..300).contains(&status) => {
                        Err(IdpError::Status(what.clone(), status))
                    }
                    Ok(b) => Ok(b.to_bytes()),
                    Err(_) => Err(IdpError::Body(what.clone())),
                }
            }
        };
        driver.abort();
        out
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(IdpError::Timeout(url.raw.clone())),
    }
}

/// A request to `url` with the Host and Accept every IdP call carries.
fn request(method: &str, url: &HttpsUrl) -> hyper::http::request::Builder {
    let host = if url.port == 443 {
        url.host.clone()
    } else if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    hyper::Request::builder()
        .method(method)
        .uri(url.path_and_query.as_str())
        .header("host", host)
        .header("accept", "application/json")
        .header("user-agent", "causeway-alb")
}

/// The token endpoint's answer to a grant (`form`, without the client id), with the client's
/// credentials in HTTP Basic (`client_secret_basic`, OpenID Connect's default).
async fn token(p: &Provider, form: &[(&str, &str)]) -> Result<Bytes, IdpError> {
    let cfg = &p.cfg;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{}:{}", enc(&cfg.client_id), enc(&cfg.client_secret)),
    );
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .append_pair("client_id", &cfg.client_id)
        .finish();
    let req = request("POST", &cfg.token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Basic {basic}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| IdpError::Request(cfg.token_endpoint.raw.clone(), e.to_string()))?;
    call(&p.tls, &cfg.token_endpoint, req).await
}

/// The token endpoint's answer to the callback's code.
async fn redeem(p: &Provider, cb: &Callback, redirect_uri: &str) -> Result<Bytes, IdpError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", cb.code.as_str()),
        ("redirect_uri", redirect_uri),
    ];
    token(p, &form).await
}

/// The user info endpoint's answer for an access token.
async fn user_info(p: &Provider, access_token: &str) -> Result<Bytes, IdpError> {
    let url = &p.cfg.user_info_endpoint;
    let req = request("GET", url)
        .header("authorization", format!("Bearer {access_token}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| IdpError::Request(url.raw.clone(), e.to_string()))?;
    call(&p.tls, url, req).await
}

/// Serves a callback to `/oauth2/idpresponse` on a listener whose rules authenticate: reads
/// the state, redeems the code, reads the user's claims, and answers with the session and
/// the redirect to the page first asked for (or the error that ends the sign-in).
pub async fn callback<'p>(
    keys: &Keys,
    providers: impl Fn(u32) -> Option<&'p Provider>,
    host: &[u8],
    query: &[u8],
    cookies: &[&[u8]],
) -> Answer {
    let now = auth::unix_now();
    let (p, cb) = match auth::read_callback(keys, providers, query, cookies, now) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let Ok(_permit) = p.calls.try_acquire() else {
        tracing::warn!(issuer = %p.cfg.issuer, "too many sign-ins in flight with this IdP");
        return Answer {
            status: 500,
            fields: Vec::new(),
            reason: "AuthTokenEpRequestFailed",
        };
    };
    let fail = |status, reason, e: IdpError| {
        tracing::warn!(error = %e, issuer = %p.cfg.issuer, "sign-in failed");
        Answer {
            status,
            fields: Vec::new(),
            reason,
        }
    };
    let body = match redeem(p, &cb, &auth::redirect_uri(host)).await {
        Ok(b) => b,
        Err(e @ IdpError::Timeout(_)) => return fail(500, "AuthTokenEpRequestTimeout", e),
        Err(e) => return fail(500, "AuthTokenEpRequestFailed", e),
    };
    let tokens = match auth::read_tokens(p, &cb, &body, now) {
        Ok(t) => t,
        Err(reason) => {
            let status = if reason == "AuthInvalidIdToken" {
                401
            } else {
                500
            };
            tracing::warn!(reason, issuer = %p.cfg.issuer, "sign-in refused");
            return Answer {
                status,
                fields: Vec::new(),
                reason,
            };
        }
    };
    let info = match user_info(p, &tokens.access_token).await {
        Ok(b) => b,
        Err(e @ IdpError::Timeout(_)) => return fail(500, "AuthUserinfoEpRequestTimeout", e),
        Err(e) => return fail(500, "AuthUserinfoEpRequestFailed", e),
    };
    auth::finish(keys, p, &cb, tokens, &info, now)
}

/// Phase `authenticate` for a request that matched `p`'s rule (`priority`, 0 for the default
/// action): the user's fields for the target and the `Set-Cookie` values for the answer, or
/// the alb's own answer. A session whose access token has ended is renewed first.
pub async fn verdict(
    keys: &Arc<Keys>,
    p: &Arc<Provider>,
    priority: u32,
    req: &View<'_>,
) -> Result<(Vec<(&'static str, String)>, Vec<String>), Answer> {
    let v = match auth::check(keys, p, priority, req, auth::unix_now()) {
        Verdict::Renew(s) => renew(keys, p, priority, req, s).await,
        v => v,
    };
    match v {
        Verdict::Pass(fields, cookies) => Ok((fields, cookies)),
        Verdict::Answer(a) => Err(a),
        // `renew` settles a renewal itself.
        Verdict::Renew(_) => Err(Answer {
            status: 500,
            fields: Vec::new(),
            reason: "AuthInternalError",
        }),
    }
}

/// Renews session `s`'s claims with its refresh token (after [`Verdict::Renew`]). New claims:
/// the action runs with them, and their cookies go on the answer. The IdP refused: the
/// session is removed from the browser and the request is treated as unauthenticated. The
/// IdP is unreachable or failing: the current claims stand, and a later request tries again.
/// Requests carrying the same session share one renewal ([`auth::renewal`]), run in a task of
/// its own so that a request cancelled by its client does not cancel it halfway (the IdP may
/// have taken the refresh token already).
async fn renew(
    keys: &Arc<Keys>,
    p: &Arc<Provider>,
    priority: u32,
    req: &View<'_>,
    s: Session,
) -> Verdict {
    let now = auth::unix_now();
    let (mut result, runner) = auth::renewal(p, &s, now);
    if let Some(runner) = runner {
        let (keys, p, s) = (keys.clone(), p.clone(), s.clone());
        tokio::spawn(async move {
            let r = match p.renewal_calls.try_acquire() {
                Err(_) => {
                    tracing::warn!(issuer = %p.cfg.issuer, "too many renewals in flight with this IdP");
                    Renewed::Unavailable
                }
                Ok(_permit) => renew_with_idp(&keys, &p, &s).await,
            };
            runner.send(r, auth::unix_now());
        });
    }
    let renewed = match result.wait_for(Option::is_some).await {
        Ok(r) => r.clone().unwrap_or(Renewed::Unavailable),
        Err(_) => Renewed::Unavailable,
    };
    match renewed {
        Renewed::Claims(new, cookies) if new.sub == s.sub => auth::pass(keys, p, new, cookies, now),
        Renewed::Unavailable => auth::pass(keys, p, s, Vec::new(), now),
        Renewed::Claims(..) | Renewed::Refused => {
            let clear = auth::clear_session(p);
            match auth::unauthenticated(keys, p, priority, req, now) {
                Verdict::Pass(fields, _) => Verdict::Pass(fields, clear),
                Verdict::Answer(mut a) => {
                    a.fields
                        .extend(clear.into_iter().map(|c| ("Set-Cookie", c)));
                    Verdict::Answer(a)
                }
                v @ Verdict::Renew(_) => v,
            }
        }
    }
}

/// One renewal with the IdP: the refresh token traded for tokens, then the user info read with
/// the new access token. An answer of 400 or 401 from the token endpoint (`invalid_grant`: the
/// token was revoked, or the user signed out), of 401 or 403 from the user info endpoint, or
/// one that cannot be used is a refusal; anything else (no connection, a timeout, a 5xx) is
/// the IdP being unavailable.
async fn renew_with_idp(keys: &Keys, p: &Provider, s: &Session) -> Renewed {
    let now = auth::unix_now();
    let outcome = |e: IdpError, refusals: &[u16]| {
        let refused = matches!(&e, IdpError::Status(_, code) if refusals.contains(code));
        tracing::warn!(error = %e, issuer = %p.cfg.issuer, refused, "renewal failed");
        if refused {
            Renewed::Refused
        } else {
            Renewed::Unavailable
        }
    };
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", s.refresh_token.as_str()),
    ];
    let body = match token(p, &form).await {
        Ok(b) => b,
        Err(e) => return outcome(e, &[400, 401]),
    };
    let refused = |reason: &str| {
        tracing::warn!(reason, issuer = %p.cfg.issuer, "renewal refused");
        Renewed::Refused
    };
    let tokens = match auth::read_renewal(p, s, &body, now) {
        Ok(t) => t,
        Err(reason) => return refused(reason),
    };
    let info = match user_info(p, &tokens.access_token).await {
        Ok(b) => b,
        Err(e) => return outcome(e, &[401, 403]),
    };
    match auth::renewed(keys, p, s, tokens, &info, now) {
        Ok((new, cookies)) => Renewed::Claims(new, cookies),
        Err(reason) => refused(reason),
    }
}

/// How old a JWKS may grow before a request has it fetched again (in the background: the
/// keys held serve meanwhile).
const JWKS_FRESH: std::time::Duration = std::time::Duration::from_secs(3600);
/// How soon a token signed with an unknown key may make the JWKS be fetched again (an IdP
/// that rotated its keys), so that made-up key ids cannot make the alb hammer the endpoint.
const JWKS_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
/// How long after a failed fetch no other is tried.
const JWKS_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a JWKS is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// None is held yet.
    First,
    /// The one held is over an hour old.
    Fresh,
    /// A token names a key the one held lacks.
    NewKey,
}

/// Phase `authenticate` for a rule with a `jwt-validation` action: `Ok` lets the request go on
/// unchanged (the token goes to the target as it came); `Err` is the alb's answer, 401 with a
/// `WWW-Authenticate` challenge (RFC 6750), 400 for several `Authorization` fields, or 500
/// when no JWKS could be fetched yet.
pub async fn validate_jwt(
    v: &crate::jwt::Validator,
    authorization: &[&[u8]],
) -> Result<(), Answer> {
    use crate::jwt::{self, Refusal};
    let refuse = |r: Refusal| {
        let (challenge, reason) = match r {
            Refusal::Missing => ("Bearer", "JwtMissing"),
            _ => ("Bearer error=\"invalid_token\"", "JwtInvalid"),
        };
        Answer {
            status: 401,
            fields: vec![("WWW-Authenticate", challenge.to_owned())],
            reason,
        }
    };
    // A target that reads another of several fields than the one checked here would trust an
    // unchecked token.
    if authorization.len() > 1 {
        return Err(Answer {
            status: 400,
            fields: vec![(
                "WWW-Authenticate",
                "Bearer error=\"invalid_request\"".to_owned(),
            )],
            reason: "JwtInvalid",
        });
    }
    let token = jwt::bearer(authorization.first().copied()).map_err(refuse)?;
    // What needs no key is refused before any fetch.
    jwt::parse(token).map_err(refuse)?;
    let now = auth::unix_now();
    let cache = &v.cache;
    let keys = match cache.keys() {
        None => fetch_jwks(cache.clone(), Want::First).await,
        Some((keys, at)) => {
            if at.elapsed() >= JWKS_FRESH {
                tokio::spawn(fetch_locked(cache.clone(), Want::Fresh));
            }
            Some((keys, at))
        }
    };
    let Some((current, _)) = keys else {
        return Err(Answer {
            status: 500,
            fields: Vec::new(),
            reason: "JwksUnavailable",
        });
    };
    match jwt::check(&v.cfg, &current, token, now) {
        Ok(()) => Ok(()),
        Err(Refusal::UnknownKey) => match fetch_jwks(cache.clone(), Want::NewKey).await {
            // The IdP may have rotated its keys.
            Some((newer, _)) if !Arc::ptr_eq(&newer, &current) => {
                jwt::check(&v.cfg, &newer, token, now).map_err(refuse)
            }
            _ => Err(refuse(Refusal::Invalid("unknown key"))),
        },
        Err(r) => Err(refuse(r)),
    }
}

/// [`fetch_locked`] in a task of its own, so that a request its client cancels does not cut a
/// fetch off halfway; the keys after it.
async fn fetch_jwks(
    cache: Arc<crate::jwt::KeyCache>,
    want: Want,
) -> Option<(Arc<Vec<crate::jwt::Key>>, std::time::Instant)> {
    tokio::spawn(fetch_locked(cache, want)).await.ok().flatten()
}

/// Fetches the JWKS, one fetch at a time: a request that waited while another fetched takes
/// its result (keys or none) rather than fetching again. No fetch within [`JWKS_BACKOFF`] of
/// a failed one; for an unknown key, none within [`JWKS_RETRY`] of the last such fetch. A
/// failed fetch keeps the keys held. The keys after it.
async fn fetch_locked(
    cache: Arc<crate::jwt::KeyCache>,
    want: Want,
) -> Option<(Arc<Vec<crate::jwt::Key>>, std::time::Instant)> {
    use std::sync::atomic::Ordering;
    let seen = cache.attempts.load(Ordering::Acquire);
    let mut st = cache.state.lock().await;
    let held = cache.keys();
    let ended_meanwhile = cache.attempts.load(Ordering::Acquire) != seen;
    let needless = match (want, &held) {
        (Want::First, Some(_)) => true,
        (Want::Fresh, Some((_, at))) => at.elapsed() < JWKS_FRESH,
        (Want::NewKey, Some(_)) => st.unknown_at.is_some_and(|t| t.elapsed() < JWKS_RETRY),
        _ => false,
    };
    let backing_off = st.failed_at.is_some_and(|t| t.elapsed() < JWKS_BACKOFF);
    if ended_meanwhile || needless || backing_off {
        return held;
    }
    if want == Want::NewKey {
        st.unknown_at = Some(std::time::Instant::now());
    }
    let url = &cache.endpoint;
    let fetched = match request("GET", url).body(Full::new(Bytes::new())) {
        Ok(req) => call(&cache.tls, url, req).await,
        Err(e) => Err(IdpError::Request(url.raw.clone(), e.to_string())),
    };
    let keys = fetched
        .map_err(|e| e.to_string())
        .and_then(|body| crate::jwt::parse_jwks(&body).map_err(str::to_owned));
    cache.attempts.fetch_add(1, Ordering::Release);
    match keys {
        Ok(keys) => {
            st.failed_at = None;
            Some(cache.store(keys))
        }
        Err(e) => {
            st.failed_at = Some(std::time::Instant::now());
            tracing::warn!(error = %e, endpoint = %url.raw, "JWKS fetch failed");
            held
        }
    }
}
