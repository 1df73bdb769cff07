//! HTTPS listeners: certificates chosen by SNI (with a default), AWS's TLS policies, and the
//! same HTTP/1.1 engine over TLS (X-Forwarded-Proto, redirects, desync mitigation). The client
//! is curl, trusting the test CA.

use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// curl over HTTP/1.1 (these tests are about the HTTP/1.1 engine over TLS; `h2.rs` has h2).
async fn curl(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["--http1.1"];
    args.extend_from_slice(extra);
    causeway_testkit::tls::curl(addr, host, path, &args).await
}

async fn start(origin: &Origin, policy: &str, extra_rules: &str) -> (Arc<Server<Alb>>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config_text(origin, addr, policy, extra_rules);
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (server, addr)
}

/// An alb config with one HTTPS listener at `addr` (the test certificates, `policy`, and
/// `extra_rules` in the listener's table) forwarding to `origin`.
fn config_text(origin: &Origin, addr: SocketAddr, policy: &str, extra_rules: &str) -> String {
    let certs = causeway_testkit::tls::certificates_toml();
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
[[listeners]]
address = "{addr}"
protocol = "HTTPS"
ssl_policy = "{policy}"
certificates = [{certs}]
default_action = {{ type = "forward", target_group = "web" }}
{extra_rules}
[target_groups.web]
targets = [{{ address = "{origin}" }}]
health_check.interval_seconds = 300
"#,
        admin = free_port(),
        origin = origin.addr()
    )
}

#[tokio::test]
async fn https_listener_picks_certificates_by_sni_and_forwards_with_proto_https() {
    let o = Origin::builder().name("web-1").start().await;
    let redirect = r#"
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/old"] }]
action = { type = "redirect", status_code = "HTTP_301", path = "/new" }
"#;
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", redirect).await;
    let (out, err) = curl(addr, "a.example.test", "/x", &[]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(err.contains("subject: CN=a.example.test"), "{err}");
    assert!(out.ends_with("origin web-1 /x\n"), "{out}");
    let seen = o.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen[0].header("x-forwarded-port"),
        Some(addr.port().to_string().as_str())
    );
    let (_, err) = curl(addr, "www.b.example.test", "/x", &[]).await;
    assert!(
        err.contains("subject: CN=b.example.test"),
        "wildcard: {err}"
    );
    let (_, err) = curl(addr, "unknown.example.test", "/x", &["-k"]).await;
    assert!(
        err.contains("subject: CN=default.example.test"),
        "default: {err}"
    );
    // #{protocol} is https on this listener.
    let (out, _) = curl(addr, "a.example.test", "/old", &[]).await;
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains(&format!(
            "location: https://a.example.test:{}/new",
            addr.port()
        )),
        "{out}"
    );
    // Keep-alive over TLS: two requests on one connection.
    let url = format!("https://a.example.test:{}/y", addr.port());
    let (out, _) = curl(addr, "a.example.test", "/y", &[url.as_str()]).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
}

