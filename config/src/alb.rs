//! The alb's config file: listeners with their default action, and target groups.

use crate::cidr::Cidr;
use crate::common::{
    validate_target_groups, AdminConfig, FileAdmin, FileServer, FileTargetGroup, Plane,
    ServerConfig, TargetGroupConfig,
};
use crate::error::{in_range, one_of, socket_addr, Check};
use crate::{targets::merge_targets_file, ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlb {
    #[serde(default)]
    pub server: FileServer,
    pub admin: FileAdmin,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub target_groups: BTreeMap<String, FileTargetGroup>,
    pub targets_file: Option<String>,
    #[serde(default)]
    pub load_balancer: FileLoadBalancer,
}

/// Load balancer attributes, by AWS's names (`idle_timeout.timeout_seconds`, ...).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLoadBalancer {
    #[serde(default)]
    pub idle_timeout: crate::common::FileSeconds,
    #[serde(default)]
    pub client_keep_alive: FileKeepAlive,
    #[serde(default)]
    pub routing: FileRouting,
    /// Ours: how long a client may take to send a whole request head (slowloris).
    pub request_header_timeout_seconds: Option<i64>,
    /// Ours: the key that signs sticky cookies; replicas that share it honour each other's
    /// cookies. Without it each process signs with a random key of its own.
    pub stickiness_secret: Option<String>,
    /// Ours: the key that encrypts `authenticate_oidc` session cookies; replicas that share it
    /// honour each other's sessions. Without it each process uses a random key of its own.
    pub authentication_secret: Option<String>,
    /// Ours: a PKCS#8 PEM P-256 private key that signs `x-amzn-oidc-data`, so that replicas
    /// sign with one key. Without it each process makes one at start.
    pub authentication_signing_key_file: Option<String>,
    #[serde(default)]
    pub access_logs: FileAccessLogs,
    /// ALB's connection logs (`connection_logs.s3.enabled` on AWS): one line per connection.
    #[serde(default)]
    pub connection_logs: FileAccessLogs,
    /// ALB's health check logs (`health_check_logs.s3.enabled`): one line per active check.
    #[serde(default)]
    pub health_check_logs: FileAccessLogs,
}

