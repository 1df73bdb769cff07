//! The relay for a flow that is plain TCP on both sides, driven by socket readiness: each
//! direction moves bytes through a [`Carrier`] (a pooled buffer, or a splice pipe), with the
//! same contract as `causeway_dataplane::relay::relay` (half-close, idle timeout, termination, byte counts). An idle
//! flow holds no buffer: one is taken from a per-thread pool when bytes arrive, and given back
//! once they are delivered.

use crate::splice::Pipe;
use causeway_dataplane::relay::{RelayError, Relayed};
use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;

/// What holds one direction's bytes between reading and writing.
pub trait Carrier: Sized + Send {
    fn new() -> io::Result<Self>;
    /// Bytes read and not yet written.
    fn pending(&self) -> usize;
    /// How many more bytes it can take now.
    fn room(&self) -> usize;
    /// Source → carrier, once the source is readable. `Ok(0)`: the source sent FIN.
    fn fill(&mut self, src: &TcpStream) -> io::Result<usize>;
    /// Carrier → destination, once it is writable.
    fn flush(&mut self, dst: &TcpStream) -> io::Result<usize>;
}

/// One read from a readable source, the way tokio's own `poll_read` does it: a read shorter
/// than the room drained the socket, so its readiness is cleared at once (the next wait goes to
/// epoll instead of costing a read that answers EAGAIN). True of read(2) on TCP, which stops short
/// only at an empty queue; not of splice(2), which has its own rule (`splice.rs`).
fn read_draining(
    src: &TcpStream,
    mut read: impl FnMut(usize) -> io::Result<usize>,
    room: usize,
) -> io::Result<usize> {
    let mut got = 0;
    let r = src.try_io(tokio::io::Interest::READABLE, || {
        let n = read(room)?;
        got = n;
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

/// Bytes per buffer.
const CHUNK: usize = 16 * 1024;
/// Free buffers a thread keeps for the next busy flow.
const POOL: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer taken from the pool only while it holds bytes.
#[derive(Default)]
pub struct Buffer {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn take(&mut self) -> &mut [u8] {
        self.buf.get_or_insert_with(|| {
            FREE.with(|f| f.borrow_mut().pop())
                .unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice())
        })
    }

    /// Empty: back to the pool.
    fn rest(&mut self) {
        self.start = 0;
        self.end = 0;
        if let Some(b) = self.buf.take() {
            FREE.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < POOL {
                    f.push(b);
                }
            });
        }
    }
}

impl Carrier for Buffer {
    fn new() -> io::Result<Buffer> {
        Ok(Buffer::default())
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    fn room(&self) -> usize {
        CHUNK - self.end
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<usize> {
        let end = self.end;
        let buf = &mut self.take()[end..];
        let room = buf.len();
        let sock = socket2::SockRef::from(src);
        let r = read_draining(src, |len| (&*sock).read(&mut buf[..len]), room);
        if let Ok(n) = r {
            self.end += n;
        }
        if self.pending() == 0 {
            self.rest();
        }
        r
    }

    fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let Some(buf) = &self.buf else { return Ok(0) };
        let n = dst.try_write(&buf[self.start..self.end])?;
        self.start += n;
        if self.start == self.end {
            self.rest();
        }
        Ok(n)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.rest();
    }
}

/// Full buffers read back to back after which a direction counts as bulk and moves to a pipe:
/// 64 KiB, so small requests and answers never pay for one.
const BULK_READS: u8 = 4;

/// The default carrier (`relay = "auto"`): a pooled [`Buffer`], as cheap as it gets for small
/// messages, until a direction reads [`BULK_READS`] full buffers in a row; then, once its buffer
/// is delivered, a splice pipe for the rest of the flow (HAProxy's `splice-auto` does the
/// same). If no pipe can be had (out of descriptors), it stays a buffer.
pub enum Auto {
    Copy {
        buf: Buffer,
        full_reads: u8,
    },
    /// Boxed: an idle flow's two directions stay as small as two buffers' bookkeeping.
    Splice(Box<Pipe>),
}

impl Auto {
    /// Moves to a pipe if this direction has shown itself bulk and holds no bytes.
    fn maybe_splice(&mut self) {
        if let Auto::Copy { buf, full_reads } = self {
            if *full_reads >= BULK_READS && buf.pending() == 0 {
                match Pipe::new() {
                    Ok(p) => *self = Auto::Splice(Box::new(p)),
                    Err(e) => {
                        tracing::debug!(error = %e, "no pipe for a bulk flow: copying on");
                        *full_reads = 0;
                    }
                }
            }
        }
    }
}

impl Carrier for Auto {
    fn new() -> io::Result<Auto> {
        Ok(Auto::Copy {
            buf: Buffer::default(),
            full_reads: 0,
        })
    }

