//! causeway-nlb: L4 pass-through over TCP and UDP. Flows are spread by Maglev over healthy
//! targets.

pub mod accept_proxy;
pub mod connect;
pub mod flow;
pub mod flow_table;
pub mod proxy;
pub mod relay;
pub mod udp;

use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_config::nlb::{FileNlb, NlbConfig};
use causeway_dataplane::{Conn, Plane, Snapshots};
use std::net::SocketAddr;

/// The nlb data plane.
#[derive(Debug)]
pub struct Nlb;

impl Plane for Nlb {
    const NAME: &'static str = "causeway-nlb";
    const ABOUT: &'static str =
        "Causeway's L4 load balancer (TCP pass-through, Maglev flow hashing)";
    type File = FileNlb;
    type Config = NlbConfig;
    type Compiled = ();

    fn compile(_cfg: &NlbConfig, _previous: Option<&()>) -> Result<(), String> {
        Ok(())
    }

    fn server(cfg: &NlbConfig) -> &ServerConfig {
        &cfg.server
    }

    fn admin(cfg: &NlbConfig) -> SocketAddr {
        cfg.admin.address
    }

    fn listeners(cfg: &NlbConfig) -> Vec<SocketAddr> {
        cfg.listeners
            .iter()
            .filter(|l| l.protocol.tcp())
            .map(|l| l.address)
            .collect()
    }

    fn target_groups(cfg: &NlbConfig) -> Vec<TargetGroupConfig> {
        cfg.target_groups.values().cloned().collect()
    }

    fn serve(conn: Conn, snaps: Snapshots<Self>) -> impl std::future::Future<Output = ()> + Send {
        proxy::handle(conn, snaps.load())
    }

    fn started(snaps: Snapshots<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        udp::start(snaps, shutdown);
    }
}
