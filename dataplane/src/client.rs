//! The client side of a connection: the stream (plain TCP, or TLS over it), its read buffer
//! (released while idle, so an idle keep-alive connection holds no buffer), and vectored
//! writes.

use crate::{buffers, Conn};
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A stream a client connection runs on.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready once there is something to read on an idle connection. Plain TCP waits for
    /// readiness without reading, so an idle connection holds no buffer (and the waker lives in
    /// the socket's registration, not in the task). TLS may hold decrypted bytes the socket no
    /// longer shows, so it reads into `buf`, and says false when the client closed or failed.
    fn first_bytes<'a>(
        &'a mut self,
        buf: &'a mut PooledBuf,
    ) -> impl Future<Output = bool> + Send + 'a;
}

impl ClientStream for TcpStream {
    fn first_bytes<'a>(
        &'a mut self,
        _buf: &'a mut PooledBuf,
    ) -> impl Future<Output = bool> + Send + 'a {
        std::future::poll_fn(|cx| self.poll_read_ready(cx).map(|r| r.is_ok()))
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    /// Holds a buffer only while a read is polled: a read that would wait gives it back, and
    /// the wait is on the socket's readiness. (A TLS connection that held its 16 KiB buffer
    /// through every idle wait cost 23 KB idle, against NGINX's 12.)
    async fn first_bytes(&mut self, buf: &mut PooledBuf) -> bool {
        loop {
            // Pending means rustls holds no plaintext and the socket said it would block, so
            // its readiness is cleared and the wait below really waits.
            match read_once(self, buf).await {
                Poll::Ready(Ok(n)) => return n > 0,
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => {
                    let socket = &self.get_ref().0;
                    if std::future::poll_fn(|cx| socket.poll_read_ready(cx))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
    }
}

/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A read buffer from the per-thread cache, given back when dropped.
#[derive(Debug, Default)]
pub struct PooledBuf(pub Vec<u8>);

impl Drop for PooledBuf {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.0));
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// A client connection. It has no `Drop` of its own (its buffer returns itself), so it can be
/// taken apart, e.g. to run TLS over its socket.
#[derive(Debug)]
pub struct Client<S = TcpStream> {
    pub stream: S,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Bytes read and not yet consumed.
    pub buf: PooledBuf,
    pub shutdown: watch::Receiver<bool>,
    pub requests: u64,
    /// Whether the client reached us over TLS.
    pub tls: bool,
}

impl Client {
    pub fn new(conn: Conn) -> Client {
        Client::over(conn.stream, conn.peer, conn.local, conn.shutdown, false)
    }

    /// Waits up to `wait` for a new connection's first bytes and reads them into the buffer:
    /// false if none came (or the process drained, as in [`Client::await_request`]) or the
    /// client closed. A new socket starts out looking readable, so the first wait alone would
    /// end at once and leave the connection holding a buffer while it sends nothing: here the
    /// buffer is taken only for a read, and given back if that read finds nothing.
    pub async fn first_read(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        matches!(self.first_read_until(deadline, None).await, Idle::Request)
    }

    /// As [`Client::first_read`] until `deadline`, but after `park_after` of silence (and
    /// before the drain) it ends with [`Idle::Park`] and the deadline, as
    /// [`Client::await_request_or_park`] does.
    pub async fn first_read_or_park(
        &mut self,
        deadline: tokio::time::Instant,
        park_after: Duration,
    ) -> Idle {
        let park_at = tokio::time::Instant::now() + park_after;
        self.first_read_until(deadline, Some(park_at)).await
    }

    async fn first_read_until(
        &mut self,
        deadline: tokio::time::Instant,
        park_at: Option<tokio::time::Instant>,
    ) -> Idle {
        loop {
            // One poll of a read, not `try_read_buf`: a poll that reads short clears the
            // socket's readiness, so the next wait after this request really waits.
            match read_once(&mut self.stream, &mut self.buf).await {
                Poll::Ready(Ok(n)) if n > 0 => return Idle::Request,
                Poll::Ready(_) => return Idle::Closed,
                Poll::Pending => {
                    let now = tokio::time::Instant::now();
                    let left = deadline.saturating_duration_since(now);
                    if left.is_zero() {
                        return Idle::Closed;
                    }
                    let park = park_at.map(|p| p.saturating_duration_since(now));
                    match self.idle_wait(left, park).await {
                        Idle::Request => {}
                        other => return other,
                    }
                }
            }
        }
    }
}

impl<S: ClientStream> Client<S> {
    /// A client on `stream` (`tls`: after a TLS handshake).
    pub fn over(
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        shutdown: watch::Receiver<bool>,
        tls: bool,
    ) -> Client<S> {
        Client {
            stream,
            peer,
            local,
            buf: PooledBuf::default(),
            shutdown,
            requests: 0,
            tls,
        }
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the process is draining: finish this request, then close.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Reads more bytes onto the end of the buffer; 0 means EOF.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        fill(&mut self.stream, &mut self.buf).await
    }

    /// Waits on an idle connection for the first bytes of its next request: true once there
    /// is something to read (plain TCP: the socket is readable, with bytes or the client's FIN,
    /// and no buffer is held; TLS: bytes are in the buffer). False after `idle`, or
    /// [`DRAIN_LINGER`] after the process began to drain: an idle keep-alive connection does not
    /// hold a drain up for its whole idle timeout.
    pub fn await_request(&mut self, idle: Duration) -> impl Future<Output = bool> + Send + '_ {
        let wait = self.idle_wait(idle, None);
        async move { matches!(wait.await, Idle::Request) }
    }

    /// As [`Client::await_request`], but after `park_after` of silence (and before the drain)
    /// it ends with [`Idle::Park`] and the time the idle timeout ends, so the connection can
    /// wait parked ([`crate::park`]) instead of in its task.
    pub fn await_request_or_park(
        &mut self,
        idle: Duration,
        park_after: Duration,
    ) -> impl Future<Output = Idle> + Send + '_ {
        self.idle_wait(idle, Some(park_after))
    }

    fn idle_wait(
        &mut self,
        idle: Duration,
        park_after: Option<Duration>,
    ) -> IdleWait<
        impl Future<Output = Result<(), watch::error::RecvError>> + Send + '_,
        impl Future<Output = bool> + Send + '_,
    > {
        let Client {
            stream,
            buf,
            shutdown,
            ..
        } = self;
        let told = *shutdown.borrow();
        let now = tokio::time::Instant::now();
        let (first_deadline, end) = match park_after {
            Some(p) if !told && p < idle => (now + p, Some(now + idle)),
            _ if told => (now + idle.min(DRAIN_LINGER), None),
            _ => (now + idle, None),
        };
        IdleWait {
            deadline: tokio::time::sleep_until(first_deadline),
            // The value only ever turns true, so any change is the drain.
            changed: shutdown.changed(),
            told,
            end,
            first: stream.first_bytes(buf),
        }
    }

    /// Drops the first `n` bytes (a finished request); gives the buffer back when nothing is
    /// left.
    pub fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            buffers::give(std::mem::take(&mut self.buf.0));
        } else {
            self.buf.drain(..n);
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await
    }
}

