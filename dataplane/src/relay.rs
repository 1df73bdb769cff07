//! A two-way byte relay (nlb flows over TLS, WebSocket tunnels) that propagates half-close,
//! ends once neither side has sent a byte for the idle timeout, and can be cut from outside.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes buffered at a time in each direction.
const CHUNK: usize = 16 * 1024;

/// How a relay ended, when not by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("cut: the target was deregistered or turned unhealthy")]
    Terminated,
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("target side: {0}")]
    Target(io::Error),
}

/// Byte counts of a relay: what each side accepted from the other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub client_to_target: u64,
    pub target_to_client: u64,
}

/// Copies client → target and target → client, both at once, until both directions have ended
/// (a FIN from one side becomes a write shutdown toward the other), until either side fails,
/// until no byte came from either for `idle`, or until `stop` resolves (the target's
/// connections are being cut). Returns the counts either way, also when it ends badly.
pub async fn relay<C, T>(
    client: &mut C,
    target: &mut T,
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> (Relayed, Result<(), RelayError>)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    T: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // When a byte last came in from either side, as nanoseconds after `start`.
    let last = AtomicU64::new(0);
    let mut c = Watched::new(client, &last, start);
    let mut t = Watched::new(target, &last, start);
    let ended = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut t, CHUNK, CHUNK);
        tokio::pin!(copy);
        tokio::pin!(stop);
        let mut deadline = start + idle;
        loop {
            tokio::select! {
                done = &mut copy => break End::Done(done.map(drop)),
                () = &mut stop => break End::Stopped,
                () = tokio::time::sleep_until(deadline) => {
                    let seen = start + Duration::from_nanos(last.load(Ordering::Relaxed));
                    if seen + idle <= Instant::now() {
                        break End::Idle;
                    }
                    deadline = seen + idle;
                }
            }
        }
    };
    let n = Relayed {
        client_to_target: t.written,
        target_to_client: c.written,
    };
    let result = match ended {
        End::Done(Ok(())) => Ok(()),
        End::Done(Err(e)) if c.failed => Err(RelayError::Client(e)),
        End::Done(Err(e)) => Err(RelayError::Target(e)),
        End::Stopped => Err(RelayError::Terminated),
        End::Idle => Err(RelayError::Idle(idle)),
    };
    (n, result)
}

/// Why the copying stopped.
enum End {
    Done(io::Result<()>),
    Stopped,
    Idle,
}

/// One side of the relay: notes when it last delivered bytes, counts the bytes it accepted,
/// and remembers whether it failed.
struct Watched<'a, S: ?Sized> {
    io: &'a mut S,
    last: &'a AtomicU64,
    start: Instant,
    written: u64,
    failed: bool,
}

impl<'a, S: ?Sized> Watched<'a, S> {
    fn new(io: &'a mut S, last: &'a AtomicU64, start: Instant) -> Self {
        Watched {
            io,
            last,
            start,
            written: 0,
            failed: false,
        }
    }

