//! The edge's request path. One function calls the phases in order, once per request:
//!
//! listener (`wire`: HTTP/1.1 → [`Request`]) → `request_filter` (behavior, bypass, PURGE) →
//! `cache_key` → lookup (`store`: fresh / stale / miss; one fetch per key via `collapse`) →
//! `origin` (fetch or revalidate; origin groups fail over) → `admit` (RFC 9111 + TTL policy) →
//! `respond` (Age, X-Cache, 304, Range) → `logging`.

use crate::admit::{self, Admission, RequestFacts, TtlPolicy};
use crate::cache_control::Directives;
use crate::collapse::{self, Outcome, Ticket};
use crate::compress::{self, Coding};
use crate::message::{all, get, Fields, Request};
use crate::origin::{self, Body, Fetched, OriginError};
use crate::request_filter::{self, Decision, UNKEYED_FORWARDING};
use crate::respond::{self, EdgeResult, Head, Reply, ReplyBody, Served};
use crate::store::{Object, Reuse};
use crate::{cache_key, invalidate, logging, wire, Edge};
use bytes::Bytes;
use causeway_config::edge::{CacheBehavior, Selection};
use causeway_dataplane::client::{self, Client, ClientStream, ReadHeadError};
use causeway_dataplane::http1::RequestHead;
use causeway_dataplane::{Conn, Snapshot, Snapshots};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Keep-alive idle timeout for viewers (CloudFront's is 5 s by default, up to 60 s).
pub const VIEWER_IDLE: Duration = Duration::from_secs(60);
/// How long a request head may take to arrive (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one viewer connection until it closes, idles out, or the process drains. Each
/// request loads the current snapshot.
pub async fn handle(conn: Conn, snaps: Snapshots<Edge>) {
    let acceptor = snaps.load().compiled.tls.get(&conn.local).cloned();
    // The TLS and h2 servers are boxed: inline, their state would be part of every cleartext
    // HTTP/1.1 connection's task for its life (6.0 KB per idle connection).
    if let Some(acceptor) = acceptor {
        return Box::pin(serve_tls(conn, acceptor, snaps)).await;
    }
    match starts_with_h2_preface(&conn.stream).await {
        Some(true) => {
            let h2 = crate::h2::serve(conn.stream, "http", None, conn.peer, snaps, conn.shutdown);
            Box::pin(h2).await
        }
        Some(false) => serve_http1(Client::new(conn), "http", &snaps).await,
        // Silent for as long as a request head may take, or closed: nothing to serve.
        None => {}
    }
}

/// The HTTP/1.1 request loop, on plain TCP or TLS: the same reader, checks and writer.
async fn serve_http1<S: ClientStream>(
    mut client: Client<S>,
    scheme: &'static str,
    snaps: &Snapshots<Edge>,
) {
    loop {
        // Idle between requests outside the request's boxed state, which is then not held by
        // an idle connection (over TLS this wait holds no buffer either).
        if client.buf.is_empty() && !client.await_request(VIEWER_IDLE).await {
            break;
        }
        if !Box::pin(serve_request(&mut client, scheme, snaps)).await {
            break;
        }
    }
    if let Err(e) = client.stream.shutdown().await {
        tracing::debug!(error = %e, "client shutdown");
    }
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS listener's connection: the handshake (certificate by SNI), then h2 or HTTP/1.1 as
/// ALPN chose.
async fn serve_tls(conn: Conn, acceptor: tokio_rustls::TlsAcceptor, snaps: Snapshots<Edge>) {
    // Boxed, as the h2 server below: neither is kept in an HTTP/1.1 connection's state.
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn.stream));
    let tls = match Box::pin(handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::counter!("causeway_edge_tls_handshake_errors_total").increment(1);
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("causeway_edge_tls_handshake_errors_total").increment(1);
            return;
        }
    };
    // Into the client before anything borrows it: a stream borrowed first would be kept
    // twice in this future's state.
    let client = Client::over(tls, conn.peer, conn.local, conn.shutdown, true);
    if client.stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        // HTTP/1.1 over TLS takes the same reader and smuggling checks as cleartext.
        return serve_http1(client, "https", &snaps).await;
    }
    // HTTP/3 listens on the same port over UDP.
    let alt_svc: Arc<str> = format!("h3=\":{}\"; ma=86400", conn.local.port()).into();
    let Client {
        stream, shutdown, ..
    } = client;
    let h2 = crate::h2::serve(stream, "https", Some(alt_svc), conn.peer, snaps, shutdown);
    Box::pin(h2).await;
}

