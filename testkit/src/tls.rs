//! TLS test helpers: the test certificates in `testkit/certs`, and curl over TLS (a real
//! client) to a loopback listener under a test name, trusting the test CA.

use std::net::SocketAddr;
use std::path::Path;

/// A file in `testkit/certs` (e.g. `a.example.test.pem`, `ca.pem`), as a path string.
pub fn cert(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name)
        .display()
        .to_string()
}

/// A TLS acceptor with the test certificate `name` (`name.pem`, `name.key`) offering `alpn`.
pub fn acceptor(name: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert(&format!("{name}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(cert(&format!("{name}.key"))).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg))
}

/// The test certificates as a listener's `certificates` array items (TOML): `default` first
/// (the default), then `a.example.test` and `*.b.example.test`.
pub fn certificates_toml() -> String {
    ["default.example.test", "a.example.test", "b.example.test"]
        .iter()
        .map(|n| {
            format!(
                "{{ certificate_file = \"{}\", private_key_file = \"{}\" }}",
                cert(&format!("{n}.pem")),
                cert(&format!("{n}.key"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `curl -s -i -v` over TLS to `https://host:PORT/path`, with `host` resolved to `addr`:
/// (stdout, stderr). `extra` are more curl arguments.
pub async fn curl(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> (String, String) {
    let mut args: Vec<String> = vec![
        "-s".into(),
        "-i".into(),
        "-v".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        cert("ca.pem"),
        "--resolve".into(),
        format!("{host}:{}:127.0.0.1", addr.port()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{host}:{}{path}", addr.port()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .expect("curl task")
    .expect("curl runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