    fn pending(&self) -> usize {
        match self {
            Auto::Copy { buf, .. } => buf.pending(),
            Auto::Splice(p) => p.pending(),
        }
    }

    fn room(&self) -> usize {
        match self {
            Auto::Copy { buf, .. } => buf.room(),
            Auto::Splice(p) => p.room(),
        }
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<usize> {
        match self {
            Auto::Copy { buf, full_reads } => {
                let was_empty = buf.pending() == 0;
                let n = buf.fill(src)?;
                if was_empty && n == CHUNK {
                    *full_reads = full_reads.saturating_add(1);
                } else if n > 0 {
                    *full_reads = 0;
                }
                Ok(n)
            }
            Auto::Splice(p) => p.fill(src),
        }
    }

    fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = match self {
            Auto::Copy { buf, .. } => buf.flush(dst)?,
            Auto::Splice(p) => p.flush(dst)?,
        };
        self.maybe_splice();
        Ok(n)
    }
}

/// One direction: its carrier, whether its source is open, whether its FIN went on.
struct Way<C> {
    c: C,
    open: bool,
    shut: bool,
    moved: u64,
}

impl<C: Carrier> Way<C> {
    fn new() -> io::Result<Way<C>> {
        Ok(Way {
            c: C::new()?,
            open: true,
            shut: false,
            moved: 0,
        })
    }

    /// Still has work: bytes to deliver, or a source to read.
    fn live(&self) -> bool {
        self.open || self.c.pending() > 0
    }

    fn can_fill(&self) -> bool {
        self.open && self.c.room() > 0
    }

