//! HTTP/2 from clients: h2c with prior knowledge on HTTP listeners, h2 by ALPN on HTTPS ones.
//! hyper's h2 server, with ALB's limits, hands each stream to [`serve_stream`], which calls
//! the same phases as HTTP/1.1 in order: check → `route` → `action` (forward through
//! `hyper_upstream`, redirect, fixed-response) → `logging`.

use crate::action::{self, RedirectInput};
use crate::error::ProxyError;
use crate::hyper_upstream::{self, Origin, Relayed};
use crate::route::{host_without_port, RequestView};
use crate::{logging, sticky, upstream, Alb};
use bytes::Bytes;
use causeway_config::alb::Action;
use causeway_dataplane::select::maglev::hash64;
use causeway_dataplane::{Snapshot, Snapshots};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The connection preface a prior-knowledge h2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// ALB's limits: 64 KiB of request headers, 128 concurrent streams per connection; and
/// hyper's rapid-reset and error-reset caps.
const MAX_HEADER_LIST: u32 = 64 * 1024;
const MAX_STREAMS: u32 = 128;

/// What a client gets as a response body: ours, or a target's.
pub type Body = Either<Full<Bytes>, Relayed>;

/// When a connection last moved a byte either way, for the idle timeout.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last read or write.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection idles out if nothing moves before.
    fn idle_deadline(&self, idle: std::time::Duration) -> Instant {
        self.opened + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// The client's stream, noting every read and write that moves bytes (as ALB's idle timeout:
/// no data either way for `idle_timeout`, whatever streams are open).
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long streams may take to finish after an idle connection's GOAWAY before it is closed
/// (a stalled stream, e.g. a client that never opens its flow-control window, cannot hold it).
const IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// One client connection's facts every stream needs.
struct Ctx {
    from: Origin,
    snaps: Snapshots<Alb>,
}

/// A stream that first replays bytes already read from it (the sniffed preface).
#[derive(Debug)]
pub struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(pre: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { pre, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one h2 connection until it ends: after `idle_timeout` with no byte moved either way
/// it sends GOAWAY and, `IDLE_GRACE` later, closes with whatever is still open; after the client
/// keep-alive duration, and on drain, it sends GOAWAY and lets open streams finish.
pub async fn serve<IO>(
    io: IO,
    from: Origin,
    snaps: Snapshots<Alb>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (idle, keep_alive) = {
        let lb = &snaps.load().config.load_balancer;
        (lb.idle_timeout, lb.client_keep_alive)
    };
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let ctx = Arc::new(Ctx { from, snaps });
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(serve_stream(req, &ctx).await) }
    });
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let closes_at = activity.opened + keep_alive;
    let mut graceful = false;
    // Set once the connection idled out: past it, open streams are cut.
    let mut hard: Option<Instant> = None;
    let result = loop {
        let wake = match hard {
            Some(h) => h,
            None if graceful => activity.idle_deadline(idle),
            None => activity.idle_deadline(idle).min(closes_at),
        };
        tokio::select! {
            r = conn.as_mut() => break r,
            changed = shutdown.changed(), if !graceful => {
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                    graceful = true;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if hard.is_some_and(|h| now >= h) {
                    tracing::debug!(peer = %ctx.from.peer, "idle h2 connection closed with streams open");
                    break Ok(());
                }
                let idle_out = now >= activity.idle_deadline(idle);
                if idle_out || (!graceful && now >= closes_at) {
                    if !graceful {
                        conn.as_mut().graceful_shutdown();
                        graceful = true;
                    }
                    if idle_out {
                        hard = Some(now + IDLE_GRACE);
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %ctx.from.peer, error = %e, "h2 connection ended with an error");
    }
}

/// The request's authority, checked: `:authority` and Host agree, one Host at most, a valid
/// name; an origin-form path; no CONNECT.
pub fn check(parts: &hyper::http::request::Parts) -> Result<String, ProxyError> {
    let hosts = parts.headers.get_all(hyper::header::HOST);
    if hosts.iter().count() > 1 {
        return Err(ProxyError::Client(400, "duplicate Host"));
    }
    let host = parts.headers.get(hyper::header::HOST).map(|v| v.as_bytes());
    let authority: &[u8] = match (parts.uri.authority(), host) {
        (Some(a), Some(h)) if a.as_str().as_bytes() != h => {
            return Err(ProxyError::Client(400, ":authority and Host disagree"))
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h,
        (None, None) => return Err(ProxyError::Client(400, "no :authority")),
    };
    if !action::valid_host(host_without_port(authority)) {
        return Err(ProxyError::Client(400, "invalid authority"));
    }
    if parts.method == hyper::Method::CONNECT {
        return Err(ProxyError::Client(405, "CONNECT is not supported"));
    }
    let path = parts.uri.path();
    if !(path.starts_with('/') || (parts.method == hyper::Method::OPTIONS && path == "*")) {
        return Err(ProxyError::Client(400, "invalid :path"));
    }
    let pq = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if pq > 16 * 1024 {
        return Err(ProxyError::Client(414, "request target too long"));
    }
    // Only visible ASCII reaches a target or a log.
    let authority =
        std::str::from_utf8(authority).map_err(|_| ProxyError::Client(400, "invalid authority"))?;
    Ok(authority.to_ascii_lowercase())
}

/// Serves one stream: the phases in order.
async fn serve_stream(req: Request<Incoming>, ctx: &Ctx) -> Response<Body> {
    let received = Instant::now();
    let snap = ctx.snaps.load();
    let (parts, body) = req.into_parts();
    let info = snap
        .compiled
        .access_log
        .as_ref()
        .map(|_| std::sync::Mutex::new(request_info(&parts, &body, &ctx.from, received)));
    // Boxed: hyper spawns a task per stream, and a small task moves cheaply.
    let (response, ended_status) =
        Box::pin(phases(parts, body, ctx, &snap, received, info.as_ref())).await;
    if let Some(status) = ended_status {
        snap.compiled.elb_metrics.count(status);
    }
    response
}

/// check → route → action. Returns the response, and the status when we generated it.
async fn phases(
    parts: hyper::http::request::Parts,
    body: Incoming,
    ctx: &Ctx,
    snap: &Arc<Snapshot<Alb>>,
    received: Instant,
    info: Option<&std::sync::Mutex<logging::RequestInfo>>,
) -> (Response<Body>, Option<u16>) {
    let log = |ended: logging::Ended<'_>, priority: Option<u32>| {
        if let (Some(log), Some(info)) = (snap.compiled.access_log.as_ref(), info) {
            let info = info.lock().unwrap_or_else(|e| e.into_inner());
            log.log(logging::access_line(&info, ended, priority));
        }
    };
    let refused = |e: ProxyError| {
        log(logging::Ended::Refused(e), None);
        let status = e.status().unwrap_or(400);
        (error_response(status), Some(status))
    };
    let Some(router) = snap.compiled.router(ctx.from.local) else {
        return refused(ProxyError::NoTargets);
    };
    // check
    let authority = match check(&parts) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    // route
    let (action, priority) = {
        let headers = |name: &str, f: &mut dyn FnMut(&[u8]) -> bool| {
            parts.headers.get_all(name).iter().any(|v| f(v.as_bytes()))
        };
        let view = RequestView {
            method: parts.method.as_str().as_bytes(),
            path: parts.uri.path().as_bytes(),
            query: parts.uri.query().unwrap_or("").as_bytes(),
            host: Some(host_without_port(authority.as_bytes())),
            source: ctx.from.peer.ip(),
            headers: &headers,
        };
        router.route(&view)
    };
    // action
    match action {
        Action::FixedResponse {
            status,
            content_type,
            body,
        } => {
            log(
                logging::Ended::Local {
                    status: *status,
                    action: "fixed-response",
                },
                priority,
            );
            let r = local(*status, content_type, Bytes::from(body.clone()), None);
            (r, Some(*status))
        }
        Action::Redirect(r) => {
            let input = RedirectInput {
                protocol: ctx.from.scheme,
                host: host_without_port(authority.as_bytes()),
                port: ctx.from.local.port(),
                path: parts.uri.path().as_bytes(),
                query: parts.uri.query().unwrap_or("").as_bytes(),
            };
            match action::location(r, &input) {
                None => refused(ProxyError::Client(400, "Host cannot be redirected")),
                Some(loc) => {
                    log(
                        logging::Ended::Local {
                            status: r.status,
                            action: "redirect",
                        },
                        priority,
                    );
                    let resp = local(r.status, "text/plain", Bytes::new(), Some(&loc));
                    (resp, Some(r.status))
                }
            }
        }
        Action::Forward {
            target_groups,
            group_stickiness,
        } => {
            let tg_cookie = parts
                .headers
                .get_all(hyper::header::COOKIE)
                .iter()
                .find_map(|v| sticky::find_cookie(v.as_bytes(), sticky::TG_COOKIE));
            let key = &snap.compiled.sticky_key;
            let Some((group, group_cookie)) =
                upstream::pick_group(snap, target_groups, *group_stickiness, tg_cookie, key)
            else {
                return refused(ProxyError::NoTargets);
            };
            let hash = hash64(
                received.elapsed().subsec_nanos() as u64 ^ fastrand::u64(..),
                &ctx.from.peer.port().to_le_bytes(),
            );
            let trace = crate::trace::TraceId::now();
            if let Some(i) = info {
                let theirs = parts
                    .headers
                    .get(crate::trace::HEADER)
                    .map(|v| v.as_bytes());
                trace.write(
                    theirs,
                    &mut i.lock().unwrap_or_else(|e| e.into_inner()).trace,
                );
            }
            let r = hyper_upstream::forward(
                parts,
                body,
                &authority,
                group,
                &ctx.from,
                &snap.config.load_balancer,
                key,
                &snap.compiled.pools,
                hash,
                group_cookie.as_deref(),
                &trace,
            )
            .await;
            let name = &group.cfg.name;
            let outcome = r.as_ref().map(|(_, o)| *o).map_err(|e| *e);
            logging::forwarded(
                name,
                snap.compiled.group_metrics.get(name),
                &snap.compiled.elb_metrics,
                received,
                &outcome,
            );
            log(
                logging::Ended::Forwarded {
                    group: name,
                    outcome: &outcome,
                },
                priority,
            );
            match r {
                Ok((resp, _)) => (resp.map(Either::Right), None),
                // `forwarded` counted the ELB status.
                Err((e, _)) => (error_response(e.status().unwrap_or(502)), None),
            }
        }
    }
}

/// What the access log needs of an h2 request.
fn request_info(
    parts: &hyper::http::request::Parts,
    body: &Incoming,
    from: &Origin,
    received: Instant,
) -> logging::RequestInfo {
    let mut request = Vec::with_capacity(96);
    request.extend_from_slice(parts.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(from.scheme.as_bytes());
    request.extend_from_slice(b"://");
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(hyper::header::HOST).map(|v| v.as_bytes()))
        .unwrap_or(b"-");
    request.extend_from_slice(host_without_port(authority));
    request.push(b':');
    request.extend_from_slice(from.local.port().to_string().as_bytes());
    request.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    request.extend_from_slice(b" HTTP/2.0");
    logging::RequestInfo {
        kind: "h2",
        created: std::time::SystemTime::now(),
        received,
        client: from.peer,
        listener: from.local,
        request,
        user_agent: parts
            .headers
            .get(hyper::header::USER_AGENT)
            .map_or(b"-".to_vec(), |v| v.as_bytes().to_vec()),
        received_bytes: body.size_hint().exact().unwrap_or(0),
        classification: "-",
        classification_reason: "-".into(),
        trace: Vec::new(),
        tls_names: from.tls_names.unwrap_or(("-", "-")),
    }
}

/// A response we generate.
fn local(status: u16, content_type: &str, body: Bytes, location: Option<&[u8]>) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header("server", "causeway")
        .header("content-type", content_type)
        .header("content-length", body.len());
    if let Some(loc) = location {
        b = b.header("location", loc);
    }
    b.body(Either::Left(Full::new(body))).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "building a response");
        let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn error_response(status: u16) -> Response<Body> {
    let body = format!("{}\n", action::reason(status));
    local(status, "text/plain", Bytes::from(body), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>, method: &str) -> hyper::http::request::Parts {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn authority_checks() {
        assert_eq!(
            check(&parts("https://Example.com/a", None, "GET")).unwrap(),
            "example.com"
        );
        assert_eq!(
            check(&parts("/a", Some("example.com:8080"), "GET")).unwrap(),
            "example.com:8080"
        );
        let e = |u, h, m| check(&parts(u, h, m)).unwrap_err().status();
        assert_eq!(e("https://a.com/", Some("b.com"), "GET"), Some(400));
        assert_eq!(e("/x", None, "GET"), Some(400));
        assert_eq!(e("https://a.com/", None, "CONNECT"), Some(405));
        assert_eq!(e("/x", Some("bad host"), "GET"), Some(400));
    }

    #[tokio::test]
    async fn rewind_replays_the_sniffed_bytes_first() {
        use tokio::io::AsyncReadExt;
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"rest")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(b"PRI ".to_vec(), b);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"PRI rest");
    }
}
