//! The nlb's request path, in order: listener (accepted by the runtime; limits, PROXY header,
//! TLS handshake on TLS listeners) → select (Maglev on the flow tuple) → connect (failing over
//! along the flow's preference list) → relay.

use crate::accept_proxy::{self, Accepted};
use crate::flow::{self, Proto};
use crate::{connect, tcp_relay, Nlb};
use causeway_config::common::Stickiness;
use causeway_config::nlb::RelayMode;
use causeway_dataplane::limits::{Limiter, Refused};
use causeway_dataplane::relay;
use causeway_dataplane::{Conn, Snapshot};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// AWS NLB's default TCP idle timeout.
const DEFAULT_IDLE: std::time::Duration = std::time::Duration::from_secs(350);
/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client's side of a flow: the TCP stream, or TLS over it on TLS listeners.
enum ClientIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl ClientIo {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            ClientIo::Plain(s) => s,
            ClientIo::Tls(s) => s.get_ref().0,
        }
    }
}

/// The target's side of a flow: the TCP stream, or TLS over it for TLS target groups.
enum TargetIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl TargetIo {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            TargetIo::Plain(s) => s,
            TargetIo::Tls(s) => s.get_ref().0,
        }
    }
}

/// TLS to a target of a TLS group, as NLB does it: the target's certificate is not verified
/// and no SNI is sent; the client's ALPN choice, if it made one, is the only protocol offered.
async fn target_tls(
    tcp: tokio::net::TcpStream,
    client: &ClientIo,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let alpn = match client {
        ClientIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        ClientIo::Plain(_) => None,
    };
    let config = causeway_dataplane::tls::relay_client_config(alpn);
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(tcp.peer_addr()?.ip().into());
    let connect = Box::pin(tokio_rustls::TlsConnector::from(config).connect(name, tcp));
    tokio::time::timeout(connect::CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// Serves one client connection.
// The async block is on purpose: see the first comment of the body.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    mut conn: Conn,
    snap: Arc<Snapshot<Nlb>>,
) -> impl std::future::Future<Output = ()> + Send {
    // Not an async fn: one keeps each argument twice in its state (as passed, and moved into
    // the body), and every live flow's task would carry the Conn's 112 bytes more than once.
    async move {
        let listener = snap
            .config
            .listeners
            .iter()
            .find(|l| l.address == conn.local)
            .or_else(|| snap.config.listeners.first());
        let Some(group) = listener.and_then(|l| snap.group(&l.target_group)) else {
            tracing::warn!(local = %conn.local, "no target group for listener");
            return;
        };
        let labels = [("target_group", group.cfg.name.clone())];
        // listener: connection limits, counted for the process across reloads.
        let _slot = match listener {
            Some(l) if l.max_connections > 0 || l.max_connections_per_source > 0 => {
                match Limiter::for_listener(l.address).acquire(
                    conn.peer.ip(),
                    l.max_connections,
                    l.max_connections_per_source,
                ) {
                    Ok(slot) => Some(slot),
                    Err(why) => {
                        metrics::counter!("causeway_nlb_rejected_connection_count",
                            "reason" => if why == Refused::Total { "total" } else { "per_source" })
                        .increment(1);
                        if let Err(e) = conn.stream.set_zero_linger() {
                            tracing::debug!(error = %e, "SO_LINGER");
                        }
                        return;
                    }
                }
            }
            _ => None,
        };
        // listener: a PROXY header first, when the listener requires one.
        let accepted = match listener.and_then(|l| l.proxy_protocol.as_ref()) {
            None => Accepted {
                client: conn.peer,
                dest: conn.local,
                tlvs: Vec::new(),
                early: Vec::new(),
            },
            Some(pp) => match accept_proxy::read(&mut conn.stream, conn.peer, conn.local, pp).await
            {
                Ok(a) => a,
                Err(e) => {
                    metrics::counter!("causeway_nlb_proxy_protocol_refused_count",
                        "reason" => e.kind())
                    .increment(1);
                    tracing::debug!(peer = %conn.peer, error = %e, "PROXY header refused");
                    return;
                }
            },
        };
        // listener: the TLS handshake on TLS listeners (before any target is chosen).
        let peer = conn.peer;
        let mut client = match snap.compiled.tls(conn.local) {
            None => ClientIo::Plain(conn.stream),
            Some(acceptor) => {
                // Boxed: the handshake state stays out of every plain flow's future.
                let accept = Box::pin(acceptor.accept(conn.stream));
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(s)) => ClientIo::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        metrics::counter!("causeway_nlb_client_tls_negotiation_error_count")
                            .increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("causeway_nlb_client_tls_negotiation_error_count")
                            .increment(1);
                        return;
                    }
                }
            }
        };
        metrics::counter!("causeway_nlb_new_flow_count", &labels).increment(1);
        let hash = match group.cfg.stickiness {
            Some(Stickiness::SourceIp) => flow::hash_source(Proto::Tcp, accepted.client.ip()),
            _ => flow::hash(Proto::Tcp, accepted.client, accepted.dest),
        };
        let (mut upstream, in_flight) =
            match connect::connect(group, hash, accepted.client.ip()).await {
                Ok(x) => x,
                Err(e) => {
                    metrics::counter!("causeway_nlb_tcp_elb_reset_count", &labels).increment(1);
                    tracing::warn!(peer = %conn.peer, target_group = %group.cfg.name, "{e}");
                    return;
                }
            };
        if group.cfg.proxy_protocol_v2 {
            let tlvs: Vec<(u8, &[u8])> = accepted
                .tlvs
                .iter()
                .map(|(t, v)| (*t, v.as_slice()))
                .collect();
            let header = causeway_dataplane::proxy_protocol::encode_v2(
                accepted.client,
                accepted.dest,
                &tlvs,
            );
            if let Err(e) = upstream.write_all(&header).await {
                tracing::debug!(peer = %conn.peer, error = %e, "writing the PROXY header failed");
                return;
            }
        }
        if !accepted.early.is_empty() {
            // Client bytes that arrived with its PROXY header.
            if let Err(e) = upstream.write_all(&accepted.early).await {
                tracing::debug!(peer = %conn.peer, error = %e, "forwarding early bytes failed");
                return;
            }
        }
        // connect: TLS again to the targets of a TLS group (after the PROXY header, which
        // precedes the handshake).
        let mut upstream = if group.cfg.protocol == "TLS" {
            match target_tls(upstream, &client).await {
                Ok(s) => TargetIo::Tls(Box::new(s)),
                Err(e) => {
                    metrics::counter!("causeway_nlb_target_tls_negotiation_error_count", &labels)
                        .increment(1);
                    metrics::counter!("causeway_nlb_tcp_elb_reset_count", &labels).increment(1);
                    tracing::warn!(target = %in_flight.target().cfg.address, error = %e,
                        "TLS handshake with the target failed");
                    return;
                }
            }
        } else {
            TargetIo::Plain(upstream)
        };
        let active = metrics::gauge!("causeway_nlb_active_flow_count", &labels);
        active.increment(1.0);
        let idle = listener.map_or(DEFAULT_IDLE, |l| l.idle_timeout);

        let mut cut = in_flight.target().termination_signal();
        let stop = async move {
            if cut.wait_for(|c| *c).await.is_err() {
                // The target is gone without a cut: nothing will ever stop this flow but itself.
                std::future::pending::<()>().await;
            }
        };
        let mode = listener.map_or(RelayMode::Auto, |l| l.relay);
        let (n, result) = match (&mut client, &mut upstream) {
            (ClientIo::Plain(s), TargetIo::Plain(up)) => match mode {
                RelayMode::Splice => {
                    tcp_relay::relay::<crate::splice::Pipe>(s, up, idle, stop).await
                }
                RelayMode::Copy => tcp_relay::relay::<tcp_relay::Buffer>(s, up, idle, stop).await,
                RelayMode::Auto => tcp_relay::relay::<tcp_relay::Auto>(s, up, idle, stop).await,
            },
            (ClientIo::Tls(s), TargetIo::Plain(up)) => relay::relay(&mut **s, up, idle, stop).await,
            (ClientIo::Tls(s), TargetIo::Tls(up)) => {
                relay::relay(&mut **s, &mut **up, idle, stop).await
            }
            (ClientIo::Plain(s), TargetIo::Tls(up)) => relay::relay(s, &mut **up, idle, stop).await,
        };
        metrics::counter!("causeway_nlb_processed_bytes", &labels)
            .increment(n.client_to_target + n.target_to_client);
        match result {
            Ok(()) => {}
            Err(relay::RelayError::Idle(_)) => {
                metrics::counter!("causeway_nlb_idle_timeout_count", &labels).increment(1);
            }
            Err(relay::RelayError::Terminated) => {
                // Reset both sides, as NLB does when it terminates a flow.
                metrics::counter!("causeway_nlb_tcp_elb_reset_count", &labels).increment(2);
                for s in [client.tcp(), upstream.tcp()] {
                    if let Err(e) = s.set_zero_linger() {
                        tracing::debug!(error = %e, "SO_LINGER");
                    }
                }
            }
            Err(relay::RelayError::Client(e)) => {
                metrics::counter!("causeway_nlb_tcp_client_reset_count", &labels).increment(1);
                tracing::debug!(peer = %conn.peer, error = %e, "client side ended with an error");
            }
            Err(relay::RelayError::Target(e)) => {
                metrics::counter!("causeway_nlb_tcp_target_reset_count", &labels).increment(1);
                tracing::debug!(target = %in_flight.target().cfg.address, error = %e,
                    "target side ended with an error");
            }
        }
        active.decrement(1.0);
    }
}