/// Access logs in ALB's format, to a local file (AWS writes them to S3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLogs {
    pub enabled: Option<bool>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeepAlive {
    pub seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouting {
    #[serde(default)]
    pub http: FileRoutingHttp,
    #[serde(default)]
    pub http2: FileEnabled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoutingHttp {
    pub desync_mitigation_mode: Option<String>,
    #[serde(default)]
    pub xff_header_processing: FileMode,
    #[serde(default)]
    pub preserve_host_header: FileEnabled,
    #[serde(default)]
    pub xff_client_port: FileEnabled,
    #[serde(default)]
    pub drop_invalid_header_fields: FileEnabled,
    #[serde(default)]
    pub x_amzn_tls_version_and_cipher_suite: FileEnabled,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMode {
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEnabled {
    pub enabled: Option<bool>,
}

/// AWS's `routing.http.desync_mitigation_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesyncMode {
    Monitor,
    Defensive,
    Strictest,
}

/// AWS's `routing.http.xff_header_processing.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XffMode {
    Append,
    Preserve,
    Remove,
}

/// Validated load balancer attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancerAttributes {
    pub idle_timeout: std::time::Duration,
    pub client_keep_alive: std::time::Duration,
    pub request_header_timeout: std::time::Duration,
    pub desync_mitigation_mode: DesyncMode,
    pub xff: XffMode,
    /// `routing.http.xff_client_port.enabled`: the appended X-Forwarded-For entry carries the
    /// client's port too (`ip:port`, `[ipv6]:port`).
    pub xff_client_port: bool,
    pub preserve_host_header: bool,
    /// `routing.http.drop_invalid_header_fields.enabled`: fields whose names are not letters,
    /// digits and hyphens are removed before the request goes to a target.
    pub drop_invalid_header_fields: bool,
    /// `routing.http.x_amzn_tls_version_and_cipher_suite.enabled`: requests that came over
    /// TLS carry `X-Amzn-Tls-Version` and `X-Amzn-Tls-Cipher-Suite` to the target.
    pub tls_headers: bool,
    /// `routing.http2.enabled`: HTTP/2 is offered (ALPN `h2` over TLS, h2c by prior knowledge).
    pub http2: bool,
    pub stickiness_secret: Option<String>,
    /// `authentication_secret`: the session cookies' key material.
    pub authentication_secret: Option<String>,
    /// `authentication_signing_key_file`, resolved.
    pub authentication_signing_key: Option<std::path::PathBuf>,
    /// Where access logs go, when enabled.
    pub access_log: Option<std::path::PathBuf>,
    /// Where connection logs go, when enabled.
    pub connection_log: Option<std::path::PathBuf>,
    /// Where health check logs go, when enabled.
    pub health_check_log: Option<std::path::PathBuf>,
}

/// A log's file: `None` when it is off; a path is required when it is on.
fn log_path(key: &str, logs: FileAccessLogs, cx: &Context) -> Check<Option<std::path::PathBuf>> {
    match (logs.enabled.unwrap_or(false), logs.path) {
        (false, _) => Ok(None),
        (true, Some(p)) if !p.is_empty() => Ok(Some(cx.resolve(&p))),
        (true, _) => Err(Violation::new(
            format!("load_balancer.{key}.path"),
            format!("required when {key}.enabled = true"),
        )),
    }
}

impl FileLoadBalancer {
    fn validate(self, cx: &Context) -> Check<LoadBalancerAttributes> {
        let access_log = log_path("access_logs", self.access_logs, cx)?;
        let connection_log = log_path("connection_logs", self.connection_logs, cx)?;
        let health_check_log = log_path("health_check_logs", self.health_check_logs, cx)?;
        let secs =
            |p: &str, v: Option<i64>, d: i64, lo: i64, hi: i64| -> Check<std::time::Duration> {
                Ok(std::time::Duration::from_secs(
                    in_range(p, v.unwrap_or(d), lo, hi)? as u64,
                ))
            };
        let idle = secs(
            "load_balancer.idle_timeout.timeout_seconds",
            self.idle_timeout.timeout_seconds,
            60,
            1,
            4000,
        )?;
        let keep = secs(
            "load_balancer.client_keep_alive.seconds",
            self.client_keep_alive.seconds,
            3600,
            60,
            604_800,
        )?;
        let header = secs(
            "load_balancer.request_header_timeout_seconds",
            self.request_header_timeout_seconds,
            20,
            1,
            300,
        )?;
        let http2 = self.routing.http2.enabled.unwrap_or(true);
        let h = self.routing.http;
        let desync = match one_of(
            "load_balancer.routing.http.desync_mitigation_mode",
            h.desync_mitigation_mode.as_deref().unwrap_or("strictest"),
            &["monitor", "defensive", "strictest"],
        )? {
            "monitor" => DesyncMode::Monitor,
            "defensive" => DesyncMode::Defensive,
            _ => DesyncMode::Strictest,
        };
        let xff = match one_of(
            "load_balancer.routing.http.xff_header_processing.mode",
            h.xff_header_processing.mode.as_deref().unwrap_or("append"),
            &["append", "preserve", "remove"],
        )? {
            "preserve" => XffMode::Preserve,
            "remove" => XffMode::Remove,
            _ => XffMode::Append,
        };
        Ok(LoadBalancerAttributes {
            idle_timeout: idle,
            client_keep_alive: keep,
            request_header_timeout: header,
            desync_mitigation_mode: desync,
            xff,
            xff_client_port: h.xff_client_port.enabled.unwrap_or(false),
            preserve_host_header: h.preserve_host_header.enabled.unwrap_or(false),
            drop_invalid_header_fields: h.drop_invalid_header_fields.enabled.unwrap_or(false),
            tls_headers: h
                .x_amzn_tls_version_and_cipher_suite
                .enabled
                .unwrap_or(false),
            http2,
            stickiness_secret: match self.stickiness_secret {
                Some(s) if s.len() < 16 => {
                    return Err(Violation::new(
                        "load_balancer.stickiness_secret",
                        "must be at least 16 bytes",
                    ))
                }
                other => other,
            },
            authentication_secret: match self.authentication_secret {
                Some(s) if s.len() < 16 => {
                    return Err(Violation::new(
                        "load_balancer.authentication_secret",
                        "must be at least 16 bytes",
                    ))
                }
                other => other,
            },
            authentication_signing_key: self
                .authentication_signing_key_file
                .map(|f| cx.resolve(&f)),
            access_log,
            connection_log,
            health_check_log,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub protocol: Option<String>,
    pub default_action: FileAction,
    #[serde(default)]
    pub rules: Vec<FileRule>,
    /// Ours: connection caps (0 = none).
    pub max_connections: Option<i64>,
    pub max_connections_per_source: Option<i64>,
    pub ssl_policy: Option<String>,
    #[serde(default)]
    pub certificates: Vec<crate::tls::FileCertificate>,
    pub mutual_authentication: Option<crate::tls::FileMutualAuthentication>,
    /// Listener attributes under `routing.` (ALB's header modification).
    pub routing: Option<crate::listener_headers::FileListenerRouting>,
    /// ALB's `authenticate-oidc` action before the default action (HTTPS listeners only).
    pub default_authenticate_oidc: Option<crate::oidc::FileAuthenticateOidc>,
    /// ALB's `authenticate-cognito` action before the default action (HTTPS listeners only).
    pub default_authenticate_cognito: Option<crate::oidc::FileAuthenticateCognito>,
    /// ALB's `jwt-validation` action before the default action (HTTPS listeners only).
    pub default_jwt_validation: Option<crate::jwt::FileJwtValidation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub priority: i64,
    pub conditions: Vec<FileCondition>,
    pub action: FileAction,
    #[serde(default)]
    pub transforms: Vec<FileTransform>,
    /// ALB's `authenticate-oidc` action before this rule's action (HTTPS listeners only).
    pub authenticate_oidc: Option<crate::oidc::FileAuthenticateOidc>,
    /// ALB's `authenticate-cognito` action before this rule's action (HTTPS listeners only).
    pub authenticate_cognito: Option<crate::oidc::FileAuthenticateCognito>,
    /// ALB's `jwt-validation` action before this rule's action (HTTPS listeners only).
    pub jwt_validation: Option<crate::jwt::FileJwtValidation>,
}

/// A rule transform (ALB's `Transforms`, one rewrite each).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTransform {
    #[serde(rename = "type")]
    pub kind: String,
    pub regex: String,
    #[serde(default)]
    pub replace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCondition {
    pub field: String,
    pub header_name: Option<String>,
    #[serde(default)]
    pub values: Vec<FileValue>,
    /// AWS's `RegexValues` (host-header, path-pattern and http-header): instead of `values`.
    pub regex_values: Option<Vec<String>>,
}

/// A condition value: a string, or a `{ key, value }` pair for `query-string`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileValue {
    Str(String),
    KeyValue(FileKeyValue),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeyValue {
    pub key: Option<String>,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAction {
    #[serde(rename = "type")]
    pub kind: String,
    pub target_group: Option<String>,
    pub target_groups: Option<Vec<FileWeightedGroup>>,
    /// AWS's `ForwardConfig.TargetGroupStickinessConfig`.
    pub target_group_stickiness_config: Option<FileGroupStickiness>,
    pub status_code: Option<FileStatus>,
    pub content_type: Option<String>,
    pub message_body: Option<String>,
    pub protocol: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub path: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroupStickiness {
    pub enabled: Option<bool>,
    pub duration_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWeightedGroup {
    pub name: String,
    pub weight: i64,
}

/// A status code: `503`, or AWS's redirect form `"HTTP_301"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileStatus {
    Number(i64),
    Name(String),
}

/// A validated alb config.
#[derive(Debug, Clone, PartialEq)]
pub struct AlbConfig {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub load_balancer: LoadBalancerAttributes,
    pub listeners: Vec<Listener>,
    pub target_groups: BTreeMap<String, TargetGroupConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub default_action: Action,
    /// Rules in priority order (lowest number first).
    pub rules: Vec<Rule>,
    /// Open connections at most (0 = no limit).
    pub max_connections: u32,
    /// Open connections per source IP at most (0 = no limit).
    pub max_connections_per_source: u32,
    /// HTTPS listeners: certificates and policy.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Header modification: fields set on every response, and the alb's own `Server` field.
    pub response_headers: crate::listener_headers::ResponseHeaders,
    /// Header modification: new names for the TLS fields added to requests.
    pub request_renames: crate::listener_headers::RequestRenames,
    /// `authenticate-oidc` before the default action.
    pub default_authenticate: Option<std::sync::Arc<crate::oidc::AuthenticateOidc>>,
    /// `jwt-validation` before the default action.
    pub default_jwt: Option<std::sync::Arc<crate::jwt::JwtValidation>>,
}

/// A listener rule: every condition must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub priority: u32,
    pub conditions: Vec<Condition>,
    pub action: Action,
    pub transforms: Transforms,
    /// `authenticate-oidc` before the action.
    pub authenticate: Option<std::sync::Arc<crate::oidc::AuthenticateOidc>>,
    /// `jwt-validation` before the action.
    pub jwt: Option<std::sync::Arc<crate::jwt::JwtValidation>>,
}

/// ALB's rule transforms: rewrites of a forwarded request's Host and URL, after routing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transforms {
    /// `host-header-rewrite`: searched in the Host as sent.
    pub host: Option<Rewrite>,
    /// `url-rewrite`: searched in the path and query.
    pub url: Option<Rewrite>,
}

/// A regular expression and what each match becomes (`$1`, `${name}` expand captures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub regex: String,
    pub replace: String,
}

/// A rule condition, as AWS's `Field` plus its values (any value may match).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Case-insensitive, with `*` and `?`.
    HostHeader(Vec<String>),
    /// Case-sensitive on the path (no query), with `*` and `?`.
    PathPattern(Vec<String>),
    /// Header `name` (case-insensitive) whose value matches a pattern, case-insensitive.
    HttpHeader {
        name: String,
        values: Vec<String>,
    },
    /// Regular expressions searched in the Host as sent (its port included).
    HostHeaderRegex(Vec<String>),
    /// Regular expressions searched in the path (no query).
    PathPatternRegex(Vec<String>),
    /// Header `name` (case-insensitive) with a value a regular expression is found in.
    HttpHeaderRegex {
        name: String,
        values: Vec<String>,
    },
    /// Exact, case-sensitive method names.
    Method(Vec<String>),
    /// Query parameters: optional key and a value pattern, case-insensitive.
    QueryString(Vec<(Option<String>, String)>),
    SourceIp(Vec<Cidr>),
}

/// Where a redirect goes; each part may use `#{protocol}`, `#{host}`, `#{port}`, `#{path}`,
/// `#{query}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub status: u16,
    pub protocol: String,
    pub host: String,
    pub port: String,
    pub path: String,
    pub query: String,
}

/// What a listener does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// To one target group, or to several by weight.
    Forward {
        target_groups: Vec<(String, u32)>,
        /// Target group stickiness: a client stays with the group it was sent to this long
        /// (the `AWSALBTG` cookie).
        group_stickiness: Option<std::time::Duration>,
    },
    FixedResponse {
        status: u16,
        content_type: String,
        body: String,
    },
    Redirect(Redirect),
}

