//! Relays bytes both ways until both sides are done, propagating half-close.

use tokio::net::TcpStream;

/// Copies client↔target; returns (client→target, target→client) byte counts.
pub async fn relay(mut client: TcpStream, mut target: TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut client, &mut target).await
}