/// How long an idle keep-alive connection still waits for a next request once the process
/// drains. A busy client's next request, already on its way, is then served (with
/// `Connection: close`) rather than cut; a client that sends nothing is closed, as NGINX and
/// HAProxy close idle keep-alive connections when they stop gracefully.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// How an idle connection's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// There is something to read.
    Request,
    /// The idle timeout passed, or the drain's linger: close.
    Closed,
    /// Silent for the park delay: park until `until`, when the idle timeout ends.
    Park { until: tokio::time::Instant },
}

pin_project_lite::pin_project! {
    /// [`Client::await_request`]'s future, written out: every idle connection's task holds it,
    /// and it is no larger than the idle timer and the drain's waiter it is made of.
    pub struct IdleWait<C, F> {
        #[pin]
        deadline: tokio::time::Sleep,
        #[pin]
        changed: C,
        told: bool,
        // While the timer is set to the park delay: when the idle timeout ends.
        end: Option<tokio::time::Instant>,
        #[pin]
        first: F,
    }
}

impl<C, F> Future for IdleWait<C, F>
where
    C: Future<Output = Result<(), watch::error::RecvError>>,
    F: Future<Output = bool>,
{
    type Output = Idle;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Idle> {
        let mut me = self.project();
        if let Poll::Ready(came) = me.first.poll(cx) {
            return Poll::Ready(if came { Idle::Request } else { Idle::Closed });
        }
        if !*me.told {
            if let Poll::Ready(r) = me.changed.poll(cx) {
                *me.told = true;
                // A draining connection does not park: it waits out the linger here.
                let end = me.end.take().unwrap_or(me.deadline.deadline());
                let until = tokio::time::Instant::now() + DRAIN_LINGER;
                // Err: the server is gone, and no signal will come.
                let to = if r.is_ok() { until.min(end) } else { end };
                if to != me.deadline.deadline() {
                    me.deadline.as_mut().reset(to);
                }
            }
        }
        ready!(me.deadline.poll(cx));
        Poll::Ready(match me.end {
            Some(until) => Idle::Park { until: *until },
            None => Idle::Closed,
        })
    }
}

