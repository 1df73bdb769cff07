//! causeway-edge: the caching edge. This crate so far wires the edge into the shared runtime
//! (config, reload, admin); its cache pipeline is the subject of the edge issue, and until it
//! lands every request gets a 501 from `proxy.rs`.

pub mod proxy;

use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_config::edge::{EdgeConfig, FileEdge};
use causeway_dataplane::{Conn, Plane, Snapshots};
use std::net::SocketAddr;

/// The edge data plane.
#[derive(Debug)]
pub struct Edge;

impl Plane for Edge {
    const NAME: &'static str = "causeway-edge";
    const ABOUT: &'static str = "Causeway's caching edge (RFC 9111 shared cache)";
    type File = FileEdge;
    type Config = EdgeConfig;
    type Compiled = ();

    fn compile(_cfg: &EdgeConfig) -> Result<(), String> {
        Ok(())
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
        proxy::handle(conn, snaps.load())
    }
}
