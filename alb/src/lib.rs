//! causeway-alb: L7 routing over HTTP/1.1 and HTTP/2. `proxy.rs` calls the phases in order
//! (`h2.rs` for HTTP/2 streams); each phase has its own file.

pub mod action;
pub mod auth;
pub use causeway_dataplane::client;
pub mod error;
pub mod h2;
pub mod h2_to_h1;
pub mod hyper_upstream;
pub mod idp;
pub mod jwt;
pub mod logging;
pub mod proxy;
pub mod request_filter;
pub mod response_filter;
pub mod route;
pub mod sticky;
pub mod trace;
pub mod transform;
pub mod upstream;
pub mod ws_h2;

use causeway_config::alb::{AlbConfig, FileAlb};
use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_dataplane::{Conn, Plane, Snapshots};
use std::net::SocketAddr;

/// The alb data plane.
#[derive(Debug)]
pub struct Alb;

/// What the alb derives from its config at load: one router per listener, the sticky cookie
/// key, and the HTTPS listeners' TLS acceptors.
pub struct Routers {
    routers: Vec<(SocketAddr, route::Router)>,
    pub sticky_key: sticky::StickyKey,
    /// Reopened on every load, so SIGHUP after a log rotation writes to the new file.
    pub access_log: Option<causeway_dataplane::accesslog::AccessLog>,
    /// ALB's connection log, when enabled.
    pub connection_log: Option<causeway_dataplane::accesslog::AccessLog>,
    /// ALB's health check log, when enabled.
    pub health_log: Option<std::sync::Arc<causeway_dataplane::healthlog::HealthLog>>,
    /// Metric handles by target group, and for the alb's own responses.
    pub group_metrics: std::collections::HashMap<String, logging::GroupMetrics>,
    pub elb_metrics: logging::ElbMetrics,
    /// TLS acceptors of the HTTPS listeners, with their mutual TLS modes.
    tls: Vec<(
        SocketAddr,
        tokio_rustls::TlsAcceptor,
        causeway_dataplane::tls::Mtls,
    )>,
    /// Upstream connections for requests that came over HTTP/2, kept across reloads.
    pub pools: std::sync::Arc<hyper_upstream::Pools>,
    /// The keys of the authenticate actions, when a listener has one.
    pub auth_keys: Option<std::sync::Arc<auth::Keys>>,
}

impl Routers {
    /// The TLS acceptor of the HTTPS listener bound at `local` and its mutual TLS mode, if it
    /// is one.
    pub fn tls(
        &self,
        local: SocketAddr,
    ) -> Option<(tokio_rustls::TlsAcceptor, causeway_dataplane::tls::Mtls)> {
        if self.tls.is_empty() {
            return None;
        }
        self.tls
            .iter()
            .find(|(a, _, _)| *a == local)
            .map(|(_, t, m)| (t.clone(), *m))
    }

    /// The router of the listener bound at `local`.
    pub fn router(&self, local: SocketAddr) -> Option<&route::Router> {
        self.routers
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| self.routers.iter().find(|(a, _)| a.port() == local.port()))
            .map(|(_, r)| r)
    }
}

impl std::fmt::Debug for Routers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routers")
            .field("listeners", &self.routers.len())
            .field("tls_listeners", &self.tls.len())
            .finish_non_exhaustive()
    }
}

impl Plane for Alb {
    const NAME: &'static str = "causeway-alb";
    const ABOUT: &'static str = "Causeway's L7 load balancer (HTTP routing, target groups)";
    type File = FileAlb;
    type Config = AlbConfig;
    type Compiled = Routers;
    type Parked = proxy::Parked;

