//! Idle keep-alive connections to one target, reused last-in first-out, checked for a pending
//! close before reuse, and closed when the target is retired.

use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle upstream connection is kept (below common server keep-alive timeouts, so
/// we rarely reuse a connection the server is closing).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per target.
pub const MAX_IDLE: usize = 512;

/// The idle connections of one target (plain TCP, or any stream that can tell whether it is
/// still usable).
#[derive(Debug)]
pub struct Pool<S = TcpStream> {
    idle: Mutex<Vec<(S, Instant)>>,
}

impl<S> Default for Pool<S> {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
        }
    }
}

/// A connection that can be checked for a pending close without blocking.
pub trait Reusable {
    /// Whether nothing is pending on it: any byte or an EOF from an idle peer means it is
    /// being closed, or is out of step.
    fn alive(&self) -> bool;
}

impl Reusable for TcpStream {
    fn alive(&self) -> bool {
        let mut probe = [0u8; 1];
        // WouldBlock: nothing pending, the connection is fine. Data or EOF: unusable.
        matches!(self.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl Reusable for tokio_rustls::client::TlsStream<TcpStream> {
    fn alive(&self) -> bool {
        self.get_ref().0.alive()
    }
}

impl<S: Reusable> Pool<S> {
    /// A live idle connection, if any.
    pub fn take(&self) -> Option<S> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((s, since)) = idle.pop() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && s.alive() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange.
    pub fn put(&self, s: S) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((s, Instant::now()));
        }
    }

    pub fn len(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn closed_connections_are_not_reused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let pool = Pool::default();
        let a = TcpStream::connect(addr).await.unwrap();
        let (mut sa, _) = l.accept().await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        let (_sb, _) = l.accept().await.unwrap();
        pool.put(b);
        pool.put(a);
        // The server closes `a`; the pool must skip it and hand out `b`.
        sa.shutdown().await.unwrap();
        drop(sa);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool.take().expect("b is alive");
        assert!(got.alive());
        assert!(pool.take().is_none());
        pool.put(got);
        assert_eq!(pool.len(), 1);
        pool.clear();
        assert!(pool.is_empty());
    }
}