impl FileAction {
    pub fn validate(
        self,
        path: &str,
        groups: &BTreeMap<String, TargetGroupConfig>,
    ) -> Check<Action> {
        let kind = one_of(
            &format!("{path}.type"),
            &self.kind,
            &["forward", "fixed-response", "redirect"],
        )?;
        match kind {
            "forward" => return self.validate_forward(path, groups),
            "redirect" => return self.validate_redirect(path),
            _ => {}
        }
        let status_path = format!("{path}.status_code");
        let status = match self.status_code {
            None => 200,
            Some(FileStatus::Number(n)) if (300..400).contains(&n) => {
                return Err(Violation::new(
                    status_path,
                    format!("must be 2XX, 4XX or 5XX (a redirect action gives 3XX), got {n}"),
                ))
            }
            Some(FileStatus::Number(n)) => in_range(&status_path, n, 200, 599)?,
            Some(FileStatus::Name(s)) => {
                return Err(Violation::new(
                    status_path,
                    format!("must be a number 200..=599, got \"{s}\""),
                ))
            }
        };
        let content_type = self.content_type.unwrap_or_else(|| "text/plain".to_owned());
        one_of(
            &format!("{path}.content_type"),
            &content_type,
            &[
                "text/plain",
                "text/css",
                "text/html",
                "application/javascript",
                "application/json",
            ],
        )?;
        let body = self.message_body.unwrap_or_default();
        if body.len() > 1024 {
            return Err(Violation::new(
                format!("{path}.message_body"),
                format!("must be at most 1024 bytes, got {}", body.len()),
            ));
        }
        Ok(Action::FixedResponse {
            status: status as u16,
            content_type,
            body,
        })
    }
}

