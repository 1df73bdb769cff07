//! An HTTP/2 stream's exchange with an HTTP/1.1 target, in the stream's own task: the request
//! head written from the stream's fields, the body streamed (Content-Length or chunked), the
//! response head parsed by the purpose-built HTTP/1.1 parser, the body relayed as h2 data
//! frames, and the connection back in `Target::pool` once the body ended cleanly. No extra
//! task or channel per request (hyper's client needs both).

use crate::error::ProxyError;
use crate::upstream::Up;
use bytes::Bytes;
use causeway_dataplane::http1::head::ConnectionList;
use causeway_dataplane::http1::{parse_response, ChunkedScanner, Framing, ResponseHead};
use causeway_dataplane::target::{InFlight, Target};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// How the request body goes to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

impl ReqFraming {
    /// From the stream: no body, a known length, or chunked.
    pub fn of(method: &hyper::Method, body: &Incoming) -> ReqFraming {
        if body.is_end_stream() {
            // A POST, PUT or PATCH says its empty body's length, as clients do.
            return match *method {
                hyper::Method::POST | hyper::Method::PUT | hyper::Method::PATCH => {
                    ReqFraming::Length(0)
                }
                _ => ReqFraming::None,
            };
        }
        match body.size_hint().exact() {
            Some(n) => ReqFraming::Length(n),
            None => ReqFraming::Chunked,
        }
    }
}

/// The HTTP/1.1 request head: the request line, `fields` (Host and the forwarding fields among
/// them, any Content-Length dropped) and the framing.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &hyper::Method,
    path_and_query: &str,
    fields: &HeaderMap,
    framing: ReqFraming,
) {
    request_line(out, method, path_and_query);
    for (name, value) in fields {
        if name != hyper::header::CONTENT_LENGTH {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    end_head(out, framing);
}

/// Starts `out` afresh with an HTTP/1.1 request line.
pub fn request_line(out: &mut Vec<u8>, method: &hyper::Method, path_and_query: &str) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// One header field line.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The framing field and the blank line that ends the head.
pub fn end_head(out: &mut Vec<u8>, framing: ReqFraming) {
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => field(out, b"Content-Length", crate::action::itoa(n).as_bytes()),
        ReqFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the client's body to the target (chunk-encoded if asked). Trailers are dropped:
/// HTTP/1.1 targets rarely take them, and gRPC groups speak h2.
pub async fn send_body(
    up: &mut Up,
    body: &mut Incoming,
    chunked: bool,
    idle: Duration,
) -> Result<(), ProxyError> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::Client(408, "request body too slow")),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ProxyError::ClientGone),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let w = if chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut piece = Vec::with_capacity(size.len() + data.len() + 2);
            piece.extend_from_slice(size.as_bytes());
            piece.extend_from_slice(&data);
            piece.extend_from_slice(b"\r\n");
            up.write_all(&piece).await
        } else {
            up.write_all(&data).await
        };
        w.map_err(|_| ProxyError::UpstreamFailed)?;
    }
    if chunked {
        up.write_all(b"0\r\n\r\n")
            .await
            .map_err(|_| ProxyError::UpstreamFailed)?;
    }
    up.flush().await.map_err(|_| ProxyError::UpstreamFailed)
}

/// Reads the response head into `ubuf`/`resp`, skipping interim 1xx answers; a 101 is an answer
/// only to an `upgrade` request. `Err` with `UpstreamFailed` means nothing came back (a retry
/// may be safe).
pub async fn read_head(
    up: &mut Up,
    ubuf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    idle: Duration,
    upgrade: bool,
) -> Result<(), ProxyError> {
    ubuf.clear();
    if ubuf.capacity() == 0 {
        *ubuf = causeway_dataplane::buffers::take();
    }
    let mut any = false;
    loop {
        if !ubuf.is_empty()
            && parse_response(ubuf, MAX_RESPONSE_HEAD, resp).map_err(|_| ProxyError::BadResponse)?
        {
            if (100..200).contains(&resp.status) {
                if resp.status == 101 {
                    return if upgrade {
                        Ok(())
                    } else {
                        Err(ProxyError::BadResponse)
                    };
                }
                ubuf.drain(..resp.len);
                continue;
            }
            return Ok(());
        }
        if ubuf.capacity() - ubuf.len() < 1024 {
            ubuf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout(idle, up.read_buf(ubuf)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Ok(0)) | Ok(Err(_)) if !any => return Err(ProxyError::UpstreamFailed),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::BadResponse),
            Ok(Ok(_)) => any = true,
        }
    }
}

