//! Minimal raw HTTP/1.1 answers written straight to a socket, for refusals that must not reach
//! the HTTP engine (and, until their issues land, the alb and edge placeholders).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads the request head (up to 16 KiB, for at most `wait`), then answers `status` with a
/// plain-text `body` and closes.
pub async fn reply_and_close(
    mut stream: TcpStream,
    status: u16,
    reason: &str,
    body: &str,
    wait: Duration,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0;
    let read_head = async {
        while n < buf.len() {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(wait, read_head).await.is_err() {
        tracing::debug!("request head not complete in time");
    }
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(resp.as_bytes()).await {
        tracing::debug!(error = %e, "writing the answer failed");
        return;
    }
    if let Err(e) = stream.shutdown().await {
        tracing::debug!(error = %e, "shutdown failed");
    }
}
