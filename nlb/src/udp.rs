//! UDP listeners (`UDP`, and the UDP side of `TCP_UDP`): the request path of a datagram, in
//! order: listener (recv) → flow table (the client's flow, or a new one within the caps) →
//! select (Maglev on the flow tuple, once per flow) → relay (one connected upstream socket per
//! flow; each target datagram goes back to the client as one datagram, never more bytes than the
//! target sent) → idle expiry. A supervisor follows reloads: new listeners are bound, removed
//! ones closed with their flows; live flows keep their target when the target set changes.

use crate::flow::{self, Proto};
use crate::flow_table::FlowTable;
use crate::Nlb;
use causeway_config::common::Stickiness;
use causeway_config::nlb::Listener;
use causeway_dataplane::target::InFlight;
use causeway_dataplane::Snapshots;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// How a flow ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Silent both ways for the idle timeout.
    Idle,
    /// Its target's connections were cut (unhealthy, or the deregistration delay ended).
    Terminated,
    /// The target's port is closed (ICMP port unreachable).
    Refused,
    /// The upstream socket failed.
    Failed(String),
}

/// One client's flow: its upstream socket and when either side last sent.
#[derive(Debug)]
pub struct Flow {
    pub upstream: UdpSocket,
    last: Mutex<Instant>,
}

impl Flow {
    pub fn new(upstream: UdpSocket) -> Flow {
        Flow {
            upstream,
            last: Mutex::new(Instant::now()),
        }
    }

