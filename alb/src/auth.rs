//! Phase `authenticate`: ALB's `authenticate-oidc` action, run after `route` and before the
//! rule's own action. The session cookie, the sign-in state and the signed claims for targets
//! are here, as pure code; the calls to the identity provider are in `idp`.
//!
//! A request without a valid session is sent to the IdP's authorization endpoint (or refused
//! with 401, or let through without claims, as `on_unauthenticated_request` says). The IdP
//! sends the browser back to `/oauth2/idpresponse` with a code; the alb trades it for tokens,
//! reads the user's claims, sets the session cookie (AES-256-GCM, split into 4,000-byte
//! shards) and redirects to the page first asked for. Requests with a session reach the
//! target with `x-amzn-oidc-accesstoken`, `x-amzn-oidc-identity` and `x-amzn-oidc-data` (the
//! claims as an ES256 JWT whose public key the admin server publishes by its `kid`). When the
//! access token ends and the IdP gave a refresh token, the claims are renewed with it (in
//! `idp`) and the new session rides on the target's answer; if renewal fails, the request is
//! treated as unauthenticated.

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use causeway_config::oidc::{AuthenticateOidc, OnUnauthenticated};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Where the IdP sends the browser back (ALB's fixed redirect path).
pub const CALLBACK: &[u8] = b"/oauth2/idpresponse";
/// The cookie that binds a sign-in's state to the browser that started it.
pub const NONCE_COOKIE: &str = "AWSALBAuthNonce";
/// The fields a target gets, which a client's own request may not carry on these rules.
pub const FIELDS: [&str; 3] = [
    "x-amzn-oidc-accesstoken",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-data",
];
/// How long a sign-in may take, from the redirect to the IdP to the callback.
const STATE_SECONDS: u64 = 900;
/// Bytes of session per cookie: most browsers keep at most 4 KB per cookie.
const SHARD: usize = 4000;
/// ALB's limit on the user's claims and access token together: beyond it, 500.
pub const CLAIMS_LIMIT: usize = 11 * 1024;
/// How many shards a session may take: 11 KB of claims and token, with the user's `sub`,
/// sealed and in base64, fits in four; the fifth is room for a long `sub`.
const MAX_SHARDS: usize = 5;
/// How long an `x-amzn-oidc-data` token is valid, and reused for one session.
const DATA_SECONDS: u64 = 120;

/// Whether a field name is one of [`FIELDS`], in any case and with `_` for `-` (a CGI, PHP
/// or WSGI target reads `x_amzn_oidc_identity` as `x-amzn-oidc-identity`).
pub fn is_oidc_field(name: &[u8]) -> bool {
    let same = |a: &u8, b: &u8| a.eq_ignore_ascii_case(b) || (*a == b'-' && *b == b'_');
    FIELDS
        .iter()
        .any(|f| f.len() == name.len() && f.as_bytes().iter().zip(name).all(|(a, b)| same(a, b)))
}

/// The keys every authenticating rule shares: the one that seals sessions and sign-in states,
/// and the one that signs the claims for targets.
pub struct Keys {
    seal: LessSafeKey,
    rng: SystemRandom,
    signer: EcdsaKeyPair,
    /// The signing key's id, as targets look it up.
    pub kid: String,
    /// The public key, a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub public_pem: String,
    /// `signer` in the token header: the load balancer's name.
    pub signer_name: String,
    /// Signed claims per session, reused while fresh (signing costs more than the request).
    signed: Mutex<HashMap<u64, (String, u64)>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why the keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: {1}")]
    File(String, std::io::Error),
    #[error("{0}: not a PKCS#8 P-256 private key in PEM")]
    NotP256(String),
    #[error("no randomness for a key")]
    Random,
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl Keys {
    /// The keys from the config's secret and signing key file, or this process's own (made
    /// once, so a reload keeps every session and the published key).
    pub fn new(
        secret: Option<&str>,
        signing_key: Option<&std::path::Path>,
        signer_name: String,
    ) -> Result<Keys, KeyError> {
        let rng = SystemRandom::new();
        let seal_bytes: [u8; 32] = match secret {
            Some(s) => {
                let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"causeway-alb-oidc");
                let prk = salt.extract(s.as_bytes());
                let info = [b"session".as_slice()];
                let okm = prk
                    .expand(&info, ring::hkdf::HKDF_SHA256)
                    .map_err(|_| KeyError::Random)?;
                let mut out = [0u8; 32];
                okm.fill(&mut out).map_err(|_| KeyError::Random)?;
                out
            }
            None => *process_secret()?,
        };
        let seal = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &seal_bytes).map_err(|_| KeyError::Random)?,
        );
        let pkcs8 = match signing_key {
            Some(path) => {
                let name = path.display().to_string();
                let pem =
                    std::fs::read_to_string(path).map_err(|e| KeyError::File(name.clone(), e))?;
                pem_body(&pem, "PRIVATE KEY").ok_or_else(|| KeyError::NotP256(name.clone()))?
            }
            None => process_signing_key().clone(),
        };
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| {
                KeyError::NotP256(
                    signing_key.map_or_else(|| "generated key".into(), |p| p.display().to_string()),
                )
            })?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(signer.public_key().as_ref());
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        let h: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let kid = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        Ok(Keys {
            seal,
            rng,
            signer,
            kid,
            public_pem: pem("PUBLIC KEY", &spki),
            signer_name,
            signed: Mutex::new(HashMap::new()),
        })
    }

    /// `plain` sealed for `purpose`, as URL-safe base64 of nonce, ciphertext and tag.
    fn seal(&self, purpose: &[u8], plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// What [`Self::seal`] sealed for `purpose`, or `None` for anything else.
    fn open(&self, purpose: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let mut body = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).ok()?;
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(purpose), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }

    fn random(&self) -> Option<[u8; 16]> {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).ok()?;
        Some(b)
    }

    /// `x-amzn-oidc-data` as ALB writes it: a JWT signed with ES256, whose segments are
    /// URL-safe base64 with padding (ALB's own quirk, kept so targets written for ALB verify
    /// it).
    pub fn data_token(&self, p: &Provider, claims: &str, now: u64, expires: u64) -> Option<String> {
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "kid": self.kid,
            "signer": self.signer_name,
            "iss": p.cfg.issuer,
            "client": p.cfg.client_id,
            "exp": expires.min(now + DATA_SECONDS),
        });
        let mut token = URL_SAFE.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE.encode(claims));
        let sig = self.signer.sign(&self.rng, token.as_bytes()).ok()?;
        token.push('.');
        token.push_str(&URL_SAFE.encode(sig.as_ref()));
        Some(token)
    }

    /// [`Self::data_token`] for a session, reused while it has a minute left.
    fn data_for(&self, p: &Provider, s: &Session, now: u64) -> Option<String> {
        let key = cache_key(p.binding, &s.access_token, &s.claims);
        let mut cache = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, exp)) = cache.get(&key) {
            if *exp > now + DATA_SECONDS / 2 {
                return Some(t.clone());
            }
        }
        let t = self.data_token(p, &s.claims, now, s.expires)?;
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(key, (t.clone(), s.expires.min(now + DATA_SECONDS)));
        Some(t)
    }
}

