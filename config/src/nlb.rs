//! The nlb's config file: TCP, UDP and TCP_UDP listeners, each forwarding to a target group.

use crate::alb::unique_address;
use crate::common::{
    validate_target_groups, AdminConfig, FileAdmin, FileServer, FileTargetGroup, Plane,
    ServerConfig, TargetGroupConfig,
};
use crate::error::one_of;
use crate::{targets::merge_targets_file, ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNlb {
    #[serde(default)]
    pub server: FileServer,
    pub admin: FileAdmin,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub target_groups: BTreeMap<String, FileTargetGroup>,
    pub targets_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub protocol: Option<String>,
    pub target_group: String,
    #[serde(default)]
    pub tcp: FileTcp,
    #[serde(default)]
    pub udp: FileUdp,
    /// TLS listeners: AWS's policy name, certificates (first = default), ALPN policy.
    pub ssl_policy: Option<String>,
    #[serde(default)]
    pub certificates: Vec<crate::tls::FileCertificate>,
    pub alpn_policy: Option<String>,
    /// Ours: how TCP bytes move, `splice` (zero-copy) or `copy`.
    pub relay: Option<String>,
    #[serde(default)]
    pub proxy_protocol: FileAcceptProxy,
    /// Ours: connection limits (0 = none).
    pub max_connections: Option<i64>,
    pub max_connections_per_source: Option<i64>,
}

/// Accepting PROXY v1/v2 headers on a listener (ours): only from these sources.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcceptProxy {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    pub receive_timeout_seconds: Option<i64>,
}

/// Validated PROXY acceptance: every connection must start with a header, and only these
/// sources may send one.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxy {
    pub allowed: Vec<crate::cidr::Cidr>,
    pub receive_timeout: std::time::Duration,
}

/// AWS's `tcp.idle_timeout.seconds` listener attribute.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTcp {
    #[serde(default)]
    pub idle_timeout: FileIdle,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdle {
    pub seconds: Option<i64>,
}

/// UDP flows: idle timeout (NLB's 120 s by default) and the flow table's bounds (ours).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUdp {
    #[serde(default)]
    pub idle_timeout: FileIdle,
    pub max_flows: Option<i64>,
    pub max_flows_per_source: Option<i64>,
}

/// What a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    /// TCP and UDP on the same port.
    TcpUdp,
    /// TLS terminated here, TCP to the targets.
    Tls,
}

/// The default relay, chosen by benchmark (docs/benchmarks.md).
pub const DEFAULT_RELAY: &str = "auto";

/// How the nlb moves a plain TCP flow's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// splice(2) through a pipe per direction: the bytes never enter user space.
    Splice,
    /// read into a buffer, write it out.
    Copy,
    /// copy, until a direction shows itself bulk (64 KiB read in full buffers in a row); then
    /// splice for the rest of the flow.
    Auto,
}

/// NLB's ALPN policies for TLS listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlpnPolicy {
    None,
    Http1Only,
    Http2Only,
    Http2Optional,
    Http2Preferred,
}

pub const ALPN_POLICIES: &[&str] = &[
    "None",
    "HTTP1Only",
    "HTTP2Only",
    "HTTP2Optional",
    "HTTP2Preferred",
];

impl AlpnPolicy {
    /// The protocols offered, in the server's order of preference.
    pub fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            AlpnPolicy::None => &[],
            AlpnPolicy::Http1Only => &[b"http/1.1"],
            AlpnPolicy::Http2Only => &[b"h2"],
            AlpnPolicy::Http2Optional => &[b"http/1.1", b"h2"],
            AlpnPolicy::Http2Preferred => &[b"h2", b"http/1.1"],
        }
    }
}

impl Protocol {
    pub fn tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::TcpUdp | Protocol::Tls)
    }

    pub fn udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::TcpUdp)
    }
}

/// A listener's UDP settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// A flow silent both ways this long is closed.
    pub idle_timeout: std::time::Duration,
    /// Live flows at most, across all sources.
    pub max_flows: u32,
    /// Live flows per source IP at most.
    pub max_flows_per_source: u32,
}

