//! Phase `origin`: one HTTP/1.1 exchange with an origin over a pooled keep-alive connection,
//! with CloudFront's connect and response timeouts. A body up to the object size limit is read
//! whole (so it can be stored and shared); a bigger one is handed back as a stream.

use crate::message::{Fields, Request};
use bytes::Bytes;
use causeway_config::edge::{Origin, OriginTls};
use causeway_dataplane::http1::{parse_response, ChunkedScanner, Framing, ResponseHead};
use causeway_dataplane::pool::{Pool, Reusable};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A connection to an origin: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Reusable for Conn {
    fn alive(&self) -> bool {
        match self {
            Conn::Plain(s) => s.alive(),
            // A close_notify or any byte from an idle origin shows on the socket first.
            Conn::Tls(s) => s.get_ref().0.alive(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why an origin exchange failed. Each maps to 502 or 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("origin connection failed")]
    Connect,
    #[error("origin connection timed out")]
    ConnectTimeout,
    #[error("origin did not respond in time")]
    Timeout,
    #[error("origin closed or reset before responding")]
    Closed,
    #[error("invalid response from origin")]
    BadResponse,
    #[error("TLS to the origin failed")]
    Tls,
}

impl OriginError {
    pub fn status(self) -> u16 {
        match self {
            OriginError::ConnectTimeout | OriginError::Timeout => 504,
            _ => 502,
        }
    }
}

/// A response from the origin.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    /// Every field, lower-case names.
    pub fields: Fields,
    pub body: Body,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

/// A response body: whole, or still arriving.
#[derive(Debug)]
pub enum Body {
    Full(Bytes),
    Stream(Streaming),
}

/// The rest of a body too big to store, decoded piece by piece.
#[derive(Debug)]
pub struct Streaming {
    conn: Conn,
    /// Decoded data read before the stream was handed over.
    first: Vec<u8>,
    /// Raw bytes read and not yet decoded.
    raw: Vec<u8>,
    framing: Framing,
    /// Length framing: body bytes still to read.
    remaining: u64,
    scanner: ChunkedScanner,
    idle: std::time::Duration,
    /// The length, when the origin declared one.
    pub length: Option<u64>,
}

impl Streaming {
    /// The next piece of body data; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, OriginError> {
        if !self.first.is_empty() {
            return Ok(Some(std::mem::take(&mut self.first)));
        }
        loop {
            match self.framing {
                Framing::Length(_) if self.remaining == 0 => return Ok(None),
                Framing::Chunked if self.scanner.is_done() => return Ok(None),
                _ => {}
            }
            if !self.raw.is_empty() {
                let raw = std::mem::take(&mut self.raw);
                let mut out = Vec::new();
                match self.framing {
                    Framing::Chunked => {
                        self.scanner
                            .decode(&raw, &mut out)
                            .map_err(|_| OriginError::BadResponse)?;
                    }
                    Framing::Length(_) => {
                        let take = raw.len().min(self.remaining as usize);
                        self.remaining -= take as u64;
                        out.extend_from_slice(&raw[..take]);
                    }
                    _ => out = raw,
                }
                if !out.is_empty() {
                    return Ok(Some(out));
                }
                continue;
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = match timeout(self.idle, self.conn.read(&mut buf)).await {
                Err(_) => return Err(OriginError::Timeout),
                Ok(Err(_)) => return Err(OriginError::Closed),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return match self.framing {
                    Framing::Close => Ok(None),
                    _ => Err(OriginError::Closed),
                };
            }
            buf.truncate(n);
            self.raw = buf;
        }
    }
}

type PoolKey = (SocketAddr, Option<OriginTls>);

fn pools() -> &'static Mutex<HashMap<PoolKey, Arc<Pool<Conn>>>> {
    static POOLS: OnceLock<Mutex<HashMap<PoolKey, Arc<Pool<Conn>>>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

fn pool(o: &Origin) -> Arc<Pool<Conn>> {
    pools()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((o.address, o.tls.clone()))
        .or_default()
        .clone()
}

/// A TLS client config per CA bundle (TLS 1.2+, ALPN http/1.1), built once.
fn tls_connector(tls: &OriginTls) -> Result<tokio_rustls::TlsConnector, OriginError> {
    use rustls::pki_types::pem::PemObject;
    static CONFIGS: OnceLock<Mutex<HashMap<std::path::PathBuf, Arc<rustls::ClientConfig>>>> =
        OnceLock::new();
    let mut configs = CONFIGS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(c) = configs.get(&tls.ca_file) {
        return Ok(tokio_rustls::TlsConnector::from(c.clone()));
    }
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&tls.ca_file).map_err(|e| {
        tracing::error!(file = %tls.ca_file.display(), error = %e, "reading the origin CA file");
        OriginError::Tls
    })?;
    for c in certs.flatten() {
        // A bundle may hold certificates this verifier cannot use; the rest still count.
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| OriginError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    configs.insert(tls.ca_file.clone(), cfg.clone());
    Ok(tokio_rustls::TlsConnector::from(cfg))
}

async fn connect(o: &Origin) -> Result<Conn, OriginError> {
    let tcp = match timeout(o.connect_timeout, TcpStream::connect(o.address)).await {
        Ok(Ok(s)) => {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            s
        }
        Ok(Err(_)) => return Err(OriginError::Connect),
        Err(_) => return Err(OriginError::ConnectTimeout),
    };
    let Some(tls) = &o.tls else {
        return Ok(Conn::Plain(tcp));
    };
    let connector = tls_connector(tls)?;
    let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|_| OriginError::Tls)?;
    match timeout(o.connect_timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Conn::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(origin = %o.address, error = %e, "TLS handshake with the origin failed");
            metrics::counter!("causeway_edge_origin_tls_errors_total").increment(1);
            Err(OriginError::Tls)
        }
        Err(_) => Err(OriginError::ConnectTimeout),
    }
}

