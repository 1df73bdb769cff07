//! HTTP/2 from clients: h2c with prior knowledge on HTTP listeners, h2 by ALPN on HTTPS ones.
//! hyper's h2 server, with ALB's limits, hands each stream to [`serve_stream`], which calls
//! the same phases as HTTP/1.1 in order: check → `route` → `auth` → `action` (forward through
//! `hyper_upstream`, redirect, fixed-response) → `logging`.

use crate::action::{self, RedirectInput};
use crate::error::ProxyError;
use crate::hyper_upstream::{self, Origin, Relayed};
use crate::route::{host_without_port, RequestView};
use crate::transform::TransformError;
use crate::{logging, sticky, upstream, Alb};
use bytes::Bytes;
use causeway_config::alb::Action;
use causeway_config::listener_headers::ResponseHeaders;
use causeway_dataplane::select::maglev::hash64;
use causeway_dataplane::{h2conn, Snapshot, Snapshots};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// ALB's limits: 64 KiB of request headers, 128 concurrent streams per connection.
const MAX_HEADER_LIST: u32 = 64 * 1024;
const MAX_STREAMS: u32 = 128;

/// What a client gets as a response body: ours, or a target's.
pub type Body = Either<Full<Bytes>, Relayed>;

/// A stream's whole service, boxed.
type StreamFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// One client connection's facts every stream needs.
struct Ctx {
    from: Origin,
    snaps: Snapshots<Alb>,
    passes: Arc<h2conn::ReadPasses>,
}

/// Serves one h2 connection until it ends, with ALB's limits and idle timeout (no byte moved
/// either way) and the client keep-alive duration; `h2conn::serve` has the details.
pub async fn serve<IO>(
    io: IO,
    from: Origin,
    snaps: Snapshots<Alb>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = {
        let lb = &snaps.load().config.load_balancer;
        h2conn::Limits {
            max_header_list: MAX_HEADER_LIST,
            max_streams: MAX_STREAMS,
            idle: lb.idle_timeout,
            keep_alive: lb.client_keep_alive,
            extended_connect: true,
        }
    };
    let peer = from.peer;
    let passes = Arc::new(h2conn::ReadPasses::default());
    let ctx = Arc::new(Ctx {
        from,
        snaps,
        passes: passes.clone(),
    });
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        // One box per stream, built where it lives: hyper moves a stream's future into the
        // task it spawns (and tokio moves it again), so only a pointer should be moved.
        let stream: StreamFuture =
            Box::pin(async move { Ok::<_, Infallible>(serve_stream(req, &ctx).await) });
        stream
    });
    h2conn::serve(io, svc, limits, peer, shutdown, passes).await;
}

/// The request's authority, checked: `:authority` and Host agree, one Host at most, a valid
/// name; an origin-form path; no CONNECT but a WebSocket's (RFC 8441).
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
    if parts.method == hyper::Method::CONNECT && !crate::ws_h2::is_websocket(parts) {
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
    // Rapid reset: a stream reset right behind its HEADERS ends here, not at a target.
    ctx.passes.let_resets_land().await;
    let (parts, body) = req.into_parts();
    let snap = ctx.snaps.load();
    let info = snap
        .compiled
        .access_log
        .as_ref()
        .map(|_| std::sync::Mutex::new(request_info(&parts, &body, &ctx.from, received)));
    let router = snap.compiled.router(ctx.from.local);
    let (mut response, ended_status) =
        phases(parts, body, ctx, &snap, router, received, info.as_ref()).await;
    if let Some(status) = ended_status {
        snap.compiled.elb_metrics.count(status);
    }
    if let Some(router) = router {
        modify(&mut response, &router.response_headers);
    }
    response
}

