//! `authenticate_oidc`: a browser (curl, following redirects with a cookie jar) signs in
//! through a real OpenID Connect flow against the testkit IdP over HTTPS, and the target gets
//! the user's claims signed with ES256; `deny`, `allow` and the sign-in's failures answer as
//! ALB does. `authenticate_cognito` runs the same flow against a user pool's endpoints, and
//! `jwt_validation` checks a client's bearer token against the IdP's JWKS.

use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_testkit::idp::{Idp, Mode};
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

struct Stack {
    _server: Arc<Server<Alb>>,
    _stop_admin: tokio::sync::watch::Sender<bool>,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: std::path::PathBuf,
}

async fn start(origin: &Origin, idp: &Idp, lb_extra: &str) -> Stack {
    let auth = idp.toml();
    let text = format!(
        r#"default_action = {{ type = "forward", target_group = "web" }}

[[listeners.rules]]
priority = 10
conditions = [{{ field = "path-pattern", values = ["/wp-admin/*"] }}]
action = {{ type = "forward", target_group = "web" }}
[listeners.rules.authenticate_oidc]
{auth}scope = "openid email"
authentication_request_extra_params = {{ prompt = "login" }}

[[listeners.rules]]
priority = 20
conditions = [{{ field = "path-pattern", values = ["/api/*"] }}]
action = {{ type = "forward", target_group = "web" }}
[listeners.rules.authenticate_oidc]
{auth}on_unauthenticated_request = "deny"

[[listeners.rules]]
priority = 30
conditions = [{{ field = "path-pattern", values = ["/public/*"] }}]
action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "public\n" }}
[listeners.rules.authenticate_oidc]
{auth}on_unauthenticated_request = "allow"

[[listeners.rules]]
priority = 40
conditions = [{{ field = "path-pattern", values = ["/open/*"] }}]
action = {{ type = "forward", target_group = "web" }}
[listeners.rules.authenticate_oidc]
{auth}on_unauthenticated_request = "allow"

[[listeners.rules]]
priority = 50
conditions = [{{ field = "path-pattern", values = ["/dead/*"] }}]
action = {{ type = "forward", target_group = "dead" }}
[listeners.rules.authenticate_oidc]
{auth}

[target_groups.web]
targets = [{{ address = "{origin}" }}]
health_check.interval_seconds = 300
[[listeners.rules]]
priority = 60
conditions = [{{ field = "path-pattern", values = ["/ws/*"] }}]
action = {{ type = "forward", target_group = "ws" }}
[listeners.rules.authenticate_oidc]
{auth}

[target_groups.dead]
targets = [{{ address = "127.0.0.1:{dead}" }}]
health_check.interval_seconds = 300
[target_groups.ws]
targets = [{{ address = "{ws}" }}]
health_check.interval_seconds = 300
"#,
        origin = origin.addr(),
        dead = free_port(),
        ws = causeway_testkit::raw::canned_target(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        .await,
    );
    launch(lb_extra, &text).await
}

/// Starts the alb with one HTTPS listener (on a free port, with the test certificates, its
/// admin server on another): `[load_balancer]` holds `lb_extra`, and `listener` goes on with
/// the listener's other fields, its rules and the target groups.
async fn launch(lb_extra: &str, listener: &str) -> Stack {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"{admin}\"\n[load_balancer]\n{lb_extra}\n[[listeners]]\n\
         address = \"{addr}\"\nprotocol = \"HTTPS\"\ncertificates = [{}]\n{listener}",
        causeway_testkit::tls::certificates_toml()
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let stop = causeway_dataplane::admin::spawn(admin, server.clone())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("causeway-oidc-{}", addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    // curl trusts the listener's CA and the IdP's.
    let bundle = [
        causeway_testkit::tls::cert("ca.pem"),
        causeway_testkit::tls::cert("idp-ca.pem"),
    ]
    .iter()
    .map(|f| std::fs::read_to_string(f).unwrap())
    .collect::<String>();
    std::fs::write(dir.join("cas.pem"), bundle).unwrap();
    Stack {
        _server: server,
        _stop_admin: stop,
        addr,
        admin,
        dir,
    }
}

/// What curl saw: the status and redirect count of the last response, its headers, and body.
#[derive(Debug)]
struct Seen {
    status: u16,
    redirects: u32,
    out: String,
}

impl Stack {
    /// curl to `path` on the listener (as a.example.test), following redirects (`follow`)
    /// with the cookie jar `jar`; `extra` are more arguments.
    async fn curl(&self, path: &str, jar: &str, follow: bool, extra: &[&str]) -> Seen {
        let jar = self.dir.join(jar).display().to_string();
        let mut args: Vec<String> = [
            "-s",
            "-i",
            "--max-time",
            "10",
            "--cacert",
            &self.dir.join("cas.pem").display().to_string(),
            "--resolve",
            &format!("a.example.test:{}:127.0.0.1", self.addr.port()),
            "-c",
            &jar,
            "-b",
            &jar,
            "-w",
            "\n%{http_code} %{num_redirects}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if follow {
            args.push("-L".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("https://a.example.test:{}{path}", self.addr.port()));
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl").args(&args).output()
        })
        .await
        .unwrap()
        .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = out.lines().last().unwrap_or_default().to_owned();
        let (status, redirects) = last.split_once(' ').unwrap_or(("0", "0"));
        Seen {
            status: status.parse().unwrap_or(0),
            redirects: redirects.trim().parse().unwrap_or(99),
            out,
        }
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({ "sub": "user-1", "email": "editor@example.com", "name": "Ed Itor" })
}

/// URL-safe base64 with or without padding.
fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap()
}