/// Whether the connection opens with the HTTP/2 preface (prior knowledge). Looks without
/// consuming, so an HTTP/1.1 connection reads its first request as usual. `None`: the client
/// closed, or sent nothing within [`HEADER_TIMEOUT`].
async fn starts_with_h2_preface(s: &tokio::net::TcpStream) -> Option<bool> {
    let preface = causeway_dataplane::h2conn::PREFACE;
    let mut buf = [0u8; 24];
    for round in 0..20 {
        // Bounded like a request head: a connection that sends nothing is not held. (A peek
        // waits for bytes; the socket's readiness alone starts out set on a new connection.)
        let n = match tokio::time::timeout(HEADER_TIMEOUT, s.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ if round == 0 => return None,
            // Bytes came, then the rest did not: HTTP/1.1's reader answers them.
            _ => return Some(false),
        };
        if buf[..n] != preface[..n] {
            return Some(false);
        }
        if n == preface.len() {
            return Some(true);
        }
        // A preface split across segments: look again shortly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(false)
}

/// Serves the next request; returns whether the connection stays open.
async fn serve_request<S: ClientStream>(
    client: &mut Client<S>,
    scheme: &'static str,
    snaps: &Snapshots<Edge>,
) -> bool {
    let mut head = RequestHead::default();
    // listener: read and check the head, then the body.
    match client::read_head(
        client,
        &mut head,
        &wire::LIMITS,
        VIEWER_IDLE,
        HEADER_TIMEOUT,
    )
    .await
    {
        Ok(Some(())) => {}
        Ok(None) | Err(ReadHeadError::Gone) => return false,
        Err(ReadHeadError::Refuse(status, why)) => {
            refuse(client, status, why).await;
            return false;
        }
    }
    let received = Instant::now();
    let snap = snaps.load();
    let checked = match wire::check(&client.buf, &head) {
        Ok(c) => c,
        Err((status, why)) => {
            refuse(client, status, why).await;
            return false;
        }
    };
    let mut req = match wire::to_request(&client.buf, &head, scheme) {
        Ok(r) => r,
        Err((status, why)) => {
            refuse(client, status, why).await;
            return false;
        }
    };
    match wire::read_body(client, &head, &checked).await {
        Ok(body) => req.body = body,
        Err((status, why)) => {
            refuse(client, status, why).await;
            return false;
        }
    }
    let close = checked.close || client.draining();
    let (mut reply, detail) = pipeline(&snap, &req, client.peer).await;
    let head_only = req.method == "HEAD";
    let alt_svc = (scheme == "https").then(|| format!("h3=\":{}\"; ma=86400", client.local.port()));
    let sent = wire::write_reply(client, &mut reply, head_only, close, alt_svc.as_deref()).await;
    // logging
    let bytes = *sent.as_ref().unwrap_or(&0);
    let class = checked.classification.tier_name();
    log_request(
        &snap,
        client.peer,
        &req,
        reply.served(),
        bytes,
        detail,
        received,
        class,
    );
    sent.is_ok() && !close
}

/// Counts a served request and writes its access log line.
#[allow(clippy::too_many_arguments)]
pub fn log_request(
    snap: &Snapshot<Edge>,
    peer: SocketAddr,
    req: &Request,
    reply: Served,
    bytes: u64,
    detail: &str,
    received: Instant,
    classification: &str,
) {
    logging::metrics().served(reply.result, bytes, reply.from_cache);
    if let Some(log) = &snap.compiled.access_log {
        log.log(logging::access_line(&logging::Entry {
            peer,
            method: &req.method,
            host: &req.authority,
            path: &req.path,
            query: &req.query,
            status: reply.status,
            bytes,
            result: reply.result,
            detail,
            time_taken: received.elapsed(),
            classification,
        }));
    }
}

/// Answers a refused request and closes.
async fn refuse<S: ClientStream>(client: &mut Client<S>, status: u16, why: &'static str) {
    tracing::debug!(peer = %client.peer, status, why, "refusing request");
    let mut r = Reply::refusal(status, why);
    logging::metrics().served(EdgeResult::Error, 0, false);
    if let Err(e) = wire::write_reply(client, &mut r, false, true, None).await {
        tracing::debug!(error = %e, "writing refusal");
    }
}

/// The protocol-independent pipeline: a request in, a reply and a log detail out.
pub async fn pipeline(
    snap: &Arc<Snapshot<Edge>>,
    req: &Request,
    peer: SocketAddr,
) -> (Reply, &'static str) {
    let (reply, detail) = Box::pin(route(snap, req, peer)).await;
    match snap.config.custom_error(reply.status) {
        Some(c) => (custom_error(snap, req, peer, reply, c).await, detail),
        None => (reply, detail),
    }
}

/// CloudFront's custom error response: the configured page, fetched through the cache like
/// any object (never through another custom error), sent with the configured status. If the
/// page cannot be had, the original error goes out.
async fn custom_error(
    snap: &Arc<Snapshot<Edge>>,
    req: &Request,
    peer: SocketAddr,
    original: Reply,
    c: &causeway_config::edge::CustomError,
) -> Reply {
    let Some(path) = &c.response_page_path else {
        return original;
    };
    let page_req = Request {
        method: "GET".into(),
        path: path.clone(),
        query: String::new(),
        headers: req
            .headers
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "range" | "if-range" | "if-none-match" | "if-modified-since"
                )
            })
            .cloned()
            .collect(),
        body: Bytes::new(),
        ..req.clone()
    };
    let b = &snap.compiled.behaviors[request_filter::behavior_for(&snap.compiled.behaviors, path)];
    let (page, _) = Box::pin(cached(snap, b, &page_req, peer)).await;
    let ReplyBody::Full(body) = page.body else {
        return original;
    };
    if page.status != 200 {
        return original;
    }
    let head_bytes: &[u8] = match &page.head {
        Head::Stored(h) => h,
        Head::Built(h) => h,
    };
    let (_, mut fields) = respond::head_fields(head_bytes);
    fields.retain(|(n, _)| !matches!(n.as_str(), "etag" | "last-modified" | "age"));
    Reply {
        status: c.response_code,
        head: Head::Built(respond::head(
            c.response_code,
            &fields,
            Some(body.len() as u64),
        )),
        age: None,
        result: original.result,
        body: ReplyBody::Full(body),
        from_cache: page.from_cache,
    }
}

