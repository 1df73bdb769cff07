//! The edge's config file: listeners, origins, and the default cache behavior.

use crate::alb::unique_address;
use crate::common::{AdminConfig, FileAdmin, FileServer, ServerConfig};
use crate::error::{in_range, one_of, socket_addr};
use crate::{ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEdge {
    #[serde(default)]
    pub server: FileServer,
    pub admin: FileAdmin,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub origins: BTreeMap<String, FileOrigin>,
    pub default_cache_behavior: FileCacheBehavior,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOrigin {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCacheBehavior {
    pub target_origin_id: String,
    pub min_ttl_seconds: Option<i64>,
    pub default_ttl_seconds: Option<i64>,
    pub max_ttl_seconds: Option<i64>,
}

/// A validated edge config.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<SocketAddr>,
    pub origins: BTreeMap<String, SocketAddr>,
    pub default_cache_behavior: CacheBehavior,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheBehavior {
    pub target_origin_id: String,
    pub min_ttl: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl ConfigFile for FileEdge {
    type Valid = EdgeConfig;

    fn validate(self, _cx: &Context) -> Result<EdgeConfig, Invalid> {
        let server = self.server.validate("server")?;
        let admin = self.admin.validate("admin")?;
        if self.listeners.is_empty() {
            return Err(Violation::new("listeners", "at least one listener is required").into());
        }
        let mut seen = vec![admin.address];
        let mut listeners = Vec::new();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            listeners.push(unique_address(
                &mut seen,
                &format!("{path}.address"),
                &l.address,
            )?);
            one_of(
                &format!("{path}.protocol"),
                l.protocol.as_deref().unwrap_or("HTTP"),
                &["HTTP"],
            )?;
        }
        let mut origins = BTreeMap::new();
        for (id, o) in self.origins {
            let addr = socket_addr(&format!("origins.{id}.address"), &o.address)?;
            origins.insert(id, addr);
        }
        let b = self.default_cache_behavior;
        let p = "default_cache_behavior";
        if !origins.contains_key(&b.target_origin_id) {
            return Err(Violation::new(
                format!("{p}.target_origin_id"),
                format!("no origin named \"{}\"", b.target_origin_id),
            )
            .into());
        }
        // CloudFront's defaults: min 0, default 1 day, max 1 year.
        let year = 31_536_000;
        let min = in_range(
            &format!("{p}.min_ttl_seconds"),
            b.min_ttl_seconds.unwrap_or(0),
            0,
            year,
        )?;
        let max = in_range(
            &format!("{p}.max_ttl_seconds"),
            b.max_ttl_seconds.unwrap_or(year),
            min,
            year,
        )?;
        let default = in_range(
            &format!("{p}.default_ttl_seconds"),
            b.default_ttl_seconds.unwrap_or(86_400.min(max)),
            min,
            max,
        )?;
        Ok(EdgeConfig {
            server,
            admin,
            listeners,
            origins,
            default_cache_behavior: CacheBehavior {
                target_origin_id: b.target_origin_id,
                min_ttl: Duration::from_secs(min as u64),
                default_ttl: Duration::from_secs(default as u64),
                max_ttl: Duration::from_secs(max as u64),
            },
        })
    }
}
