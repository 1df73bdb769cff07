//! TLS termination with rustls (ring provider): certificates loaded from PEM files, chosen by SNI
//! among the names each certificate holds (exact or one-label wildcard), else the default (the
//! first); protocol versions and cipher suites from the AWS policy; ALPN as the plane asks.

use causeway_config::tls::{TlsPolicy, TlsSettings};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {why}")]
    File { file: String, why: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One loaded certificate with the DNS names it is valid for (lower-case).
#[derive(Debug)]
struct Loaded {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI: the first whose names match, else the default.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Loaded>,
}

/// Whether `name` (from the certificate) covers `host` (from SNI): equal, or `*.rest` where
/// `host` is one more label in front of `rest`.
pub fn name_matches(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match name.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest)),
        None => false,
    }
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(host) = sni {
            if let Some(c) = self
                .certs
                .iter()
                .find(|c| c.names.iter().any(|n| name_matches(n, host)))
            {
                return Some(c.key.clone());
            }
        }
        self.certs.first().map(|c| c.key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn file_err(file: &std::path::Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        file: file.display().to_string(),
        why: why.to_string(),
    }
}

fn provider(policy: TlsPolicy) -> CryptoProvider {
    let mut p = ring::default_provider();
    if policy == TlsPolicy::Tls13And12Restricted {
        // AES-GCM only for TLS 1.2, as AWS's restricted policy.
        p.cipher_suites.retain(|s| {
            s.version() == &rustls::version::TLS13
                || matches!(
                    s.suite(),
                    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                )
        });
    }
    p
}

/// Loads the certificates and builds a server config offering `alpn` (e.g. `h2`, `http/1.1`).
pub fn server_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(provider(settings.policy));
    let mut certs = Vec::new();
    for files in &settings.certificates {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
            .map_err(|e| file_err(&files.certificate, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&files.certificate, e))?;
        let Some(leaf) = chain.first() else {
            return Err(file_err(&files.certificate, "no certificate in the file"));
        };
        let parsed = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| file_err(&files.certificate, format!("invalid certificate: {e}")))?;
        let names: Vec<String> = parsed
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&files.private_key)
            .map_err(|e| file_err(&files.private_key, e))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| file_err(&files.private_key, e))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            file_err(
                &files.private_key,
                format!("does not match its certificate: {e}"),
            )
        })?;
        certs.push(Loaded {
            names,
            key: Arc::new(certified),
        });
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.policy {
        TlsPolicy::Tls13Only => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn sni_names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("example.com", "EXAMPLE.com"));
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("www.example.com", "example.com"));
    }
}