/// request_filter, then the cache or a local answer.
async fn route(
    snap: &Arc<Snapshot<Edge>>,
    req: &Request,
    peer: SocketAddr,
) -> (Reply, &'static str) {
    let cfg = &snap.config;
    let c = &snap.compiled;
    // request_filter
    let decision = request_filter::decide(
        req,
        &c.behaviors,
        cfg.wordpress,
        peer.ip(),
        &cfg.cache.purge_allowed,
    );
    match decision {
        Decision::Purge => (invalidate::purge(snap, req), "purge"),
        Decision::Local {
            status,
            location,
            body,
        } => {
            let extra: Vec<(&str, &str)> = location
                .as_deref()
                .map(|l| vec![("location", l)])
                .unwrap_or_default();
            let result = if location.is_some() {
                EdgeResult::Redirect
            } else {
                EdgeResult::Error
            };
            (
                Reply::local(status, &extra, "text/plain", body, result),
                "local",
            )
        }
        Decision::Forward { behavior, bypass } => {
            let b = &c.behaviors[behavior];
            match bypass {
                Some(why) => (pass(snap, b, req, peer).await, why),
                None => cached(snap, b, req, peer).await,
            }
        }
    }
}

/// A request that goes around the cache. A successful unsafe method invalidates what is
/// stored for its URI, its Location and its Content-Location (RFC 9111 §4.4).
async fn pass(snap: &Snapshot<Edge>, b: &CacheBehavior, req: &Request, peer: SocketAddr) -> Reply {
    let fields = origin_fields(req, b, peer, snap.config.wordpress, false);
    let target = origin_target(req, b, snap.config.wordpress);
    let request = origin::request_bytes(req, &req.method, &target, &fields);
    let idempotent = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    let started = Instant::now();
    let r = fetch_from(
        snap,
        &b.target_origin_id,
        &request,
        &req.body,
        req.method == "HEAD",
        idempotent,
        &req.method,
    )
    .await;
    logging::metrics().origin_time(started.elapsed());
    match r {
        Ok(f) => {
            if admit::invalidates(req.method.as_bytes(), f.status) {
                invalidate_uri(snap, b, req, &f.fields);
            }
            let coding = coding(req).filter(|_| b.compress);
            from_origin(f, &snap.config.cache.tag_header, EdgeResult::Bypass, coding)
        }
        Err(e) => origin_error(e),
    }
}