/// The response's fields for the client over h2: hop-by-hop ones and those the Connection
/// header names dropped. Values share one copy of the head.
pub fn response_fields(head: &Bytes, resp: &ResponseHead) -> Result<HeaderMap, ProxyError> {
    let mut out = HeaderMap::with_capacity(resp.headers.len());
    let buf: &[u8] = head;
    let listed = ConnectionList::of(buf, &resp.headers);
    for h in &resp.headers {
        let name = h.name.get(buf);
        if listed.drops(name) {
            continue;
        }
        let value = h.value.get(buf);
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        let n = HeaderName::from_bytes(name).map_err(|_| ProxyError::BadResponse)?;
        let v = HeaderValue::from_maybe_shared(head.slice(start..start + value.len()))
            .map_err(|_| ProxyError::BadResponse)?;
        out.append(n, v);
    }
    Ok(out)
}

/// A response body read from an HTTP/1.1 target as the client takes it.
pub struct H1Body {
    up: Option<Up>,
    /// Bytes read and not yet relayed (or decoded).
    buf: Vec<u8>,
    framing: Framing,
    remaining: u64,
    scanner: ChunkedScanner,
    /// The target's connection can be reused after a clean end.
    reusable: bool,
    target: Arc<Target>,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    _in_flight: InFlight,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl H1Body {
    /// The body after a head of `head_len` bytes in `ubuf` (which may hold the first bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        up: Up,
        mut ubuf: Vec<u8>,
        head_len: usize,
        framing: Framing,
        reusable: bool,
        target: Arc<Target>,
        in_flight: InFlight,
        idle: Duration,
    ) -> H1Body {
        ubuf.drain(..head_len);
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut b = H1Body {
            up: Some(up),
            buf: ubuf,
            framing,
            remaining,
            scanner: ChunkedScanner::new(),
            reusable: reusable && framing != Framing::Close,
            target,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            done: false,
            _in_flight: in_flight,
        };
        if framing == Framing::None || framing == Framing::Length(0) {
            b.finish(b.buf.is_empty());
        }
        b
    }

    /// Whether the whole body is already here (then it is taken at once).
    pub fn take_whole(&mut self) -> Option<Bytes> {
        match self.framing {
            Framing::None => {
                causeway_dataplane::buffers::give(std::mem::take(&mut self.buf));
                Some(Bytes::new())
            }
            Framing::Length(n) if self.buf.len() as u64 >= n => {
                let clean = self.buf.len() as u64 == n;
                // A copy of a small body, and the read buffer back to the per-thread cache.
                let body = Bytes::copy_from_slice(&self.buf[..n as usize]);
                causeway_dataplane::buffers::give(std::mem::take(&mut self.buf));
                self.remaining = 0;
                self.finish(clean);
                Some(body)
            }
            _ => None,
        }
    }

    /// The body has ended: the connection goes back to the pool if it ended cleanly.
    fn finish(&mut self, clean: bool) {
        self.done = true;
        if let Some(up) = self.up.take() {
            if clean && self.reusable {
                up.give_back(&self.target);
            }
        }
    }
}

fn cut(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            if this.done && this.buf.is_empty() {
                return Poll::Ready(None);
            }
            if !this.buf.is_empty() {
                match this.framing {
                    Framing::Length(_) => {
                        let k = (this.remaining.min(this.buf.len() as u64)) as usize;
                        let rest = this.buf.split_off(k);
                        let data = Bytes::from(std::mem::replace(&mut this.buf, rest));
                        this.remaining -= k as u64;
                        if this.remaining == 0 {
                            let clean = this.buf.is_empty();
                            this.buf.clear();
                            this.finish(clean);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Framing::Chunked => {
                        let mut out = Vec::new();
                        let used = this
                            .scanner
                            .decode(&this.buf, &mut out)
                            .map_err(|_| cut("invalid chunked body from the target"))?;
                        this.buf.drain(..used);
                        if this.scanner.is_done() {
                            let clean = this.buf.is_empty();
                            this.buf.clear();
                            this.finish(clean);
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        if this.done {
                            return Poll::Ready(None);
                        }
                    }
                    Framing::Close | Framing::None => {
                        let data = Bytes::from(std::mem::take(&mut this.buf));
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            // Zero-filled room, then cut back to what was read (no unsafe set_len).
            let len = this.buf.len();
            this.buf.resize(len + READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut this.buf[len..]);
            let polled = Pin::new(up).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.buf.truncate(len + n);
            match polled {
                Poll::Ready(Ok(())) => {
                    if n == 0 {
                        this.finish(false);
                        if this.framing == Framing::Close {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(cut("the target closed mid-body"))));
                    }
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(deadline);
                }
                Poll::Ready(Err(e)) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.finish(false);
                        return Poll::Ready(Some(Err(cut("the target went idle mid-body"))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(_) => SizeHint::with_exact(self.remaining),
            Framing::None => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
