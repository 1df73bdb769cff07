//! Sections shared by the data planes: server, admin, target groups, targets and health checks.

use crate::error::{in_range, one_of, socket_addr, Check, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

// ---------------------------------------------------------------- raw file layer

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub workers: Option<i64>,
    pub grace_period_seconds: Option<i64>,
    /// The availability zone this process runs in (for zone preference).
    pub zone: Option<String>,
    /// A Unix socket where this process hands its listening sockets to a new binary
    /// (`--upgrade`).
    pub upgrade_socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTarget {
    pub address: String,
    pub id: Option<String>,
    pub weight: Option<i64>,
    pub zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub enabled: Option<bool>,
    pub protocol: Option<String>,
    pub path: Option<String>,
    pub port: Option<FilePort>,
    pub interval_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub healthy_threshold_count: Option<i64>,
    pub unhealthy_threshold_count: Option<i64>,
    pub matcher: Option<String>,
}

/// A health check port: `"traffic-port"` or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FilePort {
    Number(i64),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSeconds {
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDuration {
    pub duration_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlgorithm {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// ALB's `load_balancing.algorithm.anomaly_mitigation`: `on` or `off`.
    pub anomaly_mitigation: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLoadBalancing {
    #[serde(default)]
    pub algorithm: FileAlgorithm,
    pub cross_zone: Option<FileEnabled>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStickiness {
    pub enabled: Option<bool>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub lb_cookie: FileDuration,
    #[serde(default)]
    pub app_cookie: FileAppCookie,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAppCookie {
    pub cookie_name: Option<String>,
    pub duration_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetGroup {
    pub protocol: Option<String>,
    /// alb: AWS's `ProtocolVersion` (`HTTP1`, `HTTP2` or `GRPC`).
    pub protocol_version: Option<String>,
    #[serde(default)]
    pub targets: Vec<FileTarget>,
    #[serde(default)]
    pub health_check: FileHealthCheck,
    #[serde(default)]
    pub deregistration_delay: FileDeregistration,
    #[serde(default)]
    pub target_health_state: FileTargetHealthState,
    #[serde(default)]
    pub slow_start: FileDuration,
    #[serde(default)]
    pub load_balancing: FileLoadBalancing,
    #[serde(default)]
    pub stickiness: FileStickiness,
    #[serde(default)]
    pub outlier_detection: FileOutlier,
    #[serde(default)]
    pub proxy_protocol_v2: FileEnabled,
    #[serde(default)]
    pub preserve_client_ip: FileEnabled,
    #[serde(default)]
    pub target_group_health: FileTargetGroupHealth,
    #[serde(default)]
    pub target_control: FileTargetControl,
}

/// Per-target concurrency limits (alb): ALB's Target Optimizer, whose agent caps the
/// requests a target gets at once, and HAProxy's `maxconn` with its queue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetControl {
    pub max_concurrent_requests: Option<i64>,
    pub queue_timeout_seconds: Option<i64>,
    pub max_queued_requests: Option<i64>,
}

/// AWS's `target_group_health.*` attributes (routing failover only: there is no DNS here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetGroupHealth {
    #[serde(default)]
    pub unhealthy_state_routing: FileUnhealthyStateRouting,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUnhealthyStateRouting {
    #[serde(default)]
    pub minimum_healthy_targets: FileMinimumHealthy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMinimumHealthy {
    pub count: Option<i64>,
    /// `"off"` or 1..=100 (AWS writes attribute values as strings; a bare integer is taken).
    pub percentage: Option<FileIntOrString>,
}

/// An attribute value written as an integer or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileIntOrString {
    Int(i64),
    Str(String),
}

/// AWS's `deregistration_delay.*` attributes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeregistration {
    pub timeout_seconds: Option<i64>,
    #[serde(default)]
    pub connection_termination: FileEnabled,
}

/// AWS's `target_health_state.unhealthy.*` attributes (NLB).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetHealthState {
    #[serde(default)]
    pub unhealthy: FileUnhealthy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUnhealthy {
    #[serde(default)]
    pub connection_termination: FileEnabled,
    pub draining_interval_seconds: Option<i64>,
}

/// When a target's open connections are cut (nlb; the alb lets requests finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    /// Close remaining connections when the deregistration delay ends.
    pub on_deregistration: bool,
    /// Reset connections as soon as the target turns unhealthy...
    pub on_unhealthy: bool,
    /// ...or, when that is off, after it has stayed unhealthy this long.
    pub unhealthy_draining: Duration,
}

impl Termination {
    /// Nothing is ever cut (the alb).
    pub const NEVER: Termination = Termination {
        on_deregistration: false,
        on_unhealthy: false,
        unhealthy_draining: Duration::MAX,
    };
}

/// `{ enabled = true }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEnabled {
    pub enabled: Option<bool>,
}

/// Passive outlier ejection (ours, after Envoy's `outlier_detection`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<i64>,
    pub ejection_time_seconds: Option<i64>,
    pub max_ejection_percent: Option<i64>,
}

/// AWS's routing failover (`target_group_health.unhealthy_state_routing`): while fewer
/// targets than `count`, or than `percentage` percent of the registered ones, are healthy, the
/// group sends new work to every registered target, unhealthy ones included (fail open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinimumHealthy {
    /// 1 by default: fail open only when no target is healthy.
    pub count: u32,
    /// 0 = off (the default).
    pub percentage: u32,
}

impl Default for MinimumHealthy {
    fn default() -> Self {
        MinimumHealthy {
            count: 1,
            percentage: 0,
        }
    }
}

impl MinimumHealthy {
    /// Whether `healthy` of `total` registered targets breaches either threshold.
    pub fn breached(&self, healthy: usize, total: usize) -> bool {
        healthy < self.count as usize
            || (self.percentage > 0 && healthy * 100 < self.percentage as usize * total)
    }
}

/// Validated per-target concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetControl {
    /// Requests one target may have in flight at once.
    pub max_concurrent: u64,
    /// How long a request waits for a target with room before a 503; zero (the default, as
    /// on ALB) answers 503 at once.
    pub queue_timeout: Duration,
    /// Requests that may wait at once (per target group); more get a 503 at once.
    pub max_queued: usize,
}