/// §4.4: drops the stored responses for the request URI and same-host Location /
/// Content-Location.
fn invalidate_uri(snap: &Snapshot<Edge>, b: &CacheBehavior, req: &Request, fields: &Fields) {
    let store = &snap.compiled.store;
    let mut targets = vec![(req.path.clone(), req.query.clone())];
    for name in ["location", "content-location"] {
        let Some(v) = get(fields, name) else { continue };
        let v = String::from_utf8_lossy(v);
        let rel = if let Some(rest) = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
        {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !host.eq_ignore_ascii_case(&req.authority) {
                continue;
            }
            path.to_string()
        } else if v.starts_with('/') {
            v.into_owned()
        } else {
            continue;
        };
        let (p, q) = rel.split_once('?').unwrap_or((&rel, ""));
        targets.push((p.to_string(), q.to_string()));
    }
    for (path, query) in targets {
        let r = Request {
            path,
            query,
            ..req.clone()
        };
        store.remove(&cache_key::primary(&r, &b.cache_key, snap.config.wordpress));
    }
}

/// The request's own cache directives, with `Pragma: no-cache` when it has no Cache-Control.
fn request_directives(req: &Request) -> (Directives, bool) {
    let d = Directives::parse(all(&req.headers, "cache-control"));
    let pragma = req.header("cache-control").is_none()
        && all(&req.headers, "pragma")
            .any(|v| crate::cache_control::trim(v).eq_ignore_ascii_case(b"no-cache"));
    let no_cache = d.no_cache || pragma;
    (d, no_cache)
}

