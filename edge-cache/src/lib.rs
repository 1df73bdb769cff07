//! causeway-edge: a CloudFront-like caching edge (an RFC 9111 shared cache). `proxy.rs` calls
//! the request phases in order; the phases that decide (`request_filter`, `cache_key`,
//! `admit`, `respond`, `cache_control`) are pure, and `store`, `collapse` and `origin` do the
//! I/O and sharing.

pub mod admit;
pub mod cache_control;
pub mod cache_key;
pub mod collapse;
pub mod compress;
pub mod h2;
pub mod invalidate;
pub mod logging;
pub mod message;
pub mod origin;
pub mod proxy;
pub mod quic;
pub mod request_filter;
pub mod respond;
pub mod store;
pub mod wire;

use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_config::edge::{CacheBehavior, EdgeConfig, FileEdge};
use causeway_dataplane::{Conn, Plane, Snapshot, Snapshots};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The edge data plane.
#[derive(Debug)]
pub struct Edge;

/// What one config load compiles: the behaviors in match order (the default last), and
/// handles on the process's store, which outlives reloads.
pub struct Compiled {
    pub behaviors: Vec<CacheBehavior>,
    pub store: Arc<dyn store::Store>,
    pub collapser: Arc<collapse::Collapser>,
    pub access_log: Option<causeway_dataplane::accesslog::AccessLog>,
    /// TLS acceptors of the HTTPS listeners (h2 and HTTP/1.1 by ALPN).
    pub tls: std::collections::HashMap<SocketAddr, tokio_rustls::TlsAcceptor>,
    /// HTTP/3 server configs for the same listeners (UDP, same port).
    pub quic: std::collections::HashMap<SocketAddr, quinn::ServerConfig>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("behaviors", &self.behaviors.len())
            .field("tls_listeners", &self.tls.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The behaviors in match order: the configured ones, the WordPress preset's static paths
/// (unless configured), then the default.
pub fn behaviors(cfg: &EdgeConfig) -> Vec<CacheBehavior> {
    let mut out = cfg.cache_behaviors.clone();
    if cfg.wordpress {
        for pattern in request_filter::WP_STATIC {
            if out.iter().any(|b| b.path_pattern == *pattern) {
                continue;
            }
            let mut b = cfg.default_cache_behavior.clone();
            b.path_pattern = (*pattern).to_string();
            b.allowed_methods = vec!["GET".into(), "HEAD".into()];
            b.default_ttl = Duration::from_secs(30 * 86_400).clamp(b.min_ttl, b.max_ttl);
            b.cache_key.cookies = causeway_config::edge::Selection::None;
            b.origin_request.cookies = causeway_config::edge::Selection::None;
            out.push(b);
        }
    }
    out.push(cfg.default_cache_behavior.clone());
    out
}

impl Plane for Edge {
    const NAME: &'static str = "causeway-edge";
    const ABOUT: &'static str = "Causeway's caching edge (RFC 9111 shared cache)";
    type File = FileEdge;
    type Config = EdgeConfig;
    type Compiled = Compiled;
    type Parked = causeway_dataplane::park::Unparkable;

    fn check(cfg: &EdgeConfig) -> Result<(), String> {
        tls_configs(cfg).map(drop)
    }

    fn compile(cfg: &EdgeConfig, previous: Option<&Compiled>) -> Result<Compiled, String> {
        let access_log = match &cfg.access_log {
            Some(path) => Some(
                causeway_dataplane::accesslog::AccessLog::open(path)
                    .map_err(|e| format!("access log {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let (tls, quic) = tls_configs(cfg)?;
        Ok(Compiled {
            tls,
            quic,
            behaviors: behaviors(cfg),
            // The cache outlives reloads; its capacity is the first config's (a new capacity
            // takes effect on restart).
            store: match previous {
                Some(p) => p.store.clone(),
                None => Arc::new(store::Memory::new(cfg.cache.capacity_bytes)),
            },
            collapser: previous.map(|p| p.collapser.clone()).unwrap_or_default(),
            access_log,
        })
    }

    fn server(cfg: &EdgeConfig) -> &ServerConfig {
        &cfg.server
    }

    fn admin(cfg: &EdgeConfig) -> SocketAddr {
        cfg.admin.address
    }

    fn listeners(cfg: &EdgeConfig) -> Vec<SocketAddr> {
        cfg.listeners.clone()
    }

    fn target_groups(_cfg: &EdgeConfig) -> Vec<TargetGroupConfig> {
        Vec::new()
    }

    fn serve(conn: Conn, snaps: Snapshots<Self>) -> impl std::future::Future<Output = ()> + Send {
        proxy::handle(conn, snaps)
    }

    fn started(snaps: Snapshots<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        quic::start(snaps, shutdown);
    }

    fn admin_extra(
        method: &str,
        path: &str,
        body: &[u8],
        snap: &Arc<Snapshot<Self>>,
    ) -> Option<(u16, serde_json::Value)> {
        invalidate::admin(method, path, body, snap)
    }
}

/// The HTTPS listeners' TLS acceptors and their HTTP/3 server configs, certificates and keys
/// loaded.
#[allow(clippy::type_complexity)]
fn tls_configs(
    cfg: &EdgeConfig,
) -> Result<
    (
        std::collections::HashMap<SocketAddr, tokio_rustls::TlsAcceptor>,
        std::collections::HashMap<SocketAddr, quinn::ServerConfig>,
    ),
    String,
> {
    let mut tls = std::collections::HashMap::new();
    let mut quic = std::collections::HashMap::new();
    for (addr, settings) in &cfg.tls {
        let sc = causeway_dataplane::tls::server_config(settings, &[b"h2", b"http/1.1"])
            .map_err(|e| format!("listener {addr}: {e}"))?;
        tls.insert(*addr, tokio_rustls::TlsAcceptor::from(sc));
        let qc = quic::server_config(settings).map_err(|e| format!("listener {addr}: {e}"))?;
        quic.insert(*addr, qc);
    }
    Ok((tls, quic))
}
