//! Phase `upstream_request` for requests that arrived over HTTP/2, by the group's
//! `protocol_version`: HTTP/1.1 over the targets' pooled connections (`h2_to_h1`, in the
//! stream's own task), or h2 through hyper's client (one multiplexed connection per target).
//! Retries follow the HTTP/1.1 path's rules: a connect failure is always retried; a request
//! that went out only if its method is idempotent and its body was not streamed.

use crate::error::ProxyError;
use crate::request_filter::BODY_IDLE;
use crate::sticky::{self, StickyKey};
use crate::upstream::Up;
use crate::upstream::{self, StickyMode, MAX_ATTEMPTS};
use bytes::Bytes;
use causeway_config::alb::{LoadBalancerAttributes, XffMode};
use causeway_dataplane::http1::head::{is_hop_by_hop, list_items};
use causeway_dataplane::http1::Framing;
use causeway_dataplane::target::{InFlight, Target, TargetGroup};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

/// What a target gets as a request body: nothing (replayable), or the client's stream.
pub type ReqBody = Either<Empty<Bytes>, Incoming>;

/// How long a shared h2 connection may take to become ready before it counts as stale.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The h2 connections to targets of `HTTP2` and `GRPC` groups, by address. Shared across
/// reloads.
#[derive(Default)]
pub struct Pools {
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<ReqBody>>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

impl Pools {
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
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a, _| live(a));
    }
}

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone)]
pub struct Origin {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub scheme: &'static str,
    /// The TLS cipher and protocol, for the access log.
    pub tls_names: Option<(&'static str, &'static str)>,
    /// On a listener that does mutual TLS, the client certificate's fields for targets
    /// (`crate::upstream::TlsFacts::mtls`).
    pub mtls: Option<std::sync::Arc<[(&'static str, String)]>>,
    /// The listener's new names for the TLS fields (`crate::upstream::TlsFacts::renames`).
    pub renames: Option<std::sync::Arc<causeway_config::listener_headers::RequestRenames>>,
    /// When the connection opened (its access log `conn_trace_id` comes from it).
    pub opened: tokio::time::Instant,
}

/// A target's response body on its way to the client: from an h2 target (holding the
/// target's in-flight count until it ends), from an HTTP/1.1 target, or already whole.
pub enum Relayed {
    H2 {
        inner: Incoming,
        _in_flight: InFlight,
    },
    H1(crate::h2_to_h1::H1Body),
    Whole(Option<Bytes>),
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Relayed::H2 { inner, .. } => Pin::new(inner)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            Relayed::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            Relayed::Whole(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Relayed::H2 { inner, .. } => inner.is_end_stream(),
            Relayed::H1(b) => b.is_end_stream(),
            Relayed::Whole(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Relayed::H2 { inner, .. } => inner.size_hint(),
            Relayed::H1(b) => b.size_hint(),
            Relayed::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// What happened, with the response to relay.
pub type Forwarded = (Response<Relayed>, upstream::Outcome);

/// What a target's fields are made from: the client's fields and `:authority`, its
/// connection, the attributes, and the request's trace id.
#[derive(Clone, Copy)]
pub struct FieldSource<'a> {
    pub client: &'a HeaderMap,
    pub authority: &'a str,
    pub from: &'a Origin,
    pub lb: &'a LoadBalancerAttributes,
    pub trace: &'a crate::trace::TraceId,
}

/// A field value for the target: one of the client's, shared, or one we made.
pub enum FieldValue<'a> {
    Client(&'a HeaderValue),
    Ours(&'a [u8]),
}

impl FieldValue<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            FieldValue::Client(v) => v.as_bytes(),
            FieldValue::Ours(b) => b,
        }
    }
}

/// The fields a target gets, from the client's, in order: hop-by-hop ones dropped (`te:
/// trailers` kept for h2 targets, which gRPC needs), Host as the attributes say (h2 targets
/// get it as `:authority` instead), X-Forwarded-For/Proto/Port and the trace id set. Each goes
/// to `emit`; returns the Host value used.
pub fn target_fields(
    src: FieldSource<'_>,
    h2: bool,
    emit: &mut dyn FnMut(&HeaderName, FieldValue<'_>),
) -> String {
    let FieldSource {
        client,
        authority,
        from,
        lb,
        trace,
    } = src;
    let port = from.local.port();
    let mut host = authority.to_owned();
    if !lb.preserve_host_header
        && port != 80
        && port != 443
        && crate::route::host_without_port(host.as_bytes()) == host.as_bytes()
    {
        // AWS: without preserve_host_header, a non-default listener port is appended.
        host.push(':');
        host.push_str(crate::action::itoa(u64::from(port)).as_str());
    }
    let mut listed: smallvec::SmallVec<[&[u8]; 4]> = smallvec::SmallVec::new();
    for v in client.get_all(hyper::header::CONNECTION) {
        listed.extend(list_items(v.as_bytes()));
    }
    for (name, value) in client {
        let n = name.as_str();
        if (h2 && n == "te") || n == "host" {
            if h2 && n == "te" && value.as_bytes().eq_ignore_ascii_case(b"trailers") {
                emit(name, FieldValue::Client(value));
            }
            continue;
        }
        if is_hop_by_hop(n.as_bytes())
            || upstream::attribute_drops(
                lb,
                n.as_bytes(),
                from.mtls.is_some(),
                from.renames.as_deref(),
            )
            || listed.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes()))
            || n == "x-forwarded-for"
            || n == "x-forwarded-proto"
            || n == "x-forwarded-port"
            || n == crate::trace::HEADER
        {
            continue;
        }
        emit(name, FieldValue::Client(value));
    }
    if !h2 && HeaderValue::from_str(&host).is_ok() {
        emit(&hyper::header::HOST, FieldValue::Ours(host.as_bytes()));
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior = client.get_all(&xff);
    match lb.xff {
        XffMode::Remove => {}
        XffMode::Preserve => {
            for v in prior {
                emit(&xff, FieldValue::Client(v));
            }
        }
        XffMode::Append => {
            let mut line = Vec::with_capacity(48);
            for v in prior {
                line.extend_from_slice(v.as_bytes());
                line.extend_from_slice(b", ");
            }
            upstream::push_client(&mut line, from.peer, lb.xff_client_port);
            if HeaderValue::from_bytes(&line).is_ok() {
                emit(&xff, FieldValue::Ours(&line));
            }
        }
    }
    emit(
        &HeaderName::from_static("x-forwarded-proto"),
        FieldValue::Ours(from.scheme.as_bytes()),
    );
    emit(
        &HeaderName::from_static("x-forwarded-port"),
        FieldValue::Ours(crate::action::itoa(u64::from(port)).as_bytes()),
    );
    let renamed = |usual: &'static str| from.renames.as_deref().map_or(usual, |r| r.name(usual));
    if let Some((cipher, version)) = from.tls_names.filter(|_| lb.tls_headers) {
        for (usual, value) in [
            ("X-Amzn-Tls-Version", version),
            ("X-Amzn-Tls-Cipher-Suite", cipher),
        ] {
            if let Ok(name) = HeaderName::from_bytes(renamed(usual).as_bytes()) {
                emit(&name, FieldValue::Ours(value.as_bytes()));
            }
        }
    }
    for (name, value) in from.mtls.as_deref().unwrap_or_default() {
        if let Ok(name) = HeaderName::from_bytes(renamed(name).as_bytes()) {
            emit(&name, FieldValue::Ours(value.as_bytes()));
        }
    }
    let mut id = Vec::with_capacity(48);
    trace.write(
        client.get(crate::trace::HEADER).map(|v| v.as_bytes()),
        &mut id,
    );
    if HeaderValue::from_bytes(&id).is_ok() {
        emit(
            &HeaderName::from_static(crate::trace::HEADER),
            FieldValue::Ours(&id),
        );
    }
    host
}

/// The target's fields (`target_fields`) as a header map, and the Host value used.
pub fn target_headers(src: FieldSource<'_>, h2: bool) -> (HeaderMap, String) {
    let mut out = HeaderMap::with_capacity(src.client.len() + 4);
    let host = target_fields(src, h2, &mut |name, value| {
        let value = match value {
            FieldValue::Client(v) => v.clone(),
            FieldValue::Ours(b) => match HeaderValue::from_bytes(b) {
                Ok(v) => v,
                Err(_) => return,
            },
        };
        out.append(name.clone(), value);
    });
    (out, host)
}

/// The HTTP/1.1 request head a target gets, written straight from the client's fields (no
/// header map built between): the request line, `target_fields` without any Content-Length,
/// and the framing. The same bytes as `h2_to_h1::request_head` of `target_headers`.
pub fn target_head_h1(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    src: FieldSource<'_>,
    framing: crate::h2_to_h1::ReqFraming,
) {
    crate::h2_to_h1::request_line(out, method, path_and_query);
    target_fields(src, false, &mut |name, value| {
        if name != hyper::header::CONTENT_LENGTH {
            crate::h2_to_h1::field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    });
    crate::h2_to_h1::end_head(out, framing);
}

/// The shared h2 connection to a target, or a new one. The flag says it was shared already (so
/// its failure does not blame the target).
async fn h2_sender(
    pools: &Arc<Pools>,
    addr: SocketAddr,
    tls: bool,
) -> Result<(http2::SendRequest<ReqBody>, bool), ProxyError> {
    if let Some(s) = pools.h2(addr) {
        return Ok((s, true));
    }
    let tcp = upstream::connect(addr).await?;
    let s = if tls {
        let stream = match timeout(
            upstream::CONNECT_TIMEOUT,
            causeway_dataplane::tls::connect_target(tcp, true),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ProxyError::ConnectFailed),
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        h2_handshake(addr, TokioIo::new(stream)).await?
    } else {
        h2_handshake(addr, TokioIo::new(tcp)).await?
    };
    pools.put_h2(addr, &s);
    Ok((s, false))
}

/// h2 over a connected stream; the connection runs on its own task.
async fn h2_handshake<IO>(
    addr: SocketAddr,
    io: IO,
) -> Result<http2::SendRequest<ReqBody>, ProxyError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (s, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .map_err(|_| ProxyError::ConnectFailed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target = %addr, error = %e, "h2 target connection ended");
        }
    });
    Ok(s)
}