/// A GET or HEAD through the cache.
async fn cached(
    snap: &Arc<Snapshot<Edge>>,
    b: &CacheBehavior,
    req: &Request,
    peer: SocketAddr,
) -> (Reply, &'static str) {
    let c = &snap.compiled;
    // cache_key
    let key = cache_key::primary(req, &b.cache_key, snap.config.wordpress);
    let mut variant = cache_key::variant(req, &b.cache_key);
    if b.compress {
        // Compressed and plain copies are separate variants, by the coding the viewer gets.
        variant.extend_from_slice(b"coding:");
        variant.extend_from_slice(coding(req).map_or("", Coding::token).as_bytes());
    }
    let (directives, no_cache) = request_directives(req);
    // lookup
    if let Some(obj) = lookup(snap, &key, &variant, req) {
        match obj.reuse(Instant::now(), &directives, no_cache) {
            Reuse::Fresh => {
                return (
                    Reply::stored(req, &obj, Instant::now(), EdgeResult::Hit),
                    "-",
                )
            }
            Reuse::StaleWhileRevalidate => {
                refresh_in_background(
                    snap.clone(),
                    b.clone(),
                    req.clone(),
                    key,
                    variant,
                    obj.clone(),
                    peer,
                );
                return (
                    Reply::stored(req, &obj, Instant::now(), EdgeResult::Hit),
                    "stale-while-revalidate",
                );
            }
            Reuse::Validate { stale_if_error } => {
                return fetch_and_admit(
                    snap,
                    b,
                    req,
                    &key,
                    &variant,
                    peer,
                    Some((&obj, stale_if_error)),
                )
                .await;
            }
        }
    }
    if directives.only_if_cached {
        return (
            Reply::local(504, &[], "text/plain", "not cached\n", EdgeResult::Error),
            "only-if-cached",
        );
    }
    // A miss: one fetch per key; the others wait for it.
    let mut collapse_key = String::with_capacity(key.len() + variant.len() + 1);
    collapse_key.push_str(&key);
    collapse_key.push('\n');
    collapse_key.push_str(&String::from_utf8_lossy(&variant));
    match c.collapser.join(&collapse_key) {
        Ticket::Leader(leader) => {
            let (reply, detail, stored) =
                fetch_and_admit_inner(snap, b, req, &key, &variant, peer, None).await;
            leader.finish(if stored {
                Outcome::Stored
            } else {
                Outcome::NotShared
            });
            (reply, detail)
        }
        Ticket::Follower(rx) => {
            logging::metrics().collapsed.increment(1);
            if collapse::wait(rx, snap.config.cache.collapse_timeout).await == Outcome::Stored {
                if let Some(obj) = lookup(snap, &key, &variant, req) {
                    return (
                        Reply::stored(req, &obj, Instant::now(), EdgeResult::Hit),
                        "collapsed",
                    );
                }
            }
            fetch_and_admit(snap, b, req, &key, &variant, peer, None).await
        }
    }
}

/// The stored variant for this request, if any.
fn lookup(snap: &Snapshot<Edge>, key: &str, variant: &[u8], req: &Request) -> Option<Arc<Object>> {
    let variants = snap.compiled.store.get(key)?;
    variants.iter().find(|o| o.matches(variant, req)).cloned()
}

/// Refreshes a stale object off the request path (stale-while-revalidate), once per key.
fn refresh_in_background(
    snap: Arc<Snapshot<Edge>>,
    b: CacheBehavior,
    req: Request,
    key: String,
    variant: Vec<u8>,
    obj: Arc<Object>,
    peer: SocketAddr,
) {
    let Ticket::Leader(leader) = snap.compiled.collapser.join(&format!(
        "refresh\n{key}\n{}",
        String::from_utf8_lossy(&variant)
    )) else {
        return;
    };
    tokio::spawn(async move {
        let req = Request {
            method: "GET".into(),
            ..req
        };
        let (_, _, stored) =
            fetch_and_admit_inner(&snap, &b, &req, &key, &variant, peer, Some((&obj, false))).await;
        leader.finish(if stored {
            Outcome::Stored
        } else {
            Outcome::NotShared
        });
    });
}

async fn fetch_and_admit(
    snap: &Snapshot<Edge>,
    b: &CacheBehavior,
    req: &Request,
    key: &str,
    variant: &[u8],
    peer: SocketAddr,
    validate: Option<(&Arc<Object>, bool)>,
) -> (Reply, &'static str) {
    let (reply, detail, _) =
        fetch_and_admit_inner(snap, b, req, key, variant, peer, validate).await;
    (reply, detail)
}