/// Validated outlier ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_percent: u32,
}

// ---------------------------------------------------------------- validated types

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long SIGTERM waits for in-flight work before exiting.
    pub grace_period: Duration,
    /// The availability zone this process runs in, if known.
    pub zone: Option<String>,
    /// Where listening sockets are handed to a new binary on upgrade.
    pub upgrade_socket: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 0,
            grace_period: Duration::from_secs(30),
            zone: None,
            upgrade_socket: None,
        }
    }
}

/// The admin server (`/metrics`, `/healthz`, `/status`, `POST /reload`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

/// One backend address with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetConfig {
    /// Stable identity (an EC2 instance id, or the address when none is given).
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub zone: Option<String>,
}

/// Which HTTP status codes count as healthy (`200`, `200,202`, `200-399`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatcher {
    ranges: Vec<(u16, u16)>,
}

impl StatusMatcher {
    /// HTTP status codes, 100..=599.
    pub fn parse(spec: &str) -> Result<Self, String> {
        Self::parse_in(spec, 100, 599, "200", "200-399")
    }

    /// gRPC status codes, 0..=99 (AWS's `GrpcCode`).
    pub fn parse_grpc(spec: &str) -> Result<Self, String> {
        Self::parse_in(spec, 0, 99, "12", "0-99")
    }

