//! Phase `listener`, for listeners that require a PROXY header: only allowed sources may send
//! one, it must arrive within the receive deadline, and a missing or malformed header closes the
//! connection. Whether a header is there is never guessed.

use causeway_config::nlb::AcceptProxy;
use causeway_dataplane::proxy_protocol::{self, V2_MAX};
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The flow as the PROXY header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The original client.
    pub client: SocketAddr,
    /// The original destination.
    pub dest: SocketAddr,
    /// v2 TLVs, passed on to targets that speak PROXY v2.
    pub tlvs: Vec<(u8, Vec<u8>)>,
    /// Client bytes read past the header.
    pub early: Vec<u8>,
}

/// Why a connection was closed before relaying.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("source {0} may not send PROXY headers")]
    Untrusted(std::net::IpAddr),
    #[error("no PROXY header within the receive deadline")]
    Timeout,
    #[error("connection closed before a PROXY header")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] proxy_protocol::ParseError),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl AcceptError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AcceptError::Untrusted(_) => "untrusted",
            AcceptError::Timeout => "timeout",
            AcceptError::Closed => "closed",
            AcceptError::Malformed(_) => "malformed",
            AcceptError::Io(_) => "io",
        }
    }
}

/// Reads and checks the PROXY header of a new connection.
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: &AcceptProxy,
) -> Result<Accepted, AcceptError> {
    if !cfg.allowed.iter().any(|c| c.contains(peer.ip())) {
        return Err(AcceptError::Untrusted(peer.ip()));
    }
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            if !buf.is_empty() {
                if let Some((h, n)) = proxy_protocol::parse(&buf)? {
                    return Ok((h, n));
                }
            }
            if buf.len() >= V2_MAX {
                return Err(AcceptError::Malformed(proxy_protocol::ParseError::BadV2));
            }
            let mut chunk = [0u8; 512];
            let k = stream.read(&mut chunk).await?;
            if k == 0 {
                return Err(AcceptError::Closed);
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    };
    let (h, n) = tokio::time::timeout(cfg.receive_timeout, read)
        .await
        .map_err(|_| AcceptError::Timeout)??;
    let (client, dest) = h.addresses.unwrap_or((peer, local));
    Ok(Accepted {
        client,
        dest,
        tlvs: h.tlvs,
        early: buf[n..].to_vec(),
    })
}