    /// Records traffic on the flow: the idle timer starts over.
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Relays a flow's target datagrams to its client through the listener socket until the flow
/// is idle for `idle`, its target refuses, or `stop` resolves. Returns the bytes relayed.
pub async fn run_flow(
    flow: &Flow,
    listener: &UdpSocket,
    client: SocketAddr,
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> (u64, End) {
    tokio::pin!(stop);
    let mut bytes = 0;
    loop {
        let deadline = flow.last() + idle;
        tokio::select! {
            r = flow.upstream.readable() => {
                if let Err(e) = r {
                    return (bytes, End::Failed(e.to_string()));
                }
                // The buffer lives between the readiness and the reads only, never across an
                // await: it is not part of the flow's state.
                let mut buf = [0u8; MAX_DATAGRAM];
                loop {
                    match flow.upstream.try_recv(&mut buf) {
                        Ok(n) => {
                            flow.touch();
                            // Exactly what the target sent, as one datagram; a full socket
                            // buffer drops it, as the network would.
                            if let Err(e) = listener.try_send_to(&buf[..n], client) {
                                tracing::debug!(%client, error = %e, "datagram to client dropped");
                            } else {
                                bytes += n as u64;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return (bytes, End::Refused)
                        }
                        Err(e) => return (bytes, End::Failed(e.to_string())),
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if flow.last() + idle <= Instant::now() {
                    return (bytes, End::Idle);
                }
            }
            _ = &mut stop => return (bytes, End::Terminated),
        }
    }
}

/// Starts the supervisor of the UDP listeners.
pub fn start(snaps: Snapshots<Nlb>, shutdown: watch::Receiver<bool>) {
    tokio::spawn(supervise(snaps, shutdown));
}

async fn supervise(snaps: Snapshots<Nlb>, mut shutdown: watch::Receiver<bool>) {
    let mut bound: HashMap<SocketAddr, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut seen = 0;
    let mut missing = false;
    loop {
        let snap = snaps.load();
        // A failed bind is tried again each tick: after a binary upgrade the old process holds
        // the port until it starts draining.
        let fresh = snap.generation != seen;
        if fresh || missing {
            seen = snap.generation;
            missing = false;
            let want: Vec<SocketAddr> = snap
                .config
                .listeners
                .iter()
                .filter(|l| l.protocol.udp())
                .map(|l| l.address)
                .collect();
            for addr in &want {
                if bound.contains_key(addr) {
                    continue;
                }
                match UdpSocket::bind(*addr).await {
                    Ok(sock) => {
                        tracing::info!(%addr, "UDP listening");
                        let task = serve(Arc::new(sock), *addr, snaps.clone(), shutdown.clone());
                        bound.insert(*addr, tokio::spawn(task));
                    }
                    Err(e) => {
                        if fresh {
                            tracing::warn!(%addr, error = %e, "binding UDP failed; retrying");
                        }
                        missing = true;
                    }
                }
            }
            bound.retain(|addr, task| {
                let keep = want.contains(addr);
                if !keep {
                    tracing::info!(%addr, "UDP listener closed");
                    task.abort();
                }
                keep
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    // Draining: UDP has no connections to finish; let the ports go (to a new
                    // binary, on upgrade) and end the flows.
                    for (_, task) in bound.drain() {
                        task.abort();
                    }
                    return;
                }
            }
        }
    }
}

type Table = Arc<Mutex<FlowTable<Arc<Flow>>>>;

fn table(t: &Table) -> std::sync::MutexGuard<'_, FlowTable<Arc<Flow>>> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// One UDP listener: datagrams in, each to its client's flow. The flows are tasks of this one,
/// so closing the listener ends them.
async fn serve(
    sock: Arc<UdpSocket>,
    addr: SocketAddr,
    snaps: Snapshots<Nlb>,
    shutdown: watch::Receiver<bool>,
) {
    let flows: Table = Arc::new(Mutex::new(FlowTable::new(0, 0)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // An ICMP error for an earlier send to a client, or a transient failure.
                    tracing::debug!(%addr, error = %e, "UDP receive");
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let existing = table(&flows).get(&client).cloned();
        let sent = match existing {
            Some(flow) => {
                flow.touch();
                // Never waits: a full socket buffer drops the datagram, as the network would,
                // rather than stall every other client of this listener.
                flow.upstream.try_send(&buf[..n])
            }
            None => {
                if *shutdown.borrow() {
                    continue;
                }
                match open(&sock, addr, client, &snaps, &flows, &mut tasks).await {
                    // A new socket's write readiness is not known yet: the first send waits.
                    Some(flow) => flow.upstream.send(&buf[..n]).await,
                    None => continue,
                }
            }
        };
        match sent {
            Ok(_) => metrics::counter!("causeway_nlb_processed_bytes_udp").increment(n as u64),
            Err(e) => tracing::debug!(%client, error = %e, "datagram to target dropped"),
        }
    }
}

/// Opens a flow for a new client: caps, Maglev, an upstream socket connected to the target, and
/// the task that relays its answers and ends it.
async fn open(
    sock: &Arc<UdpSocket>,
    addr: SocketAddr,
    client: SocketAddr,
    snaps: &Snapshots<Nlb>,
    flows: &Table,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Option<Arc<Flow>> {
    let snap = snaps.load();
    let listener: &Listener = snap.config.listeners.iter().find(|l| l.address == addr)?;
    let group = snap.group(&listener.target_group)?.clone();
    let labels = [("target_group", group.cfg.name.clone())];
    let hash = match group.cfg.stickiness {
        Some(Stickiness::SourceIp) => flow::hash_source(Proto::Udp, client.ip()),
        _ => flow::hash(Proto::Udp, client, addr),
    };
    let Some(target) = group.select(hash) else {
        metrics::counter!("causeway_nlb_udp_rejected_flow_count", "reason" => "no_target")
            .increment(1);
        return None;
    };
    let local: SocketAddr = if target.cfg.address.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // With client IP preservation the flow's socket takes the client's address (a port of the
    // kernel's choosing), so the target sees the client.
    let source = group
        .cfg
        .preserve_client_ip
        .then(|| crate::transparent::source_for(client.ip(), target.cfg.address))
        .flatten();
    let bound = match source {
        Some(ip) => crate::transparent::udp_from(ip).map_err(|e| e.to_string()),
        None => UdpSocket::bind(local).await.map_err(|e| e.to_string()),
    };
    let upstream = match bound {
        Ok(u) => u,
        Err(e) => {
            // NLB's PortAllocationErrorCount: no local port for a new flow.
            metrics::counter!("causeway_nlb_port_allocation_error_count").increment(1);
            tracing::warn!(error = %e, "no local port for a UDP flow");
            return None;
        }
    };
    if let Err(e) = upstream.connect(target.cfg.address).await {
        tracing::debug!(target = %target.cfg.address, error = %e, "UDP connect failed");
        return None;
    }
    let flow = Arc::new(Flow::new(upstream));
    {
        let mut t = table(flows);
        t.set_limits(listener.udp.max_flows, listener.udp.max_flows_per_source);
        if let Err(full) = t.insert(client, flow.clone()) {
            metrics::counter!("causeway_nlb_udp_rejected_flow_count", "reason" => full.label())
                .increment(1);
            return None;
        }
    }
    metrics::counter!("causeway_nlb_new_flow_count_udp", &labels).increment(1);
    let active = metrics::gauge!("causeway_nlb_active_flow_count_udp", &labels);
    active.increment(1.0);
    let in_flight: InFlight = target.begin();
    let idle = listener.udp.idle_timeout;
    let (sock, flows, f) = (sock.clone(), flows.clone(), flow.clone());
    let group_name = group.cfg.name.clone();
    tasks.spawn(async move {
        let mut cut = in_flight.target().termination_signal();
        let stop = async move {
            if cut.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let (bytes, end) = run_flow(&f, &sock, client, idle, stop).await;
        metrics::counter!("causeway_nlb_processed_bytes_udp").increment(bytes);
        match &end {
            End::Idle => metrics::counter!("causeway_nlb_udp_idle_timeout_count").increment(1),
            End::Refused => {
                metrics::counter!("causeway_nlb_target_connection_error_count",
                    "target_group" => group_name)
                .increment(1);
                in_flight.target().record_passive_failure();
            }
            End::Terminated | End::Failed(_) => {}
        }
        tracing::debug!(%client, target = %in_flight.target().cfg.address, ?end, "UDP flow ended");
        table(&flows).remove(&client);
        active.decrement(1.0);
        drop(in_flight);
    });
    Some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (a, b)
    }

    /// The flow's upstream socket faces `target`; the listener socket faces `client`.
    #[tokio::test(start_paused = true)]
    async fn a_flow_relays_each_datagram_whole_and_ends_when_idle() {
        let (upstream, target) = pair().await;
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let flow = Flow::new(upstream);
        let idle = Duration::from_secs(120);
        let start = Instant::now();
        let caddr = client.local_addr().unwrap();
        let relay = run_flow(&flow, &listener, caddr, idle, std::future::pending());
        let drive = async {
            target.send(b"one").await.unwrap();
            let mut buf = [0u8; 64];
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"one");
            // Activity 100 s in restarts the timer: the flow lives to 220 s.
            tokio::time::sleep(Duration::from_secs(100)).await;
            target.send(b"two!").await.unwrap();
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"two!");
            std::future::pending::<()>().await;
        };
        let (bytes, end) = tokio::select! {
            r = relay => r,
            _ = drive => unreachable!(),
        };
        assert_eq!(end, End::Idle);
        assert_eq!(bytes, 7, "never more bytes than the target sent");
        let lived = start.elapsed();
        assert!(
            lived >= Duration::from_secs(220) && lived < Duration::from_secs(221),
            "{lived:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flow_ends_when_its_target_is_cut() {
        let (upstream, _target) = pair().await;
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let flow = Flow::new(upstream);
        let stop = tokio::time::sleep(Duration::from_secs(5));
        let (_, end) = run_flow(
            &flow,
            &listener,
            "127.0.0.1:9".parse().unwrap(),
            Duration::from_secs(120),
            stop,
        )
        .await;
        assert_eq!(end, End::Terminated);
    }
}