    fn parse_in(spec: &str, min: u16, max: u16, one: &str, range: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |s: &str| -> Result<u16, String> {
                match s.parse::<u16>() {
                    Ok(c) if (min..=max).contains(&c) => Ok(c),
                    _ => Err(format!(
                        "must be codes or ranges of {min}..={max} such as \"{one}\" or \"{range}\", got \"{spec}\""
                    )),
                }
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("range {lo}-{hi} is reversed"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusMatcher { ranges })
    }

    pub fn matches(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        matcher: StatusMatcher,
    },
    /// A gRPC call over h2 (`protocol_version = "GRPC"` groups): healthy when its
    /// `grpc-status` matches.
    Grpc {
        path: String,
        matcher: StatusMatcher,
    },
}

/// Active health check settings, with AWS's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    pub kind: HealthCheckKind,
    /// `None` checks the target's own (traffic) port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Send a PROXY v2 LOCAL header first (the group speaks PROXY protocol to its targets).
    pub proxy_protocol_v2: bool,
    /// HTTPS: the HTTP check runs over TLS (the target's certificate is not verified, as AWS).
    pub tls: bool,
}

/// Target selection algorithm of a target group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastOutstandingRequests,
    WeightedRandom,
    P2cEwma,
    /// Flow hash (the nlb): Maglev on the flow tuple.
    Maglev,
}

/// How an alb target group talks to its targets (AWS's `ProtocolVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolVersion {
    /// HTTP/1.1 to targets, whatever the client spoke (the default).
    #[default]
    Http1,
    /// h2 with prior knowledge to targets; only HTTP/2 clients are forwarded (HTTP/1.1 gets 464).
    Http2,
    /// Like `Http2`, for gRPC: trailers pass through.
    Grpc,
}

impl ProtocolVersion {
    /// Whether requests reach the targets over HTTP/2.
    pub fn is_h2(self) -> bool {
        self != ProtocolVersion::Http1
    }
}

/// Sticky sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum Stickiness {
    /// nlb: every flow from one client IP goes to the same target (AWS's `source_ip`).
    SourceIp,
    LbCookie {
        duration: Duration,
    },
    AppCookie {
        cookie_name: String,
        duration: Duration,
    },
}

/// A validated target group.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroupConfig {
    pub name: String,
    pub protocol: String,
    /// alb: the protocol spoken to targets.
    pub protocol_version: ProtocolVersion,
    pub targets: Vec<TargetConfig>,
    pub health_check: HealthCheckConfig,
    pub deregistration_delay: Duration,
    pub slow_start: Duration,
    pub algorithm: Algorithm,
    /// alb, `weighted_random` only: automatic target weights shrink anomalous targets' weights.
    pub anomaly_mitigation: bool,
    pub stickiness: Option<Stickiness>,
    pub outlier_detection: OutlierConfig,
    /// nlb: send a PROXY protocol v2 header to targets (and on health checks).
    pub proxy_protocol_v2: bool,
    /// nlb: AWS's `preserve_client_ip.enabled`: a flow's connection (TCP) or socket (UDP) to
    /// its target leaves from the client's IP address (a transparent socket), so the target
    /// sees the client.
    pub preserve_client_ip: bool,
    pub termination: Termination,
    /// AWS's `load_balancing.cross_zone.enabled` (on by default for the alb, off for the nlb):
    /// when off, targets in `local_zone` are preferred while any is usable.
    pub cross_zone: bool,
    /// The process's own zone (`server.zone`), set by the plane's config.
    pub local_zone: Option<String>,
    /// Routing failover thresholds.
    pub minimum_healthy: MinimumHealthy,
    /// alb: per-target concurrency limits, off when `None`.
    pub target_control: Option<TargetControl>,
}

/// Which data plane a target group belongs to: decides protocols and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Alb,
    Nlb,
}