/// The listener's header modification on a response: the fields it sets replace a target's;
/// a response the alb made itself (its body is ours) loses the `Server` field if asked.
fn modify(response: &mut Response<Body>, mods: &ResponseHeaders) {
    let ours = matches!(response.body(), Either::Left(_));
    let headers = response.headers_mut();
    if ours && !mods.server {
        headers.remove(hyper::header::SERVER);
    }
    for (name, value) in &mods.set {
        // Both were checked when the config loaded.
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
}

/// check → route → auth → action. Returns the response, and the status when we generated it.
async fn phases(
    parts: hyper::http::request::Parts,
    body: Incoming,
    ctx: &Ctx,
    snap: &Arc<Snapshot<Alb>>,
    router: Option<&crate::route::Router>,
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
    let Some(router) = router else {
        return refused(ProxyError::NoTargets);
    };
    // check
    let authority = match check(&parts) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    // route
    let (action, priority, transforms) = {
        let headers = |name: &str, f: &mut dyn FnMut(&[u8]) -> bool| {
            parts.headers.get_all(name).iter().any(|v| f(v.as_bytes()))
        };
        let view = RequestView {
            method: crate::ws_h2::routed_method(&parts).as_bytes(),
            path: parts.uri.path().as_bytes(),
            query: parts.uri.query().unwrap_or("").as_bytes(),
            host: Some(host_without_port(authority.as_bytes())),
            host_as_sent: Some(authority.as_bytes()),
            source: ctx.from.peer.ip(),
            headers: &headers,
        };
        router.route_with_transforms(&view)
    };
    // authenticate: the matched rule's authenticate-oidc action, or a sign-in's callback.
    // Boxed, and only on a listener with authenticate actions (as over HTTP/1.1).
    let (signed_in, renewed, answer) = if router.authenticates() {
        Box::pin(authenticate(&parts, &authority, snap, router, priority)).await
    } else {
        (None, Vec::new(), None)
    };
    if let Some(a) = answer {
        log(
            logging::Ended::Authenticate {
                status: a.status,
                reason: a.reason,
            },
            priority,
        );
        return (answer_response(&a), Some(a.status));
    }
    if let (Some(i), true) = (info, signed_in.is_some()) {
        i.lock().unwrap_or_else(|e| e.into_inner()).authenticated = true;
    }
    // action
    let (mut resp, status) = 'action: {
        match action {
            Action::FixedResponse { status, .. }
                if *status < 300 && crate::ws_h2::is_websocket(&parts) =>
            {
                // A 2xx to an extended CONNECT opens a tunnel: there is nothing behind this one.
                refused(ProxyError::Client(
                    501,
                    "a WebSocket routed to a fixed response",
                ))
            }
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
                // The matched rule's transforms (the routing decision stands).
                let mut parts = parts;
                let mut authority = authority;
                if let Some(t) = transforms {
                    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    match t.apply(target.as_bytes(), Some(authority.as_bytes())) {
                        Err(te) => break 'action refused(ProxyError::Transform(te)),
                        Ok(rw) => {
                            if let Some(info) = info {
                                let mut i = info.lock().unwrap_or_else(|e| e.into_inner());
                                i.transformed_host.clone_from(&rw.host);
                                i.transformed_uri.clone_from(&rw.target);
                            }
                            if let Some(new) = rw.target {
                                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                                match new.parse() {
                                    Ok(pq) => uri.path_and_query = Some(pq),
                                    Err(_) => {
                                        break 'action refused(ProxyError::Transform(
                                            TransformError::Url,
                                        ))
                                    }
                                }
                                match hyper::Uri::from_parts(uri) {
                                    Ok(u) => parts.uri = u,
                                    Err(_) => {
                                        break 'action refused(ProxyError::Transform(
                                            TransformError::Url,
                                        ))
                                    }
                                }
                            }
                            if let Some(new) = rw.host {
                                authority = new;
                            }
                        }
                    }
                }
                // A rule that authenticates: the client's own user fields go, the alb's come.
                if let Some(fields) = &signed_in {
                    let forged: Vec<hyper::header::HeaderName> = parts
                        .headers
                        .keys()
                        .filter(|n| crate::auth::is_oidc_field(n.as_str().as_bytes()))
                        .cloned()
                        .collect();
                    for name in forged {
                        parts.headers.remove(name);
                    }
                    for (name, value) in fields {
                        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
                            parts
                                .headers
                                .insert(hyper::header::HeaderName::from_static(name), v);
                        }
                    }
                }
                let tg_cookie = parts
                    .headers
                    .get_all(hyper::header::COOKIE)
                    .iter()
                    .find_map(|v| sticky::find_cookie(v.as_bytes(), sticky::TG_COOKIE));
                let key = &snap.compiled.sticky_key;
                let Some((group, group_cookie)) =
                    upstream::pick_group(snap, target_groups, *group_stickiness, tg_cookie, key)
                else {
                    break 'action refused(ProxyError::NoTargets);
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
    };
    // A renewed session's cookies (or its removal) ride on the answer, unless the target's
    // answer sets a cookie of that name (an application logging its user out).
    let theirs: Vec<hyper::header::HeaderValue> = if renewed.is_empty() {
        Vec::new()
    } else {
        resp.headers()
            .get_all(hyper::header::SET_COOKIE)
            .iter()
            .cloned()
            .collect()
    };
    for c in renewed {
        let name = c.split('=').next().unwrap_or_default();
        if sticky::sets_cookie(theirs.iter().map(|v| v.as_bytes()), name) {
            continue;
        }
        if let Ok(v) = hyper::header::HeaderValue::try_from(c) {
            resp.headers_mut().append(hyper::header::SET_COOKIE, v);
        }
    }
    (resp, status)
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
    request.extend_from_slice(crate::action::itoa(u64::from(from.local.port())).as_bytes());
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
        conn_trace: logging::conn_trace(from.peer, from.local, from.opened),
        transformed_host: None,
        transformed_uri: None,
        authenticated: false,
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

