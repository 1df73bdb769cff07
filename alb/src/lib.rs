//! causeway-alb: L7 routing. This crate so far wires the alb into the shared runtime (config,
//! reload, health checks, admin); its HTTP engine is the subject of the alb issue, and until it
//! lands every request gets a 501 from `proxy.rs`.

pub mod proxy;

use causeway_config::alb::{AlbConfig, FileAlb};
use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_dataplane::{Conn, Plane, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;

/// The alb data plane.
#[derive(Debug)]
pub struct Alb;

impl Plane for Alb {
    const NAME: &'static str = "causeway-alb";
    const ABOUT: &'static str = "Causeway's L7 load balancer (HTTP routing, target groups)";
    type File = FileAlb;
    type Config = AlbConfig;

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