fn secs(path: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Check<Duration> {
    let v = in_range(path, v.unwrap_or(default), lo, hi)?;
    Ok(Duration::from_secs(v as u64))
}

impl FileServer {
    pub fn validate(self, path: &str, cx: &crate::Context) -> Check<ServerConfig> {
        let workers = in_range(
            &format!("{path}.workers"),
            self.workers.unwrap_or(0),
            0,
            256,
        )?;
        let grace = secs(
            &format!("{path}.grace_period_seconds"),
            self.grace_period_seconds,
            30,
            0,
            3600,
        )?;
        if self.zone.as_deref() == Some("") {
            return Err(Violation::new(format!("{path}.zone"), "must not be empty"));
        }
        let upgrade_socket = match self.upgrade_socket.as_deref() {
            None => None,
            Some("") => {
                return Err(Violation::new(
                    format!("{path}.upgrade_socket"),
                    "must not be empty",
                ))
            }
            // sun_path holds 108 bytes with its NUL.
            Some(p) if cx.resolve(p).as_os_str().len() > 107 => {
                return Err(Violation::new(
                    format!("{path}.upgrade_socket"),
                    "a Unix socket path is at most 107 bytes",
                ))
            }
            Some(p) => Some(cx.resolve(p)),
        };
        Ok(ServerConfig {
            workers: workers as usize,
            grace_period: grace,
            zone: self.zone,
            upgrade_socket,
        })
    }
}

impl FileAdmin {
    pub fn validate(self, path: &str) -> Check<AdminConfig> {
        Ok(AdminConfig {
            address: socket_addr(&format!("{path}.address"), &self.address)?,
        })
    }
}

impl FileTarget {
    pub fn validate(self, path: &str) -> Check<TargetConfig> {
        let address = socket_addr(&format!("{path}.address"), &self.address)?;
        let weight = in_range(&format!("{path}.weight"), self.weight.unwrap_or(1), 0, 1000)?;
        Ok(TargetConfig {
            id: self.id.unwrap_or_else(|| address.to_string()),
            address,
            weight: weight as u32,
            zone: self.zone,
        })
    }
}

/// Validates a list of targets and refuses duplicate addresses.
pub fn validate_targets(path: &str, raw: Vec<FileTarget>) -> Check<Vec<TargetConfig>> {
    let mut out: Vec<TargetConfig> = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let t = t.validate(&p)?;
        if out.iter().any(|o| o.address == t.address) {
            return Err(Violation::new(
                format!("{p}.address"),
                format!("duplicate target {}", t.address),
            ));
        }
        if out.iter().any(|o| o.id == t.id) {
            return Err(Violation::new(
                format!("{p}.id"),
                format!("duplicate target id \"{}\"", t.id),
            ));
        }
        out.push(t);
    }
    Ok(out)
}