/// A cache key for a session's signed claims.
fn cache_key(binding: u64, access_token: &str, claims: &str) -> u64 {
    use siphasher::sip::SipHasher13;
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_keys(binding, 0x6f69_6463);
    h.write(access_token.as_bytes());
    h.write_u8(0);
    h.write(claims.as_bytes());
    h.finish()
}

/// This process's session key when the config gives no secret.
fn process_secret() -> Result<&'static [u8; 32], KeyError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| KeyError::Random)?;
    Ok(KEY.get_or_init(|| k))
}

/// This process's signing key (PKCS#8) when the config names none.
fn process_signing_key() -> &'static Vec<u8> {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default()
    })
}

/// The DER inside a PEM block of `label`.
fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

/// DER as a PEM block of `label`, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An authenticate action as compiled at load: its config, the TLS client settings for its
/// IdP, and a value that ties its sessions to its issuer and client.
pub struct Provider {
    pub cfg: Arc<AuthenticateOidc>,
    pub tls: Arc<tokio_rustls::rustls::ClientConfig>,
    binding: u64,
    /// Sign-ins being finished with the IdP at once, at most [`IDP_CALLS`]: a replayed
    /// callback costs the alb a TLS connection to the IdP, so their number is bounded.
    pub calls: tokio::sync::Semaphore,
    /// Renewals being run with the IdP at once, at most [`IDP_CALLS`], apart from sign-ins:
    /// replayed callbacks must not starve the renewals of users already signed in.
    pub renewal_calls: tokio::sync::Semaphore,
}

/// How many sign-ins, and apart from them how many renewals, one authenticate action runs
/// with its IdP at once.
pub const IDP_CALLS: usize = 64;
/// How long a finished renewal's result answers requests that still carry the session it
/// renewed (a browser's requests sent before the new cookie arrived). Short: past it, an old
/// cookie goes to the IdP again, which may refuse a refresh token it has replaced.
const RENEWAL_SECONDS: u64 = 10;
/// The most a sealed session with a refresh token may take: what a session at ALB's claims
/// limit takes without one (about 15 KB), so that the `Cookie` line stays within the 16 KB a
/// request field may take with room for the site's own cookies.
const ROOM_WITH_REFRESH: usize = 15_500;
/// At most this many renewals are shared at once; beyond, a renewal runs on its own.
const RENEWALS_SHARED: usize = 4096;

/// How a renewal of a session's claims ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Renewed {
    /// New claims: the renewed session and the `Set-Cookie` values that store it.
    Claims(Session, Vec<String>),
    /// The IdP refused the refresh token, or answered what cannot be used: the user must
    /// sign in again.
    Refused,
    /// The IdP could not be reached, failed, or too many calls were in flight: the current
    /// claims stand, and a later request tries again.
    Unavailable,
}

/// A renewal's result as the requests sharing it wait for it: `None` until it ends.
pub type RenewalResult = tokio::sync::watch::Receiver<Option<Renewed>>;

/// Renewals in flight or just ended, process-wide (a reload keeps them), by IdP binding and
/// refresh token: the Unix second each ended (0 while in flight), and its result.
type Renewals = HashMap<(u64, String), (Arc<std::sync::atomic::AtomicU64>, RenewalResult)>;

fn renewals() -> &'static Mutex<Renewals> {
    static RENEWALS: OnceLock<Mutex<Renewals>> = OnceLock::new();
    RENEWALS.get_or_init(Default::default)
}

/// The renewal of session `s` (of `p`'s IdP) that requests carrying it share, and, for the
/// request that must run it, where to send its result. A browser sends several requests at
/// once with the same cookie, and many IdPs take a refresh token only once, so they wait for
/// one renewal and share its result; requests sent with the old cookie within
/// [`RENEWAL_SECONDS`] of its end get the same answer.
pub fn renewal(p: &Provider, s: &Session, now: u64) -> (RenewalResult, Option<RenewalSender>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let key = (p.binding, s.refresh_token.clone());
    let mut map = renewals().lock().unwrap_or_else(|e| e.into_inner());
    // Ended ones go after their grace; one whose runner went away without a result, at once.
    map.retain(|_, (ended, rx)| match ended.load(Ordering::Relaxed) {
        0 => rx.has_changed().is_ok(),
        ended => ended + RENEWAL_SECONDS > now,
    });
    if let Some((_, rx)) = map.get(&key) {
        return (rx.clone(), None);
    }
    let (tx, rx) = tokio::sync::watch::channel(None);
    let ended = Arc::new(AtomicU64::new(0));
    if map.len() < RENEWALS_SHARED {
        map.insert(key, (ended.clone(), rx.clone()));
    }
    (rx, Some(RenewalSender { tx, ended }))
}

/// Where the request that runs a renewal sends its result.
pub struct RenewalSender {
    tx: tokio::sync::watch::Sender<Option<Renewed>>,
    ended: Arc<std::sync::atomic::AtomicU64>,
}

impl RenewalSender {
    /// Ends the renewal at `now` with `r`, for every request waiting on it.
    pub fn send(self, r: Renewed, now: u64) {
        self.ended
            .store(now.max(1), std::sync::atomic::Ordering::Relaxed);
        self.tx.send_replace(Some(r));
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn new(cfg: Arc<AuthenticateOidc>, tls: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        let binding = cache_key(0x6361_7573, &cfg.issuer, &cfg.client_id);
        Provider {
            cfg,
            tls,
            binding,
            calls: tokio::sync::Semaphore::new(IDP_CALLS),
            renewal_calls: tokio::sync::Semaphore::new(IDP_CALLS),
        }
    }
}

/// A signed-in user, as the session cookie carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Unix seconds at which the session ends.
    pub expires: u64,
    pub sub: String,
    pub access_token: String,
    /// The IdP's refresh token, empty when it gave none (the claims then last the session).
    pub refresh_token: String,
    /// Unix seconds at which the access token ends (the token endpoint's `expires_in`), 0 when
    /// the IdP did not say.
    pub access_expires: u64,
    /// The user info endpoint's answer, a JSON object.
    pub claims: String,
}