impl FileAction {
    fn validate_forward(
        self,
        path: &str,
        groups: &BTreeMap<String, TargetGroupConfig>,
    ) -> Check<Action> {
        let known = |p: &str, tg: &str| {
            if groups.contains_key(tg) {
                Ok(())
            } else {
                Err(Violation::new(p, format!("no target group named \"{tg}\"")))
            }
        };
        let target_groups = match (self.target_group, self.target_groups) {
            (Some(tg), None) => {
                known(&format!("{path}.target_group"), &tg)?;
                vec![(tg, 1)]
            }
            (None, Some(list)) if !list.is_empty() && list.len() <= 5 => {
                let mut out = Vec::new();
                for (i, g) in list.into_iter().enumerate() {
                    let p = format!("{path}.target_groups[{i}]");
                    known(&format!("{p}.name"), &g.name)?;
                    let w = in_range(&format!("{p}.weight"), g.weight, 0, 999)?;
                    if out.iter().any(|(n, _): &(String, u32)| *n == g.name) {
                        return Err(Violation::new(format!("{p}.name"), "listed twice"));
                    }
                    out.push((g.name, w as u32));
                }
                if out.iter().all(|(_, w)| *w == 0) {
                    return Err(Violation::new(
                        format!("{path}.target_groups"),
                        "at least one weight must be above 0",
                    ));
                }
                out
            }
            (None, Some(_)) => {
                return Err(Violation::new(
                    format!("{path}.target_groups"),
                    "must list 1 to 5 target groups",
                ))
            }
            _ => {
                return Err(Violation::new(
                    format!("{path}.target_group"),
                    "a forward action needs target_group or target_groups (not both)",
                ))
            }
        };
        let group_stickiness = match self.target_group_stickiness_config {
            Some(gs) if gs.enabled.unwrap_or(false) => {
                let secs = in_range(
                    &format!("{path}.target_group_stickiness_config.duration_seconds"),
                    gs.duration_seconds.ok_or_else(|| {
                        Violation::new(
                            format!("{path}.target_group_stickiness_config.duration_seconds"),
                            "required when enabled (1..=604800)",
                        )
                    })?,
                    1,
                    604_800,
                )?;
                Some(std::time::Duration::from_secs(secs as u64))
            }
            _ => None,
        };
        Ok(Action::Forward {
            target_groups,
            group_stickiness,
        })
    }