impl FileHealthCheck {
    pub fn validate(
        self,
        path: &str,
        plane: Plane,
        tg_protocol: &str,
        grpc: bool,
    ) -> Check<HealthCheckConfig> {
        // AWS: an alb group checks with its own protocol by default.
        let default_proto = match (plane, tg_protocol) {
            (Plane::Alb, "HTTPS") => "HTTPS",
            (Plane::Alb, _) => "HTTP",
            (Plane::Nlb, _) => "TCP",
        };
        let proto_path = format!("{path}.protocol");
        let proto = one_of(
            &proto_path,
            self.protocol.as_deref().unwrap_or(default_proto),
            &["HTTP", "HTTPS", "TCP"],
        )?
        .to_owned();
        if plane == Plane::Alb && proto == "TCP" {
            return Err(Violation::new(
                proto_path,
                "an alb target group checks with HTTP or HTTPS",
            ));
        }
        let tls = proto == "HTTPS";
        let kind = if proto == "HTTP" || tls {
            // AWS: a gRPC group calls /AWS.ALB/healthcheck and wants grpc-status 12 by default
            // (UNIMPLEMENTED: the server is up and answering gRPC).
            let default_path = if grpc { "/AWS.ALB/healthcheck" } else { "/" };
            let p = self.path.unwrap_or_else(|| default_path.to_owned());
            if !p.starts_with('/') || p.len() > 1024 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Violation::new(
                    format!("{path}.path"),
                    format!("must start with / and hold no spaces or control bytes, got \"{p}\""),
                ));
            }
            let bad = |e| Violation::new(format!("{path}.matcher"), e);
            if grpc {
                let m = self.matcher.as_deref().unwrap_or("12");
                let matcher = StatusMatcher::parse_grpc(m).map_err(bad)?;
                HealthCheckKind::Grpc { path: p, matcher }
            } else {
                let m = self.matcher.as_deref().unwrap_or("200");
                let matcher = StatusMatcher::parse(m).map_err(bad)?;
                HealthCheckKind::Http { path: p, matcher }
            }
        } else {
            if self.path.is_some() {
                return Err(Violation::new(
                    format!("{path}.path"),
                    "only HTTP and HTTPS checks take a path",
                ));
            }
            if self.matcher.is_some() {
                return Err(Violation::new(
                    format!("{path}.matcher"),
                    "only HTTP and HTTPS checks take a matcher",
                ));
            }
            HealthCheckKind::Tcp
        };
        let port = match self.port {
            None => None,
            Some(FilePort::Name(s)) if s == "traffic-port" => None,
            Some(FilePort::Number(n)) => {
                Some(in_range(&format!("{path}.port"), n, 1, 65535)? as u16)
            }
            Some(FilePort::Name(other)) => {
                return Err(Violation::new(
                    format!("{path}.port"),
                    format!("must be \"traffic-port\" or 1..=65535, got \"{other}\""),
                ))
            }
        };
        let default_timeout = if proto == "TCP" { 10 } else { 5 };
        let interval = secs(
            &format!("{path}.interval_seconds"),
            self.interval_seconds,
            30,
            1,
            300,
        )?;
        let timeout = secs(
            &format!("{path}.timeout_seconds"),
            self.timeout_seconds,
            default_timeout.min(interval.as_secs() as i64),
            1,
            120,
        )?;
        if timeout > interval {
            return Err(Violation::new(
                format!("{path}.timeout_seconds"),
                format!(
                    "must not exceed interval_seconds ({}), got {}",
                    interval.as_secs(),
                    timeout.as_secs()
                ),
            ));
        }
        let healthy = in_range(
            &format!("{path}.healthy_threshold_count"),
            self.healthy_threshold_count.unwrap_or(5),
            1,
            10,
        )?;
        let unhealthy = in_range(
            &format!("{path}.unhealthy_threshold_count"),
            self.unhealthy_threshold_count.unwrap_or(2),
            1,
            10,
        )?;
        Ok(HealthCheckConfig {
            enabled: self.enabled.unwrap_or(true),
            kind,
            port,
            interval,
            timeout,
            healthy_threshold: healthy as u32,
            unhealthy_threshold: unhealthy as u32,
            proxy_protocol_v2: false,
            tls,
        })
    }
}

