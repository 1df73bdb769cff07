//! A real HTTP/3 client (quinn + h3) for tests and benches: one connection, sequential or
//! concurrent requests, trusting a given CA file.

use bytes::{Buf, Bytes};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP/3 response.
#[derive(Debug, Clone)]
pub struct H3Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H3Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An open HTTP/3 connection; clones share it (concurrent requests on one connection).
#[derive(Clone)]
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    host: String,
    _endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for H3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Client")
            .field("host", &self.host)
            .finish()
    }
}

impl H3Client {
    /// Connects to `addr` with SNI `host`, trusting the PEM CA in `ca`.
    pub async fn connect(addr: SocketAddr, host: &str, ca: &Path) -> Result<H3Client, BoxError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint.connect(addr, host)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Client {
            send,
            // The authority names the port, as browsers do for a non-default one.
            host: format!("{host}:{}", addr.port()),
            _endpoint: endpoint,
        })
    }

    /// One request; `extra` are request header fields.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<H3Response, BoxError> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.host));
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let mut stream = self.send.send_request(b.body(())?).await?;
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok(H3Response {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        })
    }
}
