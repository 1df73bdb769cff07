//! A two-way byte relay for upgraded connections (WebSockets) that ends once neither side has
//! sent a byte for the idle timeout, as ALB closes an idle WebSocket connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a tunnel ended, when not by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum TunnelEnd {
    #[error("no byte either way for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Relays between `a` and `b` until both have closed (shutting down each write side as its
/// reader ends), either fails, or no byte has come from either for `idle`. Returns the bytes
/// relayed a→b and b→a.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Result<(u64, u64), TunnelEnd>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // When a byte last came in, as nanoseconds after `start`.
    let last = AtomicU64::new(0);
    let mut a = Watched {
        io: a,
        last: &last,
        start,
    };
    let mut b = Watched {
        io: b,
        last: &last,
        start,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let mut deadline = start + idle;
    loop {
        tokio::select! {
            done = &mut copy => return Ok(done?),
            _ = tokio::time::sleep_until(deadline) => {
                let seen = start + Duration::from_nanos(last.load(Ordering::Relaxed));
                if seen + idle <= Instant::now() {
                    return Err(TunnelEnd::Idle(idle));
                }
                deadline = seen + idle;
            }
        }
    }
}

/// One side of the tunnel, noting when it last delivered bytes.
struct Watched<'a, S: ?Sized> {
    io: &'a mut S,
    last: &'a AtomicU64,
    start: Instant,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let at = this.start.elapsed().as_nanos() as u64;
            this.last.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    /// The relay's result, and when it came.
    type Ended = (Result<(u64, u64), TunnelEnd>, Instant);

    /// A relay between two in-memory pipes; returns the far ends and the relay's task.
    fn tunnel() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Ended>,
    ) {
        let (client, mut near_client) = tokio::io::duplex(1024);
        let (target, mut near_target) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let r = relay(&mut near_client, &mut near_target, IDLE).await;
            (r, Instant::now())
        });
        (client, target, task)
    }

    /// The relay's result and when it came (failing, on the paused clock, after an hour).
    async fn finish(task: tokio::task::JoinHandle<Ended>) -> Ended {
        let hour = Duration::from_secs(3600);
        let done = tokio::time::timeout(hour, task).await;
        done.expect("the relay ends within an hour").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_at_the_idle_timeout() {
        let start = Instant::now();
        let (mut client, _target, task) = tunnel();
        let (r, ended) = finish(task).await;
        assert!(matches!(r, Err(TunnelEnd::Idle(d)) if d == IDLE), "{r:?}");
        assert_eq!(ended - start, IDLE);
        // The relay let go of its ends: the client sees the close.
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_it_open_and_the_timeout_counts_from_the_last() {
        let start = Instant::now();
        let (mut client, mut target, task) = tunnel();
        let mut b = [0u8; 4];
        // Ten messages, 50 s apart, alternating sides: 500 s, far past one idle timeout.
        for i in 0..10u64 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            if i % 2 == 0 {
                client.write_all(b"ping").await.unwrap();
                target.read_exact(&mut b).await.unwrap();
            } else {
                target.write_all(b"pong").await.unwrap();
                client.read_exact(&mut b).await.unwrap();
            }
        }
        assert!(!task.is_finished(), "open after 500 s of traffic");
        let (r, ended) = finish(task).await;
        assert!(matches!(r, Err(TunnelEnd::Idle(_))), "{r:?}");
        assert_eq!(ended - start, Duration::from_secs(500) + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn both_sides_closing_ends_it_with_the_counts() {
        let (mut client, mut target, task) = tunnel();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        target.write_all(b"bye").await.unwrap();
        target.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        let (r, _) = finish(task).await;
        assert_eq!(r.unwrap(), (5, 3));
    }
}