impl FileTargetGroup {
    pub fn validate(self, name: &str, path: &str, plane: Plane) -> Check<TargetGroupConfig> {
        let (protocols, default_proto): (&[&str], &str) = match plane {
            Plane::Alb => (&["HTTP", "HTTPS"], "HTTP"),
            Plane::Nlb => (&["TCP", "UDP", "TCP_UDP", "TLS"], "TCP"),
        };
        let protocol = one_of(
            &format!("{path}.protocol"),
            self.protocol.as_deref().unwrap_or(default_proto),
            protocols,
        )?
        .to_owned();
        let pv_path = format!("{path}.protocol_version");
        let protocol_version = match (plane, self.protocol_version.as_deref()) {
            (_, None) => ProtocolVersion::Http1,
            (Plane::Nlb, Some(_)) => {
                return Err(Violation::new(
                    pv_path,
                    "protocol_version is an alb target group attribute",
                ))
            }
            (Plane::Alb, Some(v)) => match one_of(&pv_path, v, &["HTTP1", "HTTP2", "GRPC"])? {
                "HTTP2" => ProtocolVersion::Http2,
                "GRPC" => ProtocolVersion::Grpc,
                _ => ProtocolVersion::Http1,
            },
        };
        let targets = validate_targets(&format!("{path}.targets"), self.targets)?;
        let pp2_path = format!("{path}.proxy_protocol_v2.enabled");
        let proxy_protocol_v2 = self.proxy_protocol_v2.enabled.unwrap_or(false);
        if proxy_protocol_v2 && protocol != "TCP" && plane == Plane::Nlb {
            return Err(Violation::new(
                pp2_path,
                format!("PROXY protocol v2 is for TCP target groups (as on NLB), not {protocol}"),
            ));
        }
        if proxy_protocol_v2 && plane == Plane::Alb {
            return Err(Violation::new(
                pp2_path,
                "PROXY protocol to targets is an nlb target group attribute",
            ));
        }
        let pci_path = format!("{path}.preserve_client_ip.enabled");
        let preserve_client_ip = self.preserve_client_ip.enabled.unwrap_or(false);
        if preserve_client_ip && plane == Plane::Alb {
            return Err(Violation::new(
                pci_path,
                "client IP preservation is an nlb target group attribute (the alb's targets \
                 see the client in X-Forwarded-For)",
            ));
        }
        let mut health_check = self.health_check.validate(
            &format!("{path}.health_check"),
            plane,
            &protocol,
            protocol_version == ProtocolVersion::Grpc,
        )?;
        health_check.proxy_protocol_v2 = proxy_protocol_v2;
        let dd_term = self.deregistration_delay.connection_termination.enabled;
        let uh = self.target_health_state.unhealthy;
        let uh_path = format!("{path}.target_health_state.unhealthy");
        let termination = match plane {
            Plane::Alb => {
                if dd_term.is_some()
                    || uh.connection_termination.enabled.is_some()
                    || uh.draining_interval_seconds.is_some()
                {
                    return Err(Violation::new(
                        if dd_term.is_some() {
                            format!("{path}.deregistration_delay.connection_termination.enabled")
                        } else {
                            uh_path
                        },
                        "connection termination is an nlb target group attribute",
                    ));
                }
                Termination::NEVER
            }
            Plane::Nlb => {
                let on_unhealthy = uh.connection_termination.enabled.unwrap_or(true);
                let draining = secs(
                    &format!("{uh_path}.draining_interval_seconds"),
                    uh.draining_interval_seconds,
                    0,
                    0,
                    360_000,
                )?;
                if on_unhealthy && uh.draining_interval_seconds.is_some() {
                    return Err(Violation::new(
                        format!("{uh_path}.draining_interval_seconds"),
                        "applies only when connection_termination.enabled = false",
                    ));
                }
                Termination {
                    on_deregistration: dd_term.unwrap_or(false),
                    on_unhealthy,
                    unhealthy_draining: if on_unhealthy {
                        Duration::ZERO
                    } else {
                        draining
                    },
                }
            }
        };
        let deregistration_delay = secs(
            &format!("{path}.deregistration_delay.timeout_seconds"),
            self.deregistration_delay.timeout_seconds,
            300,
            0,
            3600,
        )?;
        let ss_path = format!("{path}.slow_start.duration_seconds");
        let slow_start = secs(&ss_path, self.slow_start.duration_seconds, 0, 0, 900)?;
        if plane == Plane::Nlb && !slow_start.is_zero() {
            return Err(Violation::new(
                ss_path,
                "the nlb has no slow start: flows are placed by Maglev",
            ));
        }
        if !slow_start.is_zero() && slow_start < Duration::from_secs(30) {
            return Err(Violation::new(
                ss_path,
                format!("must be 0 (off) or 30..=900, got {}", slow_start.as_secs()),
            ));
        }
        let algo_path = format!("{path}.load_balancing.algorithm.type");
        let algorithm = match (plane, self.load_balancing.algorithm.kind.as_deref()) {
            (Plane::Nlb, None) => Algorithm::Maglev,
            (Plane::Nlb, Some(_)) => {
                return Err(Violation::new(
                    algo_path,
                    "the nlb always chooses by flow hash (Maglev); remove this key",
                ))
            }
            (Plane::Alb, kind) => match one_of(
                &algo_path,
                kind.unwrap_or("round_robin"),
                &[
                    "round_robin",
                    "least_outstanding_requests",
                    "weighted_random",
                    "p2c_ewma",
                ],
            )? {
                "least_outstanding_requests" => Algorithm::LeastOutstandingRequests,
                "weighted_random" => Algorithm::WeightedRandom,
                "p2c_ewma" => Algorithm::P2cEwma,
                _ => Algorithm::RoundRobin,
            },
        };
        if !slow_start.is_zero()
            && !matches!(algorithm, Algorithm::RoundRobin | Algorithm::WeightedRandom)
        {
            return Err(Violation::new(
                ss_path,
                "slow start works with round_robin (as on AWS) and weighted_random (beyond AWS) only",
            ));
        }
        let am_path = format!("{path}.load_balancing.algorithm.anomaly_mitigation");
        let anomaly_mitigation = match self.load_balancing.algorithm.anomaly_mitigation.as_deref() {
            None => false,
            Some(v) => one_of(&am_path, v, &["on", "off"])? == "on",
        };
        if anomaly_mitigation && algorithm != Algorithm::WeightedRandom {
            return Err(Violation::new(
                am_path,
                "anomaly mitigation works with load_balancing.algorithm.type = \"weighted_random\" \
                 only (as on AWS)",
            ));
        }
        let stickiness = self
            .stickiness
            .validate(&format!("{path}.stickiness"), plane)?;
        let o = self.outlier_detection;
        let op = format!("{path}.outlier_detection");
        let outlier_detection = OutlierConfig {
            enabled: o.enabled.unwrap_or(plane == Plane::Alb),
            consecutive_failures: in_range(
                &format!("{op}.consecutive_failures"),
                o.consecutive_failures.unwrap_or(5),
                1,
                1000,
            )? as u32,
            ejection_time: secs(
                &format!("{op}.ejection_time_seconds"),
                o.ejection_time_seconds,
                30,
                1,
                3600,
            )?,
            max_ejection_percent: in_range(
                &format!("{op}.max_ejection_percent"),
                o.max_ejection_percent.unwrap_or(50),
                0,
                100,
            )? as u32,
        };
        let cross_zone = self
            .load_balancing
            .cross_zone
            .and_then(|c| c.enabled)
            .unwrap_or(plane == Plane::Alb);
        let mp =
            format!("{path}.target_group_health.unhealthy_state_routing.minimum_healthy_targets");
        let m = self
            .target_group_health
            .unhealthy_state_routing
            .minimum_healthy_targets;
        let minimum_healthy = MinimumHealthy {
            count: in_range(&format!("{mp}.count"), m.count.unwrap_or(1), 1, 10_000)? as u32,
            percentage: match m.percentage {
                None => 0,
                Some(FileIntOrString::Str(s)) if s == "off" => 0,
                Some(FileIntOrString::Str(s)) => match s.parse::<i64>() {
                    Ok(n) => in_range(&format!("{mp}.percentage"), n, 1, 100)? as u32,
                    Err(_) => {
                        return Err(Violation::new(
                            format!("{mp}.percentage"),
                            format!("must be \"off\" or 1..=100, got \"{s}\""),
                        ))
                    }
                },
                Some(FileIntOrString::Int(n)) => {
                    in_range(&format!("{mp}.percentage"), n, 1, 100)? as u32
                }
            },
        };
        let target_control = self
            .target_control
            .validate(&format!("{path}.target_control"), plane)?;
        Ok(TargetGroupConfig {
            target_control,
            cross_zone,
            local_zone: None,
            minimum_healthy,
            termination,
            proxy_protocol_v2,
            preserve_client_ip,
            outlier_detection,
            name: name.to_owned(),
            protocol,
            protocol_version,
            targets,
            health_check,
            deregistration_delay,
            slow_start,
            algorithm,
            anomaly_mitigation,
            stickiness,
        })
    }
}