/// Serialises the request the origin gets: `head_fields` are already filtered by the origin
/// request policy.
pub fn request_bytes(req: &Request, method: &str, target: &str, fields: &Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in fields {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !req.body.is_empty() || !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") {
        out.extend_from_slice(format!("content-length: {}\r\n", req.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends `request` (head and body) and reads the response.
pub async fn fetch(
    o: &Origin,
    request: &[u8],
    body: &[u8],
    head_request: bool,
    idempotent: bool,
    max_body: u64,
) -> Result<Fetched, OriginError> {
    let pool = pool(o);
    // A pooled connection the origin closed meanwhile fails before any response byte; an
    // idempotent request then goes once more over a new connection.
    if let Some(conn) = pool.take() {
        match exchange(conn, o, request, body, head_request, max_body, &pool).await {
            Err((OriginError::Closed, false)) if idempotent => {}
            r => return r.map_err(|(e, _)| e),
        }
    }
    let conn = connect(o).await?;
    exchange(conn, o, request, body, head_request, max_body, &pool)
        .await
        .map_err(|(e, _)| e)
}

/// One exchange; the error's flag says whether any response byte arrived.
async fn exchange(
    mut conn: Conn,
    o: &Origin,
    request: &[u8],
    body: &[u8],
    head_request: bool,
    max_body: u64,
    pool: &Pool<Conn>,
) -> Result<Fetched, (OriginError, bool)> {
    let request_time = SystemTime::now();
    let sent = match &mut conn {
        Conn::Plain(s) if !body.is_empty() => {
            causeway_dataplane::client::write_two(s, request, body).await
        }
        _ => {
            let mut r = conn.write_all(request).await;
            if r.is_ok() && !body.is_empty() {
                r = conn.write_all(body).await;
            }
            if r.is_ok() {
                r = conn.flush().await;
            }
            r
        }
    };
    if sent.is_err() {
        return Err((OriginError::Closed, false));
    }
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut head = ResponseHead::default();
    // Read the head, skipping interim (1xx) responses.
    loop {
        if !buf.is_empty() {
            match parse_response(&buf, MAX_RESPONSE_HEAD, &mut head) {
                Ok(true) if (100..200).contains(&head.status) => {
                    if head.status == 101 {
                        return Err((OriginError::BadResponse, true));
                    }
                    buf.drain(..head.len);
                    continue;
                }
                Ok(true) => break,
                Ok(false) => {}
                Err(_) => return Err((OriginError::BadResponse, true)),
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match timeout(o.response_timeout, conn.read_buf(&mut buf)).await {
            Err(_) => return Err((OriginError::Timeout, !buf.is_empty())),
            Ok(Ok(0)) | Ok(Err(_)) => return Err((OriginError::Closed, !buf.is_empty())),
            Ok(Ok(_)) => {}
        }
    }
    let response_time = SystemTime::now();
    let framing = head
        .framing(&buf, head_request)
        .map_err(|_| (OriginError::BadResponse, true))?;
    let mut fields: Fields = Vec::with_capacity(head.headers.len());
    for h in &head.headers {
        let name = String::from_utf8_lossy(h.name.get(&buf)).to_ascii_lowercase();
        fields.push((name, h.value.get(&buf).to_vec()));
    }
    let keep_alive = head.minor_version == 1 && !head.lists_token(&buf, "connection", "close");
    let status = head.status;
    let rest = buf.split_off(head.len);
    let done = |body: Bytes| Fetched {
        status,
        fields: Vec::new(),
        body: Body::Full(body),
        request_time,
        response_time,
    };
    let mut fetched = match framing {
        Framing::None => {
            if keep_alive && rest.is_empty() {
                pool.put(conn);
            }
            done(Bytes::new())
        }
        Framing::Length(n) if n > max_body => Fetched {
            body: Body::Stream(Streaming {
                conn,
                first: Vec::new(),
                raw: rest,
                framing,
                remaining: n,
                scanner: ChunkedScanner::new(),
                idle: o.response_timeout,
                length: Some(n),
            }),
            ..done(Bytes::new())
        },
        Framing::Length(n) => {
            let mut body = rest;
            while (body.len() as u64) < n {
                body.reserve((n as usize - body.len()).min(1 << 20));
                match timeout(o.response_timeout, conn.read_buf(&mut body)).await {
                    Err(_) => return Err((OriginError::Timeout, true)),
                    Ok(Ok(0)) | Ok(Err(_)) => return Err((OriginError::Closed, true)),
                    Ok(Ok(_)) => {}
                }
            }
            if body.len() as u64 == n && keep_alive {
                pool.put(conn);
            }
            body.truncate(n as usize);
            done(Bytes::from(body))
        }
        Framing::Chunked | Framing::Close => {
            let mut scanner = ChunkedScanner::new();
            let mut decoded = Vec::new();
            let mut raw = rest;
            let mut seen = 0u64;
            let mut leftover = false;
            loop {
                seen += raw.len() as u64;
                if framing == Framing::Chunked {
                    let used = scanner
                        .decode(&raw, &mut decoded)
                        .map_err(|_| (OriginError::BadResponse, true))?;
                    leftover = used < raw.len();
                    if scanner.is_done() {
                        break;
                    }
                } else {
                    decoded.extend_from_slice(&raw);
                }
                if seen > max_body {
                    return Ok(Fetched {
                        body: Body::Stream(Streaming {
                            conn,
                            first: decoded,
                            raw: Vec::new(),
                            framing,
                            remaining: 0,
                            scanner,
                            idle: o.response_timeout,
                            length: None,
                        }),
                        fields,
                        ..done(Bytes::new())
                    });
                }
                raw = Vec::with_capacity(64 * 1024);
                match timeout(o.response_timeout, conn.read_buf(&mut raw)).await {
                    Err(_) => return Err((OriginError::Timeout, true)),
                    Ok(Ok(0)) if framing == Framing::Close => break,
                    Ok(Ok(0)) | Ok(Err(_)) => return Err((OriginError::Closed, true)),
                    Ok(Ok(_)) => {}
                }
            }
            if framing == Framing::Chunked && keep_alive && !leftover {
                pool.put(conn);
            }
            done(Bytes::from(decoded))
        }
    };
    fetched.fields = fields;
    Ok(fetched)
}