    fn validate_redirect(self, path: &str) -> Check<Action> {
        let status_path = format!("{path}.status_code");
        let status = match self.status_code {
            Some(FileStatus::Name(s)) if s == "HTTP_301" => 301,
            Some(FileStatus::Name(s)) if s == "HTTP_302" => 302,
            Some(FileStatus::Number(n)) if n == 301 || n == 302 => n as u16,
            None => {
                return Err(Violation::new(
                    status_path,
                    "required: \"HTTP_301\" or \"HTTP_302\"",
                ))
            }
            Some(_) => {
                return Err(Violation::new(
                    status_path,
                    "must be \"HTTP_301\" or \"HTTP_302\"",
                ))
            }
        };
        let protocol = self.protocol.unwrap_or_else(|| "#{protocol}".into());
        one_of(
            &format!("{path}.protocol"),
            &protocol,
            &["HTTP", "HTTPS", "#{protocol}"],
        )?;
        let port = self.port.unwrap_or_else(|| "#{port}".into());
        if port != "#{port}" && !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(Violation::new(
                format!("{path}.port"),
                format!("must be 1..=65535 or \"#{{port}}\", got \"{port}\""),
            ));
        }
        let host = self.host.unwrap_or_else(|| "#{host}".into());
        let rpath = self.path.unwrap_or_else(|| "/#{path}".into());
        if !rpath.starts_with('/') {
            return Err(Violation::new(format!("{path}.path"), "must start with /"));
        }
        let query = self.query.unwrap_or_else(|| "#{query}".into());
        for (k, v) in [("host", &host), ("path", &rpath), ("query", &query)] {
            if v.len() > 128 || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Violation::new(
                    format!("{path}.{k}"),
                    "must be at most 128 characters with no spaces or control bytes",
                ));
            }
        }
        Ok(Action::Redirect(Redirect {
            status,
            protocol,
            host,
            port,
            path: rpath,
            query,
        }))
    }
}