impl FileTargetControl {
    fn validate(self, path: &str, plane: Plane) -> Check<Option<TargetControl>> {
        let Some(max) = self.max_concurrent_requests else {
            for (key, set) in [
                (
                    "queue_timeout_seconds",
                    self.queue_timeout_seconds.is_some(),
                ),
                ("max_queued_requests", self.max_queued_requests.is_some()),
            ] {
                if set {
                    return Err(Violation::new(
                        format!("{path}.{key}"),
                        "needs target_control.max_concurrent_requests: without a limit nothing \
                         waits",
                    ));
                }
            }
            return Ok(None);
        };
        let mp = format!("{path}.max_concurrent_requests");
        if plane == Plane::Nlb {
            return Err(Violation::new(
                mp,
                "target_control is an alb target group attribute (the nlb relays flows, not \
                 requests)",
            ));
        }
        Ok(Some(TargetControl {
            max_concurrent: in_range(&mp, max, 1, 100_000)? as u64,
            queue_timeout: secs(
                &format!("{path}.queue_timeout_seconds"),
                self.queue_timeout_seconds,
                0,
                0,
                3600,
            )?,
            max_queued: in_range(
                &format!("{path}.max_queued_requests"),
                self.max_queued_requests.unwrap_or(1024),
                0,
                1_000_000,
            )? as usize,
        }))
    }
}