/// Fetches from the origin (conditionally when revalidating `validate`), stores what may be
/// stored, and answers. The flag says whether an object was stored for others to share.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_admit_inner(
    snap: &Snapshot<Edge>,
    b: &CacheBehavior,
    req: &Request,
    key: &str,
    variant: &[u8],
    peer: SocketAddr,
    validate: Option<(&Arc<Object>, bool)>,
) -> (Reply, &'static str, bool) {
    let cfg = &snap.config;
    let mut fields = origin_fields(req, b, peer, cfg.wordpress, true);
    if let Some((obj, _)) = validate {
        if let Some(etag) = obj.etag() {
            fields.push(("if-none-match".into(), etag.to_vec()));
        }
        if let Some(lm) = obj.last_modified() {
            fields.push(("if-modified-since".into(), lm.to_vec()));
        }
    }
    let target = origin_target(req, b, cfg.wordpress);
    // HEAD misses fetch GET, so the object can be stored and serve both.
    let request = origin::request_bytes(req, "GET", &target, &fields);
    let started = Instant::now();
    let fetched = fetch_from(snap, &b.target_origin_id, &request, &[], false, true, "GET").await;
    logging::metrics().origin_time(started.elapsed());
    let stale_ok = |obj: &Arc<Object>| Reply::stored(req, obj, Instant::now(), EdgeResult::Hit);
    let f = match fetched {
        Ok(f) => f,
        Err(e) => {
            return match validate {
                Some((obj, true)) => (stale_ok(obj), "stale-if-error", false),
                _ => (origin_error(e), "origin-error", false),
            }
        }
    };
    if let Some((obj, sie)) = validate {
        if f.status == 304 {
            let merged = merge_304(&obj.fields, &f.fields);
            let Body::Full(_) = f.body else {
                return (origin_error(OriginError::BadResponse), "bad 304", false);
            };
            let refreshed = Fetched {
                status: obj.status,
                fields: merged,
                body: Body::Full(obj.body.clone()),
                request_time: f.request_time,
                response_time: f.response_time,
            };
            return match store(snap, b, req, key, variant, refreshed) {
                Stored::Yes(o) => (
                    Reply::stored(req, &o, Instant::now(), EdgeResult::RefreshHit),
                    "revalidated",
                    true,
                ),
                Stored::No(f, why) => (
                    from_origin(
                        *f,
                        &cfg.cache.tag_header,
                        EdgeResult::RefreshHit,
                        coding(req).filter(|_| b.compress),
                    ),
                    why,
                    false,
                ),
            };
        }
        if sie && matches!(f.status, 500 | 502 | 503 | 504) {
            return (stale_ok(obj), "stale-if-error", false);
        }
    }
    match store(snap, b, req, key, variant, f) {
        Stored::Yes(o) => (
            Reply::stored(req, &o, Instant::now(), EdgeResult::Miss),
            "-",
            true,
        ),
        Stored::No(f, why) => {
            let result = if f.status >= 400 {
                EdgeResult::Error
            } else {
                EdgeResult::Miss
            };
            let coding = coding(req).filter(|_| b.compress);
            (
                from_origin(*f, &cfg.cache.tag_header, result, coding),
                why,
                false,
            )
        }
    }
}

/// The stored fields refreshed by a 304's (RFC 9111 §3.2), keeping the stored framing.
fn merge_304(stored: &Fields, fresh: &Fields) -> Fields {
    let mut out: Fields = stored
        .iter()
        .filter(|(n, _)| {
            n == "via"
                || !fresh.iter().any(|(f, _)| f == n)
                || matches!(
                    n.as_str(),
                    "content-length" | "content-encoding" | "content-type" | "content-range"
                )
        })
        .cloned()
        .collect();
    for (n, v) in fresh {
        if !respond::is_hop_by_hop(n)
            && !matches!(
                n.as_str(),
                "content-length" | "content-encoding" | "content-type" | "content-range" | "via"
            )
        {
            out.push((n.clone(), v.clone()));
        }
    }
    out
}