/// Why a send failed, and the request back if it never left.
struct SendFailed {
    error: ProxyError,
    unsent: Option<Request<ReqBody>>,
}

async fn h2_send(
    s: &mut http2::SendRequest<ReqBody>,
    req: Request<ReqBody>,
    wait: Duration,
) -> Result<Response<Incoming>, SendFailed> {
    if !matches!(timeout(READY_TIMEOUT, s.ready()).await, Ok(Ok(()))) {
        return Err(SendFailed {
            error: ProxyError::UpstreamFailed,
            unsent: Some(req),
        });
    }
    match timeout(wait, s.try_send_request(req)).await {
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

/// A bodyless request's parts, kept to resend it.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Template {
    fn build(&self) -> Request<ReqBody> {
        let mut r = Request::new(Either::Left(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// What every attempt shares: the group, the sticky target and cookie, the client's origin.
struct Plan<'a> {
    group: &'a TargetGroup,
    lb: &'a LoadBalancerAttributes,
    key: &'a StickyKey,
    stickiness: Option<StickyMode<'a>>,
    stuck: Option<Arc<Target>>,
    now_unix: u64,
    group_cookie: Option<&'a str>,
    hash: u64,
    idempotent: bool,
    tls: bool,
}

impl Plan<'_> {
    /// The sticky and group cookies on a target's answer.
    fn cookies(&self, fields: &mut HeaderMap, addr: SocketAddr) {
        if let Some(m) = self.stickiness {
            let sets_app = m.app_cookie.is_none_or(|name| {
                let sets = fields
                    .get_all(hyper::header::SET_COOKIE)
                    .iter()
                    .map(|v| v.as_bytes());
                sticky::sets_cookie(sets, name)
            });
            if sets_app {
                let line = format!(
                    "{}={}; Max-Age={}; Path=/",
                    m.cookie,
                    sticky::encode(self.key, addr, self.now_unix + m.duration.as_secs()),
                    m.duration.as_secs()
                );
                append_cookie(fields, &line);
            }
        }
        if let Some(line) = self.group_cookie {
            append_cookie(fields, line);
        }
    }

    /// The next target to try, within the retry budget, claimed for the request; `last`
    /// becomes why there is none on the first attempt.
    async fn next(
        &self,
        attempt: usize,
        tried: &[SocketAddr],
        last: &mut ProxyError,
    ) -> Option<(Arc<Target>, InFlight)> {
        if attempt > 1 && !self.group.retry_budget.withdraw(Instant::now()) {
            metrics::counter!("causeway_alb_retry_budget_exhausted_total",
                "target_group" => self.group.cfg.name.clone())
            .increment(1);
            return None;
        }
        let retry = attempt > 1;
        match upstream::claim_peer(self.group, tried, self.hash, self.stuck.as_ref(), retry).await {
            Ok(c) => Some(c),
            Err(e) => {
                if !retry {
                    *last = e;
                }
                None
            }
        }
    }

    fn connect_failed(&self, target: &Target) {
        metrics::counter!("causeway_alb_target_connection_error_count",
            "target_group" => self.group.cfg.name.clone())
        .increment(1);
        blame(self.group, target);
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
    trace: &crate::trace::TraceId,
) -> Result<Forwarded, (ProxyError, Option<SocketAddr>)> {
    let h2 = group.cfg.protocol_version.is_h2();
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
    let plan = Plan {
        group,
        lb,
        key,
        stickiness,
        stuck,
        now_unix,
        group_cookie,
        hash,
        idempotent: matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ),
        tls: group.cfg.protocol == "HTTPS",
    };
    group.retry_budget.deposit();
    if h2 && crate::ws_h2::is_websocket(&parts) {
        return Err((
            ProxyError::Client(501, "WebSockets need an HTTP/1.1 target group"),
            None,
        ));
    }
    if h2 {
        // Boxed: its state (hyper's h2 client handshake among it) is several KB, and every
        // stream's future would otherwise be that large, and copied whole when boxed.
        let src = FieldSource {
            client: &parts.headers,
            authority,
            from,
            lb,
            trace,
        };
        let (headers, host) = target_headers(src, true);
        Box::pin(forward_h2(&plan, parts, body, headers, &host, pools)).await
    } else {
        forward_h1(&plan, parts, body, authority, from, trace).await
    }
}

/// HTTP/1.1 to the target, over its pooled connections.
async fn forward_h1(
    plan: &Plan<'_>,
    mut parts: hyper::http::request::Parts,
    body: Incoming,
    authority: &str,
    from: &Origin,
    trace: &crate::trace::TraceId,
) -> Result<Forwarded, (ProxyError, Option<SocketAddr>)> {
    use crate::h2_to_h1::{self as h1, ReqFraming};
    // A WebSocket (RFC 8441) goes as a GET upgrade on a connection of its own.
    let mut upgrade = crate::ws_h2::is_websocket(&parts)
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let framing = match upgrade {
        Some(_) => ReqFraming::None,
        None => ReqFraming::of(&parts.method, &body),
    };
    let mut body = (upgrade.is_none() && !body.is_end_stream()).then_some(body);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(512);
    let src = FieldSource {
        client: &parts.headers,
        authority,
        from,
        lb: plan.lb,
        trace,
    };
    if upgrade.is_some() {
        // Our key goes to the target, never one the h2 client sent (RFC 8441 has none).
        let (mut headers, _) = target_headers(src, false);
        headers.remove("sec-websocket-key");
        h1::request_head(&mut head, &Method::GET, pq, &headers, framing);
        crate::ws_h2::upgrade_head(&mut head, &headers, &crate::ws_h2::new_key());
    } else {
        target_head_h1(&mut head, &parts.method, pq, src, framing);
    }
    let is_head = parts.method == Method::HEAD;
    let idle = plan.lb.idle_timeout;
    let mut tried: smallvec::SmallVec<[SocketAddr; 4]> = smallvec::SmallVec::new();
    let mut last = ProxyError::NoTargets;
    let mut ubuf = Vec::new();
    let mut resp = causeway_dataplane::http1::ResponseHead::default();
    for attempt in 1..=MAX_ATTEMPTS {
        let Some((target, in_flight)) = plan.next(attempt, &tried, &mut last).await else {
            break;
        };
        let addr = target.cfg.address;
        let pooled = match upgrade {
            Some(_) => None,
            None => Up::pooled(&target, plan.tls),
        };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(u) => u,
            None => match Up::connect(addr, plan.tls).await {
                Ok(u) => u,
                Err(e) => {
                    plan.connect_failed(&target);
                    tried.push(addr);
                    last = e;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let mut streamed = false;
        let exchanged = async {
            up.write_all(&head)
                .await
                .map_err(|_| ProxyError::UpstreamFailed)?;
            match body.as_mut() {
                Some(b) => {
                    streamed = true;
                    h1::send_body(&mut up, b, framing == ReqFraming::Chunked, BODY_IDLE).await?
                }
                None => up.flush().await.map_err(|_| ProxyError::UpstreamFailed)?,
            }
            h1::read_head(&mut up, &mut ubuf, &mut resp, idle, upgrade.is_some()).await
        }
        .await;
        if let Err(e) = exchanged {
            tracing::debug!(target = %addr, reused, error = %e, "target request failed");
            if matches!(e, ProxyError::Client(..) | ProxyError::ClientGone) {
                return Err((e, Some(addr)));
            }
            if !reused && e.blames_target() {
                blame(plan.group, &target);
            }
            if !reused {
                tried.push(addr);
            }
            last = e;
            if e.retryable(plan.idempotent, !streamed) {
                continue;
            }
            return Err((e, Some(addr)));
        }
        let target_time = started.elapsed();
        target.observe_latency(target_time);
        let status = resp.status;
        plan.group.record_outcome(&target, status >= 500);
        let head_bytes = Bytes::copy_from_slice(&ubuf[..resp.len]);
        let mut fields = h1::response_fields(&head_bytes, &resp).map_err(|e| (e, Some(addr)))?;
        plan.cookies(&mut fields, addr);
        // A WebSocket's refusal (3xx to 5xx) is relayed like any answer; its connection is
        // not reused.
        if let Some(on) = upgrade.take_if(|_| status < 300) {
            let answer =
                websocket_answer(status, on, up, &ubuf[resp.len..], fields, in_flight, idle);
            let outcome = upstream::Outcome::answered(status, addr, target_time, attempt, 0);
            return answer.map(|r| (r, outcome)).map_err(|e| (e, Some(addr)));
        }
        let rframing = resp
            .framing(&ubuf, is_head)
            .map_err(|_| (ProxyError::BadResponse, Some(addr)))?;
        let reusable = upgrade.is_none()
            && resp.minor_version == 1
            && !resp.lists_token(&ubuf, "connection", "close");
        let mut b = h1::H1Body::new(
            up,
            std::mem::take(&mut ubuf),
            resp.len,
            rframing,
            reusable,
            target.clone(),
            in_flight,
            idle,
        );
        let sent_bytes = match rframing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let body = match b.take_whole() {
            Some(whole) => Relayed::Whole(Some(whole)),
            None => Relayed::H1(b),
        };
        let mut response = Response::new(body);
        *response.status_mut() = hyper::StatusCode::from_u16(status)
            .map_err(|_| (ProxyError::BadResponse, Some(addr)))?;
        *response.headers_mut() = fields;
        let outcome = upstream::Outcome::answered(status, addr, target_time, attempt, sent_bytes);
        return Ok((response, outcome));
    }
    Err((last, tried.last().copied()))
}

/// The h2 client's answer to its WebSocket: after the target's 101, a 200 and the tunnel (run
/// on a task of its own once hyper has upgraded the stream). A 2xx from the target is refused
/// as a 502: there is no tunnel, and a 2xx would tell the client there was one.
fn websocket_answer(
    status: u16,
    on: hyper::upgrade::OnUpgrade,
    up: Up,
    early: &[u8],
    mut fields: HeaderMap,
    in_flight: InFlight,
    idle: Duration,
) -> Result<Response<Relayed>, ProxyError> {
    if status != 101 {
        tracing::debug!(status, "target refused a WebSocket upgrade");
        return Err(ProxyError::BadResponse);
    }
    crate::ws_h2::answer_fields(&mut fields);
    let early = Bytes::copy_from_slice(early);
    tokio::spawn(crate::ws_h2::tunnel(on, up, early, in_flight, idle));
    let mut response = Response::new(Relayed::Whole(None));
    *response.headers_mut() = fields;
    Ok(response)
}

/// h2 to the target, through hyper's client over one shared connection per target.
async fn forward_h2(
    plan: &Plan<'_>,
    parts: hyper::http::request::Parts,
    body: Incoming,
    headers: HeaderMap,
    host: &str,
    pools: &Arc<Pools>,
) -> Result<Forwarded, (ProxyError, Option<SocketAddr>)> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme(if plan.tls { "https" } else { "http" })
        .authority(host)
        .path_and_query(pq)
        .build()
        .map_err(|_| (ProxyError::Client(400, "invalid request target"), None))?;
    let empty = body.is_end_stream();
    let template = (empty && plan.idempotent).then(|| Template {
        method: parts.method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
    });
    let mut first = Request::new(if empty {
        Either::Left(Empty::new())
    } else {
        Either::Right(body)
    });
    *first.method_mut() = parts.method;
    *first.uri_mut() = uri;
    *first.version_mut() = Version::HTTP_2;
    *first.headers_mut() = headers;
    let mut pending = Some(first);
    let mut tried: smallvec::SmallVec<[SocketAddr; 4]> = smallvec::SmallVec::new();
    let mut last = ProxyError::NoTargets;
    for attempt in 1..=MAX_ATTEMPTS {
        let Some((target, in_flight)) = plan.next(attempt, &tried, &mut last).await else {
            break;
        };
        let Some(req) = pending
            .take()
            .or_else(|| template.as_ref().map(Template::build))
        else {
            break;
        };
        let addr = target.cfg.address;
        let (mut s, reused) = match h2_sender(pools, addr, plan.tls).await {
            Ok(s) => s,
            Err(e) => {
                plan.connect_failed(&target);
                tried.push(addr);
                last = e;
                pending = Some(req);
                continue;
            }
        };
        let started = Instant::now();
        match h2_send(&mut s, req, plan.lb.idle_timeout).await {
            Ok(resp) => {
                let target_time = started.elapsed();
                target.observe_latency(target_time);
                let status = resp.status().as_u16();
                plan.group.record_outcome(&target, status >= 500);
                let (mut rparts, rbody) = resp.into_parts();
                response_headers(&mut rparts.headers);
                plan.cookies(&mut rparts.headers, addr);
                let sent_bytes = rbody.size_hint().exact().unwrap_or(0);
                let body = Relayed::H2 {
                    inner: rbody,
                    _in_flight: in_flight,
                };
                let outcome =
                    upstream::Outcome::answered(status, addr, target_time, attempt, sent_bytes);
                return Ok((Response::from_parts(rparts, body), outcome));
            }
            Err(SendFailed { error, unsent }) => {
                tracing::debug!(target = %addr, reused, error = %error, "target request failed");
                if !reused && error.blames_target() {
                    blame(plan.group, &target);
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
            tls_names: None,
            mtls: None,
            renames: None,
            opened: tokio::time::Instant::now(),
        }
    }

    /// A client's fields, in order (repeated names kept).
    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn target_head_drops_hop_by_hop_and_sets_forwarding_fields() {
        let h = fields(&[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "gopher"),
            ("accept", "*/*"),
        ]);
        let id = crate::trace::TraceId::new(1, 2);
        let (lb, from_8443, from_443) = (lb(), from(8443), from(443));
        let src = |authority, from| FieldSource {
            client: &h,
            authority,
            from,
            lb: &lb,
            trace: &id,
        };
        let (out, host) = target_headers(src("example.com", &from_8443), false);
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
        assert_eq!(
            out["x-amzn-trace-id"],
            "Root=1-00000001-000000000000000000000002"
        );
        let (out, host) = target_headers(src("example.com:9", &from_443), true);
        assert_eq!(host, "example.com:9");
        assert!(out.get("host").is_none(), "h2 targets get :authority");
        assert_eq!(out["te"], "trailers", "gRPC needs te: trailers");
    }

    /// The head written straight from the client's fields is byte for byte the one built
    /// through a header map, whatever the fields, the XFF mode, the port and the framing.
    #[test]
    fn the_direct_head_is_the_header_map_head() {
        use crate::h2_to_h1::{request_head, ReqFraming};
        let h = fields(&[
            ("cookie", "a=1"),
            ("connection", "X-Secret, ,keep-alive"),
            ("x-secret", "1"),
            ("cookie", "b=2"),
            ("host", "ignored.example"),
            ("content-length", "5"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            (
                "x-amzn-trace-id",
                "Root=1-00000001-000000000000000000000009",
            ),
            ("user-agent", "t"),
            ("x_user", "forged"),
            ("x-amzn-tls-version", "TLSv9"),
        ]);
        let id = crate::trace::TraceId::new(1, 2);
        let mut lbs = Vec::new();
        for xff in [XffMode::Append, XffMode::Preserve, XffMode::Remove] {
            for preserve_host_header in [false, true] {
                for attributes in [false, true] {
                    let mut lb = lb();
                    lb.xff = xff;
                    lb.preserve_host_header = preserve_host_header;
                    lb.xff_client_port = attributes;
                    lb.drop_invalid_header_fields = attributes;
                    lb.tls_headers = attributes;
                    lbs.push(lb);
                }
            }
        }
        let framings = [ReqFraming::None, ReqFraming::Length(5), ReqFraming::Chunked];
        for lb in &lbs {
            for port in [80, 8443] {
                for framing in framings {
                    for (fields, authority) in [(&h, "example.com"), (&HeaderMap::new(), "a:1")] {
                        let mut from = from(port);
                        from.tls_names = Some(("TLS_AES_128_GCM_SHA256", "TLSv1.3"));
                        let src = FieldSource {
                            client: fields,
                            authority,
                            from: &from,
                            lb,
                            trace: &id,
                        };
                        let (map, _) = target_headers(src, false);
                        let mut want = Vec::new();
                        request_head(&mut want, &Method::PUT, "/p?q", &map, framing);
                        let mut got = vec![b'x'; 3];
                        target_head_h1(&mut got, &Method::PUT, "/p?q", src, framing);
                        assert_eq!(
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(&want)
                        );
                    }
                }
            }
        }
        let mut got = Vec::new();
        let lb = lb();
        let from = from(8443);
        let src = FieldSource {
            client: &h,
            authority: "example.com",
            from: &from,
            lb: &lb,
            trace: &id,
        };
        target_head_h1(&mut got, &Method::GET, "/", src, ReqFraming::None);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "GET / HTTP/1.1\r\ncookie: a=1\r\ncookie: b=2\r\nuser-agent: t\r\n\
             x_user: forged\r\nx-amzn-tls-version: TLSv9\r\n\
             host: example.com:8443\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\
             x-forwarded-proto: https\r\nx-forwarded-port: 8443\r\n\
             x-amzn-trace-id: Self=1-00000001-000000000000000000000002;\
             Root=1-00000001-000000000000000000000009\r\n\r\n"
        );
        // With ALB's three attributes on: the client's port, ours TLS fields in place of the
        // client's, and no field with an invalid name.
        let mut lb = lb;
        lb.xff_client_port = true;
        lb.drop_invalid_header_fields = true;
        lb.tls_headers = true;
        let mut from = from;
        from.tls_names = Some(("ECDHE-RSA-AES128-GCM-SHA256", "TLSv1.2"));
        let src = FieldSource {
            client: &h,
            authority: "example.com",
            from: &from,
            lb: &lb,
            trace: &id,
        };
        let mut got = Vec::new();
        target_head_h1(&mut got, &Method::GET, "/", src, ReqFraming::None);
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "GET / HTTP/1.1\r\ncookie: a=1\r\ncookie: b=2\r\nuser-agent: t\r\n\
             host: example.com:8443\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7:5000\r\n\
             x-forwarded-proto: https\r\nx-forwarded-port: 8443\r\n\
             x-amzn-tls-version: TLSv1.2\r\nx-amzn-tls-cipher-suite: ECDHE-RSA-AES128-GCM-SHA256\r\n\
             x-amzn-trace-id: Self=1-00000001-000000000000000000000002;\
             Root=1-00000001-000000000000000000000009\r\n\r\n"
        );
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
