//! The client side of a connection: the socket, its read buffer (released while idle, so an
//! idle keep-alive connection holds no buffer), and vectored writes.

use causeway_dataplane::Conn;
use std::io::IoSlice;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Bytes read and not yet consumed.
    pub buf: Vec<u8>,
    pub shutdown: watch::Receiver<bool>,
    pub requests: u64,
}

impl Client {
    pub fn new(conn: Conn) -> Client {
        Client {
            stream: conn.stream,
            peer: conn.peer,
            local: conn.local,
            buf: Vec::new(),
            shutdown: conn.shutdown,
            requests: 0,
        }
    }

    /// Whether the process is draining: finish this request, then close.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Reads more bytes onto the end of the buffer; 0 means EOF.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Drops the first `n` bytes (a finished request); frees the buffer when nothing is left.
    pub fn consume(&mut self, n: usize) {
        if n >= self.buf.len() {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..n);
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await
    }
}

/// Writes two slices with as few syscalls as possible.
pub async fn write_two(s: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
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
