//! Connects a flow to its target: the Maglev choice first, then the rest of the flow's
//! preference list when a target refuses or times out. Each failure counts against the target.

use crate::transparent;
use causeway_dataplane::target::{InFlight, TargetGroup};
use std::net::IpAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no target could take the flow.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("target group has no targets")]
    NoTargets,
    #[error("every target refused or timed out ({tried} tried)")]
    AllFailed { tried: usize },
    #[error(transparent)]
    Source(#[from] transparent::SourceError),
}

/// Opens a connection to a target for the flow with hash `flow`; from the `client`'s address
/// when the group preserves client IPs.
pub async fn connect(
    group: &TargetGroup,
    flow: u64,
    client: IpAddr,
) -> Result<(TcpStream, InFlight), ConnectError> {
    let first = group.select(flow).ok_or(ConnectError::NoTargets)?;
    let mut tried = Vec::new();
    let candidates = std::iter::once(first).chain(group.preference(flow));
    for t in candidates {
        if tried.iter().any(|a| *a == t.cfg.address) {
            continue;
        }
        tried.push(t.cfg.address);
        let source = group
            .cfg
            .preserve_client_ip
            .then(|| transparent::source_for(client, t.cfg.address))
            .flatten();
        let socket = match source {
            // A socket that cannot leave from the client's address is this host's failure, not
            // the target's: NLB's PortAllocationErrorCount, and no other target is tried.
            Some(ip) => Some(transparent::socket_from(ip).inspect_err(|_| {
                metrics::counter!("causeway_nlb_port_allocation_error_count").increment(1);
            })?),
            None => None,
        };
        let guard = t.begin();
        let dial = async {
            match socket {
                Some(s) => s.connect(t.cfg.address).await,
                None => TcpStream::connect(t.cfg.address).await,
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(s)) => {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!(error = %e, "set TCP_NODELAY failed");
                }
                group.record_outcome(&t, false);
                return Ok((s, guard));
            }
            Ok(Err(e)) => {
                tracing::debug!(target = %t.cfg.address, error = %e, "connect failed");
            }
            Err(_) => tracing::debug!(target = %t.cfg.address, "connect timed out"),
        }
        metrics::counter!("causeway_nlb_target_connection_error_count",
            "target_group" => group.cfg.name.clone())
        .increment(1);
        t.record_passive_failure();
        group.record_outcome(&t, true);
    }
    Err(ConnectError::AllFailed { tried: tried.len() })
}