/// A validated nlb config.
#[derive(Debug, Clone, PartialEq)]
pub struct NlbConfig {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<Listener>,
    pub target_groups: BTreeMap<String, TargetGroupConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub target_group: String,
    pub udp: UdpSettings,
    /// How plain TCP flows are relayed (TLS flows are always copied).
    pub relay: RelayMode,
    /// TLS listeners: certificates, policy, and the ALPN protocols offered.
    pub tls: Option<(crate::tls::TlsSettings, AlpnPolicy)>,
    /// A flow silent both ways this long is closed.
    pub idle_timeout: std::time::Duration,
    /// `Some` when connections must start with a PROXY header.
    pub proxy_protocol: Option<AcceptProxy>,
    /// Open connections at most (0 = no limit).
    pub max_connections: u32,
    /// Open connections per source IP at most (0 = no limit).
    pub max_connections_per_source: u32,
}

impl ConfigFile for FileNlb {
    type Valid = NlbConfig;

    fn validate(self, cx: &Context) -> Result<NlbConfig, Invalid> {
        let server = self.server.validate("server", cx)?;
        let admin = self.admin.validate("admin")?;
        let mut target_groups = validate_target_groups(self.target_groups, Plane::Nlb)?;
        if let Some(f) = &self.targets_file {
            merge_targets_file(&cx.resolve(f), &mut target_groups)?;
        }
        for tg in target_groups.values_mut() {
            tg.local_zone = server.zone.clone();
        }
        if self.listeners.is_empty() {
            return Err(Violation::new("listeners", "at least one listener is required").into());
        }
        let mut seen = vec![admin.address];
        let mut listeners = Vec::new();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            let address = unique_address(&mut seen, &format!("{path}.address"), &l.address)?;
            let protocol = match one_of(
                &format!("{path}.protocol"),
                l.protocol.as_deref().unwrap_or("TCP"),
                &["TCP", "UDP", "TCP_UDP", "TLS"],
            )? {
                "UDP" => Protocol::Udp,
                "TCP_UDP" => Protocol::TcpUdp,
                "TLS" => Protocol::Tls,
                _ => Protocol::Tcp,
            };
            let Some(group) = target_groups.get(&l.target_group) else {
                return Err(Violation::new(
                    format!("{path}.target_group"),
                    format!("no target group named \"{}\"", l.target_group),
                )
                .into());
            };
            // NLB's pairings: a TCP_UDP group serves TCP, UDP and TCP_UDP listeners; a TLS group
            // (TLS again to the targets) only TLS listeners.
            let fits = match protocol {
                Protocol::Tcp => ["TCP", "TCP_UDP"].contains(&group.protocol.as_str()),
                Protocol::Tls => ["TCP", "TCP_UDP", "TLS"].contains(&group.protocol.as_str()),
                Protocol::Udp => ["UDP", "TCP_UDP"].contains(&group.protocol.as_str()),
                Protocol::TcpUdp => group.protocol == "TCP_UDP",
            };
            if !fits {
                return Err(Violation::new(
                    format!("{path}.target_group"),
                    format!(
                        "a {} listener cannot forward to the {} target group \"{}\"",
                        l.protocol.as_deref().unwrap_or("TCP"),
                        group.protocol,
                        l.target_group
                    ),
                )
                .into());
            }
            let udp_idle = crate::error::in_range(
                &format!("{path}.udp.idle_timeout.seconds"),
                l.udp.idle_timeout.seconds.unwrap_or(120),
                1,
                6000,
            )?;
            let max_flows = crate::error::in_range(
                &format!("{path}.udp.max_flows"),
                l.udp.max_flows.unwrap_or(65_536),
                1,
                10_000_000,
            )?;
            let max_flows_per_source = crate::error::in_range(
                &format!("{path}.udp.max_flows_per_source"),
                l.udp.max_flows_per_source.unwrap_or(1024),
                1,
                10_000_000,
            )?;
            let tls = if protocol == Protocol::Tls {
                let settings =
                    crate::tls::validate(&path, l.ssl_policy.as_deref(), l.certificates, cx)?;
                let alpn = match one_of(
                    &format!("{path}.alpn_policy"),
                    l.alpn_policy.as_deref().unwrap_or("None"),
                    ALPN_POLICIES,
                )? {
                    "HTTP1Only" => AlpnPolicy::Http1Only,
                    "HTTP2Only" => AlpnPolicy::Http2Only,
                    "HTTP2Optional" => AlpnPolicy::Http2Optional,
                    "HTTP2Preferred" => AlpnPolicy::Http2Preferred,
                    _ => AlpnPolicy::None,
                };
                if l.proxy_protocol.enabled == Some(true) {
                    return Err(Violation::new(
                        format!("{path}.proxy_protocol.enabled"),
                        "PROXY headers are accepted on TCP listeners only, not before TLS",
                    )
                    .into());
                }
                Some((settings, alpn))
            } else {
                if l.ssl_policy.is_some() || !l.certificates.is_empty() || l.alpn_policy.is_some() {
                    return Err(Violation::new(
                        format!("{path}.certificates"),
                        "only a TLS listener takes ssl_policy, certificates and alpn_policy",
                    )
                    .into());
                }
                None
            };
            if protocol == Protocol::Udp && l.proxy_protocol.enabled == Some(true) {
                return Err(Violation::new(
                    format!("{path}.proxy_protocol.enabled"),
                    "PROXY headers are accepted on TCP listeners only",
                )
                .into());
            }
            let idle = crate::error::in_range(
                &format!("{path}.tcp.idle_timeout.seconds"),
                l.tcp.idle_timeout.seconds.unwrap_or(350),
                60,
                6000,
            )?;
            let pp = l.proxy_protocol;
            let proxy_protocol = if pp.enabled.unwrap_or(false) {
                let cp = format!("{path}.proxy_protocol.allowed_cidrs");
                if pp.allowed_cidrs.is_empty() {
                    return Err(Violation::new(
                        cp,
                        "list the sources allowed to send PROXY headers; never guess",
                    )
                    .into());
                }
                let mut allowed = Vec::new();
                for (j, c) in pp.allowed_cidrs.iter().enumerate() {
                    allowed.push(
                        crate::cidr::Cidr::parse(c)
                            .map_err(|e| Violation::new(format!("{cp}[{j}]"), e))?,
                    );
                }
                let t = crate::error::in_range(
                    &format!("{path}.proxy_protocol.receive_timeout_seconds"),
                    pp.receive_timeout_seconds.unwrap_or(5),
                    1,
                    60,
                )?;
                Some(AcceptProxy {
                    allowed,
                    receive_timeout: std::time::Duration::from_secs(t as u64),
                })
            } else {
                None
            };
            let max = crate::error::in_range(
                &format!("{path}.max_connections"),
                l.max_connections.unwrap_or(0),
                0,
                10_000_000,
            )?;
            let per = crate::error::in_range(
                &format!("{path}.max_connections_per_source"),
                l.max_connections_per_source.unwrap_or(0),
                0,
                10_000_000,
            )?;
            let relay = match one_of(
                &format!("{path}.relay"),
                l.relay.as_deref().unwrap_or(DEFAULT_RELAY),
                &["auto", "splice", "copy"],
            )? {
                "copy" => RelayMode::Copy,
                "auto" => RelayMode::Auto,
                _ => RelayMode::Splice,
            };
            listeners.push(Listener {
                address,
                protocol,
                relay,
                tls,
                udp: UdpSettings {
                    idle_timeout: std::time::Duration::from_secs(udp_idle as u64),
                    max_flows: max_flows as u32,
                    max_flows_per_source: max_flows_per_source as u32,
                },
                target_group: l.target_group,
                idle_timeout: std::time::Duration::from_secs(idle as u64),
                proxy_protocol,
                max_connections: max as u32,
                max_connections_per_source: per as u32,
            });
        }
        Ok(NlbConfig {
            server,
            admin,
            listeners,
            target_groups,
        })
    }
}