    /// Flushes what it can without waiting (a full destination is not an error); once the
    /// source has ended and nothing is pending, passes the FIN on (a write shutdown), once.
    fn deliver(&mut self, dst: &TcpStream) -> io::Result<()> {
        if self.c.pending() > 0 {
            match self.c.flush(dst) {
                Ok(k) => self.moved += k as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if !self.open && self.c.pending() == 0 && !self.shut {
            self.shut = true;
            socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
        }
        Ok(())
    }

    /// Reads what the source has (it was readable), then delivers at once: the destination is
    /// most often writable, which saves a turn of the loop. `Ok(true)`: bytes moved.
    fn pump(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<bool, (bool, io::Error)> {
        let moved = match self.c.fill(src) {
            Ok(0) => {
                self.open = false;
                false
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err((true, e)),
        };
        self.deliver(dst).map_err(|e| (false, e))?;
        Ok(moved)
    }

    /// Serves the sides of this direction that were ready: its source readable (read, then
    /// deliver), its destination writable (deliver). `Ok(true)`: bytes were read. The error
    /// says whether the source (`true`) or the destination failed.
    fn serve(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        read: Option<io::Result<()>>,
        write: Option<io::Result<()>>,
    ) -> Result<bool, (bool, io::Error)> {
        let mut moved = false;
        if let Some(r) = read {
            r.map_err(|e| (true, e))?;
            moved = self.pump(src, dst)?;
        }
        if let Some(r) = write {
            r.and_then(|()| self.deliver(dst)).map_err(|e| (false, e))?;
        }
        Ok(moved)
    }
}

/// Which sides of a relay are ready, with their readiness results.
struct Ready {
    up_read: Option<io::Result<()>>,
    up_write: Option<io::Result<()>>,
    down_read: Option<io::Result<()>>,
    down_write: Option<io::Result<()>>,
    idle: bool,
    stop: bool,
}

impl Ready {
    fn any(&self) -> bool {
        self.up_read.is_some()
            || self.up_write.is_some()
            || self.down_read.is_some()
            || self.down_write.is_some()
            || self.idle
            || self.stop
    }
}

/// Relays between two TCP streams until both directions have ended, until no byte moved for
/// `idle`, or until `stop` resolves. Returns the counts either way.
pub async fn relay<C: Carrier>(
    client: &TcpStream,
    target: &TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> (Relayed, Result<(), RelayError>) {
    let counts = |up: &Way<C>, down: &Way<C>| Relayed {
        client_to_target: up.moved,
        target_to_client: down.moved,
    };
    let (mut up, mut down) = match (Way::<C>::new(), Way::<C>::new()) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => return (Relayed::default(), Err(RelayError::Client(e))),
    };
    // A failure on the client's socket or the target's: the client is the source going up
    // and the destination coming down.
    let blame = |client: bool, e: io::Error| {
        if client {
            RelayError::Client(e)
        } else {
            RelayError::Target(e)
        }
    };
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    tokio::pin!(stop);
    while up.live() || down.live() {
        // Every side that is ready, found by polling readiness in place: no future per branch
        // (tokio::select! built six each round, 624 bytes of every flow's task), and no side
        // starves another, since all ready ones are served in turn.
        let wants = (
            up.can_fill(),
            up.c.pending() > 0,
            down.can_fill(),
            down.c.pending() > 0,
        );
        let ready = std::future::poll_fn(|cx| {
            let poll = |p: Poll<io::Result<()>>| match p {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            };
            let r = Ready {
                up_read: wants.0.then(|| poll(client.poll_read_ready(cx))).flatten(),
                up_write: wants.1.then(|| poll(target.poll_write_ready(cx))).flatten(),
                down_read: wants.2.then(|| poll(target.poll_read_ready(cx))).flatten(),
                down_write: wants.3.then(|| poll(client.poll_write_ready(cx))).flatten(),
                idle: timer.as_mut().poll(cx).is_ready(),
                stop: stop.as_mut().poll(cx).is_ready(),
            };
            if r.any() {
                Poll::Ready(r)
            } else {
                Poll::Pending
            }
        })
        .await;
        if ready.stop {
            return (counts(&up, &down), Err(RelayError::Terminated));
        }
        let moved = match up.serve(client, target, ready.up_read, ready.up_write) {
            Ok(m) => m,
            Err((source, e)) => return (counts(&up, &down), Err(blame(source, e))),
        };
        let moved = match down.serve(target, client, ready.down_read, ready.down_write) {
            Ok(m) => moved | m,
            Err((source, e)) => return (counts(&up, &down), Err(blame(!source, e))),
        };
        if moved {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        // Idle only if nothing moved in this round (the reset above restarts the timer).
        if ready.idle && timer.is_elapsed() {
            return (counts(&up, &down), Err(RelayError::Idle(idle)));
        }
    }
    (counts(&up, &down), Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected pairs: (client end, relay's client side), (relay's target side, target end).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (d, _) = l.accept().await.unwrap();
        ((a, b), (c, d))
    }

    async fn bulk_and_half_close<C: Carrier + 'static>() {
        let ((mut client, relay_c), (relay_t, mut target)) = pairs().await;
        let task = tokio::spawn(async move {
            relay::<C>(
                &relay_c,
                &relay_t,
                Duration::from_secs(350),
                std::future::pending(),
            )
            .await
        });
        // 4 MiB one way (many buffers or pipe-fulls), then FIN; then an answer after it.
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "4 MiB arrive intact and in order");
        let mut client = writer.await.unwrap();
        target.write_all(b"pong after half-close").await.unwrap();
        target.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong after half-close");
        let (n, r) = task.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            n,
            Relayed {
                client_to_target: 4 << 20,
                target_to_client: 21
            }
        );
    }

    #[tokio::test]
    async fn every_carrier_carries_bytes_and_half_close() {
        bulk_and_half_close::<Buffer>().await;
        bulk_and_half_close::<Pipe>().await;
        bulk_and_half_close::<Auto>().await;
    }

    /// The client does not read at first, so the relay's side toward it fills; the target then
    /// answers in 300 small writes, each relayed on its own (a pipe slot each, so a splice
    /// pipe fills by slots long before it fills by bytes), and waits without closing. Once the
    /// client reads, it must get every byte, though nothing more comes from the target to
    /// wake the relay.
    async fn a_response_in_small_pieces_arrives_whole<C: Carrier + 'static>() {
        let ((_, _), (relay_t, mut target)) = pairs().await;
        // A client whose receive window is a few KiB (set before it connects).
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1).unwrap();
        let mut client = socket.connect(l.local_addr().unwrap()).await.unwrap();
        let (relay_c, _) = l.accept().await.unwrap();
        socket2::SockRef::from(&relay_c)
            .set_send_buffer_size(1)
            .unwrap();
        target.set_nodelay(true).unwrap();
        let task = tokio::spawn(async move {
            let idle = Duration::from_secs(350);
            relay::<C>(&relay_c, &relay_t, idle, std::future::pending()).await
        });
        let piece: Vec<u8> = (0..100u32).map(|i| (i % 253) as u8).collect();
        for _ in 0..300 {
            target.write_all(&piece).await.unwrap();
            // Lets the runtime poll its driver and the relay take the piece.
            tokio::task::yield_now().await;
        }
        // And lets the relay see the last piece before the client reads.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut got = vec![0u8; 300 * piece.len()];
        let read = tokio::time::timeout(Duration::from_secs(20), client.read_exact(&mut got));
        let n = read
            .await
            .expect("every piece arrives while the target waits");
        assert_eq!(n.unwrap(), got.len());
        assert!(got.chunks(100).all(|c| c == piece), "intact and in order");
        drop((client, target));
        let (n, _) = task.await.unwrap();
        assert_eq!(n.target_to_client, 30_000);
    }