fn pattern(path: &str, v: &str, max: usize) -> Check<String> {
    if v.is_empty() || v.len() > max || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Violation::new(
            path,
            format!("must be 1..={max} characters with no spaces or control bytes, got \"{v}\""),
        ));
    }
    Ok(v.to_owned())
}

/// An http-header condition's `header_name`: a token of at most 40 characters, lower-cased.
fn header_name(path: &str, name: Option<String>) -> Check<String> {
    let np = format!("{path}.header_name");
    let name = name.ok_or_else(|| Violation::new(&np, "required for http-header"))?;
    check_field_name(&np, &name)?;
    Ok(name.to_ascii_lowercase())
}

/// A field name as rules and attributes take it: 1 to 40 RFC 9110 token characters.
pub(crate) fn check_field_name(path: &str, name: &str) -> Check<()> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    {
        return Err(Violation::new(
            path,
            format!("must be a header name of at most 40 characters, got \"{name}\""),
        ));
    }
    Ok(())
}

/// A regular expression of at most `max` characters that `regex_lite` accepts: its syntax is
/// ALB's (no look-around, back-references, atomic groups or Unicode classes).
pub fn check_regex(path: &str, re: &str, max: usize) -> Check<()> {
    if re.is_empty() || re.len() > max {
        return Err(Violation::new(
            path,
            format!("must be 1 to {max} characters, got {}", re.len()),
        ));
    }
    regex_lite::Regex::new(re).map(|_| ()).map_err(|e| {
        let why = e.to_string().replace('\n', " ");
        Violation::new(path, format!("not a regular expression ALB accepts: {why}"))
    })
}

impl FileCondition {
    fn validate(self, path: &str) -> Check<Condition> {
        let field = one_of(
            &format!("{path}.field"),
            &self.field,
            &[
                "host-header",
                "path-pattern",
                "http-header",
                "http-request-method",
                "query-string",
                "source-ip",
            ],
        )?
        .to_owned();
        if field != "http-header" && self.header_name.is_some() {
            return Err(Violation::new(
                format!("{path}.header_name"),
                "only http-header conditions take a header_name",
            ));
        }
        if let Some(res) = self.regex_values {
            let rpath = format!("{path}.regex_values");
            if !self.values.is_empty() {
                return Err(Violation::new(
                    rpath,
                    "a condition takes values or regex_values, not both",
                ));
            }
            if res.is_empty() || res.len() > 5 {
                return Err(Violation::new(
                    rpath,
                    "must list 1 to 5 regular expressions",
                ));
            }
            for (i, r) in res.iter().enumerate() {
                check_regex(&format!("{rpath}[{i}]"), r, 128)?;
            }
            return Ok(match field.as_str() {
                "host-header" => Condition::HostHeaderRegex(res),
                "path-pattern" => Condition::PathPatternRegex(res),
                "http-header" => Condition::HttpHeaderRegex {
                    name: header_name(path, self.header_name)?,
                    values: res,
                },
                _ => return Err(Violation::new(
                    rpath,
                    "only host-header, path-pattern and http-header conditions take regex_values",
                )),
            });
        }
        let vpath = format!("{path}.values");
        if self.values.is_empty() || self.values.len() > 5 {
            return Err(Violation::new(&vpath, "must list 1 to 5 values"));
        }
        let mut strings = Vec::new();
        let mut pairs = Vec::new();
        for (i, v) in self.values.into_iter().enumerate() {
            let p = format!("{vpath}[{i}]");
            match (v, field.as_str()) {
                (FileValue::KeyValue(kv), "query-string") => {
                    let key = match kv.key {
                        Some(k) => Some(pattern(&format!("{p}.key"), &k, 128)?),
                        None => None,
                    };
                    pairs.push((key, pattern(&format!("{p}.value"), &kv.value, 128)?));
                }
                (FileValue::Str(_), "query-string") => {
                    return Err(Violation::new(
                        p,
                        "query-string values are { key, value } tables",
                    ))
                }
                (FileValue::Str(s), _) => strings.push((p, s)),
                (FileValue::KeyValue(_), _) => {
                    return Err(Violation::new(p, "must be a string"));
                }
            }
        }
        let list = |max: usize| -> Check<Vec<String>> {
            strings.iter().map(|(p, s)| pattern(p, s, max)).collect()
        };
        Ok(match field.as_str() {
            "host-header" => Condition::HostHeader(
                list(128)?
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            ),
            "path-pattern" => Condition::PathPattern(list(128)?),
            "http-header" => Condition::HttpHeader {
                name: header_name(path, self.header_name)?,
                values: list(128)?,
            },
            "http-request-method" => {
                let ms = list(40)?;
                for (p, m) in strings.iter().map(|(p, _)| p).zip(&ms) {
                    if !m
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
                    {
                        return Err(Violation::new(
                            p,
                            format!("must be an upper-case method name, got \"{m}\""),
                        ));
                    }
                }
                Condition::Method(ms)
            }
            "query-string" => Condition::QueryString(pairs),
            _ => {
                let mut cidrs = Vec::new();
                for (p, s) in &strings {
                    cidrs.push(Cidr::parse(s).map_err(|e| Violation::new(p, e))?);
                }
                Condition::SourceIp(cidrs)
            }
        })
    }
}

