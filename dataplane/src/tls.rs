//! TLS termination with rustls (ring provider): certificates loaded from PEM files, chosen by SNI
//! among the names each certificate holds (exact or one-label wildcard), else the default (the
//! first); protocol versions and cipher suites from the AWS policy; ALPN as the plane asks.

use causeway_config::tls::{ClientAuth, TlsPolicy, TlsSettings, TrustStore};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
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
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match &settings.client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Passthrough => {
            builder.with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        }
        ClientAuth::Verify(store) => {
            builder.with_client_cert_verifier(client_verifier(store, provider)?)
        }
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The negotiated cipher suite and protocol as ALB's access log names them (OpenSSL's names:
/// `ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`; `TLSv1.2`, `TLSv1.3`).
pub fn log_names(conn: &rustls::ServerConnection) -> (&'static str, &'static str) {
    use rustls::CipherSuite as C;
    let cipher = match conn.negotiated_cipher_suite().map(|s| s.suite()) {
        Some(C::TLS13_AES_128_GCM_SHA256) => "TLS_AES_128_GCM_SHA256",
        Some(C::TLS13_AES_256_GCM_SHA384) => "TLS_AES_256_GCM_SHA384",
        Some(C::TLS13_CHACHA20_POLY1305_SHA256) => "TLS_CHACHA20_POLY1305_SHA256",
        Some(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256) => "ECDHE-RSA-AES128-GCM-SHA256",
        Some(C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) => "ECDHE-RSA-AES256-GCM-SHA384",
        Some(C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-RSA-CHACHA20-POLY1305",
        Some(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) => "ECDHE-ECDSA-AES128-GCM-SHA256",
        Some(C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384) => "ECDHE-ECDSA-AES256-GCM-SHA384",
        Some(C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256) => "ECDHE-ECDSA-CHACHA20-POLY1305",
        _ => "-",
    };
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "-",
    };
    (cipher, protocol)
}

/// The key exchange group a TLS connection used, by its IANA name (`X25519`, `secp256r1`,
/// `X25519MLKEM768`), for ALB's connection log.
pub fn key_exchange_name(conn: &rustls::ServerConnection) -> String {
    conn.negotiated_key_exchange_group()
        .map_or_else(|| "-".to_owned(), |g| format!("{:?}", g.name()))
}

/// ALB's connection log code for a handshake that failed (`Failed:` and this), from the error
/// the TLS acceptor returned.
pub fn failure_code(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(c)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return "UnmappedConnectionError";
    };
    match c {
        C::UnknownIssuer => "ClientCertUntrusted",
        C::Revoked => "ClientCertCrlHit",
        C::Expired | C::ExpiredContext { .. } => "ClientCertExpired",
        C::NotValidYet | C::NotValidYetContext { .. } => "ClientCertNotYetValid",
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => "ClientCertPurposeInvalid",
        C::UnknownRevocationStatus
        | C::ExpiredRevocationList
        | C::ExpiredRevocationListContext { .. } => "ClientCertCrlProcessingError",
        _ => "ClientCertInvalid",
    }
}