/// One poll of a read into `buf`, which takes a buffer from the cache for it: `Pending` gives
/// the buffer back, so a connection that waits holds none.
async fn read_once<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut PooledBuf,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        buf.0 = buffers::take();
    }
    let read = {
        let mut read = std::pin::pin!(stream.read_buf(&mut buf.0));
        std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
    };
    if read.is_pending() {
        buffers::give(std::mem::take(&mut buf.0));
    }
    read
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut PooledBuf) -> std::io::Result<usize> {
    if buf.capacity() == 0 {
        buf.0 = buffers::take();
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(&mut buf.0).await
}

/// Bodies up to this size are copied behind the head and sent with it in one `send`.
pub const JOIN_LIMIT: usize = 4096;

/// Writes `head` then `body`: one `send` of both when the body is small (the body is copied
/// behind the head in `head`'s buffer), else one `writev`.
pub async fn write_joined<W: AsyncWrite + Unpin>(
    s: &mut W,
    head: &mut Vec<u8>,
    body: &[u8],
) -> std::io::Result<()> {
    if body.len() <= JOIN_LIMIT {
        head.extend_from_slice(body);
        return s.write_all(head).await;
    }
    write_two(s, head, body).await
}

/// Writes two slices with as few syscalls as possible.
pub async fn write_two<W: AsyncWrite + Unpin>(
    s: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() {
        let n = s
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    s.write_all(b).await
}

/// Why no request head could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadHeadError {
    /// Answer this status and close (400, 408, 414, 431).
    #[error("{1}")]
    Refuse(u16, &'static str),
    /// The client went away mid-head: nothing to answer.
    #[error("client gone")]
    Gone,
}

/// Reads the next request head into `head`, waiting at most `idle` for its first byte and
/// `header_timeout` (slowloris) for the rest. `Ok(None)`: the client closed, or idled out,
/// between requests.
pub async fn read_head<S: ClientStream>(
    client: &mut Client<S>,
    head: &mut crate::http1::RequestHead,
    limits: &crate::http1::Limits,
    idle: std::time::Duration,
    header_timeout: std::time::Duration,
) -> Result<Option<()>, ReadHeadError> {
    use crate::http1::{parse_request, HeadError};
    if client.buf.is_empty() && !client.await_request(idle).await {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + header_timeout;
    loop {
        if !client.buf.is_empty() {
            match parse_request(&client.buf, limits, head) {
                Ok(true) => return Ok(Some(())),
                Ok(false) => {}
                Err(e @ HeadError::Malformed(why)) => {
                    return Err(ReadHeadError::Refuse(e.status(), why))
                }
                Err(e) => return Err(ReadHeadError::Refuse(e.status(), "head too large")),
            }
        }
        match tokio::time::timeout_at(deadline, client.fill()).await {
            Err(_) if client.buf.is_empty() => return Ok(None),
            Err(_) => {
                return Err(ReadHeadError::Refuse(
                    408,
                    "request head not received in time",
                ))
            }
            Ok(Ok(0)) if client.buf.is_empty() => return Ok(None),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadHeadError::Gone),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A client connection on loopback, its peer, and the drain signal's sender.
    async fn idle_client() -> (Client, TcpStream, watch::Sender<bool>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, from) = l.accept().await.unwrap();
        // A new registration starts out readable; a read that would block puts it right, as
        // the read of a served request does on a keep-alive connection.
        assert!(ours.try_read(&mut [0u8; 1]).is_err());
        let (tx, rx) = watch::channel(false);
        let local = ours.local_addr().unwrap();
        (Client::over(ours, from, local, rx, false), peer, tx)
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gives_up_a_moment_after_the_drain_begins() {
        let (mut client, _peer, tx) = idle_client().await;
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send_replace(true);
            tokio::time::sleep(IDLE).await;
        });
        assert!(!client.await_request(IDLE).await);
        assert_eq!(start.elapsed(), Duration::from_secs(10) + DRAIN_LINGER);
        assert_eq!(
            client.buf.capacity(),
            0,
            "an idle connection holds no buffer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_arriving_in_the_linger_is_still_served() {
        let (mut client, mut peer, tx) = idle_client().await;
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send_replace(true);
            tokio::time::sleep(DRAIN_LINGER / 2).await;
            peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::time::sleep(IDLE).await;
        });
        assert!(client.await_request(IDLE).await);
        assert_eq!(start.elapsed(), Duration::from_secs(10) + DRAIN_LINGER / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_when_the_drain_began_waits_only_the_linger() {
        let (mut client, _peer, tx) = idle_client().await;
        tx.send_replace(true);
        let start = Instant::now();
        assert!(!client.await_request(IDLE).await);
        assert_eq!(start.elapsed(), DRAIN_LINGER);
        // Nor longer than its idle timeout, if that is shorter.
        let start = Instant::now();
        assert!(!client.await_request(DRAIN_LINGER / 4).await);
        assert_eq!(start.elapsed(), DRAIN_LINGER / 4);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_holds_no_buffer_until_its_first_bytes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, from) = l.accept().await.unwrap();
        let (tx, rx) = watch::channel(false);
        let local = ours.local_addr().unwrap();
        let mut client = Client::over(ours, from, local, rx, false);
        let c = tokio::spawn(async move {
            let start = Instant::now();
            let silent = !client.first_read(Duration::from_secs(5)).await;
            assert_eq!(start.elapsed(), Duration::from_secs(5));
            let held = client.buf.capacity();
            let got = client.first_read(Duration::from_secs(60)).await;
            (silent, held, got, client.buf.to_vec(), client)
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        peer.write_all(b"GET").await.unwrap();
        let (silent, held, got, buf, mut client) = c.await.unwrap();
        assert!(silent, "nothing came in 5 s");
        assert_eq!(held, 0, "a connection that sent nothing holds no buffer");
        assert!(got);
        assert_eq!(buf, b"GET");
        // The read cleared the socket's readiness: the next wait is a real one.
        client.consume(3);
        let start = Instant::now();
        assert!(!client.await_request(Duration::from_secs(3)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // A drain ends the wait of a new connection too, after the linger.
        tx.send_replace(true);
        let start = Instant::now();
        assert!(!client.first_read(Duration::from_secs(60)).await);
        assert_eq!(start.elapsed(), DRAIN_LINGER);
        // The client's FIN: false at once.
        drop(peer);
        assert!(!client.first_read(Duration::from_secs(60)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_told_to_park_with_the_end_of_its_idle_timeout() {
        let (mut client, mut peer, _tx) = idle_client().await;
        let park = Duration::from_millis(250);
        let start = Instant::now();
        let got = client.await_request_or_park(IDLE, park).await;
        assert_eq!(
            got,
            Idle::Park {
                until: start + IDLE
            }
        );
        assert_eq!(start.elapsed(), park);
        // Bytes before the park delay: a request, at once.
        peer.write_all(b"G").await.unwrap();
        assert_eq!(
            client.await_request_or_park(IDLE, park).await,
            Idle::Request
        );
        assert_eq!(start.elapsed(), park);
        let (mut client, _peer, tx) = idle_client().await;
        // An idle timeout shorter than the park delay: closed, never parked.
        let start = Instant::now();
        let got = client.await_request_or_park(park / 2, park).await;
        assert_eq!((got, start.elapsed()), (Idle::Closed, park / 2));
        // A drain before the park delay: no parking, the linger instead.
        let start = Instant::now();
        let wait = client.await_request_or_park(IDLE, DRAIN_LINGER * 2);
        let drain = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_replace(true);
        };
        let (got, ()) = tokio::join!(wait, drain);
        assert_eq!(got, Idle::Closed);
        assert_eq!(start.elapsed(), Duration::from_millis(100) + DRAIN_LINGER);
        // Already draining: no parking either.
        let start = Instant::now();
        assert_eq!(client.await_request_or_park(IDLE, park).await, Idle::Closed);
        assert_eq!(start.elapsed(), DRAIN_LINGER);
    }

    /// An HTTPS client between requests holds no read buffer: a wait that finds nothing gives
    /// it back (it used to keep its 16 KiB buffer for the whole idle time).
    #[tokio::test(start_paused = true)]
    async fn an_idle_tls_connection_holds_no_buffer() {
        use causeway_config::tls::{CertificateFiles, TlsPolicy, TlsSettings};
        use causeway_testkit::tls::cert;
        let settings = TlsSettings {
            policy: TlsPolicy::Tls13And12,
            certificates: vec![CertificateFiles {
                certificate: cert("a.example.test.pem").into(),
                private_key: cert("a.example.test.key").into(),
            }],
            client_auth: Default::default(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(&settings, &[b"http/1.1"]).unwrap(),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, from) = l.accept().await.unwrap();
        let local = ours.local_addr().unwrap();
        let (server, peer) = tokio::join!(
            acceptor.accept(ours),
            crate::tls::connect_target(tcp, false)
        );
        let (mut peer, (_tx, rx)) = (peer.unwrap(), watch::channel(false));
        let mut client = Client::over(server.unwrap(), from, local, rx, true);
        peer.write_all(b"GET").await.unwrap();
        assert!(client.await_request(IDLE).await);
        assert_eq!(&client.buf[..], b"GET");
        client.consume(3);
        let start = Instant::now();
        assert!(!client.await_request(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(client.buf.capacity(), 0, "no buffer held while idle");
        // The next request is read as before. (On the paused clock the wait below would miss
        // the bytes behind TLS and idle out, with the buffer-holding read as well: the clock
        // jumps to the deadline before the record is read.)
        tokio::time::resume();
        peer.write_all(b"POST").await.unwrap();
        assert!(client.await_request(IDLE).await);
        assert_eq!(&client.buf[..], b"POST");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_drain_the_idle_timeout_holds() {
        let (mut client, mut peer, tx) = idle_client().await;
        let start = Instant::now();
        assert!(!client.await_request(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A server that went away sends no drain: the idle timeout still ends the wait.
        drop(tx);
        let start = Instant::now();
        assert!(!client.await_request(Duration::from_secs(5)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Bytes end it at once, and so does the client's FIN (the read then sees the end).
        peer.write_all(b"G").await.unwrap();
        let start = Instant::now();
        assert!(client.await_request(IDLE).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
