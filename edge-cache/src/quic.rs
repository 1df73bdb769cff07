//! The HTTP/3 listener side: a quinn endpoint on the UDP port of every HTTPS listener (same
//! certificates, ALPN `h3`), advertised by `Alt-Svc` on the TCP side. Each request goes
//! through the same pipeline. A supervisor follows reloads: new listeners get an endpoint,
//! changed certificates a new server config, removed listeners are closed.

use crate::h2::{from_parts, response_head};
use crate::respond::{Reply, ReplyBody};
use crate::{proxy, Edge};
use bytes::{Buf, Bytes, BytesMut};
use causeway_dataplane::Snapshots;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// CloudFront's 20 KiB of request headers.
const MAX_FIELD_SECTION: u64 = 20_480;

/// Why an HTTP/3 endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("HTTP/3 TLS setup: {0}")]
    Crypto(String),
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The quinn server config for an HTTPS listener's certificates (TLS 1.3, ALPN `h3`).
pub fn server_config(
    settings: &causeway_config::tls::TlsSettings,
) -> Result<quinn::ServerConfig, QuicError> {
    let tls = causeway_dataplane::tls::server_config(settings, &[b"h3"])
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(100u32.into())
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(
            Duration::from_secs(60)
                .try_into()
                .map_err(|_| QuicError::Crypto("idle timeout".into()))?,
        ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Starts the supervisor of the HTTP/3 endpoints.
pub fn start(snaps: Snapshots<Edge>, shutdown: watch::Receiver<bool>) {
    tokio::spawn(supervise(snaps, shutdown));
}

async fn supervise(snaps: Snapshots<Edge>, mut shutdown: watch::Receiver<bool>) {
    let mut endpoints: HashMap<SocketAddr, quinn::Endpoint> = HashMap::new();
    let mut seen = 0;
    let mut missing = false;
    loop {
        let snap = snaps.load();
        // A failed bind is tried again each tick: after a binary upgrade the old process holds
        // the UDP port until its last HTTP/3 connection ends.
        let fresh = snap.generation != seen;
        if fresh || missing {
            seen = snap.generation;
            missing = false;
            for (addr, cfg) in &snap.compiled.quic {
                match endpoints.get(addr) {
                    Some(ep) => ep.set_server_config(Some(cfg.clone())),
                    None => match quinn::Endpoint::server(cfg.clone(), *addr) {
                        Ok(ep) => {
                            tracing::info!(%addr, "HTTP/3 listening");
                            tokio::spawn(accept_loop(ep.clone(), snaps.clone()));
                            endpoints.insert(*addr, ep);
                        }
                        Err(source) => {
                            let e = QuicError::Bind {
                                addr: *addr,
                                source,
                            };
                            if fresh {
                                tracing::warn!(error = %e, "HTTP/3 not served on this listener yet; retrying");
                            }
                            missing = true;
                        }
                    },
                }
            }
            endpoints.retain(|addr, ep| {
                let keep = snap.compiled.quic.contains_key(addr);
                if !keep {
                    ep.close(0u32.into(), b"listener removed");
                }
                keep
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    // Drain: no new connections; open ones finish their requests.
                    for ep in endpoints.values() {
                        ep.set_server_config(None);
                    }
                    return;
                }
            }
        }
    }
}

async fn accept_loop(ep: quinn::Endpoint, snaps: Snapshots<Edge>) {
    while let Some(incoming) = ep.accept().await {
        let snaps = snaps.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let peer = conn.remote_address();
            let mut h3c = match h3::server::builder()
                .max_field_section_size(MAX_FIELD_SECTION)
                .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "HTTP/3 setup failed");
                    return;
                }
            };
            loop {
                match h3c.accept().await {
                    Ok(Some(resolver)) => {
                        let snaps = snaps.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_request(resolver, peer, snaps).await {
                                tracing::debug!(%peer, error = %e, "HTTP/3 request failed");
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                        break;
                    }
                }
            }
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    peer: SocketAddr,
    snaps: Snapshots<Edge>,
) -> Result<(), BoxError> {
    let received = tokio::time::Instant::now();
    let (req, mut stream) = resolver.resolve_request().await?;
    let (parts, ()) = req.into_parts();
    let mut body = BytesMut::new();
    let mut too_big = false;
    while let Some(mut chunk) = stream.recv_data().await? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            if body.len() + c.len() > crate::wire::MAX_REQUEST_BODY as usize {
                too_big = true;
            } else {
                body.extend_from_slice(c);
            }
            let n = c.len();
            chunk.advance(n);
        }
    }
    let snap = snaps.load();
    let parsed = if too_big {
        Err((413, "request body too large"))
    } else {
        from_parts(parts, body.freeze(), "https")
    };
    let request = match parsed {
        Ok(r) => r,
        Err((status, why)) => {
            return send(&mut stream, Reply::refusal(status, why), false)
                .await
                .map(drop)
        }
    };
    let (reply, detail) = proxy::pipeline(&snap, &request, peer).await;
    let head_only = request.method == "HEAD";
    let served = reply.served();
    let bytes = send(&mut stream, reply, head_only).await?;
    proxy::log_request(
        &snap,
        peer,
        &request,
        served,
        bytes,
        detail,
        received,
        "Compliant",
    );
    Ok(())
}

/// Sends a reply on an HTTP/3 stream; returns the body bytes sent.
async fn send(
    stream: &mut h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    reply: Reply,
    head_only: bool,
) -> Result<u64, BoxError> {
    let head = response_head(&reply, None).body(())?;
    stream.send_response(head).await?;
    let mut sent = 0u64;
    match reply.body {
        _ if head_only => {}
        ReplyBody::Empty => {}
        ReplyBody::Full(b) => {
            sent = b.len() as u64;
            if !b.is_empty() {
                stream.send_data(b).await?;
            }
        }
        ReplyBody::Stream(mut s) => {
            while let Some(piece) = s.next().await? {
                sent += piece.len() as u64;
                stream.send_data(Bytes::from(piece)).await?;
            }
        }
    }
    stream.finish().await?;
    Ok(sent)
}
