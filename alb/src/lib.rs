//! causeway-alb: L7 routing over HTTP/1.1. `proxy.rs` calls the phases in order; each phase
//! has its own file.

pub mod action;
pub mod client;
pub mod error;
pub mod logging;
pub mod proxy;
pub mod request_filter;
pub mod response_filter;
pub mod route;
pub mod upstream;

use causeway_config::alb::{AlbConfig, FileAlb};
use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_dataplane::{Conn, Plane, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;

/// The alb data plane.
#[derive(Debug)]
pub struct Alb;

/// Routes compiled at load, one router per listener.
#[derive(Debug)]
pub struct Routers(Vec<(SocketAddr, route::Router)>);

impl Routers {
    /// The router of the listener bound at `local`.
    pub fn router(&self, local: SocketAddr) -> Option<&route::Router> {
        self.0
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| self.0.iter().find(|(a, _)| a.port() == local.port()))
            .map(|(_, r)| r)
    }
}

impl Plane for Alb {
    const NAME: &'static str = "causeway-alb";
    const ABOUT: &'static str = "Causeway's L7 load balancer (HTTP routing, target groups)";
    type File = FileAlb;
    type Config = AlbConfig;
    type Compiled = Routers;

    fn compile(cfg: &AlbConfig) -> Routers {
        Routers(
            cfg.listeners
                .iter()
                .map(|l| (l.address, route::Router::compile(l)))
                .collect(),
        )
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
        conn: Conn,
        snap: Arc<Snapshot<Self>>,
    ) -> impl std::future::Future<Output = ()> + Send {
        proxy::handle(conn, snap)
    }
}