#[tokio::test]
async fn a_browser_signs_in_and_the_target_gets_the_users_claims_signed() {
    let origin = Origin::builder().name("web-1").start().await;
    let idp = Idp::start("wp-client", "s3cret", claims()).await;
    let key = causeway_testkit::tls::cert("oidc-signing.key");
    let s = start(
        &origin,
        &idp,
        &format!("authentication_signing_key_file = \"{key}\""),
    )
    .await;
    for (proto, jar) in [("--http1.1", "h1.jar"), ("--http2", "h2.jar")] {
        let before = idp.asked().len();
        // Signed out: the alb sends the browser to the IdP, the IdP back with a code, and the
        // alb (once it has traded the code and read the claims) to the page first asked for.
        let seen = s
            .curl("/wp-admin/edit.php?post=7", jar, true, &[proto])
            .await;
        assert_eq!(
            (seen.status, seen.redirects),
            (200, 3),
            "{proto}: {}",
            seen.out
        );
        assert!(
            seen.out.contains("origin web-1 /wp-admin/edit.php"),
            "{}",
            seen.out
        );
        let asked = idp.asked()[before..].to_vec();
        let paths: Vec<&str> = asked.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["/authorize", "/token", "/userinfo"], "{proto}");
        let q = &asked[0].query;
        let redirect_uri = format!(
            "https://a.example.test:{}/oauth2/idpresponse",
            s.addr.port()
        );
        assert_eq!(q["client_id"], "wp-client");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["scope"], "openid email");
        assert_eq!(q["prompt"], "login", "the extra parameters ride along");
        assert_eq!(q["redirect_uri"], redirect_uri);
        assert!(!q["state"].is_empty() && !q["nonce"].is_empty());
        assert_eq!(
            asked[1].authorization.as_deref(),
            Some("Basic d3AtY2xpZW50OnMzY3JldA=="),
            "client_secret_basic"
        );
        assert_eq!(asked[1].form["grant_type"], "authorization_code");
        assert_eq!(asked[1].form["redirect_uri"], redirect_uri);
        assert!(asked[2]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer access-"));
        // The session cookie was set, sharded by name, Secure and HttpOnly.
        assert!(
            seen.out
                .to_ascii_lowercase()
                .contains("set-cookie: awselbauthsessioncookie-0="),
            "{}",
            seen.out
        );
        // The target saw the user.
        let got = origin
            .seen()
            .into_iter()
            .rev()
            .find(|r| r.path.starts_with("/wp-admin/edit.php"))
            .unwrap();
        assert_eq!(got.header("x-amzn-oidc-identity"), Some("user-1"));
        assert!(got
            .header("x-amzn-oidc-accesstoken")
            .is_some_and(|t| t.starts_with("access-")));
        let data = got.header("x-amzn-oidc-data").unwrap().to_owned();
        let parts: Vec<&str> = data.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts.iter().all(|p| p.len().is_multiple_of(4)),
            "ALB pads its segments: {data}"
        );
        let header: serde_json::Value = serde_json::from_slice(&unb64(parts[0])).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["client"], "wp-client");
        assert_eq!(header["iss"], idp.issuer());
        assert!(header["signer"]
            .as_str()
            .unwrap()
            .starts_with("app/causeway-alb/"));
        let payload: serde_json::Value = serde_json::from_slice(&unb64(parts[1])).unwrap();
        assert_eq!(payload, claims());
        // The signature verifies with the key the admin server publishes under the kid.
        let kid = header["kid"].as_str().unwrap();
        let pem = reqwest_text(s.admin, &format!("/oidc/keys/{kid}")).await;
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let point = &der[der.len() - 65..];
        let signed = format!("{}.{}", parts[0], parts[1]);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(signed.as_bytes(), &unb64(parts[2]))
            .expect("x-amzn-oidc-data verifies");
        assert_eq!(
            reqwest_text(s.admin, "/oidc/keys/not-a-kid").await,
            "{\"error\":\"no such key\"}"
        );

        // Signed in: the next request goes straight through, and a client's own user fields
        // are replaced by the alb's.
        let before = idp.asked().len();
        let forged = [
            proto,
            "-H",
            "x-amzn-oidc-identity: admin",
            "-H",
            "x-amzn-oidc-data: forged",
            "-H",
            "x_amzn_oidc_accesstoken: forged",
        ];
        let seen = s.curl("/wp-admin/", jar, false, &forged).await;
        assert_eq!((seen.status, seen.redirects), (200, 0), "{}", seen.out);
        assert_eq!(idp.asked().len(), before, "the session holds");
        let got = origin.seen().into_iter().next_back().unwrap();
        assert_eq!(got.header("x-amzn-oidc-identity"), Some("user-1"));
        assert_eq!(got.header("x-amzn-oidc-data"), Some(data.as_str()));
        assert_eq!(got.header("x_amzn_oidc_accesstoken"), None, "{proto}");
        let fields: Vec<&str> = got.headers.iter().map(|(n, _)| n.as_str()).collect();
        for f in [
            "x-amzn-oidc-identity",
            "x-amzn-oidc-data",
            "x-amzn-oidc-accesstoken",
        ] {
            let n = fields.iter().filter(|n| n.eq_ignore_ascii_case(f)).count();
            assert_eq!(n, 1, "{proto}: one {f}: {fields:?}");
        }
    }
    // A session cookie that was tampered with is no session: back to the IdP.
    let jar = s.dir.join("h1.jar");
    let text = std::fs::read_to_string(&jar).unwrap();
    let forged = text
        .lines()
        .map(|l| {
            if l.contains("AWSELBAuthSessionCookie-0") {
                let (head, value) = l.rsplit_once('\t').unwrap();
                let mut v = value.as_bytes().to_vec();
                let i = v.len() / 2;
                v[i] = if v[i] == b'A' { b'B' } else { b'A' };
                format!("{head}\t{}", String::from_utf8(v).unwrap())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&jar, forged).unwrap();
    let seen = s.curl("/wp-admin/", "h1.jar", false, &["--http1.1"]).await;
    assert_eq!(seen.status, 302, "{}", seen.out);
    assert!(
        seen.out
            .contains(&format!("location: {}/authorize?", idp.issuer()))
            || seen
                .out
                .contains(&format!("Location: {}/authorize?", idp.issuer())),
        "{}",
        seen.out
    );
}

/// A GET to the admin server: the body.
async fn reqwest_text(admin: SocketAddr, path: &str) -> String {
    let out = tokio::task::spawn_blocking({
        let url = format!("http://{admin}{path}");
        move || {
            std::process::Command::new("curl")
                .args(["-s", "--max-time", "5", &url])
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn deny_allow_and_the_ways_a_sign_in_fails() {
    let origin = Origin::builder().name("web-1").start().await;
    let idp = Idp::start("wp-client", "s3cret", claims()).await;
    let log = std::env::temp_dir().join(format!("causeway-oidc-access-{}.log", free_port()));
    let _ = std::fs::remove_file(&log);
    let lb = format!(
        "access_logs.enabled = true\naccess_logs.path = \"{}\"",
        log.display()
    );
    let s = start(&origin, &idp, &lb).await;

    // deny: 401, no redirect.
    let seen = s.curl("/api/posts", "a.jar", false, &[]).await;
    assert_eq!(seen.status, 401, "{}", seen.out);
    // allow: the action runs without claims, and a client cannot forge them.
    let seen = s.curl("/public/x", "a.jar", false, &[]).await;
    assert_eq!(seen.status, 200, "{}", seen.out);
    assert!(seen.out.contains("public"));
    for proto in ["--http1.1", "--http2"] {
        let forged = [
            proto,
            "-H",
            "x-amzn-oidc-identity: admin",
            "-H",
            "x_amzn_oidc_identity: admin",
        ];
        let seen = s.curl("/open/x", "a.jar", false, &forged).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        let got = origin.seen().into_iter().next_back().unwrap();
        assert_eq!(got.path, "/open/x");
        assert!(
            !got.headers
                .iter()
                .any(|(n, _)| n.to_ascii_lowercase().contains("oidc")),
            "{proto}: dropped, both spellings: {:?}",
            got.headers
        );
    }
    assert!(idp.asked().is_empty(), "deny and allow never ask the IdP");
    // The access log: the alb's own answer is `authenticate` with ALB's reason; a request
    // let through ran `authenticate,forward`.
    let lines = causeway_testkit::lifecycle::log_lines(&log, 3).await;
    let lines: Vec<&str> = lines.lines().collect();
    assert!(
        lines[0].contains(" 401 - ")
            && lines[0].contains("\"authenticate\" \"-\" \"AuthUnauthenticated\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains("\"authenticate,forward\""),
        "{}",
        lines[2]
    );

    // The IdP refuses the user: ALB's 561.
    idp.set_mode(Mode::Deny);
    let seen = s.curl("/wp-admin/", "b.jar", true, &[]).await;
    assert_eq!((seen.status, seen.redirects), (561, 2), "{}", seen.out);
    // An ID token for another client: 401.
    idp.set_mode(Mode::WrongAudience);
    let seen = s.curl("/wp-admin/", "c.jar", true, &[]).await;
    assert_eq!((seen.status, seen.redirects), (401, 2), "{}", seen.out);
    // The token endpoint fails: 500.
    idp.set_mode(Mode::TokenFails);
    let seen = s.curl("/wp-admin/", "d.jar", true, &[]).await;
    assert_eq!((seen.status, seen.redirects), (500, 2), "{}", seen.out);
    // A callback whose state is missing, forged, or not this browser's: 401.
    idp.set_mode(Mode::Normal);
    for query in ["?code=x", "?code=x&state=forged"] {
        let seen = s
            .curl(&format!("/oauth2/idpresponse{query}"), "e.jar", false, &[])
            .await;
        assert_eq!(seen.status, 401, "{query}: {}", seen.out);
    }
    let first = s.curl("/wp-admin/", "f.jar", false, &[]).await;
    assert_eq!(first.status, 302);
    let location = first
        .out
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_owned();
    let state = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_owned();
    // Another browser (no nonce cookie) presenting this state.
    let seen = s
        .curl(
            &format!("/oauth2/idpresponse?code=x&state={state}"),
            "g.jar",
            false,
            &[],
        )
        .await;
    assert_eq!(seen.status, 401, "{}", seen.out);
}

/// The last response's head in curl's `-i` output (which prints every response followed).
fn last_head(out: &str) -> String {
    let start = out.rfind("HTTP/").unwrap_or(0);
    out[start..]
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The paths the IdP was asked for since its `before`th request.
fn paths_since(idp: &Idp, before: usize) -> Vec<String> {
    idp.asked()[before..]
        .iter()
        .map(|a| a.path.clone())
        .collect()
}

/// The user's claims the target got in `x-amzn-oidc-data`, and its access token.
fn target_saw(origin: &Origin) -> (serde_json::Value, String) {
    let got = origin.seen().into_iter().next_back().unwrap();
    let data = got.header("x-amzn-oidc-data").expect("signed claims");
    let payload = data.split('.').nth(1).unwrap();
    let claims = serde_json::from_slice(&unb64(payload)).unwrap();
    let token = got.header("x-amzn-oidc-accesstoken").unwrap().to_owned();
    (claims, token)
}

#[tokio::test]
async fn claims_are_renewed_with_the_refresh_token_once_the_access_token_ends() {
    // The application's own logout: it expires the session cookie (AWS's advice).
    let origin = Origin::builder()
        .name("web-1")
        .set_cookie_for(
            "/wp-admin/logout",
            "AWSELBAuthSessionCookie-0=; Path=/; Max-Age=0; Secure",
        )
        .start()
        .await;
    let idp = Idp::start("wp-client", "s3cret", claims()).await;
    let s = start(&origin, &idp, "").await;
    for (proto, jar) in [("--http1.1", "r1.jar"), ("--http2", "r2.jar")] {
        // Access tokens that end as they are issued: the page the sign-in returns to already
        // finds the access token ended, and the alb renews the claims before forwarding.
        idp.set_access_seconds(0);
        idp.set_claims(claims());
        let before = idp.asked().len();
        let seen = s.curl("/wp-admin/", jar, true, &[proto]).await;
        assert_eq!((seen.status, seen.redirects), (200, 3), "{}", seen.out);
        let asked = idp.asked()[before..].to_vec();
        let paths: Vec<&str> = asked.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/authorize", "/token", "/userinfo", "/token", "/userinfo"],
            "{proto}"
        );
        assert_eq!(asked[3].form["grant_type"], "refresh_token");
        assert!(asked[3].form["refresh_token"].starts_with("refresh-"));
        assert_eq!(
            asked[3].authorization.as_deref(),
            Some("Basic d3AtY2xpZW50OnMzY3JldA=="),
            "client_secret_basic"
        );
        let renewed = asked[4].authorization.clone().unwrap();
        assert_ne!(Some(renewed.clone()), asked[2].authorization, "a new token");
        let (_, token) = target_saw(&origin);
        assert_eq!(
            format!("Bearer {token}"),
            renewed,
            "the target got the new token"
        );
        let head = last_head(&seen.out);
        assert!(
            head.contains("set-cookie: awselbauthsessioncookie-0="),
            "the renewed session rides on the target's answer: {head}"
        );

        // So does the alb's own error answer (the target group's one target refuses).
        let seen = s.curl("/dead/x", jar, false, &[proto]).await;
        assert!(matches!(seen.status, 502 | 503), "{}", seen.out);
        let head = last_head(&seen.out);
        assert!(
            head.contains("set-cookie: awselbauthsessioncookie-0="),
            "{proto}: {head}"
        );

        // So does a WebSocket's 101 over HTTP/1.1 (curl sends the upgrade; the target
        // switches and hangs up).
        if proto == "--http1.1" {
            let upgrade = [
                proto,
                "-H",
                "Connection: Upgrade",
                "-H",
                "Upgrade: websocket",
                "-H",
                "Sec-WebSocket-Version: 13",
                "-H",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ];
            let seen = s.curl("/ws/chat", jar, false, &upgrade).await;
            let head = last_head(&seen.out);
            assert!(head.starts_with("http/1.1 101"), "{}", seen.out);
            assert!(
                head.contains("set-cookie: awselbauthsessioncookie-0="),
                "{head}"
            );
        }

        // A fixed response (`allow`, with a session) carries the renewed session too.
        let before = idp.asked().len();
        let seen = s.curl("/public/x", jar, false, &[proto]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        assert!(seen.out.contains("public"));
        let paths = paths_since(&idp, before);
        assert_eq!(paths, ["/token", "/userinfo"], "{proto}");
        let head = last_head(&seen.out);
        assert!(
            head.contains("set-cookie: awselbauthsessioncookie-0="),
            "{head}"
        );

        // The user's claims change at the IdP: the next renewal brings them, with the refresh
        // token the last renewal stored (the IdP takes each once).
        idp.set_access_seconds(3600);
        let mut changed = claims();
        changed["email"] = "chief-editor@example.com".into();
        idp.set_claims(changed.clone());
        let before = idp.asked().len();
        let seen = s.curl("/wp-admin/", jar, false, &[proto]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        let paths = paths_since(&idp, before);
        assert_eq!(paths, ["/token", "/userinfo"], "{proto}");
        assert_eq!(target_saw(&origin).0, changed);
        // The new access token lasts an hour: no more calls.
        let before = idp.asked().len();
        let seen = s.curl("/wp-admin/", jar, false, &[proto]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        assert_eq!(idp.asked().len(), before, "{proto}");
        assert!(!last_head(&seen.out).contains("set-cookie"), "{}", seen.out);
    }

    // The IdP refuses the refresh token (the user signed out there): the session is removed
    // and the request is unauthenticated: a sign-in for `authenticate`, 401 for `deny`, no
    // claims for `allow`. Requests carrying that session share the one refusal.
    idp.set_access_seconds(0);
    idp.set_claims(claims());
    let seen = s.curl("/wp-admin/", "f.jar", true, &[]).await;
    assert_eq!(seen.status, 200, "{}", seen.out);
    idp.set_mode(Mode::RefreshFails);
    let signed_in = std::fs::read(s.dir.join("f.jar")).unwrap();
    let before = idp.asked().len();
    for (path, status) in [("/wp-admin/", 302), ("/api/posts", 401), ("/open/x", 200)] {
        std::fs::write(s.dir.join("f2.jar"), &signed_in).unwrap();
        let seen = s.curl(path, "f2.jar", false, &[]).await;
        assert_eq!(seen.status, status, "{path}: {}", seen.out);
        let head = last_head(&seen.out);
        assert!(
            head.contains("set-cookie: awselbauthsessioncookie-0=; path=/; max-age=-1"),
            "{path}: the session is removed: {head}"
        );
        if status == 302 {
            assert!(head.contains(&format!("location: {}/authorize?", idp.issuer())));
        }
    }
    let got = origin.seen().into_iter().next_back().unwrap();
    assert_eq!(got.path, "/open/x");
    assert_eq!(got.header("x-amzn-oidc-identity"), None, "allow: no claims");
    let paths = paths_since(&idp, before);
    assert_eq!(paths, ["/token"], "one refusal, shared");
    idp.set_mode(Mode::Normal);

    // The IdP fails (500) rather than refusing: the current claims stand, the session is
    // kept, and for a few seconds the same session does not ask again.
    let seen = s.curl("/wp-admin/", "u.jar", true, &["--http1.1"]).await;
    assert_eq!(seen.status, 200, "{}", seen.out);
    let (_, token) = target_saw(&origin);
    idp.set_mode(Mode::TokenFails);
    let before = idp.asked().len();
    for _ in 0..2 {
        let seen = s.curl("/wp-admin/", "u.jar", false, &["--http1.1"]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        assert!(!last_head(&seen.out).contains("set-cookie"), "{}", seen.out);
        assert_eq!(target_saw(&origin).1, token, "the current claims");
    }
    assert_eq!(paths_since(&idp, before), ["/token"], "asked once");
    idp.set_mode(Mode::Normal);

    // The application logs the user out on the very request that renews the claims: its
    // expiring cookie wins over the renewed one. (What the browser then sends is not checked
    // here: curl 7.88 keeps a cookie expired by one Set-Cookie when later ones in the same
    // answer expire cookies it does not have.)
    for (proto, jar) in [("--http1.1", "l1.jar"), ("--http2", "l2.jar")] {
        let seen = s.curl("/wp-admin/", jar, true, &[proto]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        let before = idp.asked().len();
        let seen = s.curl("/wp-admin/logout", jar, false, &[proto]).await;
        assert_eq!(seen.status, 200, "{}", seen.out);
        assert_eq!(
            paths_since(&idp, before),
            ["/token", "/userinfo"],
            "{proto}"
        );
        let head = last_head(&seen.out);
        let shard0: Vec<&str> = head
            .lines()
            .filter(|l| l.starts_with("set-cookie: awselbauthsessioncookie-0="))
            .collect();
        assert_eq!(
            shard0,
            ["set-cookie: awselbauthsessioncookie-0=; path=/; max-age=0; secure"],
            "{proto}: only the target's: {head}"
        );
    }
}

#[tokio::test]
async fn a_cognito_user_pool_signs_a_browser_in_through_its_oauth2_endpoints() {
    let origin = Origin::builder().name("web-1").start().await;
    let idp = Idp::start("pool-client", "s3cret", claims()).await;
    // The pool's custom domain is the test IdP; it names itself as a user pool does.
    let pool = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC12";
    idp.set_issuer(pool);
    let domain = idp.issuer().trim_start_matches("https://").to_owned();
    let text = format!(
        r#"default_action = {{ type = "forward", target_group = "web" }}
[listeners.default_authenticate_cognito]
user_pool_arn = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbC12"
user_pool_client_id = "pool-client"
user_pool_domain = "{domain}"
client_secret = "s3cret"
trusted_ca_file = "{ca}"
[target_groups.web]
targets = [{{ address = "{origin}" }}]
health_check.interval_seconds = 300
"#,
        ca = causeway_testkit::tls::cert("idp-ca.pem"),
        origin = origin.addr()
    );
    let s = launch("", &text).await;
    let seen = s.curl("/wp-login.php", "cognito.jar", true, &[]).await;
    assert_eq!((seen.status, seen.redirects), (200, 3), "{}", seen.out);
    let asked = idp.asked();
    let paths: Vec<&str> = asked.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/oauth2/authorize", "/oauth2/token", "/oauth2/userInfo"]
    );
    assert_eq!(asked[0].query["client_id"], "pool-client");
    let got = origin.seen().into_iter().next_back().unwrap();
    assert_eq!(got.path, "/wp-login.php");
    assert_eq!(got.header("x-amzn-oidc-identity"), Some("user-1"));
    let data = got.header("x-amzn-oidc-data").unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&unb64(data.split('.').next().unwrap())).unwrap();
    assert_eq!(header["iss"], pool, "the pool is the issuer");
    assert_eq!(header["client"], "pool-client");

    // An ID token from another issuer than the pool is refused.
    idp.set_issuer("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other");
    let seen = s.curl("/wp-login.php", "cognito2.jar", true, &[]).await;
    assert_eq!((seen.status, seen.redirects), (401, 2), "{}", seen.out);
}

/// An RS256 JWT signed with the test key (`jwt-signing.key`, published in `jwks.json`).
fn signed_jwt(kid: &str, claims: serde_json::Value) -> String {
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": kid });
    causeway_testkit::jwt::sign(&header, &claims)
}

#[tokio::test]
async fn jwt_validation_takes_a_bearer_token_signed_by_the_jwks_with_its_claims() {
    let origin = Origin::builder().name("api-1").start().await;
    let idp = Idp::start("unused", "unused", claims()).await;
    let issuer = idp.issuer();
    let text = format!(
        r#"default_action = {{ type = "fixed-response", status_code = 404 }}
[[listeners.rules]]
priority = 10
conditions = [{{ field = "path-pattern", values = ["/api/*"] }}]
action = {{ type = "forward", target_group = "api" }}
[listeners.rules.jwt_validation]
issuer = "{issuer}"
jwks_endpoint = "{issuer}/jwks"
trusted_ca_file = "{ca}"
additional_claims = [{{ name = "scope", format = "space-separated-values", values = ["orders:read"] }}]
[[listeners.rules]]
priority = 20
conditions = [{{ field = "path-pattern", values = ["/down/*"] }}]
action = {{ type = "forward", target_group = "api" }}
[listeners.rules.jwt_validation]
issuer = "{issuer}"
jwks_endpoint = "{issuer}/no-such-jwks"
trusted_ca_file = "{ca}"
[target_groups.api]
targets = [{{ address = "{origin}" }}]
health_check.interval_seconds = 300
"#,
        ca = causeway_testkit::tls::cert("idp-ca.pem"),
        origin = origin.addr()
    );
    let s = launch("", &text).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = serde_json::json!({
        "iss": issuer, "sub": "svc-billing", "exp": now + 600, "iat": now - 5,
        "scope": "orders:read orders:write",
    });
    for proto in ["--http1.1", "--http2"] {
        // No token: 401 with the challenge, and the target never sees it.
        let before = origin.total();
        let seen = s.curl("/api/orders", "jwt.jar", false, &[proto]).await;
        assert_eq!(seen.status, 401, "{}", seen.out);
        let head = last_head(&seen.out);
        assert!(
            head.lines().any(|l| l.trim() == "www-authenticate: bearer"),
            "{head}"
        );
        assert_eq!(origin.total(), before);
        // A good token: forwarded as it came.
        let token = signed_jwt("test-key-1", good.clone());
        let auth = format!("Authorization: Bearer {token}");
        let seen = s
            .curl("/api/orders", "jwt.jar", false, &[proto, "-H", &auth])
            .await;
        assert_eq!(seen.status, 200, "{proto}: {}", seen.out);
        let got = origin.seen().into_iter().next_back().unwrap();
        assert_eq!(got.path, "/api/orders");
        assert_eq!(
            got.header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        // Expired, another issuer, without the scope, tampered with: 401 invalid_token.
        let mut bad_claims = Vec::new();
        for (field, value) in [
            ("exp", serde_json::json!(now - 1)),
            ("iss", serde_json::json!("https://evil.example.com")),
            ("scope", serde_json::json!("orders:write")),
        ] {
            let mut c = good.clone();
            c[field] = value;
            bad_claims.push(signed_jwt("test-key-1", c));
        }
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut elevated = good.clone();
        elevated["scope"] = "orders:read admin".into();
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(elevated.to_string());
        bad_claims.push(format!("{head}.{payload}.{sig}"));
        // Two Authorization fields: a target might read the other one.
        let twice = [proto, "-H", &auth, "-H", "Authorization: Bearer forged"];
        let seen = s.curl("/api/orders", "jwt.jar", false, &twice).await;
        assert_eq!(seen.status, 400, "{proto}: {}", seen.out);
        for bad in bad_claims {
            let auth = format!("Authorization: Bearer {bad}");
            let seen = s
                .curl("/api/orders", "jwt.jar", false, &[proto, "-H", &auth])
                .await;
            assert_eq!(seen.status, 401, "{proto}: {}", seen.out);
            assert!(
                last_head(&seen.out).contains("www-authenticate: bearer error=\"invalid_token\""),
                "{}",
                seen.out
            );
        }
    }
    // The JWKS was fetched once for all of that.
    assert_eq!(paths_since(&idp, 0), ["/jwks"]);
    // The IdP rotates its key: a token naming the new key makes the alb fetch the JWKS again,
    // and it is taken.
    let jwks = std::fs::read_to_string(causeway_testkit::tls::cert("jwks.json")).unwrap();
    idp.set_jwks(&jwks.replace("test-key-1", "rotated-1"));
    let auth = format!(
        "Authorization: Bearer {}",
        signed_jwt("rotated-1", good.clone())
    );
    let seen = s
        .curl("/api/orders", "jwt.jar", false, &["-H", &auth])
        .await;
    assert_eq!(seen.status, 200, "{}", seen.out);
    assert_eq!(paths_since(&idp, 0), ["/jwks", "/jwks"]);
    // Made-up key ids make it fetch again at most once per 30 s.
    for _ in 0..2 {
        let auth = format!(
            "Authorization: Bearer {}",
            signed_jwt("key-2", good.clone())
        );
        let seen = s
            .curl("/api/orders", "jwt.jar", false, &["-H", &auth])
            .await;
        assert_eq!(seen.status, 401, "{}", seen.out);
    }
    assert_eq!(paths_since(&idp, 0), ["/jwks", "/jwks"]);
    // A JWKS endpoint that fails: 500, and the next request does not ask again at once.
    let before = idp.asked().len();
    for _ in 0..2 {
        let auth = format!(
            "Authorization: Bearer {}",
            signed_jwt("test-key-1", good.clone())
        );
        let seen = s.curl("/down/x", "jwt.jar", false, &["-H", &auth]).await;
        assert_eq!(seen.status, 500, "{}", seen.out);
    }
    assert_eq!(paths_since(&idp, before), ["/no-such-jwks"]);
}

#[test]
fn authenticate_needs_an_https_listener_and_https_endpoints() {
    let base = |listener: &str, endpoint: &str| {
        format!(
            r#"
[admin]
address = "127.0.0.1:18081"
[[listeners]]
address = "127.0.0.1:18080"
{listener}
default_action = {{ type = "forward", target_group = "web" }}
[[listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/a"] }}]
action = {{ type = "forward", target_group = "web" }}
[listeners.rules.authenticate_oidc]
issuer = "https://idp.example.com"
authorization_endpoint = "{endpoint}"
token_endpoint = "https://idp.example.com/token"
user_info_endpoint = "https://idp.example.com/userinfo"
client_id = "c"
client_secret = "s"
[target_groups.web]
targets = [{{ address = "127.0.0.1:9001" }}]
"#
        )
    };
    let https = format!(
        "protocol = \"HTTPS\"\ncertificates = [{}]",
        causeway_testkit::tls::certificates_toml()
    );
    let cx = Context { dir: ".".into() };
    let e = parse::<FileAlb>("alb.toml", &base("", "https://idp.example.com/a"), &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[0].rules[0].authenticate_oidc") && e.contains("HTTPS listeners"),
        "{e}"
    );
    let e = parse::<FileAlb>("alb.toml", &base(&https, "http://idp.example.com/a"), &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("alb.toml:") && e.contains("authenticate_oidc.authorization_endpoint"),
        "{e}"
    );
    parse::<FileAlb>("alb.toml", &base(&https, "https://idp.example.com/a"), &cx).unwrap();
    // The listener's default action: HTTPS listeners only, too.
    let default = base("", "https://idp.example.com/a").replace(
        "[[listeners.rules]]",
        "[listeners.default_authenticate_oidc]\nissuer = \"https://idp.example.com\"\n\
         authorization_endpoint = \"https://idp.example.com/a\"\n\
         token_endpoint = \"https://idp.example.com/t\"\n\
         user_info_endpoint = \"https://idp.example.com/u\"\n\
         client_id = \"c\"\nclient_secret = \"s\"\n[[listeners.rules]]",
    );
    let e = parse::<FileAlb>("alb.toml", &default, &cx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("listeners[0].default_authenticate_oidc"), "{e}");
    // Cognito: one authenticate action per rule, HTTPS only, and a bad pool ARN named.
    let cognito = |arn: &str| {
        format!(
            "[listeners.rules.authenticate_cognito]\nuser_pool_arn = \"{arn}\"\n\
             user_pool_client_id = \"c\"\nuser_pool_domain = \"wp\"\nclient_secret = \"s\"\n\
             [target_groups.web]"
        )
    };
    let arn = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbC12";
    let both =
        base(&https, "https://idp.example.com/a").replace("[target_groups.web]", &cognito(arn));
    let e = parse::<FileAlb>("alb.toml", &both, &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rules[0].authenticate_cognito") && e.contains("one authenticate action"),
        "{e}"
    );
    let only = both.replace("[listeners.rules.authenticate_oidc]", "[listeners.rules.x]");
    let only = only.split("[listeners.rules.x]").next().unwrap().to_owned()
        + &cognito(arn)
        + "\ntargets = [{ address = \"127.0.0.1:9001\" }]\n";
    parse::<FileAlb>("alb.toml", &only, &cx).unwrap_or_else(|e| panic!("{e}\n{only}"));
    let e = parse::<FileAlb>("alb.toml", &only.replace(&https, ""), &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rules[0].authenticate_cognito") && e.contains("HTTPS listeners"),
        "{e}"
    );
    let e = parse::<FileAlb>("alb.toml", &only.replace(arn, "arn:aws:s3:::bucket"), &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("alb.toml:") && e.contains("authenticate_cognito.user_pool_arn"),
        "{e}"
    );
    // jwt_validation: HTTPS only, and not beside an authenticate action.
    let jwt = "[listeners.rules.jwt_validation]\nissuer = \"https://idp.example.com\"\n\
               jwks_endpoint = \"https://idp.example.com/jwks\"\n[target_groups.web]";
    let with_oidc = base(&https, "https://idp.example.com/a").replace("[target_groups.web]", jwt);
    let e = parse::<FileAlb>("alb.toml", &with_oidc, &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rules[0].jwt_validation") && e.contains("takes one of"),
        "{e}"
    );
    let alone = with_oidc.replace("[listeners.rules.authenticate_oidc]", "[listeners.rules.x]");
    let alone = alone
        .split("[listeners.rules.x]")
        .next()
        .unwrap()
        .to_owned()
        + jwt
        + "\ntargets = [{ address = \"127.0.0.1:9001\" }]\n";
    parse::<FileAlb>("alb.toml", &alone, &cx).unwrap_or_else(|e| panic!("{e}\n{alone}"));
    let e = parse::<FileAlb>("alb.toml", &alone.replace(&https, ""), &cx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("alb.toml:") && e.contains("rules[0].jwt_validation") && e.contains("HTTPS"),
        "{e}"
    );
}