impl FileRule {
    fn validate(
        self,
        path: &str,
        groups: &BTreeMap<String, TargetGroupConfig>,
        https: bool,
        cx: &Context,
    ) -> Check<Rule> {
        let priority = in_range(&format!("{path}.priority"), self.priority, 1, 50_000)? as u32;
        if self.conditions.is_empty() {
            return Err(Violation::new(
                format!("{path}.conditions"),
                "a rule needs at least one condition",
            ));
        }
        let mut conditions = Vec::new();
        for (i, c) in self.conditions.into_iter().enumerate() {
            conditions.push(c.validate(&format!("{path}.conditions[{i}]"))?);
        }
        let action = self.action.validate(&format!("{path}.action"), groups)?;
        let mut transforms = Transforms::default();
        for (i, t) in self.transforms.into_iter().enumerate() {
            let tp = format!("{path}.transforms[{i}]");
            if !matches!(action, Action::Forward { .. }) {
                return Err(Violation::new(
                    tp,
                    "transforms rewrite requests forwarded to targets: this rule does not forward",
                ));
            }
            let kind = one_of(
                &format!("{tp}.type"),
                &t.kind,
                &["host-header-rewrite", "url-rewrite"],
            )?;
            check_regex(&format!("{tp}.regex"), &t.regex, 1024)?;
            if t.replace.len() > 1024 || t.replace.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
                return Err(Violation::new(
                    format!("{tp}.replace"),
                    "at most 1024 visible ASCII characters",
                ));
            }
            let slot = if kind == "url-rewrite" {
                &mut transforms.url
            } else {
                &mut transforms.host
            };
            if slot.is_some() {
                return Err(Violation::new(
                    format!("{tp}.type"),
                    format!("a rule takes one {kind} transform"),
                ));
            }
            *slot = Some(Rewrite {
                regex: t.regex,
                replace: t.replace,
            });
        }
        let jwt = crate::jwt::validate_action(path, "", self.jwt_validation, https, cx)?;
        if jwt.is_some()
            && (self.authenticate_oidc.is_some() || self.authenticate_cognito.is_some())
        {
            return Err(Violation::new(
                format!("{path}.jwt_validation"),
                "a rule takes one of authenticate_oidc, authenticate_cognito and jwt_validation",
            ));
        }
        let authenticate = crate::oidc::one_authenticate(
            path,
            "",
            self.authenticate_oidc,
            self.authenticate_cognito,
            https,
            cx,
        )?;
        Ok(Rule {
            priority,
            conditions,
            action,
            transforms,
            authenticate,
            jwt,
        })
    }
}

