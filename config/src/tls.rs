//! TLS listener settings shared by the alb and the edge: certificates (the first is the
//! default, the others are chosen by SNI) and a security policy named after AWS's.

use crate::error::one_of;
use crate::{Context, Violation};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub certificate_file: String,
    pub private_key_file: String,
}

/// AWS's TLS security policies that rustls can honour (TLS 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// `ELBSecurityPolicy-TLS13-1-2-2021-06`: TLS 1.3 and 1.2 (the default).
    Tls13And12,
    /// `ELBSecurityPolicy-TLS13-1-2-Res-2021-06`: TLS 1.3, and 1.2 with AES-GCM only.
    Tls13And12Restricted,
    /// `ELBSecurityPolicy-TLS13-1-3-2021-06`: TLS 1.3 only.
    Tls13Only,
}

pub const POLICIES: &[&str] = &[
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
];

impl TlsPolicy {
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::Tls13And12 => POLICIES[0],
            TlsPolicy::Tls13And12Restricted => POLICIES[1],
            TlsPolicy::Tls13Only => POLICIES[2],
        }
    }
}

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// A TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub policy: TlsPolicy,
    /// The first is the default certificate.
    pub certificates: Vec<CertificateFiles>,
}

/// Validates a listener's `ssl_policy` and `certificates` (at `path`).
pub fn validate(
    path: &str,
    policy: Option<&str>,
    certificates: Vec<FileCertificate>,
    cx: &Context,
) -> Result<TlsSettings, Violation> {
    let policy = match one_of(
        &format!("{path}.ssl_policy"),
        policy.unwrap_or(POLICIES[0]),
        POLICIES,
    )? {
        "ELBSecurityPolicy-TLS13-1-2-Res-2021-06" => TlsPolicy::Tls13And12Restricted,
        "ELBSecurityPolicy-TLS13-1-3-2021-06" => TlsPolicy::Tls13Only,
        _ => TlsPolicy::Tls13And12,
    };
    if certificates.is_empty() {
        return Err(Violation::new(
            format!("{path}.certificates"),
            "a TLS listener needs at least one certificate (the first is the default)",
        ));
    }
    let mut out = Vec::new();
    for (i, c) in certificates.into_iter().enumerate() {
        let p = format!("{path}.certificates[{i}]");
        let certificate = cx.resolve(&c.certificate_file);
        let private_key = cx.resolve(&c.private_key_file);
        for (key, file) in [
            ("certificate_file", &certificate),
            ("private_key_file", &private_key),
        ] {
            if !file.is_file() {
                return Err(Violation::new(
                    format!("{p}.{key}"),
                    format!("no such file: {}", file.display()),
                ));
            }
        }
        out.push(CertificateFiles {
            certificate,
            private_key,
        });
    }
    Ok(TlsSettings {
        policy,
        certificates: out,
    })
}
