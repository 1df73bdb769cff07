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
    let certs = causeway_testkit::tls::certificates_toml();
    let text = format!(
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
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (server, addr)
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
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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