/// Refuses two listeners on one address.
pub(crate) fn unique_address(
    seen: &mut Vec<SocketAddr>,
    path: &str,
    raw: &str,
) -> Check<SocketAddr> {
    let addr = socket_addr(path, raw)?;
    if seen.contains(&addr) {
        return Err(Violation::new(
            path,
            format!("another listener uses {addr}"),
        ));
    }
    seen.push(addr);
    Ok(addr)
}

impl ConfigFile for FileAlb {
    type Valid = AlbConfig;

    fn validate(self, cx: &Context) -> Result<AlbConfig, Invalid> {
        let server = self.server.validate("server", cx)?;
        let admin = self.admin.validate("admin")?;
        let load_balancer = self.load_balancer.validate(cx)?;
        let mut target_groups = validate_target_groups(self.target_groups, Plane::Alb)?;
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
            let protocol = one_of(
                &format!("{path}.protocol"),
                l.protocol.as_deref().unwrap_or("HTTP"),
                &["HTTP", "HTTPS"],
            )?;
            let tls = if protocol == "HTTPS" {
                let mut settings =
                    crate::tls::validate(&path, l.ssl_policy.as_deref(), l.certificates, cx)?;
                if let Some(m) = l.mutual_authentication {
                    settings.client_auth = m.validate(&path, cx)?;
                }
                Some(settings)
            } else {
                if l.ssl_policy.is_some() || !l.certificates.is_empty() {
                    return Err(Violation::new(
                        format!("{path}.certificates"),
                        "only an HTTPS listener takes ssl_policy and certificates",
                    )
                    .into());
                }
                if l.mutual_authentication.is_some() {
                    return Err(Violation::new(
                        format!("{path}.mutual_authentication"),
                        "only an HTTPS listener takes mutual_authentication",
                    )
                    .into());
                }
                None
            };
            let default_action = l
                .default_action
                .validate(&format!("{path}.default_action"), &target_groups)?;
            let default_jwt = crate::jwt::validate_action(
                &path,
                "default_",
                l.default_jwt_validation,
                tls.is_some(),
                cx,
            )?;
            if default_jwt.is_some()
                && (l.default_authenticate_oidc.is_some()
                    || l.default_authenticate_cognito.is_some())
            {
                return Err(Violation::new(
                    format!("{path}.default_jwt_validation"),
                    "a default action takes one of default_authenticate_oidc, \
                     default_authenticate_cognito and default_jwt_validation",
                )
                .into());
            }
            let default_authenticate = crate::oidc::one_authenticate(
                &path,
                "default_",
                l.default_authenticate_oidc,
                l.default_authenticate_cognito,
                tls.is_some(),
                cx,
            )?;
            let mut rules: Vec<Rule> = Vec::new();
            for (j, r) in l.rules.into_iter().enumerate() {
                let rp = format!("{path}.rules[{j}]");
                let rule = r.validate(&rp, &target_groups, tls.is_some(), cx)?;
                if rules.iter().any(|o| o.priority == rule.priority) {
                    return Err(Violation::new(
                        format!("{rp}.priority"),
                        format!(
                            "priority {} is used by another rule of this listener",
                            rule.priority
                        ),
                    )
                    .into());
                }
                rules.push(rule);
            }
            rules.sort_by_key(|r| r.priority);
            let cap = |key: &str, v: Option<i64>| -> Check<u32> {
                Ok(in_range(&format!("{path}.{key}"), v.unwrap_or(0), 0, 10_000_000)? as u32)
            };
            let (response_headers, request_renames) = l
                .routing
                .unwrap_or_default()
                .validate(&path, tls.is_some())?;
            listeners.push(Listener {
                address,
                default_authenticate,
                default_jwt,
                tls,
                response_headers,
                request_renames,
                default_action,
                rules,
                max_connections: cap("max_connections", l.max_connections)?,
                max_connections_per_source: cap(
                    "max_connections_per_source",
                    l.max_connections_per_source,
                )?,
            });
        }
        Ok(AlbConfig {
            server,
            admin,
            load_balancer,
            listeners,
            target_groups,
        })
    }
}
