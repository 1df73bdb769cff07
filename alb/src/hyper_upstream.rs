//! Phase `upstream_request` for requests that arrived over HTTP/2: hyper's clients carry them
//! to targets over HTTP/1.1 (pooled, one request at a time) or h2 with prior knowledge (one
//! multiplexed connection per target), by the group's `protocol_version`. Retries follow the
//! HTTP/1.1 path's rules: a request never sent is always retried; one sent is retried only if
//! its method is idempotent and it has no body.

use crate::error::ProxyError;
use crate::sticky::{self, StickyKey};
use crate::upstream::{self, StickyMode, MAX_ATTEMPTS};
use bytes::Bytes;
use causeway_config::alb::{LoadBalancerAttributes, XffMode};
use causeway_dataplane::http1::head::is_hop_by_hop;
use causeway_dataplane::target::{InFlight, Target, TargetGroup};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{timeout, Instant};

/// What a target gets as a request body: nothing (replayable), or the client's stream.
pub type ReqBody = Either<Empty<Bytes>, Incoming>;

/// Idle HTTP/1.1 connections kept per target for requests that came over h2.
const MAX_IDLE_PER_TARGET: usize = 64;
/// How long a pooled connection may take to become ready before it counts as stale.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Upstream connections of the hyper clients, by target address. Shared across reloads.
#[derive(Default)]
pub struct Pools {
    h1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<ReqBody>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<ReqBody>>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

impl Pools {
    fn take_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<ReqBody>> {
        let mut map = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        let idle = map.get_mut(&addr)?;
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_h1(&self, addr: SocketAddr, s: http1::SendRequest<ReqBody>) {
        if s.is_closed() {
            return;
        }
        let mut map = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        let idle = map.entry(addr).or_default();
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(s);
        }
    }

    fn h2(&self, addr: SocketAddr) -> Option<http2::SendRequest<ReqBody>> {
        let mut map = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(&addr);
                None
            }
            None => None,
        }
    }

    fn put_h2(&self, addr: SocketAddr, s: &http2::SendRequest<ReqBody>) {
        let mut map = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(addr, s.clone());
    }

    /// Closes the connections of targets no longer registered (after a reload).
    pub fn retain(&self, live: impl Fn(&SocketAddr) -> bool) {
        self.h1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, _| live(a));
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, _| live(a));
    }

    /// Idle HTTP/1.1 and live h2 connections held (for tests and metrics).
    pub fn held(&self) -> (usize, usize) {
        let h1 = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        (h1.values().map(Vec::len).sum(), h2.len())
    }
}

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: &'static str,
}

