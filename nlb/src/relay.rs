//! Relays bytes both ways until both sides are done, propagating half-close (a FIN from one
//! side becomes a write shutdown toward the other), and ends a flow that has been silent both
//! ways for the idle timeout.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read at a time in each direction.
const CHUNK: usize = 16 * 1024;

/// How a relay ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("cut: the target was deregistered or turned unhealthy")]
    Terminated,
    #[error("client side: {0}")]
    Client(std::io::Error),
    #[error("target side: {0}")]
    Target(std::io::Error),
}

/// Byte counts of a relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub client_to_target: u64,
    pub target_to_client: u64,
}

/// Copies client → target and target → client until both directions have ended, until no
/// byte moved either way for `idle`, or until `stop` resolves (the target's connections are
/// being cut). Returns the counts either way.
pub async fn relay<CR, CW, TR, TW>(
    mut client_r: CR,
    mut client_w: CW,
    mut target_r: TR,
    mut target_w: TW,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> (Relayed, Result<(), RelayError>)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    TR: AsyncRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let mut up = vec![0u8; CHUNK];
    let mut down = vec![0u8; CHUNK];
    let mut n = Relayed::default();
    let (mut client_open, mut target_open) = (true, true);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    tokio::pin!(stop);
    while client_open || target_open {
        tokio::select! {
            r = client_r.read(&mut up), if client_open => match r {
                Ok(0) => {
                    client_open = false;
                    if let Err(e) = target_w.shutdown().await {
                        return (n, Err(RelayError::Target(e)));
                    }
                }
                Ok(k) => {
                    if let Err(e) = target_w.write_all(&up[..k]).await {
                        return (n, Err(RelayError::Target(e)));
                    }
                    n.client_to_target += k as u64;
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Err(e) => return (n, Err(RelayError::Client(e))),
            },
            r = target_r.read(&mut down), if target_open => match r {
                Ok(0) => {
                    target_open = false;
                    if let Err(e) = client_w.shutdown().await {
                        return (n, Err(RelayError::Client(e)));
                    }
                }
                Ok(k) => {
                    if let Err(e) = client_w.write_all(&down[..k]).await {
                        return (n, Err(RelayError::Client(e)));
                    }
                    n.target_to_client += k as u64;
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Err(e) => return (n, Err(RelayError::Target(e))),
            },
            _ = &mut timer => return (n, Err(RelayError::Idle(idle))),
            () = &mut stop => return (n, Err(RelayError::Terminated)),
        }
    }
    (n, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    type Relay = tokio::task::JoinHandle<(Relayed, Result<(), RelayError>)>;

    /// A relay between two in-memory pipes: (client end, target end, relay task).
    fn setup(idle: Duration) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, Relay) {
        let (client, client_side) = duplex(1 << 16);
        let (target, target_side) = duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client_side);
        let (tr, tw) = tokio::io::split(target_side);
        let task = tokio::spawn(relay(cr, cw, tr, tw, idle, std::future::pending()));
        (client, target, task)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_half_close_pass_through() {
        let (mut client, mut target, task) = setup(Duration::from_secs(350));
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "the client's FIN reached the target");
        target.write_all(b"pong after half-close").await.unwrap();
        target.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong after half-close");
        let (n, r) = task.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(
            n,
            Relayed {
                client_to_target: 4,
                target_to_client: 21
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_termination_signal_cuts_the_flow() {
        let (_client, client_side) = duplex(1024);
        let (_target, target_side) = duplex(1024);
        let (cr, cw) = tokio::io::split(client_side);
        let (tr, tw) = tokio::io::split(target_side);
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            if rx.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let task = tokio::spawn(relay(cr, cw, tr, tw, Duration::from_secs(350), stop));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished());
        tx.send_replace(true);
        let (_, r) = task.await.unwrap();
        assert!(matches!(r, Err(RelayError::Terminated)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_ends_at_the_idle_timeout_and_traffic_resets_it() {
        let (mut client, mut target, task) = setup(Duration::from_secs(350));
        // 300 s of silence, then a byte: the timer starts over.
        tokio::time::sleep(Duration::from_secs(300)).await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        target.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!task.is_finished(), "600 s in, but never 350 s silent");
        tokio::time::sleep(Duration::from_secs(51)).await;
        let (n, r) = task.await.unwrap();
        assert!(matches!(r, Err(RelayError::Idle(d)) if d == Duration::from_secs(350)));
        assert_eq!(n.client_to_target, 1);
    }
}