impl Session {
    /// Binary, not JSON: claims are JSON already, and escaping them again could double them.
    /// Version 2: the session's and the access token's expiry, then `sub`, the access token
    /// and the refresh token with their lengths, then the claims. Version 1 (no refresh token,
    /// no access token expiry) is still read.
    fn encode(&self) -> Vec<u8> {
        let strings = [&self.sub, &self.access_token, &self.refresh_token];
        let len = 29 + strings.iter().map(|f| f.len()).sum::<usize>() + self.claims.len();
        let mut out = Vec::with_capacity(len);
        out.push(2);
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&self.access_expires.to_be_bytes());
        for f in strings {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out.extend_from_slice(self.claims.as_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Session> {
        fn u64_at(rest: &[u8]) -> Option<(u64, &[u8])> {
            let (v, rest) = rest.split_at_checked(8)?;
            Some((u64::from_be_bytes(v.try_into().ok()?), rest))
        }
        fn field(rest: &[u8]) -> Option<(String, &[u8])> {
            let (len, rest) = rest.split_at_checked(4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            let (v, rest) = rest.split_at_checked(len)?;
            Some((String::from_utf8(v.to_vec()).ok()?, rest))
        }
        let (&version, rest) = b.split_first()?;
        let (expires, rest) = u64_at(rest)?;
        let (access_expires, rest) = match version {
            1 => (0, rest),
            2 => u64_at(rest)?,
            _ => return None,
        };
        let (sub, rest) = field(rest)?;
        let (access_token, rest) = field(rest)?;
        let (refresh_token, rest) = match version {
            1 => (String::new(), rest),
            _ => field(rest)?,
        };
        Some(Session {
            expires,
            sub,
            access_token,
            refresh_token,
            access_expires,
            claims: String::from_utf8(rest.to_vec()).ok()?,
        })
    }

    /// Whether the claims are due for renewal: the access token has ended and the IdP gave a
    /// refresh token to renew them with.
    pub fn due(&self, now: u64) -> bool {
        !self.refresh_token.is_empty() && self.access_expires != 0 && self.access_expires <= now
    }
}

/// The request's parts that authentication reads.
pub struct View<'a> {
    /// The path and query as received.
    pub target: &'a [u8],
    /// The Host (or :authority) as sent, with its port.
    pub host: &'a [u8],
    /// Every `Cookie` field value.
    pub cookies: &'a [&'a [u8]],
}

/// A local answer: the status, the fields to add (`Location`, `Set-Cookie`), and a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub fields: Vec<(&'static str, String)>,
    /// The access log's `error_reason` (ALB's `Auth*` codes).
    pub reason: &'static str,
}

impl Answer {
    fn bare(status: u16, reason: &'static str) -> Answer {
        Answer {
            status,
            fields: Vec::new(),
            reason,
        }
    }
}

/// What the rule's action goes on with.
#[derive(Debug)]
pub enum Verdict {
    /// Run the action; a target gets these fields (none for an unauthenticated request that
    /// `allow` lets through). The client's own fields of these names are dropped either way.
    /// The second part is `Set-Cookie` values for the answer (a renewed session), most often
    /// none.
    Pass(Vec<(&'static str, String)>, Vec<String>),
    /// The session's access token has ended and it holds a refresh token: renew its claims
    /// with the IdP (`idp::renew`), then pass or treat the request as unauthenticated.
    Renew(Session),
    /// Answer here instead.
    Answer(Answer),
}

/// The value of cookie `name` among `Cookie` field values.
pub fn cookie<'a>(values: &[&'a [u8]], name: &str) -> Option<&'a [u8]> {
    values.iter().find_map(|v| {
        v.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (n, val) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (n == name.as_bytes()).then_some(&val[1..])
        })
    })
}

/// The session the request's cookies carry for `p`, if it is sound and has not ended.
pub fn session(keys: &Keys, p: &Provider, cookies: &[&[u8]], now: u64) -> Option<Session> {
    let name = &p.cfg.session_cookie_name;
    let mut sealed = Vec::new();
    for i in 0..MAX_SHARDS {
        match cookie(cookies, &format!("{name}-{i}")) {
            Some(v) => sealed.extend_from_slice(v),
            None => break,
        }
    }
    if sealed.is_empty() {
        return None;
    }
    let plain = keys.open(&session_aad(p), &sealed)?;
    let s = Session::decode(&plain)?;
    (s.expires > now).then_some(s)
}

fn session_aad(p: &Provider) -> Vec<u8> {
    let mut aad = b"session:".to_vec();
    aad.extend_from_slice(&p.binding.to_le_bytes());
    aad.extend_from_slice(p.cfg.session_cookie_name.as_bytes());
    aad
}

/// The `Set-Cookie` values that store `s`: its shards, then the clearing of shards it no
/// longer needs. `None` when it cannot be sealed.
pub fn session_cookies(keys: &Keys, p: &Provider, s: &Session, now: u64) -> Option<Vec<String>> {
    session_cookies_within(keys, p, s, now, MAX_SHARDS * SHARD)
}

/// [`session_cookies`], if the sealed session takes at most `room` bytes.
fn session_cookies_within(
    keys: &Keys,
    p: &Provider,
    s: &Session,
    now: u64,
    room: usize,
) -> Option<Vec<String>> {
    let sealed = keys.seal(&session_aad(p), &s.encode())?;
    if sealed.len() > room {
        return None;
    }
    let name = &p.cfg.session_cookie_name;
    let age = s.expires.saturating_sub(now);
    let shards: Vec<&[u8]> = sealed.as_bytes().chunks(SHARD).collect();
    let mut out: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{name}-{i}={}; Path=/; Max-Age={age}; Secure; HttpOnly",
                std::str::from_utf8(c).unwrap_or_default()
            )
        })
        .collect();
    out.extend(clear_session(p).into_iter().skip(shards.len()));
    Some(out)
}

/// The `Set-Cookie` values that remove `p`'s session from the browser.
pub fn clear_session(p: &Provider) -> Vec<String> {
    let name = &p.cfg.session_cookie_name;
    (0..MAX_SHARDS)
        .map(|i| format!("{name}-{i}=; Path=/; Max-Age=-1; Secure; HttpOnly"))
        .collect()
}

/// What authentication does with a request that matched `p`'s rule (`priority`, 0 for the
/// listener's default action), at `now` (Unix seconds). A callback is [`callback`]'s.
pub fn check(keys: &Keys, p: &Provider, priority: u32, req: &View<'_>, now: u64) -> Verdict {
    match session(keys, p, req.cookies, now) {
        Some(s) if s.due(now) => Verdict::Renew(s),
        Some(s) => pass(keys, p, s, Vec::new(), now),
        None => unauthenticated(keys, p, priority, req, now),
    }
}

/// The action runs for session `s`'s user; `cookies` go on the answer.
pub fn pass(keys: &Keys, p: &Provider, s: Session, cookies: Vec<String>, now: u64) -> Verdict {
    let Some(data) = keys.data_for(p, &s, now) else {
        return Verdict::Answer(Answer::bare(500, "AuthInternalError"));
    };
    Verdict::Pass(
        vec![
            (FIELDS[0], s.access_token),
            (FIELDS[1], s.sub),
            (FIELDS[2], data),
        ],
        cookies,
    )
}

/// What `on_unauthenticated_request` does with a request without a session (or whose claims
/// could not be renewed).
pub fn unauthenticated(
    keys: &Keys,
    p: &Provider,
    priority: u32,
    req: &View<'_>,
    now: u64,
) -> Verdict {
    match p.cfg.on_unauthenticated {
        OnUnauthenticated::Allow => Verdict::Pass(Vec::new(), Vec::new()),
        OnUnauthenticated::Deny => Verdict::Answer(Answer::bare(401, "AuthUnauthenticated")),
        OnUnauthenticated::Authenticate => match sign_in(keys, p, priority, req, now) {
            Some(a) => Verdict::Answer(a),
            None => Verdict::Answer(Answer::bare(500, "AuthInternalError")),
        },
    }
}

/// The redirect URI the IdP sends the browser back to, on the host the request named.
pub fn redirect_uri(host: &[u8]) -> String {
    format!(
        "https://{}{}",
        String::from_utf8_lossy(host),
        std::str::from_utf8(CALLBACK).unwrap_or_default()
    )
}