    /// Moves `data` from `a` through `carrier` (reading `src`, writing `dst`) to `b`.
    async fn carry(
        carrier: &mut Auto,
        (a, src): (&mut TcpStream, &TcpStream),
        (dst, b): (&TcpStream, &mut TcpStream),
        data: &[u8],
    ) {
        a.write_all(data).await.unwrap();
        let mut moved = 0;
        while moved < data.len() {
            src.readable().await.unwrap();
            match carrier.fill(src) {
                Ok(n) => assert!(n > 0, "no FIN was sent"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
            while carrier.pending() > 0 {
                dst.writable().await.unwrap();
                match carrier.flush(dst) {
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let mut got = vec![0u8; data.len()];
        b.read_exact(&mut got).await.unwrap();
        assert!(got == data, "intact and in order");
    }

    #[tokio::test]
    async fn auto_splices_a_bulk_direction_and_copies_a_chatty_one() {
        let ((mut a, src), (dst, mut b)) = pairs().await;
        let mut chatty = Auto::new().unwrap();
        for i in 0..50u8 {
            let msg = [i; 100];
            carry(&mut chatty, (&mut a, &src), (&dst, &mut b), &msg).await;
        }
        assert!(
            matches!(chatty, Auto::Copy { .. }),
            "small messages stay copied"
        );
        let mut bulk = Auto::new().unwrap();
        let data: Vec<u8> = (0..128 * 1024u32).map(|i| (i % 251) as u8).collect();
        carry(&mut bulk, (&mut a, &src), (&dst, &mut b), &data).await;
        assert!(
            matches!(bulk, Auto::Splice(_)),
            "64 KiB of full reads: a pipe"
        );
        // It goes on carrying through the pipe.
        carry(&mut bulk, (&mut a, &src), (&dst, &mut b), &data).await;
    }

    #[tokio::test]
    async fn every_carrier_delivers_a_response_in_small_pieces() {
        a_response_in_small_pieces_arrives_whole::<Buffer>().await;
        a_response_in_small_pieces_arrives_whole::<Pipe>().await;
        a_response_in_small_pieces_arrives_whole::<Auto>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_ends_at_the_idle_timeout_holding_no_buffer() {
        let ((_client, relay_c), (relay_t, _target)) = pairs().await;
        let (n, r) = relay::<Buffer>(
            &relay_c,
            &relay_t,
            Duration::from_secs(350),
            std::future::pending(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
        assert_eq!(n, Relayed::default());
        let ((_client, relay_c), (relay_t, _target)) = pairs().await;
        let (_, r) = relay::<Pipe>(
            &relay_c,
            &relay_t,
            Duration::from_secs(350),
            std::future::pending(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
    }

    #[test]
    fn an_emptied_buffer_goes_back_to_the_pool() {
        let mut b = Buffer::default();
        b.take();
        b.end = 10;
        assert!(b.buf.is_some());
        b.start = 10;
        b.rest();
        assert!(b.buf.is_none(), "an idle direction holds no memory");
        assert!(FREE.with(|f| !f.borrow().is_empty()));
    }
}
