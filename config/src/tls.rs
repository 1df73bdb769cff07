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
    /// Mutual TLS (the alb's `mutual_authentication`; off elsewhere).
    pub client_auth: ClientAuth,
}

/// ALB's `mutual_authentication` modes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    Off,
    /// A client certificate is asked for, not required and not verified; its chain goes to
    /// the target.
    Passthrough,
    /// A client certificate is required and must chain to a CA of the trust store (a PEM
    /// bundle), and must not be on one of its revocation lists.
    Verify(TrustStore),
}

/// What `mode = "verify"` checks a client certificate against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustStore {
    /// PEM bundle of CA certificates.
    pub file: PathBuf,
    /// PEM files of certificate revocation lists (ALB's trust store revocations).
    pub revocation_lists: Vec<PathBuf>,
    /// `ignore_client_certificate_expiry`.
    pub ignore_expiry: bool,
    /// `advertise_trust_store_ca_names = "on"`: the CertificateRequest names the trust store's
    /// CAs (off by default, as on ALB).
    pub advertise_ca_names: bool,
}

/// A listener's `mutual_authentication` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMutualAuthentication {
    pub mode: Option<String>,
    pub trust_store: Option<String>,
    pub revocation_lists: Option<Vec<String>>,
    pub ignore_client_certificate_expiry: Option<bool>,
    pub advertise_trust_store_ca_names: Option<String>,
}

impl FileMutualAuthentication {
    /// Validates the table of the listener at `path`.
    pub fn validate(self, path: &str, cx: &Context) -> Result<ClientAuth, Violation> {
        let p = format!("{path}.mutual_authentication");
        let mode = one_of(
            &format!("{p}.mode"),
            self.mode.as_deref().unwrap_or("off"),
            &["off", "passthrough", "verify"],
        )?;
        if mode != "verify" {
            for (key, set) in [
                ("trust_store", self.trust_store.is_some()),
                ("revocation_lists", self.revocation_lists.is_some()),
                (
                    "ignore_client_certificate_expiry",
                    self.ignore_client_certificate_expiry.is_some(),
                ),
                (
                    "advertise_trust_store_ca_names",
                    self.advertise_trust_store_ca_names.is_some(),
                ),
            ] {
                if set {
                    return Err(Violation::new(
                        format!("{p}.{key}"),
                        "only mode = \"verify\" takes it",
                    ));
                }
            }
        }
        Ok(match mode {
            "passthrough" => ClientAuth::Passthrough,
            "verify" => {
                let Some(store) = self.trust_store.filter(|s| !s.is_empty()) else {
                    return Err(Violation::new(
                        format!("{p}.trust_store"),
                        "mode = \"verify\" needs a trust store (a PEM file of CA certificates)",
                    ));
                };
                let existing = |key: String, name: &str| {
                    let file = cx.resolve(name);
                    if file.is_file() {
                        Ok(file)
                    } else {
                        Err(Violation::new(
                            key,
                            format!("no such file: {}", file.display()),
                        ))
                    }
                };
                let file = existing(format!("{p}.trust_store"), &store)?;
                let revocation_lists = self
                    .revocation_lists
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(i, name)| existing(format!("{p}.revocation_lists[{i}]"), name))
                    .collect::<Result<_, _>>()?;
                let advertise = one_of(
                    &format!("{p}.advertise_trust_store_ca_names"),
                    self.advertise_trust_store_ca_names
                        .as_deref()
                        .unwrap_or("off"),
                    &["on", "off"],
                )?;
                ClientAuth::Verify(TrustStore {
                    file,
                    revocation_lists,
                    ignore_expiry: self.ignore_client_certificate_expiry.unwrap_or(false),
                    advertise_ca_names: advertise == "on",
                })
            }
            _ => ClientAuth::Off,
        })
    }
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
        client_auth: ClientAuth::Off,
    })
}