/// A sign-in's state as sealed into the `state` parameter.
#[derive(Debug, Clone, PartialEq)]
struct State {
    expires: u64,
    /// The provider's [`Provider::binding`]: a state is good only for the IdP it went to.
    binding: u64,
    priority: u32,
    nonce: String,
    /// The path and query first asked for.
    target: String,
}

impl State {
    fn seal(&self, keys: &Keys) -> Option<String> {
        let body = serde_json::json!({
            "e": self.expires, "b": self.binding, "p": self.priority, "n": self.nonce,
            "t": self.target,
        })
        .to_string();
        keys.seal(b"state", body.as_bytes())
    }

    fn open(keys: &Keys, sealed: &[u8]) -> Option<State> {
        let v: serde_json::Value = serde_json::from_slice(&keys.open(b"state", sealed)?).ok()?;
        Some(State {
            expires: v.get("e")?.as_u64()?,
            binding: v.get("b")?.as_u64()?,
            priority: u32::try_from(v.get("p")?.as_u64()?).ok()?,
            nonce: v.get("n")?.as_str()?.to_owned(),
            target: v.get("t")?.as_str()?.to_owned(),
        })
    }
}

/// The page to return to after signing in, as a path on this site: a target that a browser
/// would read as another host (`//evil.example/`, `/\\evil.example/`) or that is not a path
/// becomes `/`, so the sign-in cannot be turned into an open redirect.
fn same_site(target: String) -> String {
    let b = target.as_bytes();
    if b.first() == Some(&b'/') && !matches!(b.get(1), Some(b'/' | b'\\')) {
        target
    } else {
        "/".into()
    }
}

/// The redirect to the IdP's authorization endpoint, with the nonce cookie.
fn sign_in(keys: &Keys, p: &Provider, priority: u32, req: &View<'_>, now: u64) -> Option<Answer> {
    let nonce = URL_SAFE_NO_PAD.encode(keys.random()?);
    let target = String::from_utf8_lossy(req.target).into_owned();
    let state = State {
        expires: now + STATE_SECONDS,
        binding: p.binding,
        priority,
        nonce: nonce.clone(),
        target: same_site(target),
    }
    .seal(keys)?;
    let cfg = &p.cfg;
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", &redirect_uri(req.host))
        .append_pair("response_type", "code")
        .append_pair("scope", &cfg.scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce);
    for (k, v) in &cfg.extra_params {
        q.append_pair(k, v);
    }
    let base = &cfg.authorization_endpoint.raw;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(Answer {
        status: 302,
        fields: vec![
            ("Location", format!("{base}{sep}{}", q.finish())),
            (
                "Set-Cookie",
                format!(
                    "{NONCE_COOKIE}={nonce}; Path=/; Max-Age={STATE_SECONDS}; Secure; HttpOnly"
                ),
            ),
        ],
        reason: "-",
    })
}

/// A callback's query, read.
#[derive(Debug, PartialEq)]
pub struct Callback {
    pub code: String,
    state: State,
}

/// Reads a callback to `/oauth2/idpresponse`: the provider it is for and its code, or the
/// answer that ends it (401 for a missing or forged state, 561 for an IdP's error).
pub fn read_callback<'p>(
    keys: &Keys,
    providers: impl Fn(u32) -> Option<&'p Provider>,
    query: &[u8],
    cookies: &[&[u8]],
    now: u64,
) -> Result<(&'p Provider, Callback), Answer> {
    let mut code = None;
    let mut state = None;
    let mut error = false;
    for (k, v) in form_urlencoded::parse(query) {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => error = true,
            _ => {}
        }
    }
    if error {
        return Err(Answer::bare(561, "AuthIdPError"));
    }
    let state = state.ok_or(Answer::bare(401, "AuthMissingStateParam"))?;
    let code = code.ok_or(Answer::bare(401, "AuthMissingCodeParam"))?;
    let invalid = Answer::bare(401, "AuthInvalidStateParam");
    let state = State::open(keys, state.as_bytes()).ok_or(invalid.clone())?;
    let browser = cookie(cookies, NONCE_COOKIE).ok_or(invalid.clone())?;
    if state.expires <= now || browser != state.nonce.as_bytes() {
        return Err(invalid);
    }
    // The rule at that priority must still authenticate with the IdP the state went to.
    let p = providers(state.priority)
        .filter(|p| p.binding == state.binding)
        .ok_or(invalid)?;
    Ok((p, Callback { code, state }))
}

/// The tokens a token endpoint answered with, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub access_token: String,
    /// The ID token's subject, once checked.
    pub sub: String,
    /// The refresh token, empty when the IdP gave none.
    pub refresh_token: String,
    /// Unix seconds at which the access token ends, 0 when the IdP did not say.
    pub access_expires: u64,
}

/// A token endpoint's JSON answer, read: its tokens, its `expires_in` as a time, and the
/// claims of its ID token, if it has one. `Err` is the access log's reason.
fn read_grant(body: &[u8], now: u64) -> Result<(Tokens, Option<serde_json::Value>), &'static str> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "AuthTokenEpResponseInvalid")?;
    let access_token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .ok_or("AuthTokenEpResponseInvalid")?
        .to_owned();
    // It goes to targets as a field value: visible ASCII only, so nothing an IdP sends can
    // split a request head or be dropped on the way.
    if !visible(&access_token) {
        return Err("AuthTokenEpResponseInvalid");
    }
    // Anything but a non-empty string counts as no refresh token.
    let refresh_token = match v.get("refresh_token") {
        Some(serde_json::Value::String(t)) => t.clone(),
        _ => String::new(),
    };
    // A number, or (from some IdPs) a number in a string.
    let lifetime = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(n)) => n.parse().ok(),
        _ => None,
    };
    let id = match v.get("id_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => {
            let payload = t
                .as_str()
                .and_then(|t| t.split('.').nth(1))
                .ok_or("AuthInvalidIdToken")?;
            let payload = URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .map_err(|_| "AuthInvalidIdToken")?;
            Some(serde_json::from_slice(&payload).map_err(|_| "AuthInvalidIdToken")?)
        }
    };
    let tokens = Tokens {
        access_token,
        sub: String::new(),
        refresh_token,
        access_expires: lifetime.map_or(0, |l| now.saturating_add(l)),
    };
    Ok((tokens, id))
}

/// Visible ASCII, not empty: what may go into a target's field value.
fn visible(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// Whether an ID token's claims name `p`'s issuer and client, are current, and carry a
/// subject that may go to targets.
fn id_token_ok(p: &Provider, c: &serde_json::Value, now: u64) -> bool {
    let aud_ok = match c.get("aud") {
        Some(serde_json::Value::String(a)) => *a == p.cfg.client_id,
        Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(&p.cfg.client_id)),
        _ => false,
    };
    let iss_ok = c.get("iss").and_then(|i| i.as_str()) == Some(p.cfg.issuer.as_str());
    let exp_ok = c
        .get("exp")
        .and_then(|e| e.as_u64())
        .is_some_and(|e| e > now);
    let sub = c.get("sub").and_then(|s| s.as_str()).unwrap_or_default();
    aud_ok && iss_ok && exp_ok && visible(sub) && sub.len() <= 255
}

