//! The client side of a connection: the stream (plain TCP, or TLS over it), its read buffer
//! (released while idle, so an idle keep-alive connection holds no buffer), and vectored
//! writes.

use crate::{buffers, Conn};
use std::io::IoSlice;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A stream a client connection runs on.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether readiness can be awaited without reading (plain TCP): an idle connection then
    /// holds no buffer. TLS may hold decrypted bytes the socket no longer shows, so it reads.
    const READINESS: bool;

    /// Waits until a read would not block (used only when `READINESS`).
    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl ClientStream for TcpStream {
    const READINESS: bool = true;

    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const READINESS: bool = false;

    fn ready(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
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
        if self.buf.capacity() == 0 {
            self.buf.0 = buffers::take();
        } else if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf.0).await
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
    if client.buf.is_empty() {
        if S::READINESS {
            // Idle between requests: hold no buffer, wait for the first byte.
            match tokio::time::timeout(idle, client.stream.ready()).await {
                Err(_) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(())) => {}
            }
        } else {
            match tokio::time::timeout(idle, client.fill()).await {
                Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
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