    fn check(cfg: &AlbConfig) -> Result<(), String> {
        tls_acceptors(cfg)?;
        // The authenticate actions' CA files and the signing key file, read as a load would.
        let mut authenticates = false;
        for l in &cfg.listeners {
            authenticates |= route::Router::compile(l)?.authenticates();
        }
        if authenticates {
            let lb = &cfg.load_balancer;
            auth::Keys::new(
                lb.authentication_secret.as_deref(),
                lb.authentication_signing_key.as_deref(),
                elb_name(cfg),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn compile(cfg: &AlbConfig, previous: Option<&Routers>) -> Result<Routers, String> {
        let lb = &cfg.load_balancer;
        let access_log = open_log("access", lb.access_log.as_deref())?;
        let connection_log = open_log("connection", lb.connection_log.as_deref())?;
        let health_log = open_log("health check", lb.health_check_log.as_deref())?.map(|log| {
            // The load balancer, as its other logs name it: by its first listener.
            let first = cfg.listeners.first().map(|l| l.address);
            std::sync::Arc::new(causeway_dataplane::healthlog::HealthLog {
                log,
                elb: elb_name(cfg),
                ip: first.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip()),
            })
        });
        let tls = tls_acceptors(cfg)?;
        let pools = previous.map(|p| p.pools.clone()).unwrap_or_default();
        pools.retain(|a| {
            cfg.target_groups
                .values()
                .any(|g| g.targets.iter().any(|t| t.address == *a))
        });
        let routers = cfg
            .listeners
            .iter()
            .map(|l| Ok((l.address, route::Router::compile(l)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let auth_keys = if routers.iter().any(|(_, r)| r.authenticates()) {
            let keys = auth::Keys::new(
                lb.authentication_secret.as_deref(),
                lb.authentication_signing_key.as_deref(),
                elb_name(cfg),
            )
            .map_err(|e| e.to_string())?;
            Some(std::sync::Arc::new(keys))
        } else {
            None
        };
        Ok(Routers {
            pools,
            tls,
            routers,
            auth_keys,
            sticky_key: match &cfg.load_balancer.stickiness_secret {
                Some(s) => sticky::StickyKey::from_secret(s),
                None => sticky::StickyKey::process(),
            },
            access_log,
            connection_log,
            health_log,
            group_metrics: cfg
                .target_groups
                .keys()
                .map(|g| (g.clone(), logging::GroupMetrics::new(g)))
                .collect(),
            elb_metrics: logging::ElbMetrics::default(),
        })
    }

    fn server(cfg: &AlbConfig) -> &ServerConfig {
        &cfg.server
    }

    fn admin(cfg: &AlbConfig) -> SocketAddr {
        cfg.admin.address
    }

    fn listeners(cfg: &AlbConfig) -> Vec<SocketAddr> {
        cfg.listeners.iter().map(|l| l.address).collect()
    }

    fn target_groups(cfg: &AlbConfig) -> Vec<TargetGroupConfig> {
        cfg.target_groups.values().cloned().collect()
    }

    fn serve(
        conn: Conn<proxy::Parked>,
        snaps: Snapshots<Self>,
    ) -> impl std::future::Future<Output = ()> + Send {
        proxy::handle(conn, snaps)
    }

    fn health_log(
        compiled: &Routers,
    ) -> Option<std::sync::Arc<causeway_dataplane::healthlog::HealthLog>> {
        compiled.health_log.clone()
    }

    /// `GET /oidc/keys/<kid>`: the public key that verifies `x-amzn-oidc-data`, as PEM (what
    /// AWS serves at `https://public-keys.auth.elb.<region>.amazonaws.com/<kid>`).
    fn admin_extra(
        method: &str,
        path: &str,
        _body: &[u8],
        snap: &std::sync::Arc<causeway_dataplane::Snapshot<Self>>,
    ) -> Option<(u16, serde_json::Value)> {
        let kid = path.strip_prefix("/oidc/keys/")?;
        if method != "GET" {
            return Some((405, serde_json::json!({ "error": "method not allowed" })));
        }
        match snap.compiled.auth_keys.as_deref() {
            Some(k) if k.kid == kid => Some((200, serde_json::Value::String(k.public_pem.clone()))),
            _ => Some((404, serde_json::json!({ "error": "no such key" }))),
        }
    }
}

/// The load balancer's name in its logs and signed claims: `app/causeway-alb/<first
/// listener>`.
fn elb_name(cfg: &AlbConfig) -> String {
    cfg.listeners.first().map_or_else(
        || "app/causeway-alb".to_owned(),
        |l| format!("app/causeway-alb/{}", l.address),
    )
}

/// Opens one of the alb's logs (`what`: access, connection, health check) when it is on.
fn open_log(
    what: &str,
    path: Option<&std::path::Path>,
) -> Result<Option<causeway_dataplane::accesslog::AccessLog>, String> {
    path.map(|p| {
        causeway_dataplane::accesslog::AccessLog::open(p)
            .map_err(|e| format!("cannot open {what} log {}: {e}", p.display()))
    })
    .transpose()
}

/// The HTTPS listeners' TLS acceptors (certificates, keys and trust stores loaded), with their
/// mutual TLS modes.
#[allow(clippy::type_complexity)]
fn tls_acceptors(
    cfg: &AlbConfig,
) -> Result<
    Vec<(
        SocketAddr,
        tokio_rustls::TlsAcceptor,
        causeway_dataplane::tls::Mtls,
    )>,
    String,
> {
    // `routing.http2.enabled = false`: HTTPS listeners offer HTTP/1.1 alone.
    let alpn: &[&[u8]] = if cfg.load_balancer.http2 {
        &[b"h2", b"http/1.1"]
    } else {
        &[b"http/1.1"]
    };
    let mut tls = Vec::new();
    for l in &cfg.listeners {
        if let Some(settings) = &l.tls {
            let sc = causeway_dataplane::tls::server_config(settings, alpn)
                .map_err(|e| format!("listener {}: {e}", l.address))?;
            tls.push((
                l.address,
                tokio_rustls::TlsAcceptor::from(sc),
                (&settings.client_auth).into(),
            ));
        }
    }
    Ok(tls)
}