/// A target's response body on its way to the client. It holds the target's in-flight count
/// until it ends, and then gives an HTTP/1.1 connection back to its pool.
pub struct Relayed {
    inner: Incoming,
    /// The body was read to its end.
    ended: bool,
    _in_flight: InFlight,
    give_back: Option<(Arc<Pools>, SocketAddr, http1::SendRequest<ReqBody>)>,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").finish_non_exhaustive()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // hyper stops polling a body once it reports its end, so the end is judged here: a
        // connection whose response was read to the end goes back to the pool, any other
        // closes with its sender.
        if let Some((pools, addr, s)) = self.give_back.take() {
            if self.ended || self.inner.is_end_stream() {
                pools.put_h1(addr, s);
            }
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What happened, with the response to relay.
pub type Forwarded = (Response<Relayed>, upstream::Outcome);

/// The request head a target gets, from the client's: hop-by-hop fields dropped (`te:
/// trailers` kept for h2 targets, which gRPC needs), Host as the attributes say,
/// X-Forwarded-For/Proto/Port set. Returns the head and the Host value used.
pub fn target_headers(
    client: &HeaderMap,
    authority: &str,
    from: &Origin,
    lb: &LoadBalancerAttributes,
    h2: bool,
) -> (HeaderMap, String) {
    let port = from.local.port();
    let mut host = authority.to_owned();
    if !lb.preserve_host_header
        && port != 80
        && port != 443
        && crate::route::host_without_port(host.as_bytes()) == host.as_bytes()
    {
        // AWS: without preserve_host_header, a non-default listener port is appended.
        host.push(':');
        host.push_str(&port.to_string());
    }
    let listed: Vec<String> = client
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    for (name, value) in client {
        let n = name.as_str();
        if (h2 && n == "te") || n == "host" {
            if h2 && n == "te" && value.as_bytes().eq_ignore_ascii_case(b"trailers") {
                out.append(name.clone(), value.clone());
            }
            continue;
        }
        if is_hop_by_hop(n.as_bytes())
            || listed.iter().any(|t| t == n)
            || n == "x-forwarded-for"
            || n == "x-forwarded-proto"
            || n == "x-forwarded-port"
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if !h2 {
        if let Ok(v) = HeaderValue::from_str(&host) {
            out.insert(hyper::header::HOST, v);
        }
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior = client.get_all(&xff);
    match lb.xff {
        XffMode::Remove => {}
        XffMode::Preserve => {
            for v in prior {
                out.append(xff.clone(), v.clone());
            }
        }
        XffMode::Append => {
            let mut line = Vec::new();
            for v in prior {
                line.extend_from_slice(v.as_bytes());
                line.extend_from_slice(b", ");
            }
            let ip = match from.peer.ip() {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
                ip => ip,
            };
            line.extend_from_slice(ip.to_string().as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&line) {
                out.insert(xff, v);
            }
        }
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(from.scheme),
    );
    out.insert(HeaderName::from_static("x-forwarded-port"), port.into());
    (out, host)
}

/// A connection to `target`: a pooled or shared one, else a new one. The flag says it was
/// reused (so its failure does not blame the target).
async fn sender(
    pools: &Arc<Pools>,
    addr: SocketAddr,
    h2: bool,
    tls: bool,
) -> Result<(Sender, bool), ProxyError> {
    if h2 {
        if let Some(s) = pools.h2(addr) {
            return Ok((Sender::H2(s), true));
        }
    } else if let Some(s) = pools.take_h1(addr) {
        return Ok((Sender::H1(s), true));
    }
    let tcp = upstream::connect(addr).await?;
    if tls {
        let stream = match timeout(
            upstream::CONNECT_TIMEOUT,
            causeway_dataplane::tls::connect_target(tcp, h2),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ProxyError::ConnectFailed),
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        return handshake(pools, addr, h2, TokioIo::new(stream)).await;
    }
    handshake(pools, addr, h2, TokioIo::new(tcp)).await
}

/// HTTP/1.1 or h2 over a connected stream; the connection runs on its own task.
async fn handshake<IO>(
    pools: &Arc<Pools>,
    addr: SocketAddr,
    h2: bool,
    io: IO,
) -> Result<(Sender, bool), ProxyError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (s, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|_| ProxyError::ConnectFailed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target = %addr, error = %e, "h2 target connection ended");
            }
        });
        pools.put_h2(addr, &s);
        Ok((Sender::H2(s), false))
    } else {
        let (s, conn) = http1::handshake(io)
            .await
            .map_err(|_| ProxyError::ConnectFailed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(target = %addr, error = %e, "target connection ended");
            }
        });
        Ok((Sender::H1(s), false))
    }
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// Why a send failed, and the request back if it never left.
struct SendFailed {
    error: ProxyError,
    unsent: Option<Request<ReqBody>>,
}