/// The verifier of `mutual_authentication = { mode = "verify" }`: a client certificate is
/// required and must chain to a CA of the trust store (webpki: signatures, validity, the
/// `clientAuth` usage), and no certificate of the chain may be on a revocation list of its
/// issuer (an issuer with no list passes, as on ALB); with `ignore_expiry` an expired one is
/// still taken. The CertificateRequest names the trust store's CAs only when asked to.
fn client_verifier(
    store: &TrustStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let trust_store = &store.file;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust_store).map_err(|e| file_err(trust_store, e))? {
        let cert = cert.map_err(|e| file_err(trust_store, e))?;
        roots
            .add(cert)
            .map_err(|e| file_err(trust_store, format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(file_err(trust_store, "no certificate in the trust store"));
    }
    let mut crls = Vec::new();
    for file in &store.revocation_lists {
        let before = crls.len();
        for crl in
            CertificateRevocationListDer::pem_file_iter(file).map_err(|e| file_err(file, e))?
        {
            let crl = crl.map_err(|e| file_err(file, e))?;
            webpki::OwnedCertRevocationList::from_der(&crl)
                .map_err(|e| file_err(file, format!("not a certificate revocation list: {e}")))?;
            crls.push(crl);
        }
        if crls.len() == before {
            return Err(file_err(file, "no certificate revocation list in the file"));
        }
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            .allow_unknown_revocation_status();
    if !store.advertise_ca_names {
        builder = builder.clear_root_hint_subjects();
    }
    let inner = builder.build().map_err(|e| file_err(trust_store, e))?;
    Ok(if store.ignore_expiry {
        Arc::new(IgnoreExpiry(inner))
    } else {
        inner
    })
}

/// `ignore_client_certificate_expiry`: a chain refused only for being expired is checked again
/// as of a second before its leaf's `notAfter`, so every other check still holds.
#[derive(Debug)]
struct IgnoreExpiry(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for IgnoreExpiry {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self.0.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
                let leaf = crate::x509::leaf_info(end_entity)
                    .ok_or(rustls::Error::InvalidCertificate(C::BadEncoding))?;
                let then = u64::try_from(leaf.not_after_unix - 1).unwrap_or(0);
                self.0.verify_client_cert(
                    end_entity,
                    intermediates,
                    rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                        then,
                    )),
                )
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `mutual_authentication = { mode = "passthrough" }`: a client certificate is asked for but
/// neither required nor checked against any CA (the target does that from the chain it is
/// sent); the client must still prove it holds the leaf's key.
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A listener's mutual TLS mode, without its trust store: what a connection needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtls {
    Off,
    Passthrough,
    Verify,
}

impl From<&ClientAuth> for Mtls {
    fn from(c: &ClientAuth) -> Mtls {
        match c {
            ClientAuth::Off => Mtls::Off,
            ClientAuth::Passthrough => Mtls::Passthrough,
            ClientAuth::Verify { .. } => Mtls::Verify,
        }
    }
}

/// The fields ALB's mutual TLS sends a target, for a connection whose listener does mutual
/// TLS (`None` where it does not): in passthrough mode `X-Amzn-Mtls-Clientcert`, the chain
/// the client presented (none if it presented none); in verify mode the leaf's serial number,
/// issuer, subject, validity and the leaf itself.
pub fn client_cert_fields(
    mode: Mtls,
    conn: &rustls::ServerConnection,
) -> Option<Vec<(&'static str, String)>> {
    let chain = conn.peer_certificates().unwrap_or(&[]);
    match mode {
        Mtls::Off => None,
        Mtls::Passthrough => {
            let ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
            Some(if ders.is_empty() {
                Vec::new()
            } else {
                vec![(
                    "X-Amzn-Mtls-Clientcert",
                    crate::x509::url_encode(&crate::x509::pem(&ders)),
                )]
            })
        }
        Mtls::Verify => {
            let Some(leaf) = chain.first() else {
                return Some(Vec::new());
            };
            let mut fields = Vec::with_capacity(5);
            if let Some(info) = crate::x509::leaf_info(leaf) {
                fields.push(("X-Amzn-Mtls-Clientcert-Serial-Number", info.serial));
                fields.push(("X-Amzn-Mtls-Clientcert-Issuer", info.issuer));
                fields.push(("X-Amzn-Mtls-Clientcert-Subject", info.subject));
                fields.push((
                    "X-Amzn-Mtls-Clientcert-Validity",
                    format!("NotBefore={};NotAfter={}", info.not_before, info.not_after),
                ));
            }
            fields.push((
                "X-Amzn-Mtls-Clientcert-Leaf",
                crate::x509::url_encode(&crate::x509::pem(&[leaf.as_ref()])),
            ));
            Some(fields)
        }
    }
}

/// Whether a request field is one of ALB's mutual TLS fields, which a client never gets to set
/// on a listener that does mutual TLS.
pub fn is_mtls_field(name: &[u8]) -> bool {
    name.len() >= 22 && name[..22].eq_ignore_ascii_case(b"x-amzn-mtls-clientcert")
}

/// Accepts any target certificate, as AWS does towards targets (they commonly use self-signed
/// ones); handshake signatures are still checked, so the session is encrypted end to end.
#[derive(Debug)]
struct AnyTargetCert(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyTargetCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client config for TLS to targets: TLS 1.2 or 1.3, no certificate validation, ALPN `h2`
/// or `http/1.1`. Built once per process.
pub fn target_client_config(h2: bool) -> Arc<rustls::ClientConfig> {
    static H1: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    static H2: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let cell = if h2 { &H2 } else { &H1 };
    cell.get_or_init(|| {
        let provider = Arc::new(ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyTargetCert(provider)))
                    .with_no_client_auth()
            })
            .unwrap_or_else(|e| panic!("the ring provider supports TLS 1.2 and 1.3: {e}"));
        cfg.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Arc::new(cfg)
    })
    .clone()
}

/// The TLS client config for the nlb's TLS target groups: as [`target_client_config`], offering
/// the protocol the client negotiated (`h2` or `http/1.1`), or no ALPN when it negotiated none.
pub fn relay_client_config(alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    static NONE: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    match alpn {
        Some(b"h2") => target_client_config(true),
        Some(_) => target_client_config(false),
        None => NONE
            .get_or_init(|| {
                let mut cfg = (*target_client_config(false)).clone();
                cfg.alpn_protocols.clear();
                Arc::new(cfg)
            })
            .clone(),
    }
}

/// TLS to a target over `tcp`. No SNI is sent (the name is the target's IP), as AWS does.
pub async fn connect_target(
    tcp: tokio::net::TcpStream,
    h2: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ip = tcp.peer_addr()?.ip();
    let name = rustls::pki_types::ServerName::IpAddress(ip.into());
    tokio_rustls::TlsConnector::from(target_client_config(h2))
        .connect(name, tcp)
        .await
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
