//! The HTTP/2 listener side: h2c with prior knowledge on the cleartext port, or h2 by ALPN over
//! TLS. hyper's h2 server, with explicit limits, turns each stream into the pipeline's
//! [`Request`] and each [`Reply`] back into a response; the cache pipeline is the same as for
//! HTTP/1.1 and HTTP/3.

use crate::message::{valid_authority, Fields, Request};
use crate::respond::{Head, Reply, ReplyBody};
use crate::{proxy, Edge};
use bytes::Bytes;
use causeway_dataplane::{h2conn, Snapshots};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Limits: CloudFront's 20 KiB of request headers, 100 concurrent streams.
const MAX_HEADER_LIST: u32 = 20_480;
const MAX_STREAMS: u32 = 100;
/// How long one viewer connection may live before a GOAWAY asks it to reconnect.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A streamed response body fed by a channel.
#[derive(Debug)]
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Body = Either<Full<Bytes>, ChannelBody>;

/// Serves one h2 connection until it ends, with the viewer idle timeout (no byte moved either
/// way) and an hour's keep-alive; `h2conn::serve` has the details (GOAWAY on drain, the
/// control-frame budget, the grace after an idle GOAWAY).
pub async fn serve<IO>(
    io: IO,
    scheme: &'static str,
    alt_svc: Option<std::sync::Arc<str>>,
    peer: SocketAddr,
    snaps: Snapshots<Edge>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let passes = std::sync::Arc::new(h2conn::ReadPasses::default());
    let p = passes.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let snaps = snaps.clone();
        let alt_svc = alt_svc.clone();
        let p = p.clone();
        async move {
            // Rapid reset: a stream reset right behind its HEADERS ends here, before a lookup
            // or an origin fetch.
            p.let_resets_land().await;
            Ok::<_, Infallible>(handle(req, scheme, alt_svc.as_deref(), peer, snaps).await)
        }
    });
    let limits = h2conn::Limits {
        max_header_list: MAX_HEADER_LIST,
        max_streams: MAX_STREAMS,
        idle: proxy::VIEWER_IDLE,
        keep_alive: KEEP_ALIVE,
        extended_connect: false,
    };
    h2conn::serve(io, svc, limits, peer, shutdown, passes).await;
}

async fn handle(
    req: hyper::Request<Incoming>,
    scheme: &'static str,
    alt_svc: Option<&str>,
    peer: SocketAddr,
    snaps: Snapshots<Edge>,
) -> hyper::Response<Body> {
    let received = tokio::time::Instant::now();
    let snap = snaps.load();
    let request = match to_request(req, scheme).await {
        Ok(r) => r,
        Err((status, why)) => return to_response(Reply::refusal(status, why), false, alt_svc),
    };
    let (reply, detail) = proxy::pipeline(&snap, &request, peer).await;
    let head_only = request.method == "HEAD";
    let bytes = match &reply.body {
        ReplyBody::Full(b) if !head_only => b.len() as u64,
        _ => 0,
    };
    proxy::log_request(
        &snap,
        peer,
        &request,
        reply.served(),
        bytes,
        detail,
        received,
        "Compliant",
    );
    to_response(reply, head_only, alt_svc)
}

/// A hyper request as the pipeline's request type.
async fn to_request(
    req: hyper::Request<Incoming>,
    scheme: &'static str,
) -> Result<Request, (u16, &'static str)> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, crate::wire::MAX_REQUEST_BODY as usize)
        .collect()
        .await
        .map_err(|_| (413, "request body too large or cut short"))?
        .to_bytes();
    from_parts(parts, body, scheme)
}