/// Reads a token endpoint's JSON answer to a sign-in's code and checks its ID token against
/// `p` and the sign-in's nonce (OpenID Connect Core 3.1.3.7: the token came straight from the
/// token endpoint over TLS, so its issuer, audience, expiry and nonce are checked, not its
/// signature). `Err` is the access log's reason.
pub fn read_tokens(
    p: &Provider,
    cb: &Callback,
    body: &[u8],
    now: u64,
) -> Result<Tokens, &'static str> {
    let (mut tokens, id) = read_grant(body, now)?;
    let c = id.ok_or("AuthInvalidIdToken")?;
    // The alb sent a nonce, so the token must carry it (OpenID Connect Core 3.1.3.7).
    let nonce_ok = c.get("nonce").and_then(|n| n.as_str()) == Some(cb.state.nonce.as_str());
    if !(id_token_ok(p, &c, now) && nonce_ok) {
        return Err("AuthInvalidIdToken");
    }
    tokens.sub = c["sub"].as_str().unwrap_or_default().to_owned();
    Ok(tokens)
}

/// Reads a token endpoint's answer to session `s`'s refresh token (OpenID Connect Core 12.2):
/// a new access token; a new refresh token, or the old one kept; and, if it sent an ID token,
/// one for the same issuer, client and user (with no nonce: a refresh is no sign-in).
pub fn read_renewal(
    p: &Provider,
    s: &Session,
    body: &[u8],
    now: u64,
) -> Result<Tokens, &'static str> {
    let (mut tokens, id) = read_grant(body, now)?;
    if let Some(c) = id {
        if !id_token_ok(p, &c, now) || c["sub"].as_str() != Some(s.sub.as_str()) {
            return Err("AuthInvalidIdToken");
        }
    }
    tokens.sub.clone_from(&s.sub);
    if tokens.refresh_token.is_empty() {
        tokens.refresh_token.clone_from(&s.refresh_token);
    }
    Ok(tokens)
}

/// The session for `tokens` and the user info endpoint's answer `info` (a JSON object whose
/// `sub` must be the ID token's), ending at `expires`, and the `Set-Cookie` values that store
/// it. A refresh token that would not fit in the cookies is left out (the claims then last
/// the session). `Err` is the answer that ends the request.
fn store(
    keys: &Keys,
    p: &Provider,
    tokens: Tokens,
    info: &[u8],
    expires: u64,
    now: u64,
) -> Result<(Session, Vec<String>), Answer> {
    let claims: serde_json::Value = match serde_json::from_slice(info) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => return Err(Answer::bare(500, "AuthUserinfoResponseInvalid")),
    };
    if claims.get("sub").and_then(|s| s.as_str()) != Some(tokens.sub.as_str()) {
        return Err(Answer::bare(500, "AuthUserinfoResponseInvalid"));
    }
    let claims = claims.to_string();
    if claims.len() + tokens.access_token.len() > CLAIMS_LIMIT {
        return Err(Answer::bare(500, "AuthUserinfoResponseSizeExceeded"));
    }
    let mut s = Session {
        expires,
        sub: tokens.sub,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        access_expires: tokens.access_expires,
        claims,
    };
    if !s.refresh_token.is_empty() {
        if let Some(cookies) = session_cookies_within(keys, p, &s, now, ROOM_WITH_REFRESH) {
            return Ok((s, cookies));
        }
        s.refresh_token.clear();
    }
    match session_cookies(keys, p, &s, now) {
        Some(cookies) => Ok((s, cookies)),
        None => Err(Answer::bare(500, "AuthInternalError")),
    }
}

/// Ends a sign-in: the user info endpoint's answer `info` (a JSON object whose `sub` must be
/// the ID token's) becomes the session, set by the redirect to the page first asked for.
pub fn finish(
    keys: &Keys,
    p: &Provider,
    cb: &Callback,
    tokens: Tokens,
    info: &[u8],
    now: u64,
) -> Answer {
    let expires = now + p.cfg.session_timeout.as_secs();
    let cookies = match store(keys, p, tokens, info, expires, now) {
        Ok((_, cookies)) => cookies,
        Err(a) => return a,
    };
    let mut fields = vec![("Location", cb.state.target.clone())];
    fields.extend(cookies.into_iter().map(|c| ("Set-Cookie", c)));
    fields.push((
        "Set-Cookie",
        format!("{NONCE_COOKIE}=; Path=/; Max-Age=-1; Secure; HttpOnly"),
    ));
    Answer {
        status: 302,
        fields,
        reason: "-",
    }
}

/// Ends a renewal of session `old`: the renewed session (which ends when `old` does) and the
/// `Set-Cookie` values that store it, or the reason it failed.
pub fn renewed(
    keys: &Keys,
    p: &Provider,
    old: &Session,
    tokens: Tokens,
    info: &[u8],
    now: u64,
) -> Result<(Session, Vec<String>), &'static str> {
    store(keys, p, tokens, info, old.expires, now).map_err(|a| a.reason)
}

