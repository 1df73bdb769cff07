//! The edge's config file: listeners, origins and origin groups, cache behaviors with their
//! cache and origin-request policies, the store, purge access, and the WordPress preset.

use crate::alb::unique_address;
use crate::cidr::Cidr;
use crate::common::{AdminConfig, FileAdmin, FileServer, ServerConfig};
use crate::error::{in_range, one_of, socket_addr};
use crate::{ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEdge {
    #[serde(default)]
    pub server: FileServer,
    pub admin: FileAdmin,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    /// `"wordpress"` adds the WordPress bypass rules, long-lived static behaviors and
    /// tracking-parameter stripping.
    pub preset: Option<String>,
    #[serde(default)]
    pub access_logs: crate::alb::FileAccessLogs,
    #[serde(default)]
    pub cache: FileCache,
    #[serde(default)]
    pub origins: BTreeMap<String, FileOrigin>,
    #[serde(default)]
    pub origin_groups: BTreeMap<String, FileOriginGroup>,
    #[serde(default)]
    pub cache_behaviors: Vec<FileCacheBehavior>,
    pub default_cache_behavior: FileCacheBehavior,
    #[serde(default)]
    pub custom_error_responses: Vec<FileCustomError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCustomError {
    pub error_code: i64,
    pub response_page_path: Option<String>,
    pub response_code: Option<i64>,
    pub error_caching_min_ttl_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub protocol: Option<String>,
    pub ssl_policy: Option<String>,
    #[serde(default)]
    pub certificates: Vec<crate::tls::FileCertificate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    pub capacity_megabytes: Option<i64>,
    pub max_object_bytes: Option<i64>,
    pub collapse_timeout_seconds: Option<i64>,
    pub error_caching_min_ttl_seconds: Option<i64>,
    pub purge_allowed_cidrs: Option<Vec<String>>,
    pub tag_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOrigin {
    pub address: String,
    pub connect_timeout_seconds: Option<i64>,
    pub response_timeout_seconds: Option<i64>,
    pub origin_protocol_policy: Option<String>,
    pub domain_name: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOriginGroup {
    pub members: Vec<String>,
    #[serde(default)]
    pub failover_status_codes: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCacheBehavior {
    pub path_pattern: Option<String>,
    pub target_origin_id: String,
    pub allowed_methods: Option<Vec<String>>,
    pub viewer_protocol_policy: Option<String>,
    pub min_ttl_seconds: Option<i64>,
    pub default_ttl_seconds: Option<i64>,
    pub max_ttl_seconds: Option<i64>,
    pub compress: Option<bool>,
    #[serde(default)]
    pub cache_key: FileCacheKey,
    #[serde(default)]
    pub origin_request: FileOriginRequest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCacheKey {
    pub query_strings: Option<String>,
    #[serde(default)]
    pub query_string_names: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    pub cookies: Option<String>,
    #[serde(default)]
    pub cookie_names: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOriginRequest {
    pub headers: Option<String>,
    #[serde(default)]
    pub header_names: Vec<String>,
    pub cookies: Option<String>,
    #[serde(default)]
    pub cookie_names: Vec<String>,
    pub query_strings: Option<String>,
    #[serde(default)]
    pub query_string_names: Vec<String>,
}

/// A validated edge config.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<SocketAddr>,
    /// The HTTPS listeners' TLS settings, by address.
    pub tls: BTreeMap<SocketAddr, crate::tls::TlsSettings>,
    pub wordpress: bool,
    /// Where access logs go, when enabled.
    pub access_log: Option<std::path::PathBuf>,
    pub cache: CacheSettings,
    pub origins: BTreeMap<String, Origin>,
    pub origin_groups: BTreeMap<String, OriginGroup>,
    /// Ordered: first match wins.
    pub cache_behaviors: Vec<CacheBehavior>,
    pub default_cache_behavior: CacheBehavior,
    pub custom_error_responses: Vec<CustomError>,
}

/// CloudFront's custom error response: for an error status, a page (fetched through the cache
/// like any object) and the status to send it with, and how long the error itself is cached.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomError {
    pub error_code: u16,
    pub response_page_path: Option<String>,
    pub response_code: u16,
    pub error_caching_min_ttl: Option<Duration>,
}

impl EdgeConfig {
    /// The custom error response for a status, if one is configured.
    pub fn custom_error(&self, status: u16) -> Option<&CustomError> {
        self.custom_error_responses
            .iter()
            .find(|c| c.error_code == status)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub capacity_bytes: u64,
    pub max_object_bytes: u64,
    pub collapse_timeout: Duration,
    pub error_caching_min_ttl: Duration,
    pub purge_allowed: Vec<Cidr>,
    /// Lower-case name of the response header carrying cache tags.
    pub tag_header: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// `https-only`: TLS to the origin, verified against this name.
    pub tls: Option<OriginTls>,
}

/// TLS to an origin: the name sent as SNI and checked in its certificate, and the CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginTls {
    pub server_name: String,
    pub ca_file: PathBuf,
}

/// Debian's bundle of the system's trusted CAs.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, PartialEq)]
pub struct OriginGroup {
    /// Primary first, then the failover origin.
    pub members: Vec<String>,
    pub failover_status_codes: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerProtocolPolicy {
    AllowAll,
    RedirectToHttps,
    HttpsOnly,
}

/// Which of a list of names is selected (query strings, cookies, headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    None,
    All,
    /// Only these (query names and cookie names as written; header names lower-case).
    AllowList(Vec<String>),
    /// All but these.
    AllExcept(Vec<String>),
}

impl Selection {
    pub fn selects(&self, name: &[u8]) -> bool {
        match self {
            Selection::None => false,
            Selection::All => true,
            Selection::AllowList(v) => v.iter().any(|n| n.as_bytes() == name),
            Selection::AllExcept(v) => !v.iter().any(|n| n.as_bytes() == name),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheKeyPolicy {
    pub query_strings: Selection,
    /// Lower-case header names whose values are part of the key.
    pub headers: Vec<String>,
    pub cookies: Selection,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OriginRequestPolicy {
    pub headers: Selection,
    pub cookies: Selection,
    pub query_strings: Selection,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheBehavior {
    /// `*` for the default behavior.
    pub path_pattern: String,
    pub target_origin_id: String,
    pub allowed_methods: Vec<String>,
    pub viewer_protocol_policy: ViewerProtocolPolicy,
    pub min_ttl: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// Compress eligible responses with brotli or gzip (CloudFront's rules).
    pub compress: bool,
    pub cache_key: CacheKeyPolicy,
    pub origin_request: OriginRequestPolicy,
}

const YEAR: i64 = 31_536_000;

impl ConfigFile for FileEdge {
    type Valid = EdgeConfig;

    fn validate(self, cx: &Context) -> Result<EdgeConfig, Invalid> {
        let server = self.server.validate("server", cx)?;
        let admin = self.admin.validate("admin")?;
        if self.listeners.is_empty() {
            return Err(Violation::new("listeners", "at least one listener is required").into());
        }
        let mut seen = vec![admin.address];
        let mut listeners = Vec::new();
        let mut tls = BTreeMap::new();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            let address = unique_address(&mut seen, &format!("{path}.address"), &l.address)?;
            listeners.push(address);
            let protocol = one_of(
                &format!("{path}.protocol"),
                l.protocol.as_deref().unwrap_or("HTTP"),
                &["HTTP", "HTTPS"],
            )?;
            if protocol == "HTTPS" {
                let settings =
                    crate::tls::validate(&path, l.ssl_policy.as_deref(), l.certificates, cx)?;
                tls.insert(address, settings);
            } else if l.ssl_policy.is_some() || !l.certificates.is_empty() {
                return Err(Violation::new(
                    format!("{path}.certificates"),
                    "only an HTTPS listener takes ssl_policy and certificates",
                )
                .into());
            }
        }
        let wordpress = match self.preset.as_deref() {
            None => false,
            Some(p) => one_of("preset", p, &["wordpress"]).map(|_| true)?,
        };
        let access_log = match (
            self.access_logs.enabled.unwrap_or(false),
            self.access_logs.path,
        ) {
            (false, _) => None,
            (true, Some(p)) if !p.is_empty() => Some(cx.resolve(&p)),
            (true, _) => {
                return Err(Violation::new(
                    "access_logs.path",
                    "required when access_logs.enabled = true",
                )
                .into())
            }
        };
        let cache = validate_cache(self.cache)?;
        let mut origins = BTreeMap::new();
        for (id, o) in self.origins {
            let p = format!("origins.{id}");
            let address = socket_addr(&format!("{p}.address"), &o.address)?;
            let connect = in_range(
                &format!("{p}.connect_timeout_seconds"),
                o.connect_timeout_seconds.unwrap_or(10),
                1,
                10,
            )?;
            let response = in_range(
                &format!("{p}.response_timeout_seconds"),
                o.response_timeout_seconds.unwrap_or(30),
                1,
                120,
            )?;
            let tls = match one_of(
                &format!("{p}.origin_protocol_policy"),
                o.origin_protocol_policy.as_deref().unwrap_or("http-only"),
                &["http-only", "https-only"],
            )? {
                "https-only" => {
                    let server_name = o.domain_name.filter(|n| !n.is_empty()).ok_or_else(|| {
                        Violation::new(
                            format!("{p}.domain_name"),
                            "https-only needs the name the origin's certificate holds",
                        )
                    })?;
                    let ca_file = o
                        .ca_file
                        .map(|f| cx.resolve(&f))
                        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE));
                    if !ca_file.is_file() {
                        return Err(Violation::new(
                            format!("{p}.ca_file"),
                            format!("no such file: {}", ca_file.display()),
                        )
                        .into());
                    }
                    Some(OriginTls {
                        server_name,
                        ca_file,
                    })
                }
                _ => {
                    if o.domain_name.is_some() || o.ca_file.is_some() {
                        return Err(Violation::new(
                            format!("{p}.domain_name"),
                            "domain_name and ca_file are for origin_protocol_policy = \"https-only\"",
                        )
                        .into());
                    }
                    None
                }
            };
            origins.insert(
                id,
                Origin {
                    address,
                    connect_timeout: Duration::from_secs(connect as u64),
                    response_timeout: Duration::from_secs(response as u64),
                    tls,
                },
            );
        }
        let mut origin_groups = BTreeMap::new();
        for (id, g) in self.origin_groups {
            let p = format!("origin_groups.{id}");
            if origins.contains_key(&id) {
                return Err(Violation::new(p, "an origin has the same id").into());
            }
            if g.members.len() != 2 {
                return Err(Violation::new(
                    format!("{p}.members"),
                    "an origin group has exactly two origins: primary, then failover",
                )
                .into());
            }
            for (i, m) in g.members.iter().enumerate() {
                if !origins.contains_key(m) {
                    return Err(Violation::new(
                        format!("{p}.members[{i}]"),
                        format!("no origin named \"{m}\""),
                    )
                    .into());
                }
            }
            if g.failover_status_codes.is_empty() {
                return Err(Violation::new(
                    format!("{p}.failover_status_codes"),
                    "list at least one status code",
                )
                .into());
            }
            let mut codes = Vec::new();
            for (i, c) in g.failover_status_codes.iter().enumerate() {
                let path = format!("{p}.failover_status_codes[{i}]");
                let c = in_range(&path, *c, 400, 504)?;
                one_of(
                    &path,
                    &c.to_string(),
                    &["400", "403", "404", "416", "500", "502", "503", "504"],
                )?;
                codes.push(c as u16);
            }
            origin_groups.insert(
                id,
                OriginGroup {
                    members: g.members,
                    failover_status_codes: codes,
                },
            );
        }
        let known = |id: &str| origins.contains_key(id) || origin_groups.contains_key(id);
        let default_cache_behavior = validate_behavior(
            self.default_cache_behavior,
            "default_cache_behavior",
            &known,
        )?;
        let mut cache_behaviors = Vec::new();
        for (i, b) in self.cache_behaviors.into_iter().enumerate() {
            let p = format!("cache_behaviors[{i}]");
            if b.path_pattern.is_none() {
                return Err(Violation::new(
                    format!("{p}.path_pattern"),
                    "a cache behavior needs a path pattern",
                )
                .into());
            }
            cache_behaviors.push(validate_behavior(b, &p, &known)?);
        }
        let mut custom_error_responses: Vec<CustomError> = Vec::new();
        const ERRORS: &[&str] = &[
            "400", "403", "404", "405", "414", "416", "500", "501", "502", "503", "504",
        ];
        for (i, c) in self.custom_error_responses.into_iter().enumerate() {
            let p = format!("custom_error_responses[{i}]");
            let code = c.error_code.to_string();
            one_of(&format!("{p}.error_code"), &code, ERRORS)?;
            let error_code = c.error_code as u16;
            if custom_error_responses
                .iter()
                .any(|o| o.error_code == error_code)
            {
                return Err(Violation::new(
                    format!("{p}.error_code"),
                    format!("{error_code} already has a custom error response"),
                )
                .into());
            }
            if let Some(path) = &c.response_page_path {
                if !path.starts_with('/') || path.contains('?') {
                    return Err(Violation::new(
                        format!("{p}.response_page_path"),
                        "must be a path starting with / (no query)",
                    )
                    .into());
                }
            }
            let response_code = match c.response_code {
                None => error_code,
                Some(_) if c.response_page_path.is_none() => {
                    return Err(Violation::new(
                        format!("{p}.response_code"),
                        "needs response_page_path",
                    )
                    .into())
                }
                Some(r) => {
                    let s = r.to_string();
                    if s != "200" {
                        one_of(&format!("{p}.response_code"), &s, ERRORS)?;
                    }
                    r as u16
                }
            };
            let ttl = match c.error_caching_min_ttl_seconds {
                None => None,
                Some(t) => Some(Duration::from_secs(in_range(
                    &format!("{p}.error_caching_min_ttl_seconds"),
                    t,
                    0,
                    YEAR,
                )? as u64)),
            };
            custom_error_responses.push(CustomError {
                error_code,
                response_page_path: c.response_page_path,
                response_code,
                error_caching_min_ttl: ttl,
            });
        }
        Ok(EdgeConfig {
            server,
            admin,
            listeners,
            tls,
            wordpress,
            access_log,
            cache,
            origins,
            origin_groups,
            cache_behaviors,
            default_cache_behavior,
            custom_error_responses,
        })
    }
}

fn validate_cache(c: FileCache) -> Result<CacheSettings, Violation> {
    let capacity = in_range(
        "cache.capacity_megabytes",
        c.capacity_megabytes.unwrap_or(256),
        1,
        1 << 20,
    )?;
    let max_object = in_range(
        "cache.max_object_bytes",
        c.max_object_bytes.unwrap_or(10 * 1024 * 1024),
        1,
        1 << 32,
    )?;
    let collapse = in_range(
        "cache.collapse_timeout_seconds",
        c.collapse_timeout_seconds.unwrap_or(10),
        1,
        60,
    )?;
    let error_ttl = in_range(
        "cache.error_caching_min_ttl_seconds",
        c.error_caching_min_ttl_seconds.unwrap_or(10),
        0,
        YEAR,
    )?;
    let cidrs = c
        .purge_allowed_cidrs
        .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
    let mut purge_allowed = Vec::new();
    for (i, s) in cidrs.iter().enumerate() {
        purge_allowed.push(
            Cidr::parse(s)
                .map_err(|e| Violation::new(format!("cache.purge_allowed_cidrs[{i}]"), e))?,
        );
    }
    let tag_header = c.tag_header.unwrap_or_else(|| "cache-tag".into());
    if tag_header.is_empty() || !tag_header.bytes().all(is_token_byte) {
        return Err(Violation::new("cache.tag_header", "must be a header name"));
    }
    Ok(CacheSettings {
        capacity_bytes: capacity as u64 * 1024 * 1024,
        max_object_bytes: max_object as u64,
        collapse_timeout: Duration::from_secs(collapse as u64),
        error_caching_min_ttl: Duration::from_secs(error_ttl as u64),
        purge_allowed,
        tag_header: tag_header.to_ascii_lowercase(),
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn validate_behavior(
    b: FileCacheBehavior,
    p: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<CacheBehavior, Violation> {
    let path_pattern = match b.path_pattern {
        None => "*".to_string(),
        Some(pat) if p == "default_cache_behavior" => {
            let _ = pat;
            return Err(Violation::new(
                format!("{p}.path_pattern"),
                "the default behavior matches every path; it takes no pattern",
            ));
        }
        Some(pat) => {
            if pat.is_empty() || pat.len() > 255 {
                return Err(Violation::new(
                    format!("{p}.path_pattern"),
                    "must be 1 to 255 characters",
                ));
            }
            if pat.starts_with('/') || pat.starts_with('*') {
                pat
            } else {
                format!("/{pat}")
            }
        }
    };
    if !known(&b.target_origin_id) {
        return Err(Violation::new(
            format!("{p}.target_origin_id"),
            format!("no origin or origin group named \"{}\"", b.target_origin_id),
        ));
    }
    let allowed_methods: Vec<String> = b
        .allowed_methods
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()])
        .into_iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    {
        let mut sorted = allowed_methods.clone();
        sorted.sort();
        sorted.dedup();
        let sets: [&[&str]; 3] = [
            &["GET", "HEAD"],
            &["GET", "HEAD", "OPTIONS"],
            &["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"],
        ];
        if !sets
            .iter()
            .any(|s| s.iter().copied().eq(sorted.iter().map(String::as_str)))
        {
            return Err(Violation::new(
                format!("{p}.allowed_methods"),
                "must be [GET, HEAD], [GET, HEAD, OPTIONS] or [GET, HEAD, OPTIONS, PUT, POST, PATCH, DELETE]",
            ));
        }
    }
    let viewer_protocol_policy = match one_of(
        &format!("{p}.viewer_protocol_policy"),
        b.viewer_protocol_policy.as_deref().unwrap_or("allow-all"),
        &["allow-all", "redirect-to-https", "https-only"],
    )? {
        "allow-all" => ViewerProtocolPolicy::AllowAll,
        "redirect-to-https" => ViewerProtocolPolicy::RedirectToHttps,
        _ => ViewerProtocolPolicy::HttpsOnly,
    };
    // CloudFront's defaults: min 0, default 1 day, max 1 year. An error names the key the user
    // wrote when the unwritten default is what conflicts.
    let min = in_range(
        &format!("{p}.min_ttl_seconds"),
        b.min_ttl_seconds.unwrap_or(0),
        0,
        YEAR,
    )?;
    let max_key = if b.max_ttl_seconds.is_some() {
        "max_ttl_seconds"
    } else {
        "min_ttl_seconds"
    };
    let max = in_range(
        &format!("{p}.{max_key}"),
        b.max_ttl_seconds.unwrap_or(YEAR.max(min)),
        min,
        YEAR,
    )?;
    let default_key = if b.default_ttl_seconds.is_some() {
        "default_ttl_seconds"
    } else {
        "min_ttl_seconds"
    };
    let default = in_range(
        &format!("{p}.{default_key}"),
        b.default_ttl_seconds.unwrap_or(86_400.clamp(min, max)),
        min,
        max,
    )?;
    let k = b.cache_key;
    let query_strings = selection(
        &format!("{p}.cache_key.query_strings"),
        k.query_strings.as_deref().unwrap_or("all"),
        k.query_string_names,
        false,
    )?;
    let cookies = selection(
        &format!("{p}.cache_key.cookies"),
        k.cookies.as_deref().unwrap_or("none"),
        k.cookie_names,
        false,
    )?;
    let mut headers = Vec::new();
    for (i, h) in k.headers.iter().enumerate() {
        if h.is_empty() || !h.bytes().all(is_token_byte) {
            return Err(Violation::new(
                format!("{p}.cache_key.headers[{i}]"),
                "must be a header name",
            ));
        }
        headers.push(h.to_ascii_lowercase());
    }
    let o = b.origin_request;
    let origin_request = OriginRequestPolicy {
        headers: selection(
            &format!("{p}.origin_request.headers"),
            match o.headers.as_deref().unwrap_or("all-viewer") {
                "all-viewer" => "all",
                other => other,
            },
            o.header_names
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            true,
        )?,
        cookies: selection(
            &format!("{p}.origin_request.cookies"),
            o.cookies.as_deref().unwrap_or("all"),
            o.cookie_names,
            false,
        )?,
        query_strings: selection(
            &format!("{p}.origin_request.query_strings"),
            o.query_strings.as_deref().unwrap_or("all"),
            o.query_string_names,
            false,
        )?,
    };
    Ok(CacheBehavior {
        path_pattern,
        target_origin_id: b.target_origin_id,
        allowed_methods,
        viewer_protocol_policy,
        min_ttl: Duration::from_secs(min as u64),
        default_ttl: Duration::from_secs(default as u64),
        max_ttl: Duration::from_secs(max as u64),
        compress: b.compress.unwrap_or(false),
        cache_key: CacheKeyPolicy {
            query_strings,
            headers,
            cookies,
        },
        origin_request,
    })
}

/// `none`, `all`, `allow-list` or `all-except`, with the names the two lists need.
fn selection(
    path: &str,
    mode: &str,
    names: Vec<String>,
    headers: bool,
) -> Result<Selection, Violation> {
    let names_key = format!(
        "{}_names",
        path.rsplit('.')
            .next()
            .unwrap_or(path)
            .trim_end_matches('s')
    );
    let allowed: &[&str] = if headers {
        &["none", "all", "all-viewer", "allow-list"]
    } else {
        &["none", "all", "allow-list", "all-except"]
    };
    let mode = if headers && mode == "all" {
        "all"
    } else {
        one_of(path, mode, allowed)?
    };
    match mode {
        "allow-list" | "all-except" if names.is_empty() => Err(Violation::new(
            path,
            format!("\"{mode}\" needs a list in {names_key}"),
        )),
        "none" | "all" if !names.is_empty() => Err(Violation::new(
            path,
            format!("\"{mode}\" takes no {names_key}"),
        )),
        "allow-list" => Ok(Selection::AllowList(names)),
        "all-except" => Ok(Selection::AllExcept(names)),
        "all" => Ok(Selection::All),
        _ => Ok(Selection::None),
    }
}