/// Phase `authenticate` for an h2 request (as `proxy::authenticate` for HTTP/1.1): the
/// user's fields for the target, or the alb's own answer.
async fn authenticate(
    parts: &hyper::http::request::Parts,
    authority: &str,
    snap: &Snapshot<Alb>,
    router: &crate::route::Router,
    priority: Option<u32>,
) -> (
    Option<Vec<(&'static str, String)>>,
    Vec<String>,
    Option<crate::auth::Answer>,
) {
    use crate::auth;
    let Some(keys) = snap.compiled.auth_keys.as_ref() else {
        return (None, Vec::new(), None);
    };
    if !router.authenticates() {
        return (None, Vec::new(), None);
    }
    let cookies: smallvec::SmallVec<[&[u8]; 2]> = parts
        .headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if parts.uri.path().as_bytes() == auth::CALLBACK && router.signs_in() {
        let query = parts.uri.query().unwrap_or("").as_bytes();
        let providers = |p| router.provider_at(p).map(|a| &**a);
        let a = crate::idp::callback(keys, providers, authority.as_bytes(), query, &cookies).await;
        return (None, Vec::new(), Some(a));
    }
    if let Some(v) = router.validator(priority) {
        let authorization: smallvec::SmallVec<[&[u8]; 1]> = parts
            .headers
            .get_all(hyper::header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        return match crate::idp::validate_jwt(v, &authorization).await {
            Ok(()) => (None, Vec::new(), None),
            Err(a) => (None, Vec::new(), Some(a)),
        };
    }
    let Some(p) = router.provider(priority) else {
        return (None, Vec::new(), None);
    };
    let view = auth::View {
        target: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
        host: authority.as_bytes(),
        cookies: &cookies,
    };
    match crate::idp::verdict(keys, p, priority.unwrap_or(0), &view).await {
        Ok((fields, cookies)) => (Some(fields), cookies, None),
        Err(a) => (None, Vec::new(), Some(a)),
    }
}

/// An authenticate action's own answer as an h2 response.
fn answer_response(a: &crate::auth::Answer) -> Response<Body> {
    let body = Bytes::from(crate::auth::body(a.status));
    let mut resp = local(a.status, "text/plain", body, None);
    for (name, value) in &a.fields {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
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
}