/// The body of a local answer: none for a redirect, else the status's reason.
pub fn body(status: u16) -> String {
    if status == 302 {
        String::new()
    } else {
        format!("{}\n", crate::action::reason(status))
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_config::oidc::HttpsUrl;

    fn cfg(on: OnUnauthenticated) -> AuthenticateOidc {
        let url = |p: &str| HttpsUrl::parse(&format!("https://idp.example.com{p}")).unwrap();
        AuthenticateOidc {
            issuer: "https://idp.example.com".into(),
            authorization_endpoint: url("/authorize?tenant=1"),
            token_endpoint: url("/token"),
            user_info_endpoint: url("/userinfo"),
            client_id: "client".into(),
            client_secret: "secret".into(),
            scope: "openid".into(),
            session_cookie_name: "AWSELBAuthSessionCookie".into(),
            session_timeout: std::time::Duration::from_secs(3600),
            on_unauthenticated: on,
            extra_params: vec![("prompt".into(), "login".into())],
            trusted_ca_file: None,
        }
    }

    fn provider(c: AuthenticateOidc) -> Provider {
        Provider::new(Arc::new(c), crate::idp::client_config(None).unwrap())
    }

    fn keys() -> Keys {
        Keys::new(
            Some("a shared secret of 16+ bytes"),
            None,
            "app/causeway-alb/test".into(),
        )
        .unwrap()
    }

    fn a_session(claims: &str) -> Session {
        Session {
            expires: 1_000_000 + 3600,
            sub: "user-1".into(),
            access_token: "at".into(),
            refresh_token: String::new(),
            access_expires: 0,
            claims: claims.into(),
        }
    }

    /// The `Cookie` value a browser sends back for these `Set-Cookie` values.
    fn returned(set: &[String]) -> String {
        set.iter()
            .filter(|c| !c.contains("Max-Age=-1"))
            .map(|c| c.split(';').next().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn a_session_round_trips_and_ends_at_its_expiry_or_under_another_provider() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let s = a_session(r#"{"sub":"user-1"}"#);
        let set = session_cookies(&k, &p, &s, 1_000_000).unwrap();
        assert!(set[0].starts_with("AWSELBAuthSessionCookie-0="));
        assert!(set[0].ends_with("; Path=/; Max-Age=3600; Secure; HttpOnly"));
        // The unused shards are cleared.
        assert_eq!(set.len(), MAX_SHARDS);
        assert!(set[1].starts_with("AWSELBAuthSessionCookie-1=; Path=/; Max-Age=-1"));
        let back = returned(&set);
        let cookies = [back.as_bytes()];
        assert_eq!(session(&k, &p, &cookies, 1_000_000), Some(s.clone()));
        assert_eq!(session(&k, &p, &cookies, 1_000_000 + 3600), None, "expired");
        // Another replica with the same secret reads it; another secret does not.
        let same = Keys::new(Some("a shared secret of 16+ bytes"), None, "x".into()).unwrap();
        assert!(session(&same, &p, &cookies, 1_000_000).is_some());
        let other = Keys::new(Some("another secret, 16+ bytes"), None, "x".into()).unwrap();
        assert!(session(&other, &p, &cookies, 1_000_000).is_none());
        // A session of one IdP or client is no session for another.
        let mut c2 = cfg(OnUnauthenticated::Authenticate);
        c2.client_id = "other-client".into();
        assert!(session(&k, &provider(c2), &cookies, 1_000_000).is_none());
        // One changed byte and the seal breaks.
        let mut forged = back.clone().into_bytes();
        let i = forged.len() - 5;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        assert!(session(&k, &p, &[forged.as_slice()], 1_000_000).is_none());
    }

    #[test]
    fn a_session_is_renewed_once_its_access_token_ends_if_it_has_a_refresh_token() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let mut s = a_session(r#"{"sub":"user-1"}"#);
        s.refresh_token = "rt-1".into();
        s.access_expires = 1_000_100;
        let back = returned(&session_cookies(&k, &p, &s, 1_000_000).unwrap());
        let cookies = [back.as_bytes()];
        let view = View {
            target: b"/",
            host: b"www.example.com",
            cookies: &cookies,
        };
        assert!(
            matches!(check(&k, &p, 10, &view, 1_000_099), Verdict::Pass(f, c)
            if f[0].1 == "at" && c.is_empty())
        );
        assert!(matches!(check(&k, &p, 10, &view, 1_000_100), Verdict::Renew(r) if r == s));
        // Without a refresh token, or without a known lifetime, the claims last the session.
        for (refresh, lifetime) in [("", 1_000_100), ("rt-1", 0)] {
            let mut t = s.clone();
            t.refresh_token = refresh.into();
            t.access_expires = lifetime;
            let back = returned(&session_cookies(&k, &p, &t, 1_000_000).unwrap());
            let cookies = [back.as_bytes()];
            let view = View {
                cookies: &cookies,
                ..view
            };
            assert!(matches!(
                check(&k, &p, 10, &view, 1_000_200),
                Verdict::Pass(..)
            ));
        }
        // A session sealed in version 1 (no refresh token) is still read.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&(1_000_000u64 + 3600).to_be_bytes());
        for f in ["user-1", "at"] {
            v1.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v1.extend_from_slice(f.as_bytes());
        }
        v1.extend_from_slice(br#"{"sub":"user-1"}"#);
        assert_eq!(Session::decode(&v1), Some(a_session(r#"{"sub":"user-1"}"#)));
        v1[0] = 3;
        assert_eq!(Session::decode(&v1), None, "an unknown version");
    }

    #[test]
    fn a_renewal_keeps_the_user_and_the_session_s_end() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let mut old = a_session(r#"{"sub":"user-1","group":"a"}"#);
        old.refresh_token = "rt-1".into();
        old.access_expires = 1_000;
        let id = |sub: &str, aud: &str| {
            id_token(serde_json::json!({
                "iss": "https://idp.example.com", "aud": aud, "sub": sub, "exp": 2_000,
            }))
        };
        let read =
            |body: serde_json::Value| read_renewal(&p, &old, body.to_string().as_bytes(), 1_000);
        // No new refresh token: the old one is kept; no ID token is needed.
        let t = read(serde_json::json!({ "access_token": "at-2", "expires_in": 60 })).unwrap();
        assert_eq!(
            (
                t.access_token.as_str(),
                t.sub.as_str(),
                t.refresh_token.as_str(),
                t.access_expires
            ),
            ("at-2", "user-1", "rt-1", 1_060)
        );
        let t = read(serde_json::json!({
            "access_token": "at-2", "refresh_token": "rt-2", "id_token": id("user-1", "client"),
        }))
        .unwrap();
        assert_eq!((t.refresh_token.as_str(), t.access_expires), ("rt-2", 0));
        // An ID token for another user or client ends it; so does an answer without a token.
        for idt in [id("user-2", "client"), id("user-1", "other")] {
            let body = serde_json::json!({ "access_token": "at-2", "id_token": idt });
            assert_eq!(read(body), Err("AuthInvalidIdToken"));
        }
        let body = serde_json::json!({ "error": "invalid_grant" });
        assert_eq!(read(body), Err("AuthTokenEpResponseInvalid"));
        // The renewed session: new token and claims, the old session's end.
        let t = read(serde_json::json!({ "access_token": "at-2", "expires_in": 60 })).unwrap();
        let info = br#"{"sub":"user-1","group":"b"}"#;
        let (new, set) = renewed(&k, &p, &old, t, info, 1_000).unwrap();
        assert_eq!(new.expires, old.expires);
        assert_eq!(
            (
                new.access_token.as_str(),
                new.claims.as_str(),
                new.access_expires
            ),
            ("at-2", r#"{"group":"b","sub":"user-1"}"#, 1_060)
        );
        let back = returned(&set);
        assert_eq!(session(&k, &p, &[back.as_bytes()], 1_000), Some(new));
        let t = read(serde_json::json!({ "access_token": "at-2" })).unwrap();
        assert_eq!(
            renewed(&k, &p, &old, t, br#"{"sub":"user-2"}"#, 1_000).map(|_| ()),
            Err("AuthUserinfoResponseInvalid")
        );
    }

    #[test]
    fn a_refresh_token_that_does_not_fit_is_left_out_of_the_session() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let claims = format!(
            r#"{{"sub":"user-1","x":"{}"}}"#,
            "y".repeat(CLAIMS_LIMIT - 100)
        );
        let tokens = Tokens {
            access_token: "at".into(),
            sub: "user-1".into(),
            refresh_token: "r".repeat(1_000),
            access_expires: 1_060,
        };
        let small = Tokens {
            refresh_token: "r".repeat(1_000),
            ..tokens.clone()
        };
        let (s, set) = store(&k, &p, tokens, claims.as_bytes(), 5_000, 1_000).unwrap();
        assert_eq!(s.refresh_token, "");
        assert!(!s.due(2_000), "without it the claims last the session");
        let line = returned(&set);
        assert!(
            line.len() < 15_600,
            "the Cookie line keeps room: {}",
            line.len()
        );
        assert_eq!(session(&k, &p, &[line.as_bytes()], 1_000), Some(s));
        // Beside smaller claims it fits, and stays.
        let (s, _) = store(&k, &p, small, br#"{"sub":"user-1"}"#, 5_000, 1_000).unwrap();
        assert_eq!(s.refresh_token.len(), 1_000);
        assert!(s.due(2_000));
    }

    #[test]
    fn requests_with_one_session_share_its_renewal_until_shortly_after_it_ends() {
        let p = provider(cfg(OnUnauthenticated::Authenticate));
        let mut s = a_session(r#"{"sub":"user-1"}"#);
        s.refresh_token = "rt-shared-1".into();
        let (first, runner) = renewal(&p, &s, 1_000);
        let runner = runner.expect("the first request runs it");
        let (second, none) = renewal(&p, &s, 1_001);
        assert!(none.is_none(), "the second waits for the first");
        // Another rule with the same IdP and client shares it; another client does not.
        let same = provider(cfg(OnUnauthenticated::Deny));
        assert!(renewal(&same, &s, 1_001).1.is_none());
        let mut c2 = cfg(OnUnauthenticated::Authenticate);
        c2.client_id = "other-client".into();
        assert!(renewal(&provider(c2), &s, 1_001).1.is_some());
        let mut other = s.clone();
        other.refresh_token = "rt-shared-2".into();
        assert!(renewal(&p, &other, 1_001).1.is_some());
        // In flight, it stays shared however long it takes; once ended, for the grace only.
        assert!(renewal(&p, &s, 1_500).1.is_none());
        runner.send(Renewed::Refused, 1_500);
        assert_eq!(*first.borrow(), Some(Renewed::Refused));
        assert_eq!(*second.borrow(), Some(Renewed::Refused));
        let (late, none) = renewal(&p, &s, 1_500 + RENEWAL_SECONDS - 1);
        assert!(none.is_none());
        assert_eq!(*late.borrow(), Some(Renewed::Refused));
        assert!(renewal(&p, &s, 1_500 + RENEWAL_SECONDS).1.is_some());
        // A runner that went away without a result is not waited for again.
        s.refresh_token = "rt-shared-3".into();
        drop(renewal(&p, &s, 2_000).1);
        assert!(renewal(&p, &s, 2_000).1.is_some());
    }

    #[test]
    fn cookies_clear_every_shard_of_a_session() {
        let p = provider(cfg(OnUnauthenticated::Authenticate));
        let clear = clear_session(&p);
        assert_eq!(clear.len(), MAX_SHARDS);
        for (i, c) in clear.iter().enumerate() {
            assert_eq!(
                *c,
                format!("AWSELBAuthSessionCookie-{i}=; Path=/; Max-Age=-1; Secure; HttpOnly")
            );
        }
    }

    #[test]
    fn large_claims_are_split_into_shards_and_joined_again() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let claims = format!(r#"{{"sub":"user-1","groups":"{}"}}"#, "g".repeat(8000));
        let s = a_session(&claims);
        let set = session_cookies(&k, &p, &s, 1_000_000).unwrap();
        let live: Vec<&String> = set.iter().filter(|c| !c.contains("Max-Age=-1")).collect();
        assert_eq!(live.len(), 3, "8 KB of claims in base64: 10.7 KB");
        assert!(live
            .iter()
            .all(|c| c.split(';').next().unwrap().len() <= SHARD + 30));
        let back = returned(&set);
        assert_eq!(session(&k, &p, &[back.as_bytes()], 1_000_000), Some(s));
    }

    #[test]
    fn claims_at_alb_s_limit_still_fit_in_the_shards() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let token = "t".repeat(1000);
        let claims = format!(
            r#"{{"sub":"user-1","q":"{}"}}"#,
            "\\\"".repeat((CLAIMS_LIMIT - 1000 - 30) / 2)
        );
        assert!(claims.len() + token.len() <= CLAIMS_LIMIT);
        let s = Session {
            access_token: token,
            ..a_session(&claims)
        };
        let set = session_cookies(&k, &p, &s, 1_000_000).expect("fits");
        let back = returned(&set);
        assert_eq!(session(&k, &p, &[back.as_bytes()], 1_000_000), Some(s));
    }

    #[test]
    fn an_unauthenticated_request_is_redirected_refused_or_let_through() {
        let k = keys();
        let view = View {
            target: b"/wp-admin/edit.php?post=7",
            host: b"www.example.com",
            cookies: &[],
        };
        let p = provider(cfg(OnUnauthenticated::Deny));
        assert!(
            matches!(check(&k, &p, 10, &view, 1_000_000), Verdict::Answer(a) if a.status == 401)
        );
        let p = provider(cfg(OnUnauthenticated::Allow));
        assert!(
            matches!(check(&k, &p, 10, &view, 1_000_000), Verdict::Pass(f, c) if f.is_empty() && c.is_empty())
        );
        let p = provider(cfg(OnUnauthenticated::Authenticate));
        let Verdict::Answer(a) = check(&k, &p, 10, &view, 1_000_000) else {
            panic!("a redirect")
        };
        assert_eq!(a.status, 302);
        let location = &a.fields[0].1;
        assert!(
            location.starts_with("https://idp.example.com/authorize?tenant=1&client_id=client&")
        );
        let q: HashMap<String, String> =
            form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(
            q["redirect_uri"],
            "https://www.example.com/oauth2/idpresponse"
        );
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["prompt"], "login");
        let nonce_cookie = &a.fields[1].1;
        assert!(nonce_cookie.starts_with(&format!("{NONCE_COOKIE}={}; ", q["nonce"])));
        // The callback with that state and the browser's nonce cookie names the rule and the
        // page first asked for; without the cookie, or late, it is refused.
        let jar = format!("{NONCE_COOKIE}={}", q["nonce"]);
        let query = format!("code=abc&state={}", q["state"]);
        let find = |prio| (prio == 10).then_some(&p);
        let (found, cb) =
            read_callback(&k, find, query.as_bytes(), &[jar.as_bytes()], 1_000_100).unwrap();
        assert!(std::ptr::eq(found, &p));
        assert_eq!(cb.code, "abc");
        assert_eq!(cb.state.target, "/wp-admin/edit.php?post=7");
        let refused = |cookies: &[&[u8]], now| {
            read_callback(&k, find, query.as_bytes(), cookies, now)
                .unwrap_err()
                .reason
        };
        assert_eq!(refused(&[], 1_000_100), "AuthInvalidStateParam");
        let another = format!("{NONCE_COOKIE}=another-sign-in");
        assert_eq!(
            refused(&[another.as_bytes()], 1_000_100),
            "AuthInvalidStateParam",
            "the nonce cookie of another sign-in"
        );
        // A state is good only for the IdP it went to (a reload that gave the priority to a
        // rule with another IdP).
        let mut c2 = cfg(OnUnauthenticated::Authenticate);
        c2.issuer = "https://other-idp.example.com".into();
        let other = provider(c2);
        let elsewhere = |prio| (prio == 10).then_some(&other);
        assert_eq!(
            read_callback(
                &k,
                elsewhere,
                query.as_bytes(),
                &[jar.as_bytes()],
                1_000_100
            )
            .unwrap_err()
            .reason,
            "AuthInvalidStateParam"
        );
        assert_eq!(
            refused(&[jar.as_bytes()], 1_000_000 + STATE_SECONDS),
            "AuthInvalidStateParam"
        );
        assert_eq!(
            read_callback(&k, find, b"error=access_denied&state=x", &[], 0)
                .unwrap_err()
                .status,
            561
        );
        assert_eq!(
            read_callback(&k, find, b"state=x", &[], 0)
                .unwrap_err()
                .reason,
            "AuthMissingCodeParam"
        );
    }

    fn id_token(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    /// A callback that has been read: its sign-in's nonce and page to return to.
    fn callback_for(nonce: &str, target: &str) -> Callback {
        Callback {
            code: "c".into(),
            state: State {
                expires: 0,
                binding: 0,
                priority: 1,
                nonce: nonce.into(),
                target: target.into(),
            },
        }
    }

    #[test]
    fn the_id_token_must_name_the_issuer_the_client_the_nonce_and_be_current() {
        let p = provider(cfg(OnUnauthenticated::Authenticate));
        let cb = callback_for("n1", "/");
        let good = serde_json::json!({
            "iss": "https://idp.example.com", "aud": ["x", "client"], "sub": "user-1",
            "exp": 2_000, "nonce": "n1",
        });
        let answer = |idt: serde_json::Value| {
            let body = serde_json::json!({ "access_token": "at", "id_token": id_token(idt) });
            read_tokens(&p, &cb, body.to_string().as_bytes(), 1_000)
        };
        assert_eq!(
            answer(good.clone()).unwrap(),
            Tokens {
                access_token: "at".into(),
                sub: "user-1".into(),
                refresh_token: String::new(),
                access_expires: 0,
            }
        );
        // A refresh token and the access token's lifetime (a number, or a number in a string).
        for lifetime in [serde_json::json!(300), serde_json::json!("300")] {
            let body = serde_json::json!({
                "access_token": "at", "id_token": id_token(good.clone()),
                "refresh_token": "rt", "expires_in": lifetime,
            });
            let t = read_tokens(&p, &cb, body.to_string().as_bytes(), 1_000).unwrap();
            assert_eq!((t.refresh_token.as_str(), t.access_expires), ("rt", 1_300));
        }
        // An empty or odd refresh token is none, not a failed sign-in.
        for odd in [
            serde_json::json!(""),
            serde_json::json!(5),
            serde_json::json!(null),
        ] {
            let body = serde_json::json!({
                "access_token": "at", "id_token": id_token(good.clone()), "refresh_token": odd,
            });
            let t = read_tokens(&p, &cb, body.to_string().as_bytes(), 1_000).unwrap();
            assert_eq!(t.refresh_token, "");
        }
        for (field, value) in [
            ("iss", serde_json::json!("https://evil.example.com")),
            ("aud", serde_json::json!("other")),
            ("exp", serde_json::json!(999)),
            ("nonce", serde_json::json!("n2")),
            ("sub", serde_json::json!("")),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            assert_eq!(answer(bad), Err("AuthInvalidIdToken"), "{field}");
        }
        for field in ["iss", "aud", "exp", "nonce", "sub"] {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(field);
            assert_eq!(answer(bad), Err("AuthInvalidIdToken"), "without {field}");
        }
        // What goes to targets as a field value must be visible ASCII.
        let mut bad = good.clone();
        bad["sub"] = serde_json::json!("user\r\nx-amzn-oidc-identity: admin");
        assert_eq!(answer(bad), Err("AuthInvalidIdToken"));
        let body = serde_json::json!({ "access_token": "a\nb", "id_token": id_token(good) });
        assert_eq!(
            read_tokens(&p, &cb, body.to_string().as_bytes(), 1_000),
            Err("AuthTokenEpResponseInvalid")
        );
        let no_id = serde_json::json!({ "access_token": "at" }).to_string();
        assert_eq!(
            read_tokens(&p, &cb, no_id.as_bytes(), 1_000),
            Err("AuthInvalidIdToken")
        );
    }

    #[test]
    fn claims_over_the_limit_end_the_sign_in_with_500() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let cb = callback_for("n", "/after");
        let tokens = || Tokens {
            access_token: "at".into(),
            sub: "user-1".into(),
            refresh_token: String::new(),
            access_expires: 0,
        };
        let big = format!(r#"{{"sub":"user-1","x":"{}"}}"#, "y".repeat(CLAIMS_LIMIT));
        let a = finish(&k, &p, &cb, tokens(), big.as_bytes(), 1_000);
        assert_eq!(
            (a.status, a.reason),
            (500, "AuthUserinfoResponseSizeExceeded")
        );
        let a = finish(&k, &p, &cb, tokens(), br#"{"sub":"someone-else"}"#, 1_000);
        assert_eq!(a.status, 500, "the user info must be the ID token's user");
        let a = finish(&k, &p, &cb, tokens(), br#"{"sub":"user-1"}"#, 1_000);
        assert_eq!(a.status, 302);
        assert_eq!(a.fields[0], ("Location", "/after".to_owned()));
        assert!(a
            .fields
            .iter()
            .any(|(_, v)| v.starts_with("AWSELBAuthSessionCookie-0=")));
        assert!(a
            .fields
            .iter()
            .any(|(_, v)| v.starts_with(&format!("{NONCE_COOKIE}=; Path=/; Max-Age=-1"))));
    }

    #[test]
    fn the_claims_token_is_es256_over_padded_segments_and_names_its_key() {
        let (k, p) = (keys(), provider(cfg(OnUnauthenticated::Authenticate)));
        let t = k
            .data_token(&p, r#"{"sub":"user-1"}"#, 1_000, 5_000)
            .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], k.kid);
        assert_eq!(header["exp"], 1_000 + DATA_SECONDS);
        assert_eq!(header["signer"], "app/causeway-alb/test");
        let der = pem_body(&k.public_pem, "PUBLIC KEY").unwrap();
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &der[P256_SPKI_PREFIX.len()..],
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        key.verify(signed.as_bytes(), &URL_SAFE.decode(parts[2]).unwrap())
            .unwrap();
        assert!(key
            .verify(b"something else", &URL_SAFE.decode(parts[2]).unwrap())
            .is_err());
    }

    #[test]
    fn the_page_to_return_to_stays_on_this_site() {
        assert_eq!(same_site("/wp-admin/?a=1".into()), "/wp-admin/?a=1");
        for evil in [
            "//evil.example/x",
            "/\\evil.example/x",
            "https://evil.example/",
            "",
        ] {
            assert_eq!(same_site(evil.into()), "/", "{evil}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name_across_fields() {
        let fields: [&[u8]; 2] = [b"a=1; AWSALBAuthNonce=xyz", b"AWSALBAuthNonceX=no; b=2"];
        assert_eq!(cookie(&fields, NONCE_COOKIE), Some(&b"xyz"[..]));
        assert_eq!(cookie(&fields, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&fields, "c"), None);
        assert!(is_oidc_field(b"X-Amzn-Oidc-Data"));
        assert!(
            is_oidc_field(b"x_amzn_oidc_identity"),
            "what CGI reads as the same"
        );
        assert!(!is_oidc_field(b"x-amzn-oidc"));
    }
}