    /// Notes an error from this side.
    fn note<T>(&mut self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &polled {
            self.failed = true;
        }
        polled
    }
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
        this.note(polled)
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(k)) = polled {
            this.written += k as u64;
        }
        this.note(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.io).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.io).poll_shutdown(cx);
        this.note(polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const IDLE: Duration = Duration::from_secs(350);

    /// The relay's counts and result, and when it ended.
    type Ended = (Relayed, Result<(), RelayError>, Instant);

    /// A relay between two in-memory pipes, cut when `stop` resolves: (client end, target end,
    /// relay task).
    fn setup(
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Ended>) {
        let (client, mut near_client) = duplex(1 << 16);
        let (target, mut near_target) = duplex(1 << 16);
        let task = tokio::spawn(async move {
            let (n, r) = relay(&mut near_client, &mut near_target, IDLE, stop).await;
            (n, r, Instant::now())
        });
        (client, target, task)
    }

    /// The relay's end (failing, on the paused clock, after an hour).
    async fn finish(task: tokio::task::JoinHandle<Ended>) -> Ended {
        let hour = Duration::from_secs(3600);
        let done = tokio::time::timeout(hour, task).await;
        done.expect("the relay ends within an hour").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_half_close_pass_through_with_the_counts() {
        let (mut client, mut target, task) = setup(std::future::pending());
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
        let (n, r, _) = finish(task).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            n,
            Relayed {
                client_to_target: 4,
                target_to_client: 21
            }
        );
    }

    const MIB: usize = 1 << 20;

    /// Writes 1 MiB into `end` and closes it, reading what comes back meanwhile; returns that.
    async fn talk(end: DuplexStream) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(end);
        let send = async {
            w.write_all(&vec![7u8; MIB]).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let ((), read) = tokio::join!(send, r.read_to_end(&mut got));
        read.unwrap();
        got
    }

    /// Writes 1 MiB into `end` and closes it, and only then reads what came; returns that.
    async fn speak_then_listen(mut end: DuplexStream) -> Vec<u8> {
        end.write_all(&vec![9u8; MIB]).await.unwrap();
        end.shutdown().await.unwrap();
        let mut got = Vec::new();
        end.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn both_ways_flow_at_once() {
        // The target sends far more than the pipes and the relay's buffers hold before it
        // reads anything. A relay that waited on its write to the target before reading from
        // the target again would deadlock here (and end idle, failing the unwraps).
        let (client, target, task) = setup(std::future::pending());
        let (from_target, from_client) = tokio::join!(talk(client), speak_then_listen(target));
        assert_eq!(from_target, vec![9u8; MIB]);
        assert_eq!(from_client, vec![7u8; MIB]);
        let (n, r, _) = finish(task).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(n.client_to_target, MIB as u64);
        assert_eq!(n.target_to_client, MIB as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_termination_signal_cuts_the_flow() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            if rx.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let (_client, _target, task) = setup(stop);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished());
        tx.send_replace(true);
        let (_, r, _) = finish(task).await;
        assert!(matches!(r, Err(RelayError::Terminated)), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_ends_at_the_idle_timeout_and_lets_go_of_its_ends() {
        let start = Instant::now();
        let (mut client, _target, task) = setup(std::future::pending());
        let (n, r, ended) = finish(task).await;
        assert!(matches!(r, Err(RelayError::Idle(d)) if d == IDLE), "{r:?}");
        assert_eq!(ended - start, IDLE);
        assert_eq!(n, Relayed::default());
        let mut b = [0u8; 1];
        assert_eq!(
            client.read(&mut b).await.unwrap(),
            0,
            "the client sees the close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_it_open_and_the_timeout_counts_from_the_last() {
        let start = Instant::now();
        let (mut client, mut target, task) = setup(std::future::pending());
        let mut b = [0u8; 4];
        // Ten messages, 300 s apart, alternating sides: 3000 s, far past one idle timeout.
        for i in 0..10u64 {
            tokio::time::sleep(Duration::from_secs(300)).await;
            if i % 2 == 0 {
                client.write_all(b"ping").await.unwrap();
                target.read_exact(&mut b).await.unwrap();
            } else {
                target.write_all(b"pong").await.unwrap();
                client.read_exact(&mut b).await.unwrap();
            }
        }
        assert!(!task.is_finished(), "open after 3000 s of traffic");
        let (n, r, ended) = finish(task).await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
        assert_eq!(ended - start, Duration::from_secs(3000) + IDLE);
        assert_eq!(n.client_to_target, 20);
        assert_eq!(n.target_to_client, 20);
    }

    /// Relays after the far end of one side is gone, with a byte waiting on the other side
    /// for it: the relay's write toward the gone side fails.
    async fn fail_toward(client_gone: bool) -> Result<(), RelayError> {
        let (mut client, mut near_client) = duplex(64);
        let (mut target, mut near_target) = duplex(64);
        if client_gone {
            target.write_all(b"x").await.unwrap();
            drop(client);
        } else {
            client.write_all(b"x").await.unwrap();
            drop(target);
        }
        let never = std::future::pending();
        relay(&mut near_client, &mut near_target, IDLE, never)
            .await
            .1
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_side_is_named() {
        let r = fail_toward(true).await;
        assert!(matches!(r, Err(RelayError::Client(_))), "{r:?}");
        let r = fail_toward(false).await;
        assert!(matches!(r, Err(RelayError::Target(_))), "{r:?}");
    }
}