impl FileStickiness {
    fn validate(self, path: &str, plane: Plane) -> Check<Option<Stickiness>> {
        if !self.enabled.unwrap_or(false) {
            return Ok(None);
        }
        if plane == Plane::Nlb {
            one_of(
                &format!("{path}.type"),
                self.kind.as_deref().unwrap_or("source_ip"),
                &["source_ip"],
            )?;
            return Ok(Some(Stickiness::SourceIp));
        }
        let kind = one_of(
            &format!("{path}.type"),
            self.kind.as_deref().unwrap_or("lb_cookie"),
            &["lb_cookie", "app_cookie"],
        )?;
        // AWS: 1 second to 7 days, default 1 day.
        let week = 7 * 24 * 3600;
        if kind == "lb_cookie" {
            let d = secs(
                &format!("{path}.lb_cookie.duration_seconds"),
                self.lb_cookie.duration_seconds,
                86400,
                1,
                week,
            )?;
            Ok(Some(Stickiness::LbCookie { duration: d }))
        } else {
            let name_path = format!("{path}.app_cookie.cookie_name");
            let name = self
                .app_cookie
                .cookie_name
                .ok_or_else(|| Violation::new(&name_path, "required for app_cookie stickiness"))?;
            let reserved = ["AWSALB", "AWSALBAPP", "AWSALBTG", "CWSTICKY"];
            if name.is_empty()
                || reserved.iter().any(|r| name.starts_with(r))
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
            {
                return Err(Violation::new(
                    name_path,
                    format!("must be a cookie name that is not reserved, got \"{name}\""),
                ));
            }
            let d = secs(
                &format!("{path}.app_cookie.duration_seconds"),
                self.app_cookie.duration_seconds,
                86400,
                1,
                week,
            )?;
            Ok(Some(Stickiness::AppCookie {
                cookie_name: name,
                duration: d,
            }))
        }
    }
}

/// Validates every target group of a file, in name order.
pub fn validate_target_groups(
    raw: BTreeMap<String, FileTargetGroup>,
    plane: Plane,
) -> Check<BTreeMap<String, TargetGroupConfig>> {
    let mut out = BTreeMap::new();
    for (name, tg) in raw {
        let path = format!("target_groups.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Violation::new(
                path,
                "a target group name uses letters, digits, - and _ only",
            ));
        }
        out.insert(name.clone(), tg.validate(&name, &path, plane)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_accepts_aws_forms() {
        let m = StatusMatcher::parse("200,202,300-399").unwrap();
        assert!(m.matches(200) && m.matches(202) && m.matches(302));
        assert!(!m.matches(201) && !m.matches(404));
        assert!(StatusMatcher::parse("abc").is_err());
        assert!(StatusMatcher::parse("399-300").is_err());
        assert!(StatusMatcher::parse("99").is_err());
    }
}