enum Stored {
    Yes(Arc<Object>),
    No(Box<Fetched>, &'static str),
}

/// admit: decides and stores.
fn store(
    snap: &Snapshot<Edge>,
    b: &CacheBehavior,
    req: &Request,
    key: &str,
    variant: &[u8],
    f: Fetched,
) -> Stored {
    let cfg = &snap.config;
    let Body::Full(body) = &f.body else {
        return Stored::No(Box::new(f), "too big to store");
    };
    if body.len() as u64 > cfg.cache.max_object_bytes {
        return Stored::No(Box::new(f), "too big to store");
    }
    let (d, _) = request_directives(req);
    let facts = RequestFacts {
        authorization: req.header("authorization").is_some(),
        no_store: d.no_store,
    };
    let policy = TtlPolicy {
        min: b.min_ttl,
        default: b.default_ttl,
        max: b.max_ttl,
        error_min: cfg
            .custom_error(f.status)
            .and_then(|c| c.error_caching_min_ttl)
            .unwrap_or(cfg.cache.error_caching_min_ttl),
    };
    let freshness = match admit::admit(&facts, f.status, &f.fields, &policy, f.response_time) {
        Admission::Store(fr) => fr,
        Admission::Refuse(why) => return Stored::No(Box::new(f), why),
    };
    let mut fields =
        respond::relayed_fields(&f.fields, &cfg.cache.tag_header, &freshness.strip_fields);
    let mut body = body.clone();
    if let Some(c) = coding(req).filter(|_| b.compress) {
        if compress::eligible(f.status, &fields, body.len()) {
            match compress::apply(c, &fields, &body) {
                Ok((cf, cb)) => {
                    fields = cf;
                    body = cb;
                }
                Err(e) => tracing::warn!(error = %e, "compression failed; storing uncompressed"),
            }
        }
    }
    let vary: Vec<(String, Vec<u8>)> = all(&f.fields, "vary")
        .flat_map(crate::cache_control::split_list)
        .map(|name| {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = crate::store::vary_value(req, &name);
            (name, value)
        })
        .collect();
    let tags: Vec<String> = all(&f.fields, &cfg.cache.tag_header)
        .flat_map(|v| v.split(|&b| b == b',' || b == b' '))
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let obj = Arc::new(Object {
        status: f.status,
        head: Bytes::from(respond::head(f.status, &fields, Some(body.len() as u64))),
        fields,
        body,
        variant: variant.to_vec(),
        vary,
        freshness,
        stored_at: Instant::now(),
        initial_age: admit::initial_age(&f.fields, f.request_time, f.response_time),
        tags,
    });
    snap.compiled.store.put(key, obj.clone());
    let (entries, bytes) = snap.compiled.store.usage_hint();
    logging::metrics().store_usage(entries, bytes);
    Stored::Yes(obj)
}

/// The coding a compressing behavior gives this viewer.
fn coding(req: &Request) -> Option<Coding> {
    Coding::for_accept(cache_key::accept_encoding(req))
}

/// A reply relaying an origin response that was not stored.
/// `coding`: the behavior compresses and the viewer accepts this coding; a whole, eligible
/// body is compressed on its way through.
fn from_origin(f: Fetched, tag_header: &str, result: EdgeResult, coding: Option<Coding>) -> Reply {
    let mut fields = respond::relayed_fields(&f.fields, tag_header, &[]);
    let (length, body) = match f.body {
        Body::Full(mut b) => {
            if let Some(c) = coding.filter(|_| compress::eligible(f.status, &fields, b.len())) {
                match compress::apply(c, &fields, &b) {
                    Ok((cf, cb)) => {
                        fields = cf;
                        b = cb;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "compression failed; sending uncompressed")
                    }
                }
            }
            (Some(b.len() as u64), ReplyBody::Full(b))
        }
        Body::Stream(s) => (s.length, ReplyBody::Stream(s)),
    };
    let no_body = f.status == 304 || f.status == 204;
    Reply {
        status: f.status,
        head: Head::Built(respond::head(
            f.status,
            &fields,
            if no_body { Some(0) } else { length },
        )),
        age: None,
        result,
        body,
        from_cache: false,
    }
}

fn origin_error(e: OriginError) -> Reply {
    tracing::debug!(error = %e, "origin failed");
    Reply::local(
        e.status(),
        &[],
        "text/plain",
        &format!("{e}\n"),
        EdgeResult::Error,
    )
}

