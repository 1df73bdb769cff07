//! Raw-socket helpers: send exact bytes, read exact answers, and a tiny HTTP/1.1 client that
//! hides nothing.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes`, then reads until the peer closes or `wait` passes with nothing new.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    read_until_quiet(&mut s, wait).await
}

/// Reads until EOF, or until `wait` passes without data.
pub async fn read_until_quiet(s: &mut TcpStream, wait: Duration) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if out.is_empty() => return Err(e),
            Ok(Err(_)) => return Ok(out),
        }
    }
}

/// Reads one response with a Content-Length body from a keep-alive connection.
pub async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return RawResponse::parse(&buf[..end + 4 + len]).unwrap();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses a whole response (body delimited by Content-Length or by close).
    pub fn parse(raw: &[u8]) -> Option<RawResponse> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut body = raw[end + 4..].to_vec();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        if let Some(n) = len {
            body.truncate(n);
        }
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }
}

/// `GET path` with `Connection: close`, plus extra header lines.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> std::io::Result<RawResponse> {
    request(addr, "GET", path, extra, b"").await
}

/// One request with `Connection: close`; the whole answer, parsed.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let raw = exchange(addr, &bytes, Duration::from_secs(10)).await?;
    RawResponse::parse(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// How long `c` stays open before the peer closes it without sending a byte (paused clock:
/// the virtual time). Fails if a byte comes, or nothing happens for 600 s.
pub async fn closed_after(mut c: TcpStream) -> Duration {
    let start = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(600), c.read(&mut [0u8; 1])).await;
    assert!(matches!(n, Ok(Ok(0))), "closed without an answer: {n:?}");
    start.elapsed()
}

/// The drain contract for idle HTTP/1.1 keep-alive connections, to run on a paused clock
/// against a plane listening on `addr`. Two connections each get an answer to `GET path`
/// and wait `idle` (long enough, and a plane has parked them); then `drain` begins. A request sent on one of them `linger / 2` later is still
/// answered, with `Connection: close`; the other, silent one is closed `linger` after the
/// drain began; and the drain ends clean at that moment, not at its grace period.
pub async fn check_drain_closes_idle_connections(
    addr: SocketAddr,
    path: &str,
    linger: Duration,
    idle: Duration,
    drain: impl std::future::Future<Output = bool> + Send + 'static,
) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for s in [&mut silent, &mut busy] {
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(s).await;
        assert_eq!(r.header("connection"), None, "kept alive before the drain");
    }
    tokio::time::sleep(idle).await;
    let start = tokio::time::Instant::now();
    let drained = tokio::spawn(async move { (drain.await, start.elapsed()) });
    tokio::time::sleep(linger / 2).await;
    busy.write_all(req.as_bytes()).await.unwrap();
    let last = read_response(&mut busy).await;
    assert_eq!(
        last.header("connection"),
        Some("close"),
        "a request that arrives as the drain begins is answered, and told the connection ends"
    );
    for (name, s) in [("busy", &mut busy), ("silent", &mut silent)] {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(linger * 2, s.read(&mut b)).await;
        assert!(
            matches!(n, Ok(Ok(0))),
            "the {name} connection is closed: {n:?}"
        );
    }
    let (clean, took) = drained.await.unwrap();
    assert!(clean, "every connection ended within the grace period");
    assert_eq!(
        took, linger,
        "the drain waited for the silent connection's linger only"
    );
}

/// A target on 127.0.0.1 that reads each connection's request head, answers `answer`
/// verbatim and hangs up (a WebSocket's 101, a refusal, a broken response).
pub async fn canned_target(answer: &'static [u8]) -> SocketAddr {
    canned_target_lingering(answer, Duration::ZERO).await
}

/// [`canned_target`], holding each connection open for `linger` after the answer.
pub async fn canned_target_lingering(answer: &'static [u8], linger: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(answer).await.is_ok() && !linger.is_zero() {
                    tokio::time::sleep(linger).await;
                }
            });
        }
    });
    addr
}