/// An HTTP/2 or HTTP/3 (or hyper-parsed HTTP/1.1) request head and body as the pipeline's
/// request: one authority (`:authority` and Host must agree), origin-form paths, no CONNECT.
pub fn from_parts(
    parts: hyper::http::request::Parts,
    body: Bytes,
    scheme: &'static str,
) -> Result<Request, (u16, &'static str)> {
    if parts.headers.get_all(hyper::header::HOST).iter().count() > 1 {
        return Err((400, "duplicate Host"));
    }
    if parts.version == hyper::Version::HTTP_11 && parts.headers.get(hyper::header::HOST).is_none()
    {
        return Err((400, "HTTP/1.1 needs a Host"));
    }
    let host_header = parts
        .headers
        .get(hyper::header::HOST)
        .map(|v| v.as_bytes().to_vec());
    let authority = match (parts.uri.authority(), &host_header) {
        (Some(a), Some(h)) if a.as_str().as_bytes() != h.as_slice() => {
            return Err((400, ":authority and Host disagree"))
        }
        (Some(a), _) => a.as_str().as_bytes().to_vec(),
        (None, Some(h)) => h.clone(),
        (None, None) => return Err((400, "no :authority")),
    };
    if !valid_authority(&authority) {
        return Err((400, "invalid authority"));
    }
    if parts.method == hyper::Method::CONNECT {
        return Err((405, "CONNECT is not supported"));
    }
    let path = parts.uri.path().to_string();
    if path.len() + parts.uri.query().map_or(0, |q| q.len() + 1) > crate::wire::MAX_URL {
        return Err((414, "URL too long"));
    }
    if !(path.starts_with('/') || (parts.method == hyper::Method::OPTIONS && path == "*")) {
        return Err((400, "invalid :path"));
    }
    let mut headers: Fields = Vec::with_capacity(parts.headers.len() + 1);
    headers.push(("host".into(), authority.clone()));
    for (n, v) in &parts.headers {
        if n != hyper::header::HOST {
            headers.push((n.as_str().to_string(), v.as_bytes().to_vec()));
        }
    }
    Ok(Request {
        method: parts.method.as_str().to_string(),
        scheme,
        authority: String::from_utf8_lossy(&authority).to_ascii_lowercase(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
    })
}

/// A reply as an h2 response: the HTTP/1.1 head's fields without connection-specific ones,
/// plus Age and X-Cache.
fn to_response(reply: Reply, head_only: bool, alt_svc: Option<&str>) -> hyper::Response<Body> {
    let mut builder = response_head(&reply, alt_svc);
    let body = match reply.body {
        _ if head_only => Either::Left(Full::new(Bytes::new())),
        ReplyBody::Empty => Either::Left(Full::new(Bytes::new())),
        ReplyBody::Full(b) => Either::Left(Full::new(b)),
        ReplyBody::Stream(mut s) => {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                while let Ok(Some(piece)) = s.next().await {
                    if tx.send(Bytes::from(piece)).await.is_err() {
                        break;
                    }
                }
            });
            Either::Right(ChannelBody(rx))
        }
    };
    builder = builder.status(reply.status);
    builder.body(body).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "building a response");
        let mut r = hyper::Response::new(Either::Left(Full::new(Bytes::new())));
        *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
        r
    })
}

/// A reply's status and fields for HTTP/2 and HTTP/3: the HTTP/1.1 head's fields without
/// connection-specific ones, plus Age, X-Cache and (on TLS listeners) Alt-Svc.
pub fn response_head(reply: &Reply, alt_svc: Option<&str>) -> hyper::http::response::Builder {
    let head: &[u8] = match &reply.head {
        Head::Stored(b) => b,
        Head::Built(v) => v,
    };
    let mut builder = hyper::Response::builder().status(reply.status);
    let (_, fields) = crate::respond::head_fields(head);
    for (name, value) in &fields {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    if let ReplyBody::Full(b) = &reply.body {
        if reply.status != 304 && reply.status != 204 {
            builder = builder.header("content-length", b.len().to_string());
        }
    }
    if let Some(age) = reply.age {
        builder = builder.header("age", age.to_string());
    }
    builder = builder.header(
        "x-cache",
        format!("{} from causeway", reply.result.x_cache(reply.status)),
    );
    if let Some(v) = alt_svc {
        builder = builder.header("alt-svc", v);
    }
    builder
}
