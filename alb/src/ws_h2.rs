//! WebSockets over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol = websocket` reaches
//! an HTTP/1.1 target as the GET upgrade it would have sent over HTTP/1.1 (RFC 6455 §4.1), and
//! after the target's 101 the stream and the target connection become one tunnel.

use bytes::Bytes;
use causeway_dataplane::target::InFlight;
use hyper::header::HeaderMap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Whether the request is RFC 8441's extended CONNECT for a WebSocket.
pub fn is_websocket(parts: &hyper::http::request::Parts) -> bool {
    parts.method == hyper::Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// The method the request is routed and forwarded as: a WebSocket's CONNECT is the GET it
/// stands for.
pub fn routed_method(parts: &hyper::http::request::Parts) -> &str {
    if is_websocket(parts) {
        "GET"
    } else {
        parts.method.as_str()
    }
}

/// A new Sec-WebSocket-Key: 16 random bytes in base64 (RFC 6455 §4.1).
pub fn new_key() -> [u8; 24] {
    let mut raw = [0u8; 16];
    raw.iter_mut().for_each(|b| *b = fastrand::u8(..));
    base64_16(&raw)
}

/// 16 bytes as padded base64: 24 characters.
fn base64_16(raw: &[u8; 16]) -> [u8; 24] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = [b'='; 24];
    for (i, chunk) in raw.chunks(3).enumerate() {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let emit = chunk.len() + 1;
        for k in 0..emit {
            out[4 * i + k] = ALPHABET[((n >> (18 - 6 * k)) & 63) as usize];
        }
    }
    out
}

/// Ends the GET head `head` (which ends in its blank line) with the upgrade fields.
pub fn upgrade_head(head: &mut Vec<u8>, fields: &HeaderMap, key: &[u8; 24]) {
    head.truncate(head.len().saturating_sub(2));
    head.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ");
    head.extend_from_slice(key);
    head.extend_from_slice(b"\r\n");
    if !fields.contains_key("sec-websocket-version") {
        head.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    }
    head.extend_from_slice(b"\r\n");
}

/// The 101's fields for the h2 client's 200: the handshake's own (`Sec-WebSocket-Accept`
/// answers our key, not the client's) dropped.
pub fn answer_fields(fields: &mut HeaderMap) {
    fields.remove("sec-websocket-accept");
}

/// Once the client's stream is upgraded: the target's bytes already read, then both ways until
/// either side ends or the tunnel idles for `idle`. Holds the target's in-flight count meanwhile
/// (draining waits for it).
pub async fn tunnel<T>(on: OnUpgrade, mut up: T, early: Bytes, _in_flight: InFlight, idle: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = match on.await {
        Ok(u) => TokioIo::new(u),
        Err(e) => {
            tracing::debug!(error = %e, "h2 websocket upgrade failed");
            return;
        }
    };
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let never = std::future::pending();
    let (_, ended) = causeway_dataplane::relay::relay(&mut client, &mut up, idle, never).await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "h2 websocket tunnel ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_rfc_4648_base64() {
        // RFC 6455 §1.3's sample nonce.
        assert_eq!(&base64_16(b"the sample nonce"), b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&base64_16(&[0xff; 16]), b"/////////////////////w==");
        assert_ne!(new_key(), new_key());
    }

    #[test]
    fn the_upgrade_head_carries_key_and_version() {
        let mut head = b"GET /chat HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        upgrade_head(&mut head, &HeaderMap::new(), b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(
            head,
            b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
    }
}