/// One exchange with an origin, or with an origin group's primary and then its failover
/// origin (GET, HEAD and OPTIONS only, on a failure or a listed status).
async fn fetch_from(
    snap: &Snapshot<Edge>,
    id: &str,
    request: &[u8],
    body: &[u8],
    head_request: bool,
    idempotent: bool,
    method: &str,
) -> Result<Fetched, OriginError> {
    let cfg = &snap.config;
    let max = cfg.cache.max_object_bytes;
    let Some(group) = cfg.origin_groups.get(id) else {
        let o = cfg.origins.get(id).ok_or(OriginError::Connect)?;
        return origin::fetch(o, request, body, head_request, idempotent, max).await;
    };
    let primary = cfg
        .origins
        .get(&group.members[0])
        .ok_or(OriginError::Connect)?;
    let r = origin::fetch(primary, request, body, head_request, idempotent, max).await;
    let may_fail_over = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let failed = match &r {
        Err(_) => true,
        Ok(f) => group.failover_status_codes.contains(&f.status),
    };
    if !(may_fail_over && failed) {
        return r;
    }
    metrics::counter!("causeway_edge_origin_failovers_total").increment(1);
    let secondary = cfg
        .origins
        .get(&group.members[1])
        .ok_or(OriginError::Connect)?;
    origin::fetch(secondary, request, body, head_request, idempotent, max).await
}

/// The target the origin gets: the path, and the query as the origin request policy keeps it.
fn origin_target(req: &Request, b: &CacheBehavior, wordpress: bool) -> String {
    let q = cache_key::filter_query(&req.query, &b.origin_request.query_strings, wordpress);
    if q.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{q}", req.path)
    }
}

/// The fields the origin gets: the origin request policy's headers and cookies plus what the
/// cache key uses, never a hop-by-hop or unkeyed forwarding header; `X-Forwarded-For` and
/// `Via` gain this hop. For a cacheable fetch, the viewer's own conditionals and Range stay
/// behind (the edge asks for the full object).
fn origin_fields(
    req: &Request,
    b: &CacheBehavior,
    peer: SocketAddr,
    wordpress: bool,
    cacheable: bool,
) -> Fields {
    let _ = wordpress;
    let policy = &b.origin_request;
    let mut out: Fields = Vec::with_capacity(req.headers.len() + 4);
    let mut xff: Option<Vec<u8>> = None;
    let mut via: Option<Vec<u8>> = None;
    for (n, v) in &req.headers {
        let n = n.as_str();
        if respond::is_hop_by_hop(n) || UNKEYED_FORWARDING.contains(&n) || n == "expect" {
            continue;
        }
        if cacheable
            && matches!(
                n,
                "if-none-match"
                    | "if-modified-since"
                    | "if-match"
                    | "if-unmodified-since"
                    | "range"
                    | "if-range"
            )
        {
            continue;
        }
        match n {
            "host" => out.push((n.into(), v.clone())),
            "x-forwarded-for" => xff = Some(v.clone()),
            "via" => via = Some(v.clone()),
            "accept-encoding" => {}
            "cookie" => {}
            _ if policy.headers.selects(n.as_bytes())
                || b.cache_key.headers.iter().any(|h| h == n) =>
            {
                out.push((n.into(), v.clone()))
            }
            _ => {}
        }
    }
    // Cookies: the policy's plus the keyed ones, in arrival order.
    if policy.cookies == Selection::All {
        for v in all(&req.headers, "cookie") {
            out.push(("cookie".into(), v.to_vec()));
        }
    } else {
        let kept: Vec<String> = req
            .cookies()
            .filter(|(n, _)| policy.cookies.selects(n) || b.cache_key.cookies.selects(n))
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        if !kept.is_empty() {
            out.push(("cookie".into(), kept.join("; ").into_bytes()));
        }
    }
    // A compressing behavior asks for exactly the coding its variant holds.
    let ae = if b.compress {
        coding(req).map_or("", Coding::token)
    } else {
        cache_key::accept_encoding(req)
    };
    if !ae.is_empty() {
        out.push(("accept-encoding".into(), ae.as_bytes().to_vec()));
    }
    let mut x = xff
        .map(|mut v| {
            v.extend_from_slice(b", ");
            v
        })
        .unwrap_or_default();
    x.extend_from_slice(peer.ip().to_string().as_bytes());
    out.push(("x-forwarded-for".into(), x));
    out.push(("x-forwarded-proto".into(), req.scheme.as_bytes().to_vec()));
    let mut v = via
        .map(|mut v| {
            v.extend_from_slice(b", ");
            v
        })
        .unwrap_or_default();
    v.extend_from_slice(respond::VIA.as_bytes());
    out.push(("via".into(), v));
    out
}