#[tokio::test]
async fn desync_mitigation_and_policies_hold_over_tls() {
    let o = Origin::start().await;
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-3-2021-06", "").await;
    let (out, err) = curl(addr, "a.example.test", "/", &["--tls-max", "1.2"]).await;
    assert!(out.is_empty(), "TLS 1.2 refused: {out}\n{err}");
    let (out, err) = curl(addr, "a.example.test", "/", &[]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(err.contains("TLSv1.3"), "{err}");
    let (out, _) = curl(
        addr,
        "a.example.test",
        "/smuggle",
        &[
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Length: 3",
            "--data-binary",
            "abc",
        ],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(o.hits("/smuggle"), 0);
}

#[tokio::test]
async fn the_access_log_names_the_cipher_and_protocol_over_h1_and_h2() {
    let o = Origin::start().await;
    let dir = causeway_testkit::lifecycle::TempDir::new("tlslog");
    let log = dir.path().join("access.log");
    let extra = format!(
        "[load_balancer]\naccess_logs.enabled = true\naccess_logs.path = \"{}\"\n",
        log.display()
    );
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", &extra).await;
    let (out, err) = curl(addr, "a.example.test", "/h1", &["--tls-max", "1.2"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/h2", &["--http2"]).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
    let text = causeway_testkit::lifecycle::log_lines(&log, 2).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let h1: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(h1[0], "https", "{}", lines[0]);
    assert!(
        lines[0].contains(" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 web ")
            || lines[0].contains(" ECDHE-ECDSA-AES128-GCM-SHA256 TLSv1.2 web ")
            || lines[0].contains(" ECDHE-RSA-AES256-GCM-SHA384 TLSv1.2 web ")
            || lines[0].contains(" ECDHE-ECDSA-AES256-GCM-SHA384 TLSv1.2 web "),
        "TLS 1.2 cipher and protocol: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!(
            "\"GET https://a.example.test:{}/h1 HTTP/1.1\"",
            addr.port()
        )),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("h2 "), "{}", lines[1]);
    assert!(
        lines[1].contains(" web \"Root=1-"),
        "trace id logged over h2: {}",
        lines[1]
    );
    assert!(
        lines[1].contains(" TLSv1.3 web ") && lines[1].contains(" TLS_AES_"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(&format!(
            "\"GET https://a.example.test:{}/h2 HTTP/2.0\"",
            addr.port()
        )),
        "{}",
        lines[1]
    );
}

/// The client's port as curl reports it with `-w`, after the response.
fn curl_port(out: &str) -> (String, u16) {
    let (response, port) = out.rsplit_once("\nport=").expect("curl -w port");
    (response.to_owned(), port.trim().parse().expect("a port"))
}

/// ALB's `routing.http.x_amzn_tls_version_and_cipher_suite`, `xff_client_port` and
/// `drop_invalid_header_fields`, over HTTP/1.1 and h2: the target learns the TLS version and
/// cipher (never a client's forged copy), the client's port after its address, and gets no
/// field whose name is not letters, digits and hyphens.
#[tokio::test]
async fn tls_fields_client_port_and_invalid_names_as_the_attributes_say() {
    let o = Origin::start().await;
    let extra = "[load_balancer]\n\
        routing.http.x_amzn_tls_version_and_cipher_suite.enabled = true\n\
        routing.http.xff_client_port.enabled = true\n\
        routing.http.drop_invalid_header_fields.enabled = true\n";
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", extra).await;
    let sent = [
        "-H",
        "X-Amzn-Tls-Version: TLSv9.9",
        "-H",
        "X-Amzn-Tls-Cipher-Suite: forged",
        "-H",
        "X_User: admin",
        "-H",
        "X-Kept-1: yes",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-w",
        "\nport=%{local_port}",
    ];
    let h1_args: Vec<&str> = ["--tls-max", "1.2"].iter().chain(&sent).copied().collect();
    let (out, err) = curl(addr, "a.example.test", "/h1", &h1_args).await;
    let (out, h1_port) = curl_port(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let h2_args: Vec<&str> = ["--http2"].iter().chain(&sent).copied().collect();
    let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/h2", &h2_args).await;
    let (out, h2_port) = curl_port(&out);
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
    let seen = o.seen();
    assert_eq!(seen.len(), 2);
    for (got, version, port) in [
        (&seen[0], "TLSv1.2", h1_port),
        (&seen[1], "TLSv1.3", h2_port),
    ] {
        let all = |name: &str| -> Vec<&str> {
            got.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(all("x-amzn-tls-version"), [version], "{got:?}");
        let cipher = all("x-amzn-tls-cipher-suite");
        assert_eq!(cipher.len(), 1, "{got:?}");
        assert!(
            if version == "TLSv1.3" {
                cipher[0].starts_with("TLS_AES_") || cipher[0] == "TLS_CHACHA20_POLY1305_SHA256"
            } else {
                cipher[0].starts_with("ECDHE-")
            },
            "OpenSSL's name for the suite: {got:?}"
        );
        assert_eq!(
            all("x-forwarded-for"),
            [format!("203.0.113.9, 127.0.0.1:{port}").as_str()],
            "{got:?}"
        );
        assert!(
            all("x_user").is_empty(),
            "an invalid name is dropped: {got:?}"
        );
        assert_eq!(all("x-kept-1"), ["yes"], "{got:?}");
    }
}

/// `routing.http2.enabled = false`: the HTTPS listener offers HTTP/1.1 alone, and a client
/// that asks for h2 gets HTTP/1.1.
#[tokio::test]
async fn http2_turned_off_offers_http1_alone() {
    let o = Origin::start().await;
    let extra = "[load_balancer]\nrouting.http2.enabled = false\n";
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", extra).await;
    let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/", &["--http2"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(!err.contains("ALPN: server accepted h2"), "{err}");
    assert_eq!(
        o.seen()[0].header("x-amzn-tls-version"),
        None,
        "off by default"
    );
}

/// `%XX` decoded.
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// curl's arguments to present the test client certificate `name` (`testkit/certs`).
fn client_cert(name: &str) -> [String; 4] {
    use causeway_testkit::tls::cert;
    [
        "--cert".into(),
        cert(&format!("{name}.pem")),
        "--key".into(),
        cert(&format!("{name}.key")),
    ]
}

/// An alb whose HTTPS listener does mutual TLS with this `mutual_authentication` table.
async fn start_mtls(o: &Origin, table: &str) -> (Arc<Server<Alb>>, SocketAddr) {
    start(
        o,
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        &format!("mutual_authentication = {table}"),
    )
    .await
}

/// Every value the target got for `name`.
fn all<'a>(seen: &'a causeway_testkit::origin::Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// ALB's mutual TLS, verify mode: a certificate from the trust store's CA gets through, and
/// the target learns its serial number, issuer, subject and validity (as OpenSSL prints them)
/// and the leaf itself, over HTTP/1.1 and h2, never a client's forged copy; no certificate, one
/// from another CA, or an expired one ends the handshake, and the target sees nothing.
#[tokio::test]
async fn mutual_tls_verify_sends_the_leaf_fields_and_refuses_the_rest() {
    let o = Origin::start().await;
    let store = causeway_testkit::tls::cert("client-ca.pem");
    let (_s, addr) = start_mtls(
        &o,
        &format!("{{ mode = \"verify\", trust_store = \"{store}\" }}"),
    )
    .await;
    let leaf = std::fs::read_to_string(causeway_testkit::tls::cert("client-1.pem")).unwrap();
    let cert = client_cert("client-1");
    let forged = ["-H", "X-Amzn-Mtls-Clientcert-Subject: CN=admin"];
    for h2 in [false, true] {
        let mut args: Vec<&str> = vec![if h2 { "--http2" } else { "--http1.1" }];
        args.extend(cert.iter().map(String::as_str));
        args.extend(forged);
        let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/in", &args).await;
        assert!(
            out.starts_with(if h2 { "HTTP/2 200" } else { "HTTP/1.1 200" }),
            "{out}\n{err}"
        );
        let seen = o.seen().pop().unwrap();
        assert_eq!(
            all(&seen, "x-amzn-mtls-clientcert-serial-number"),
            ["0A1B2C3D4E5F"]
        );
        assert_eq!(
            all(&seen, "x-amzn-mtls-clientcert-subject"),
            ["CN=client-1,OU=Fleet,O=Causeway Test\\, Inc.,C=US"],
            "the forged subject is dropped: {seen:?}"
        );
        assert_eq!(
            all(&seen, "x-amzn-mtls-clientcert-issuer"),
            ["CN=Causeway Test Client CA,O=Causeway Test"]
        );
        assert_eq!(
            all(&seen, "x-amzn-mtls-clientcert-validity"),
            ["NotBefore=2025-01-01T00:00:00Z;NotAfter=2125-01-01T00:00:00Z"]
        );
        let sent = all(&seen, "x-amzn-mtls-clientcert-leaf");
        assert_eq!(sent.len(), 1);
        assert!(
            !sent[0].contains(' ') && sent[0].contains("%0A"),
            "URL-encoded: {}",
            sent[0]
        );
        assert_eq!(url_decode(sent[0]), leaf);
        assert!(
            all(&seen, "x-amzn-mtls-clientcert").is_empty(),
            "passthrough's field is not sent"
        );
    }
    let before = o.seen().len();
    for who in [None, Some("rogue-client"), Some("client-expired")] {
        let args = who.map(client_cert);
        let args: Vec<&str> = args.iter().flatten().map(String::as_str).collect();
        let (out, err) = curl(addr, "a.example.test", "/refused", &args).await;
        assert!(out.is_empty(), "{who:?} refused: {out}\n{err}");
    }
    assert_eq!(o.seen().len(), before, "nothing refused reached the target");
}

/// `ignore_client_certificate_expiry`: an expired certificate from the trust store's CA gets
/// through (its validity says so), one from another CA still does not.
#[tokio::test]
async fn ignore_client_certificate_expiry_takes_an_expired_certificate_and_nothing_else() {
    let o = Origin::start().await;
    let store = causeway_testkit::tls::cert("client-ca.pem");
    let table = format!(
        "{{ mode = \"verify\", trust_store = \"{store}\", ignore_client_certificate_expiry = true }}"
    );
    let (_s, addr) = start_mtls(&o, &table).await;
    let cert = client_cert("client-expired");
    let args: Vec<&str> = cert.iter().map(String::as_str).collect();
    let (out, err) = curl(addr, "a.example.test", "/old", &args).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let seen = o.seen().pop().unwrap();
    assert_eq!(
        all(&seen, "x-amzn-mtls-clientcert-validity"),
        ["NotBefore=2020-01-01T00:00:00Z;NotAfter=2021-01-01T00:00:00Z"]
    );
    assert_eq!(
        all(&seen, "x-amzn-mtls-clientcert-subject"),
        ["CN=client-expired"]
    );
    let cert = client_cert("rogue-client");
    let args: Vec<&str> = cert.iter().map(String::as_str).collect();
    let (out, _) = curl(addr, "a.example.test", "/rogue", &args).await;
    assert!(out.is_empty(), "{out}");
    assert_eq!(o.seen().len(), 1);
}

/// Passthrough mode: any certificate, or none, gets through unverified; the target gets the
/// presented chain as URL-encoded PEM in `X-Amzn-Mtls-Clientcert` (and nothing when there was
/// none), never a client's own copy of that field.
#[tokio::test]
async fn mutual_tls_passthrough_sends_the_chain_unverified() {
    let o = Origin::start().await;
    let (_s, addr) = start_mtls(&o, "{ mode = \"passthrough\" }").await;
    let forged = ["-H", "X-Amzn-Mtls-Clientcert: forged"];
    let cert = client_cert("rogue-client");
    let mut args: Vec<&str> = cert.iter().map(String::as_str).collect();
    args.extend(forged);
    let (out, err) = curl(addr, "a.example.test", "/with", &args).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let (out, err) = curl(addr, "a.example.test", "/without", &forged).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let seen = o.seen();
    let sent = all(&seen[0], "x-amzn-mtls-clientcert");
    assert_eq!(sent.len(), 1, "{:?}", seen[0]);
    let pem = std::fs::read_to_string(causeway_testkit::tls::cert("rogue-client.pem")).unwrap();
    assert_eq!(url_decode(sent[0]), pem);
    assert!(all(&seen[0], "x-amzn-mtls-clientcert-subject").is_empty());
    assert!(
        all(&seen[1], "x-amzn-mtls-clientcert").is_empty(),
        "{:?}",
        seen[1]
    );
}

/// A trust store holding both test client CAs (`client-ca.pem`, and `client-ca-2.pem`, whose
/// revocation list `client-ca-2.crl.pem` revokes `client-revoked`), written into `dir`.
fn two_ca_store(dir: &Path) -> String {
    use causeway_testkit::tls::cert;
    let mut pem = std::fs::read_to_string(cert("client-ca.pem")).unwrap();
    pem.push_str(&std::fs::read_to_string(cert("client-ca-2.pem")).unwrap());
    let file = dir.join("trust-store.pem");
    std::fs::write(&file, pem).unwrap();
    file.display().to_string()
}

/// Trust store revocations: with `client-ca-2`'s revocation list, the certificate it revokes
/// ends the handshake (also with `ignore_client_certificate_expiry`, which forgives expiry and
/// nothing else), while another certificate of that CA, and one from a CA with no list, get
/// through; nothing refused reaches the target.
#[tokio::test]
async fn revocation_lists_refuse_a_revoked_certificate_and_take_the_rest() {
    let dir = causeway_testkit::lifecycle::TempDir::new("crl");
    let store = two_ca_store(dir.path());
    let crl = causeway_testkit::tls::cert("client-ca-2.crl.pem");
    for ignore_expiry in [false, true] {
        let o = Origin::start().await;
        let table = format!(
            "{{ mode = \"verify\", trust_store = \"{store}\", revocation_lists = [\"{crl}\"], ignore_client_certificate_expiry = {ignore_expiry} }}"
        );
        let (_s, addr) = start_mtls(&o, &table).await;
        for (who, serial) in [("client-2", "2001"), ("client-1", "0A1B2C3D4E5F")] {
            let cert = client_cert(who);
            let args: Vec<&str> = cert.iter().map(String::as_str).collect();
            let (out, err) = curl(addr, "a.example.test", "/in", &args).await;
            assert!(out.starts_with("HTTP/1.1 200"), "{who}: {out}\n{err}");
            let seen = o.seen().pop().unwrap();
            assert_eq!(all(&seen, "x-amzn-mtls-clientcert-serial-number"), [serial]);
        }
        let cert = client_cert("client-revoked");
        let args: Vec<&str> = cert.iter().map(String::as_str).collect();
        let (out, err) = curl(addr, "a.example.test", "/revoked", &args).await;
        assert!(out.is_empty(), "revoked: {out}\n{err}");
        assert!(
            err.contains("revoked"),
            "the alert says why (certificate_revoked): {err}"
        );
        assert_eq!(o.seen().len(), 2, "the revoked client reached nothing");
    }
}

/// A revocation list added by a reload applies to the next handshake: the same certificate
/// that got through before the reload is refused after it, and the others still pass.
#[tokio::test]
async fn a_reload_brings_in_new_revocations() {
    let o = Origin::start().await;
    let dir = causeway_testkit::lifecycle::TempDir::new("crl-reload");
    let store = two_ca_store(dir.path());
    let crl = causeway_testkit::tls::cert("client-ca-2.crl.pem");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.path().join("alb.toml");
    let write = |lists: &str| {
        let table = format!(
            "mutual_authentication = {{ mode = \"verify\", trust_store = \"{store}\", revocation_lists = [{lists}] }}"
        );
        std::fs::write(
            &file,
            config_text(&o, addr, "ELBSecurityPolicy-TLS13-1-2-2021-06", &table),
        )
        .unwrap();
    };
    write("");
    let cfg = causeway_config::load::<FileAlb>(&file).unwrap();
    let server = Server::<Alb>::start(&file, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let get = |who: &'static str| async move {
        let cert = client_cert(who);
        let args: Vec<&str> = cert.iter().map(String::as_str).collect();
        curl(addr, "a.example.test", "/", &args).await.0
    };
    assert!(get("client-revoked").await.starts_with("HTTP/1.1 200"));
    write(&format!("\"{crl}\""));
    server.reload().await.unwrap();
    assert_eq!(get("client-revoked").await, "", "revoked after the reload");
    assert!(get("client-2").await.starts_with("HTTP/1.1 200"));
    assert_eq!(o.seen().len(), 2);
}

/// `advertise_trust_store_ca_names`: off (ALB's default), the CertificateRequest names no CA;
/// on, it names every CA of the trust store. Seen by a rustls client's certificate resolver,
/// which is handed the names the server sent.
#[tokio::test]
async fn the_trust_store_ca_names_are_advertised_only_when_asked() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Recorder {
        key: Arc<rustls::sign::CertifiedKey>,
        hints: Mutex<Option<Vec<Vec<u8>>>>,
    }
    impl rustls::client::ResolvesClientCert for Recorder {
        fn resolve(
            &self,
            hints: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            *self.hints.lock().unwrap() = Some(hints.iter().map(|h| h.to_vec()).collect());
            Some(self.key.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    use causeway_testkit::tls::cert;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![CertificateDer::from_pem_file(cert("client-2.pem")).unwrap()];
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_file(cert("client-2.key")).unwrap())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert("ca.pem")).unwrap())
        .unwrap();
    let dir = causeway_testkit::lifecycle::TempDir::new("hints");
    let store = two_ca_store(dir.path());
    for (setting, want) in [
        ("", vec![]),
        ("advertise_trust_store_ca_names = \"off\", ", vec![]),
        (
            "advertise_trust_store_ca_names = \"on\", ",
            vec!["Causeway Test Client CA", "Causeway Test Client CA 2"],
        ),
    ] {
        let o = Origin::start().await;
        let table = format!("{{ mode = \"verify\", {setting}trust_store = \"{store}\" }}");
        let (_s, addr) = start_mtls(&o, &table).await;
        let recorder = Arc::new(Recorder {
            key: Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), key.clone())),
            hints: Mutex::new(None),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(recorder.clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("a.example.test").unwrap(), tcp)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /hints HTTP/1.1\r\nHost: a.example.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{setting}");
        let hints = recorder
            .hints
            .lock()
            .unwrap()
            .clone()
            .expect("asked for a certificate");
        // Each hint is a DER Name; the CA's common name is in it as a UTF8String.
        let names: Vec<String> = hints
            .iter()
            .map(|h| {
                let cn = b"Causeway Test Client CA";
                let at = h
                    .windows(cn.len())
                    .position(|w| w == cn)
                    .expect("a test CA");
                let len = h[at - 1] as usize;
                String::from_utf8(h[at..at + len].to_vec()).unwrap()
            })
            .collect();
        assert_eq!(names, want, "{setting}");
    }
}

/// Every value of the response field `name` in curl's `-i` output (any case).
fn response_fields(out: &str, name: &str) -> Vec<String> {
    let head = out.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// ALB's header modification: the fields a listener sets reach every response, over HTTP/1.1
/// and h2 (a target's, replacing the target's own copies; a fixed response; a redirect), and
/// with `server.enabled = false` the alb's own responses carry no `Server` field, while a
/// target's `Server` field is left alone. Empty values set nothing.
#[tokio::test]
async fn header_modification_sets_fields_on_every_response() {
    let o = Origin::start().await;
    o.set_headers(
        "/page",
        &[
            ("X-Frame-Options", "SAMEORIGIN"),
            ("x-frame-options", "ALLOWALL"),
            ("Server", "wp-origin"),
        ],
    );
    let extra = r#"routing.http.response.strict_transport_security.header_value = "max-age=31536000; includeSubDomains"
routing.http.response.x_frame_options.header_value = "DENY"
routing.http.response.x_content_type_options.header_value = "nosniff"
routing.http.response.content_security_policy.header_value = ""
routing.http.response.server.enabled = false
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/fixed"] }]
action = { type = "fixed-response", status_code = 503, message_body = "sorry" }
[[listeners.rules]]
priority = 2
conditions = [{ field = "path-pattern", values = ["/old"] }]
action = { type = "redirect", status_code = "HTTP_301", path = "/new" }"#;
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", extra).await;
    for version in ["--http1.1", "--http2"] {
        for (path, status, server) in [
            ("/page", "200", vec!["wp-origin".to_owned()]),
            ("/fixed", "503", vec![]),
            ("/old", "301", vec![]),
        ] {
            let (out, err) =
                causeway_testkit::tls::curl(addr, "a.example.test", path, &[version]).await;
            let first = out.lines().next().unwrap_or("");
            assert!(first.contains(status), "{version} {path}: {out}\n{err}");
            let field = |n: &str| response_fields(&out, n);
            assert_eq!(
                field("x-frame-options"),
                ["DENY"],
                "{version} {path}: {out}"
            );
            assert_eq!(
                field("strict-transport-security"),
                ["max-age=31536000; includeSubDomains"],
                "{version} {path}"
            );
            assert_eq!(field("x-content-type-options"), ["nosniff"]);
            assert!(field("content-security-policy").is_empty());
            assert_eq!(field("server"), server, "{version} {path}: {out}");
        }
    }
    assert_eq!(o.hits("/page"), 2);
}

/// ALB's renamable TLS fields: with new names for the client certificate's subject and the
/// TLS version, a target gets those fields under the new names (and the others under their
/// usual ones), over HTTP/1.1 and h2, never a client's forged copy under either name.
#[tokio::test]
async fn renamed_tls_fields_reach_targets_under_their_new_names_only() {
    let o = Origin::start().await;
    let store = causeway_testkit::tls::cert("client-ca.pem");
    let extra = format!(
        r#"mutual_authentication = {{ mode = "verify", trust_store = "{store}" }}
routing.http.request.x_amzn_mtls_clientcert_subject.header_name = "X-Client-Subject"
routing.http.request.x_amzn_tls_version.header_name = "X-Tls"
[load_balancer]
routing.http.x_amzn_tls_version_and_cipher_suite.enabled = true"#
    );
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", &extra).await;
    let cert = client_cert("client-1");
    for version in ["--http1.1", "--http2"] {
        let mut args: Vec<&str> = vec![version];
        args.extend(cert.iter().map(String::as_str));
        args.extend([
            "-H",
            "X-Client-Subject: CN=admin",
            "-H",
            "X-Tls: forged",
            "-H",
            "X-Amzn-Mtls-Clientcert-Subject: CN=admin",
        ]);
        let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/r", &args).await;
        assert!(out.contains(" 200"), "{version}: {out}\n{err}");
        let seen = o.seen().pop().unwrap();
        assert_eq!(
            all(&seen, "x-client-subject"),
            ["CN=client-1,OU=Fleet,O=Causeway Test\\, Inc.,C=US"],
            "{version}: {seen:?}"
        );
        assert!(all(&seen, "x-amzn-mtls-clientcert-subject").is_empty());
        assert_eq!(
            all(&seen, "x-amzn-mtls-clientcert-serial-number"),
            ["0A1B2C3D4E5F"]
        );
        assert_eq!(all(&seen, "x-tls"), ["TLSv1.3"], "{version}");
        assert!(all(&seen, "x-amzn-tls-version").is_empty());
        assert_eq!(all(&seen, "x-amzn-tls-cipher-suite").len(), 1);
    }
}

/// ALB's rule transforms, over HTTP/1.1 and h2: the target gets the rewritten path and query
/// and Host (AWS's own examples), the routing decision stands, a request the patterns do not
/// match goes as it came, and a rewrite that makes an invalid target is answered 500 without
/// reaching the target.
#[tokio::test]
async fn rule_transforms_rewrite_the_url_and_host_after_routing() {
    let o = Origin::start().await;
    let extra = r#"[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/dp/*"] }]
action = { type = "forward", target_group = "web" }
transforms = [
  { type = "url-rewrite", regex = "^/dp/([A-Za-z0-9]+)/?$", replace = "/product.php?id=$1" },
  { type = "host-header-rewrite", regex = "^a\\.example\\.(test)", replace = "internal.$1" },
]
[[listeners.rules]]
priority = 2
conditions = [{ field = "path-pattern", values = ["/broken/*"] }]
action = { type = "forward", target_group = "web" }
transforms = [{ type = "url-rewrite", regex = "^/broken/", replace = "no-slash/" }]"#;
    let dir = causeway_testkit::lifecycle::TempDir::new("transformlog");
    let log = dir.path().join("access.log");
    let extra = format!(
        "{extra}\n[load_balancer]\naccess_logs.enabled = true\naccess_logs.path = \"{}\"\n",
        log.display()
    );
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", &extra).await;
    let port = addr.port();
    for version in ["--http1.1", "--http2"] {
        let (out, err) =
            causeway_testkit::tls::curl(addr, "a.example.test", "/dp/B09G3HRMW", &[version]).await;
        assert!(out.contains(" 200"), "{version}: {out}\n{err}");
        let seen = o.seen().pop().unwrap();
        assert_eq!(seen.path, "/product.php?id=B09G3HRMW", "{version}");
        assert_eq!(
            all(&seen, "host"),
            [format!("internal.test:{port}")],
            "{version}: the Host rewritten, then the listener port added as for any Host"
        );
        // A query makes the anchored URL pattern miss; the Host is still rewritten.
        let (out, _) =
            causeway_testkit::tls::curl(addr, "a.example.test", "/dp/B09G3HRMW?ref=1", &[version])
                .await;
        assert!(out.contains(" 200"), "{version}: {out}");
        let seen = o.seen().pop().unwrap();
        assert_eq!(seen.path, "/dp/B09G3HRMW?ref=1");
        assert_eq!(all(&seen, "host"), [format!("internal.test:{port}")]);
        let before = o.seen().len();
        let (out, err) =
            causeway_testkit::tls::curl(addr, "a.example.test", "/broken/x", &[version]).await;
        assert!(out.contains(" 500"), "{version}: {out}\n{err}");
        assert_eq!(o.seen().len(), before, "the 500 never reached the target");
    }
    // The access log's transformed_host and transformed_uri: what was sent, or `-` for a part
    // no transform changed; request_transform_status stays `-`.
    let text = causeway_testkit::lifecycle::log_lines(&log, 6).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for (i, kind) in [(0, "https"), (3, "h2")] {
        assert!(lines[i].starts_with(kind), "{}", lines[i]);
        assert!(
            lines[i].ends_with(&format!(
                " \"internal.test:{port}\" \"/product.php?id=B09G3HRMW\" \"-\""
            )),
            "{}",
            lines[i]
        );
        assert!(
            lines[i + 1].ends_with(&format!(" \"internal.test:{port}\" \"-\" \"-\"")),
            "the anchored URL pattern missed: {}",
            lines[i + 1]
        );
        assert!(
            lines[i + 2].contains(" 500 - ") && lines[i + 2].ends_with(" \"-\" \"-\" \"-\""),
            "a failed transform changes nothing: {}",
            lines[i + 2]
        );
    }
}

/// ALB's connection log: one line per connection in AWS's field order. A handshake that
/// succeeds logs the TLS names, its latency and, on a mutual TLS listener, the leaf
/// certificate, and its `conn_trace_id` is the one its request's access log line carries; one
/// that fails logs AWS's reason code (a revoked, an untrusted, an expired certificate).
#[tokio::test]
async fn the_connection_log_has_a_line_per_connection_with_alb_reasons() {
    use causeway_testkit::tls::cert;
    let dir = causeway_testkit::lifecycle::TempDir::new("connlog");
    let store = two_ca_store(dir.path());
    let crl = cert("client-ca-2.crl.pem");
    let conn_log = dir.path().join("conn.log");
    let access_log = dir.path().join("access.log");
    let o = Origin::start().await;
    let table = format!(
        "{{ mode = \"verify\", trust_store = \"{store}\", revocation_lists = [\"{crl}\"] }}\n\
         [load_balancer]\nconnection_logs.enabled = true\nconnection_logs.path = \"{}\"\n\
         access_logs.enabled = true\naccess_logs.path = \"{}\"\n",
        conn_log.display(),
        access_log.display()
    );
    let (_s, addr) = start_mtls(&o, &table).await;
    for who in [
        "client-1",
        "client-revoked",
        "rogue-client",
        "client-expired",
    ] {
        let c = client_cert(who);
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        let (out, err) = curl(addr, "a.example.test", "/x", &args).await;
        assert_eq!(
            out.starts_with("HTTP/1.1 200"),
            who == "client-1",
            "{who}: {out}\n{err}"
        );
    }
    let text = causeway_testkit::lifecycle::log_lines(&conn_log, 4).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert!(
        f[0].ends_with('Z') && f[0].contains('T'),
        "timestamp: {}",
        lines[0]
    );
    assert_eq!(
        (f[1], f[3]),
        ("127.0.0.1", addr.port().to_string().as_str())
    );
    assert!(f[2].parse::<u16>().is_ok(), "client port: {}", lines[0]);
    assert_eq!(f[4], "TLSv1.3", "{}", lines[0]);
    assert!(f[5].starts_with("TLS_AES_"), "{}", lines[0]);
    let latency: f64 = f[6].parse().unwrap();
    assert!(
        f[6].split('.').nth(1).map(str::len) == Some(3) && latency < 5.0,
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" \"CN=client-1,OU=Fleet,O=Causeway Test\\\\, Inc.,C=US\" NotBefore="),
        "the leaf's subject: {}",
        lines[0]
    );
    assert!(
        lines[0].contains("Z;NotAfter=") && lines[0].contains("Z 0A1B2C3D4E5F Success TID_"),
        "validity, serial, status: {}",
        lines[0]
    );
    let tail = format!(" app/causeway-alb/{addr} 127.0.0.1");
    assert!(lines.iter().all(|l| l.ends_with(&tail)), "{text}");
    let kx = |l: &str| l.rsplit(' ').nth(2).unwrap().to_owned();
    assert!(
        ["X25519", "secp256r1", "X25519MLKEM768"].contains(&kx(lines[0]).as_str()),
        "key exchange: {}",
        lines[0]
    );
    for (line, code) in lines[1..].iter().zip([
        "ClientCertCrlHit",
        "ClientCertUntrusted",
        "ClientCertExpired",
    ]) {
        assert!(
            line.contains(&format!(" - - - - - - Failed:{code} TID_")) && kx(line) == "-",
            "{code}: {line}"
        );
    }
    // The successful connection's id is on its request's access log line.
    let tid = |l: &str| {
        l.split(' ')
            .find(|f| f.starts_with("TID_"))
            .unwrap()
            .to_owned()
    };
    let access = causeway_testkit::lifecycle::log_lines(&access_log, 1).await;
    assert_eq!(
        tid(access.lines().next().unwrap()),
        tid(lines[0]),
        "{access}"
    );
    assert!(lines.iter().skip(1).all(|l| tid(l) != tid(lines[0])));
}