impl Sender {
    async fn send(
        &mut self,
        req: Request<ReqBody>,
        wait: Duration,
    ) -> Result<Response<Incoming>, SendFailed> {
        let ready = match self {
            Sender::H1(s) => timeout(READY_TIMEOUT, s.ready()).await,
            Sender::H2(s) => timeout(READY_TIMEOUT, s.ready()).await,
        };
        if !matches!(ready, Ok(Ok(()))) {
            return Err(SendFailed {
                error: ProxyError::UpstreamFailed,
                unsent: Some(req),
            });
        }
        let sent = match self {
            Sender::H1(s) => timeout(wait, s.try_send_request(req)).await,
            Sender::H2(s) => timeout(wait, s.try_send_request(req)).await,
        };
        match sent {
            Err(_) => Err(SendFailed {
                error: ProxyError::UpstreamTimeout,
                unsent: None,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let error = if e.error().is_parse() {
                    ProxyError::BadResponse
                } else {
                    ProxyError::UpstreamFailed
                };
                Err(SendFailed { error, unsent })
            }
        }
    }
}

/// A bodyless request's parts, kept to resend it.
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn build(&self) -> Request<ReqBody> {
        let mut r = Request::new(Either::Left(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Forwards one request to the group and returns the target's response. The request's
/// `authority` has been checked by the caller.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    parts: hyper::http::request::Parts,
    body: Incoming,
    authority: &str,
    group: &TargetGroup,
    from: &Origin,
    lb: &LoadBalancerAttributes,
    key: &StickyKey,
    pools: &Arc<Pools>,
    hash: u64,
    group_cookie: Option<&str>,
) -> Result<Forwarded, (ProxyError, Option<SocketAddr>)> {
    let h2 = group.cfg.protocol_version.is_h2();
    let tls = group.cfg.protocol == "HTTPS";
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let stickiness = group.cfg.stickiness.as_ref().and_then(StickyMode::of);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stuck = stickiness.and_then(|m| {
        let cookie = parts
            .headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .find_map(|v| sticky::find_cookie(v.as_bytes(), m.cookie));
        upstream::sticky_target(group, cookie, key, now_unix)
    });
    let (headers, host) = target_headers(&parts.headers, authority, from, lb, h2);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = if h2 {
        Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(host.as_str())
            .path_and_query(pq)
            .build()
    } else {
        Uri::builder().path_and_query(pq).build()
    }
    .map_err(|_| (ProxyError::Client(400, "invalid request target"), None))?;
    let version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let empty = body.is_end_stream();
    let template = (empty && idempotent).then(|| Template {
        method: parts.method.clone(),
        uri: uri.clone(),
        version,
        headers: headers.clone(),
    });
    let mut first = Request::new(if empty {
        Either::Left(Empty::new())
    } else {
        Either::Right(body)
    });
    *first.method_mut() = parts.method;
    *first.uri_mut() = uri;
    *first.version_mut() = version;
    *first.headers_mut() = headers;
    let mut pending = Some(first);
    let mut tried: smallvec::SmallVec<[SocketAddr; 4]> = smallvec::SmallVec::new();
    let mut last = ProxyError::NoTargets;
    group.retry_budget.deposit();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 && !group.retry_budget.withdraw(Instant::now()) {
            metrics::counter!("causeway_alb_retry_budget_exhausted_total",
                "target_group" => group.cfg.name.clone())
            .increment(1);
            break;
        }
        let Some(target) = upstream::upstream_peer(group, &tried, hash, stuck.as_ref()) else {
            break;
        };
        let Some(req) = pending
            .take()
            .or_else(|| template.as_ref().map(Template::build))
        else {
            break;
        };
        let addr = target.cfg.address;
        let in_flight = target.begin();
        let (mut s, reused) = match sender(pools, addr, h2, tls).await {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("causeway_alb_target_connection_error_count",
                    "target_group" => group.cfg.name.clone())
                .increment(1);
                blame(group, &target);
                tried.push(addr);
                last = e;
                pending = Some(req);
                continue;
            }
        };
        let started = Instant::now();
        match s.send(req, lb.idle_timeout).await {
            Ok(resp) => {
                let target_time = started.elapsed();
                target.observe_latency(target_time);
                let status = resp.status().as_u16();
                group.record_outcome(&target, status >= 500);
                let (mut rparts, rbody) = resp.into_parts();
                response_headers(&mut rparts.headers);
                if let Some(m) = stickiness {
                    let sets_app = m.app_cookie.is_none_or(|name| {
                        let sets = rparts
                            .headers
                            .get_all(hyper::header::SET_COOKIE)
                            .iter()
                            .map(|v| v.as_bytes());
                        sticky::sets_cookie(sets, name)
                    });
                    if sets_app {
                        let line = format!(
                            "{}={}; Max-Age={}; Path=/",
                            m.cookie,
                            sticky::encode(key, addr, now_unix + m.duration.as_secs()),
                            m.duration.as_secs()
                        );
                        append_cookie(&mut rparts.headers, &line);
                    }
                }
                if let Some(line) = group_cookie {
                    append_cookie(&mut rparts.headers, line);
                }
                let sent_bytes = rbody.size_hint().exact().unwrap_or(0);
                let give_back = match s {
                    Sender::H1(s) => Some((pools.clone(), addr, s)),
                    Sender::H2(_) => None,
                };
                let body = Relayed {
                    inner: rbody,
                    ended: false,
                    _in_flight: in_flight,
                    give_back,
                };
                let outcome = upstream::Outcome {
                    status,
                    target: addr,
                    close: false,
                    target_time,
                    attempts: attempt,
                    sent_bytes,
                };
                return Ok((Response::from_parts(rparts, body), outcome));
            }
            Err(SendFailed { error, unsent }) => {
                tracing::debug!(target = %addr, reused, error = %error, "target request failed");
                if !reused && error.blames_target() {
                    blame(group, &target);
                }
                if !reused {
                    tried.push(addr);
                }
                last = error;
                match unsent {
                    Some(r) => pending = Some(r),
                    None if error == ProxyError::UpstreamFailed && template.is_some() => {}
                    None => return Err((error, Some(addr))),
                }
            }
        }
    }
    Err((last, tried.last().copied()))
}

fn blame(group: &TargetGroup, target: &Target) {
    target.record_passive_failure();
    group.record_outcome(target, true);
}

fn append_cookie(headers: &mut HeaderMap, line: &str) {
    if let Ok(v) = HeaderValue::from_str(line) {
        headers.append(hyper::header::SET_COOKIE, v);
    }
}

/// A target's response fields as the client gets them over h2: without connection-specific
/// ones.
pub fn response_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
    ] {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb() -> LoadBalancerAttributes {
        let cfg = causeway_config::parse::<causeway_config::alb::FileAlb>(
            "alb.toml",
            "[admin]\naddress = \"127.0.0.1:1\"\n[[listeners]]\naddress = \"127.0.0.1:2\"\ndefault_action = { type = \"fixed-response\" }\n",
            &causeway_config::Context { dir: ".".into() },
        )
        .unwrap();
        cfg.load_balancer
    }

    fn from(port: u16) -> Origin {
        Origin {
            peer: "192.0.2.7:5000".parse().unwrap(),
            local: format!("127.0.0.1:{port}").parse().unwrap(),
            scheme: "https",
        }
    }

    #[test]
    fn target_head_drops_hop_by_hop_and_sets_forwarding_fields() {
        let mut h = HeaderMap::new();
        h.insert("connection", "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("x-forwarded-proto", "gopher".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let (out, host) = target_headers(&h, "example.com", &from(8443), &lb(), false);
        assert_eq!(host, "example.com:8443");
        assert_eq!(out["host"], "example.com:8443");
        assert!(out.get("x-secret").is_none() && out.get("keep-alive").is_none());
        assert!(
            out.get("te").is_none(),
            "te is hop-by-hop for HTTP/1.1 targets"
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-port"], "8443");
        assert_eq!(out["accept"], "*/*");
        let (out, host) = target_headers(&h, "example.com:9", &from(443), &lb(), true);
        assert_eq!(host, "example.com:9");
        assert!(out.get("host").is_none(), "h2 targets get :authority");
        assert_eq!(out["te"], "trailers", "gRPC needs te: trailers");
    }

    #[test]
    fn response_head_loses_connection_fields() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        response_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["content-type"], "text/plain");
    }
}
