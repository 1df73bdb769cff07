//! causeway-nlb: L4 pass-through over TCP and UDP. Flows are spread by Maglev over healthy
//! targets.

pub mod accept_proxy;
pub mod connect;
pub mod flow;
pub mod flow_table;
pub mod proxy;
pub mod splice;
pub mod tcp_relay;
pub mod transparent;
pub mod udp;

use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_config::nlb::{FileNlb, NlbConfig};
use causeway_dataplane::{Conn, Plane, Snapshots};
use std::net::SocketAddr;

/// The nlb data plane.
#[derive(Debug)]
pub struct Nlb;

/// What the nlb derives from its config at load: the TLS listeners' acceptors.
#[derive(Default)]
pub struct Compiled {
    tls: Vec<(SocketAddr, tokio_rustls::TlsAcceptor)>,
}

impl Compiled {
    /// The TLS acceptor of the TLS listener bound at `local`, if it is one.
    pub fn tls(&self, local: SocketAddr) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.iter().find(|(a, _)| *a == local).map(|(_, t)| t)
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("tls_listeners", &self.tls.len())
            .finish()
    }
}

impl Plane for Nlb {
    const NAME: &'static str = "causeway-nlb";
    const ABOUT: &'static str =
        "Causeway's L4 load balancer (TCP pass-through, Maglev flow hashing)";
    type File = FileNlb;
    type Config = NlbConfig;
    type Compiled = Compiled;
    type Parked = causeway_dataplane::park::Unparkable;

    fn check(cfg: &NlbConfig) -> Result<(), String> {
        Self::compile(cfg, None).map(drop)
    }

    fn compile(cfg: &NlbConfig, _previous: Option<&Compiled>) -> Result<Compiled, String> {
        if let Some(g) = cfg.target_groups.values().find(|g| g.preserve_client_ip) {
            transparent::available().map_err(|e| {
                format!(
                    "target_groups.{}.preserve_client_ip.enabled: this host refuses transparent \
                     sockets ({e}); the nlb needs CAP_NET_ADMIN",
                    g.name
                )
            })?;
        }
        let mut tls = Vec::new();
        for l in &cfg.listeners {
            if let Some((settings, alpn)) = &l.tls {
                let sc = causeway_dataplane::tls::server_config(settings, alpn.protocols())
                    .map_err(|e| format!("listener {}: {e}", l.address))?;
                tls.push((l.address, tokio_rustls::TlsAcceptor::from(sc)));
            }
        }
        Ok(Compiled { tls })
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
