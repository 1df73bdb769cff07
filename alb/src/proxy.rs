//! The alb's request path. One function calls the phases in order, once per request on a
//! keep-alive connection:
//!
//! listener (runtime) → `request_filter` → `route` → `auth` (rules that authenticate) →
//! `action` (forward / redirect /
//! fixed-response) → `upstream_peer` + `upstream_request` → `response_filter` → `logging`.

use crate::action::{self, RedirectInput};
use crate::client::{Client, ClientStream};
use crate::error::ProxyError;
use crate::request_filter::{self, Prepared};
use crate::route::{host_without_port, split_target, RequestView};
use crate::upstream::{self, Scratch, TlsFacts};
use crate::{logging, Alb};
use causeway_config::alb::Action;
use causeway_dataplane::client::Idle;
use causeway_dataplane::http1::{Framing, RequestHead};
use causeway_dataplane::limits::{Limiter, Slot};
use causeway_dataplane::park::{Parker, Resumed, PARK_AFTER};
use causeway_dataplane::select::maglev::hash64;
use causeway_dataplane::{h2conn, Conn, Snapshot, Snapshots};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Serves one client connection until it closes, idles out, or the process drains. Each
/// request loads the snapshot current when it arrives, so a reload applies to the next request
/// of a keep-alive connection, not only to new connections.
pub fn handle(
    conn: Conn<Parked>,
    snaps: Snapshots<Alb>,
) -> impl std::future::Future<Output = ()> + Send {
    // Not an async fn: one keeps each argument in its state for good (as captured, and again
    // where it is used). Boxed: a connection's opening (caps, TLS or h2c, its first wait) is
    // not kept in every keep-alive connection's task, which holds only the boxed opening's
    // pointer and then the keep-alive loop.
    let opening = Box::pin(open(conn, snaps));
    async move {
        // The loop's future is made in a statement of its own: awaited where it is made, the
        // opening's result would stay beside it for the connection's life.
        let serve = match opening.await {
            Some(plain) => plain.serve(),
            None => return,
        };
        serve.await
    }
}

/// A new connection, up to its cleartext keep-alive loop: `None` when it was refused, or
/// served to its end over TLS.
async fn open(conn: Conn<Parked>, snaps: Snapshots<Alb>) -> Option<Plain> {
    let Conn {
        stream,
        peer,
        local,
        shutdown,
        parker,
    } = conn;
    let client = Client::over(stream, peer, local, shutdown, false);
    // One snapshot for the connection's opening: its caps, whether it is HTTPS, its log line.
    let snap = snaps.load();
    // listener: connection caps, counted for the process across reloads.
    let slot = admit(&client, &snap).ok()?;
    metrics::counter!("causeway_alb_new_connection_count").increment(1);
    let active = Active::new();
    if let Some((acceptor, mtls)) = snap.compiled.tls(client.local) {
        // HTTPS: the handshake, then the same engine over TLS.
        drop(snap);
        serve_tls(client, acceptor, mtls, &snaps).await;
        return None;
    }
    let opened = Instant::now();
    connection_log(
        &snap,
        client.peer,
        client.local,
        opened,
        &logging::Handshake::None,
    );
    drop(snap);
    Some(Plain {
        client,
        kept: Kept {
            snaps,
            parker,
            opened,
            _slot: slot,
            _active: active,
        },
    })
}

/// Writes the connection's line to ALB's connection log, when it is on. `opened` gives the
/// connection's `conn_trace_id`, the one its requests' access log lines carry.
fn connection_log(
    snap: &Snapshot<Alb>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    opened: Instant,
    handshake: &logging::Handshake,
) {
    if let Some(log) = snap.compiled.connection_log.as_ref() {
        let trace = logging::conn_trace(peer, local, opened);
        let at = std::time::SystemTime::now();
        log.log(logging::connection_line(at, peer, local, trace, handshake));
    }
}

/// Counts a connection in `ActiveConnectionCount` while it lives, parked or not. No handle
/// is kept (the gauge is looked up again when the connection ends), so it costs a parked or
/// idle connection nothing.
struct Active;

impl Active {
    fn new() -> Active {
        metrics::gauge!("causeway_alb_active_connection_count").increment(1.0);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!("causeway_alb_active_connection_count").decrement(1.0);
    }
}

/// A cleartext connection: what it keeps across requests, and across parking.
struct Plain {
    client: Client,
    kept: Kept,
}

/// What a cleartext connection keeps besides its client, parked or not.
struct Kept {
    snaps: Snapshots<Alb>,
    parker: Parker<Parked>,
    /// When it was accepted: for the first request's header deadline and `client_keep_alive`.
    opened: Instant,
    _slot: Option<Box<Slot>>,
    _active: Active,
}

impl Plain {
    /// Serves requests until the connection closes, idles out, drains, or parks. A new
    /// connection's first bytes decide HTTP/1.1 or h2c with prior knowledge.
    fn serve(self) -> impl std::future::Future<Output = ()> + Send {
        let mut me = self;
        async move {
            loop {
                if me.client.requests == 0 && me.client.buf.is_empty() {
                    // Boxed: a connection's first wait is not kept in every keep-alive
                    // connection's task. Silent a while, it parks as an idle one does.
                    let sniff = sniff_preface(&mut me.client, &me.kept.snaps, me.kept.opened);
                    match Box::pin(sniff).await {
                        Sniffed::Http1 => {}
                        Sniffed::Gone => return,
                        Sniffed::Park { until } => return me.park(until),
                        Sniffed::H2 => {
                            let Plain { client, kept } = me;
                            return Box::pin(serve_h2c(client, &kept.snaps, kept.opened)).await;
                        }
                    }
                }
                if me.client.requests > 0 && me.client.buf.is_empty() {
                    // Idle between requests: this small state is all a keep-alive connection
                    // holds, and after a while it parks, leaving even the task.
                    let idle = me.kept.snaps.load().config.load_balancer.idle_timeout;
                    match me.client.await_request_or_park(idle, PARK_AFTER).await {
                        Idle::Request => {}
                        Idle::Closed => break,
                        Idle::Park { until } => return me.park(until),
                    }
                }
                let snap = me.kept.snaps.load();
                let Some(router) = snap.compiled.router(me.client.local) else {
                    // The listener was removed by a reload: this connection ends.
                    break;
                };
                // Boxed: a request's state lives on the heap only while the request is served.
                if !Box::pin(serve_request(
                    &mut me.client,
                    &snap,
                    router,
                    me.kept.opened,
                    TlsFacts::default(),
                ))
                .await
                {
                    break;
                }
            }
            if let Err(e) = me.client.stream.shutdown().await {
                tracing::debug!(error = %e, "client shutdown");
            }
        }
    }

    /// Hands the idle connection to the parker; its client's next bytes resume it here.
    fn park(self, until: Instant) {
        let Plain { client, kept } = self;
        let Client {
            stream,
            peer,
            local,
            requests,
            ..
        } = client;
        let parker = kept.parker.clone();
        let state = Parked {
            peer,
            local,
            requests,
            kept,
        };
        parker.park(stream, until, state);
    }
}

/// A parked cleartext connection: its [`Plain`] state without the socket and buffer.
pub struct Parked {
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    requests: u64,
    kept: Kept,
}

impl causeway_dataplane::park::Parked for Parked {
    fn resume(self, r: Resumed) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Parked {
            peer,
            local,
            requests,
            kept,
        } = self;
        let mut client = Client::over(r.stream, peer, local, r.shutdown, false);
        client.requests = requests;
        Plain { client, kept }.serve()
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An HTTPS listener's connection: the handshake (certificate by SNI, AWS's policy), then the
/// same HTTP/1.1 engine as cleartext, over TLS.
async fn serve_tls(
    client: Client,
    acceptor: tokio_rustls::TlsAcceptor,
    mtls: causeway_dataplane::tls::Mtls,
    snaps: &Snapshots<Alb>,
) {
    let started = Instant::now();
    let Client {
        stream,
        peer,
        local,
        shutdown,
        ..
    } = client;
    // In a block: what only the handshake needs (its start, the failure closure) is not kept
    // in the state of the connection's keep-alive loop.
    let (tls, handshake_time) = {
        // Boxed, as the h2 server below: neither is kept in an HTTP/1.1 connection's state
        // for its life (inline, they made every idle HTTPS connection's state 9.4 KB).
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let failed = |code: &'static str| {
            metrics::counter!("causeway_alb_client_tls_negotiation_error_count").increment(1);
            let handshake = logging::Handshake::Failed(code);
            connection_log(&snaps.load(), peer, local, Instant::now(), &handshake);
        };
        match Box::pin(handshake).await {
            Ok(Ok(s)) => (s, started.elapsed()),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                failed(causeway_dataplane::tls::failure_code(&e));
                return;
            }
            Err(_) => {
                failed("UnmappedConnectionError");
                return;
            }
        }
    };
    // Into the client at once: a stream borrowed before it is moved keeps its place in this
    // future's state for good, and it is 1.2 KB.
    let mut client = Client::over(tls, peer, local, shutdown, true);
    let opened = Instant::now();
    let names = causeway_dataplane::tls::log_names(client.stream.get_ref().1);
    // The client certificate's fields, read once per connection (mutual TLS listeners only).
    let cert_fields = causeway_dataplane::tls::client_cert_fields(mtls, client.stream.get_ref().1)
        .map(Vec::into_boxed_slice);
    // One snapshot after the handshake: the connection log line, and the listener's names for
    // the certificate's fields as it is configured now, for this connection.
    let renames = {
        let snap = snaps.load();
        if snap.compiled.connection_log.is_some() {
            let conn = client.stream.get_ref().1;
            let leaf = (mtls != causeway_dataplane::tls::Mtls::Off)
                .then(|| conn.peer_certificates().and_then(|c| c.first()))
                .flatten()
                .and_then(|c| causeway_dataplane::x509::leaf_info(c));
            let done = logging::TlsConn {
                names,
                handshake: handshake_time,
                leaf,
                key_exchange: causeway_dataplane::tls::key_exchange_name(conn),
            };
            connection_log(&snap, peer, local, opened, &logging::Handshake::Done(done));
        }
        snap.compiled
            .router(local)
            .map(|r| r.request_renames.clone())
            .filter(|r| !r.0.is_empty())
    };
    if client.stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let from = crate::hyper_upstream::Origin {
            peer,
            local,
            scheme: "https",
            tls_names: Some(names),
            mtls: cert_fields.map(std::sync::Arc::from),
            renames,
            opened,
        };
        let Client {
            stream, shutdown, ..
        } = client;
        Box::pin(crate::h2::serve(stream, from, snaps.clone(), shutdown)).await;
        return;
    }
    loop {
        if client.requests > 0 && client.buf.is_empty() {
            // Idle between requests, outside the request's boxed state, as over cleartext.
            let idle = snaps.load().config.load_balancer.idle_timeout;
            if !client.await_request(idle).await {
                break;
            }
        }
        let snap = snaps.load();
        let Some(router) = snap.compiled.router(client.local) else {
            break;
        };
        let tls = TlsFacts {
            names: Some(names),
            mtls: cert_fields.as_deref(),
            renames: renames.as_deref(),
            oidc: None,
        };
        if !Box::pin(serve_request(&mut client, &snap, router, opened, tls)).await {
            break;
        }
    }
    if let Err(e) = client.stream.shutdown().await {
        tracing::debug!(error = %e, "client shutdown");
    }
}

/// What a cleartext connection's first bytes are.
enum Sniffed {
    Http1,
    H2,
    Gone,
    /// Silent for the park delay: park until the header deadline.
    Park {
        until: Instant,
    },
}

/// Reads the first bytes of a cleartext connection, accepted at `opened`, into its buffer and
/// says whether they are the h2 preface. An HTTP/1.1 request is left in the buffer for
/// `read_head`.
async fn sniff_preface(client: &mut Client, snaps: &Snapshots<Alb>, opened: Instant) -> Sniffed {
    let (timeout, http2) = {
        let lb = &snaps.load().config.load_balancer;
        (lb.request_header_timeout, lb.http2)
    };
    let deadline = opened + timeout;
    // Silent until the header deadline (or a drain): closed, holding no buffer meanwhile, and
    // after the park delay not even a task.
    match client.first_read_or_park(deadline, PARK_AFTER).await {
        Idle::Request => {}
        Idle::Closed => return Sniffed::Gone,
        Idle::Park { until } => return Sniffed::Park { until },
    }
    loop {
        let have = client.buf.len().min(h2conn::PREFACE.len());
        // With HTTP/2 turned off the preface is read as what it looks like, an HTTP/1.1
        // request line with version 2.0, and refused as one.
        if !http2 || client.buf[..have] != h2conn::PREFACE[..have] {
            return Sniffed::Http1;
        }
        if have == h2conn::PREFACE.len() {
            return Sniffed::H2;
        }
        match tokio::time::timeout_at(deadline, client.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            // Cut short or slow inside a would-be preface: read_head answers it as HTTP/1.1.
            _ => return Sniffed::Http1,
        }
    }
}

/// A cleartext connection that opened with the h2 preface: HTTP/2 over it, the bytes already
/// read replayed first.
async fn serve_h2c(client: Client, snaps: &Snapshots<Alb>, opened: Instant) {
    let Client {
        stream,
        peer,
        local,
        shutdown,
        mut buf,
        ..
    } = client;
    let pre = std::mem::take(&mut buf.0);
    let io = h2conn::Rewind::new(pre, stream);
    let from = crate::hyper_upstream::Origin {
        peer,
        local,
        scheme: "http",
        tls_names: None,
        mtls: None,
        renames: None,
        opened,
    };
    crate::h2::serve(io, from, snaps.clone(), shutdown).await;
}

/// Counts a new connection against its listener's caps; `Err` means it was refused (and reset).
fn admit(conn: &Client, snap: &Snapshot<Alb>) -> Result<Option<Box<Slot>>, ()> {
    let Some(l) = snap
        .config
        .listeners
        .iter()
        .find(|l| l.address == conn.local)
    else {
        return Ok(None);
    };
    if l.max_connections == 0 && l.max_connections_per_source == 0 {
        return Ok(None);
    }
    match Limiter::for_listener(conn.local).acquire(
        conn.peer.ip(),
        l.max_connections,
        l.max_connections_per_source,
    ) {
        Ok(slot) => Ok(Some(Box::new(slot))),
        Err(_) => {
            metrics::counter!("causeway_alb_rejected_connection_count").increment(1);
            if let Err(e) = conn.stream.set_zero_linger() {
                tracing::debug!(error = %e, "SO_LINGER");
            }
            Err(())
        }
    }
}

/// The client's connection, for its access log lines.
fn conn<S: ClientStream>(client: &Client<S>, opened: Instant) -> logging::Conn {
    logging::Conn {
        peer: client.peer,
        local: client.local,
        opened,
        tls: client.tls,
    }
}

/// Serves the request at the front of the client's buffer, calling the phases in order.
/// Returns whether the connection stays open for another request.
async fn serve_request<S: ClientStream>(
    client: &mut Client<S>,
    snap: &Arc<Snapshot<Alb>>,
    router: &crate::route::Router,
    opened: Instant,
    tls: TlsFacts<'_>,
) -> bool {
    let lb = &snap.config.load_balancer;
    let mut head = RequestHead::default();
    let mut scratch = Scratch::default();
    // request_filter: read and check the head.
    match request_filter::read_head(client, &mut head, lb, opened).await {
        Ok(Some(())) => {}
        Ok(None) => return false,
        Err(e) => {
            snap.compiled.elb_metrics.error(&e);
            refuse(client, e, &[], &router.response_headers).await;
            return false;
        }
    }
    let received = Instant::now();
    client.requests += 1;
    let access_log = snap.compiled.access_log.as_ref();
    let mut req = match request_filter::prepare(client, &head, lb) {
        Ok(r) => r,
        Err(e) => {
            snap.compiled.elb_metrics.error(&e);
            if let Some(log) = access_log {
                let c = causeway_dataplane::desync::classify(&client.buf, &head);
                let info = logging::RequestInfo::capture(
                    &client.buf,
                    &head,
                    c,
                    conn(client, opened),
                    received,
                );
                log.log(logging::access_line(
                    &info,
                    logging::Ended::Refused(e),
                    None,
                ));
            }
            refuse(client, e, &[], &router.response_headers).await;
            return false;
        }
    };
    let keep_alive_over = opened.elapsed() >= lb.client_keep_alive;
    let mut info = access_log.map(|_| {
        logging::RequestInfo::capture(
            &client.buf,
            &head,
            req.classification,
            conn(client, opened),
            received,
        )
    });
    if let (Some(i), Some(names)) = (info.as_mut(), tls.names) {
        i.tls_names = names;
    }
    // route
    let (action, priority, transforms) = {
        let buf = &client.buf;
        let (path, query) = split_target(head.target(buf));
        let headers = |name: &str, f: &mut dyn FnMut(&[u8]) -> bool| {
            head.headers
                .iter()
                .filter(|h| h.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
                .any(|h| f(h.value.get(buf)))
        };
        let view = RequestView {
            method: head.method(buf),
            path,
            query,
            host: head.header(buf, "host").map(host_without_port),
            host_as_sent: head.header(buf, "host"),
            source: client.peer.ip(),
            headers: &headers,
        };
        router.route_with_transforms(&view)
    };
    // The matched rule's transforms (the routing decision stands).
    let transformed = match transforms {
        Some(t) => t
            .apply(head.target(&client.buf), head.header(&client.buf, "host"))
            .map(Some),
        None => Ok(None),
    };
    // authenticate: the matched rule's authenticate-oidc action, or a sign-in's callback.
    let (signed_in, renewed, answered) = if router.authenticates() {
        let phase = authenticate(
            client,
            &head,
            &req,
            &mut scratch,
            snap,
            router,
            priority,
            keep_alive_over,
        );
        match Box::pin(phase).await {
            Authenticated::Pass(fields, cookies) => (fields, cookies, None),
            Authenticated::Answered(status, reason, written) => {
                (None, Vec::new(), Some((status, reason, written)))
            }
        }
    } else {
        (None, Vec::new(), None)
    };
    // `renewed`: a renewed session's cookies (or its removal), for whatever answers the
    // request. Most often none.
    if signed_in.is_some() {
        if let Some(i) = info.as_mut() {
            i.authenticated = true;
        }
    }
    let tls = TlsFacts {
        oidc: signed_in.as_deref(),
        ..tls
    };
    // The access log line is written once the request has ended, however it ended.
    let mut ended: Option<logging::Ended<'_>> = None;
    // action
    let result = match (answered, action) {
        (Some((status, reason, written)), _) => {
            ended = Some(logging::Ended::Authenticate { status, reason });
            written
        }
        (
            None,
            Action::Forward {
                target_groups,
                group_stickiness,
            },
        ) => match transformed {
            Err(te) => {
                let e = ProxyError::Transform(te);
                snap.compiled.elb_metrics.error(&e);
                ended = Some(logging::Ended::Refused(e));
                Err((e, None))
            }
            Ok(rewrite) => {
                if let (Some(i), Some(rw)) = (info.as_mut(), rewrite.as_ref()) {
                    i.transformed_host.clone_from(&rw.host);
                    i.transformed_uri.clone_from(&rw.target);
                }
                req.rewrite = rewrite;
                match upstream::pick_group(
                    snap,
                    target_groups,
                    *group_stickiness,
                    upstream::cookie_value(&client.buf, &head, crate::sticky::TG_COOKIE),
                    &snap.compiled.sticky_key,
                ) {
                    None => {
                        ended = Some(logging::Ended::Refused(ProxyError::NoTargets));
                        Err((ProxyError::NoTargets, None))
                    }
                    Some((group, _)) if group.cfg.protocol_version.is_h2() => {
                        // AWS's 464: an HTTP/1.1 request for an HTTP/2 or gRPC target group.
                        let e = ProxyError::Client(464, "the target group speaks HTTP/2 only");
                        snap.compiled.elb_metrics.error(&e);
                        ended = Some(logging::Ended::Refused(e));
                        Err((e, None))
                    }
                    Some((group, group_cookie)) => {
                        let (group_line, joined): ([&str; 1], Vec<&str>);
                        let cookies: &[&str] = match group_cookie.as_deref() {
                            _ if !renewed.is_empty() => {
                                joined = group_cookie
                                    .as_deref()
                                    .into_iter()
                                    .chain(renewed.iter().map(String::as_str))
                                    .collect();
                                &joined
                            }
                            Some(c) => {
                                group_line = [c];
                                &group_line
                            }
                            None => &[],
                        };
                        let hash = hash64(client.requests, &client.peer.port().to_le_bytes());
                        let key = &snap.compiled.sticky_key;
                        let trace = crate::trace::TraceId::now();
                        if let Some(i) = info.as_mut() {
                            let theirs = head.header(&client.buf, crate::trace::HEADER);
                            trace.write(theirs, &mut i.trace);
                        }
                        let r = upstream::forward(
                            client,
                            &head,
                            &req,
                            group,
                            lb,
                            &mut scratch,
                            hash,
                            key,
                            cookies,
                            &trace,
                            tls,
                            &router.response_headers,
                        )
                        .await;
                        logging::forwarded(
                            &group.cfg.name,
                            snap.compiled.group_metrics.get(&group.cfg.name),
                            &snap.compiled.elb_metrics,
                            received,
                            &r,
                        );
                        if let (Some(log), Some(info)) = (access_log, &info) {
                            let e = logging::Ended::Forwarded {
                                group: &group.cfg.name,
                                outcome: &r,
                            };
                            log.log(logging::access_line(info, e, priority));
                        }
                        r.map(|o| o.close)
                    }
                }
            }
        },
        (
            None,
            Action::FixedResponse {
                status,
                content_type,
                body,
            },
        ) => {
            let close = req.close || keep_alive_over || body_left(client, &head, &req);
            scratch.ready();
            scratch.out.clear();
            action::render(
                &mut scratch.out,
                *status,
                content_type,
                body.as_bytes(),
                close,
                &set_cookie_fields(&renewed),
                &router.response_headers,
            );
            ended = Some(logging::Ended::Local {
                status: *status,
                action: "fixed-response",
            });
            finish_local(
                client,
                &head,
                &req,
                &scratch.out,
                close,
                *status,
                &snap.compiled.elb_metrics,
            )
            .await
        }
        (None, Action::Redirect(r)) => {
            let (path, query) = split_target(head.target(&client.buf));
            let input = RedirectInput {
                protocol: client.scheme(),
                host: head
                    .header(&client.buf, "host")
                    .map(host_without_port)
                    .unwrap_or(b""),
                port: client.local.port(),
                path,
                query,
            };
            let location = action::location(r, &input);
            match location {
                None => {
                    let e = ProxyError::Client(400, "Host cannot be redirected");
                    snap.compiled.elb_metrics.error(&e);
                    Err((e, None))
                }
                Some(loc) => {
                    let close = req.close || keep_alive_over || body_left(client, &head, &req);
                    scratch.ready();
                    scratch.out.clear();
                    let mut fields: smallvec::SmallVec<[(&str, &[u8]); 2]> =
                        smallvec::smallvec![("Location", loc.as_slice())];
                    fields.extend(set_cookie_fields(&renewed));
                    action::render(
                        &mut scratch.out,
                        r.status,
                        "text/plain",
                        b"",
                        close,
                        &fields,
                        &router.response_headers,
                    );
                    ended = Some(logging::Ended::Local {
                        status: r.status,
                        action: "redirect",
                    });
                    finish_local(
                        client,
                        &head,
                        &req,
                        &scratch.out,
                        close,
                        r.status,
                        &snap.compiled.elb_metrics,
                    )
                    .await
                }
            }
        }
    };
    if let (Some(log), Some(info)) = (access_log, &info) {
        let e = match (&result, ended) {
            (_, Some(e)) => Some(e),
            (Err((e, _)), None) if !matches!(action, Action::Forward { .. }) => {
                Some(logging::Ended::Refused(*e))
            }
            _ => None,
        };
        if let Some(e) = e {
            log.log(logging::access_line(info, e, priority));
        }
    }
    match result {
        Ok(close) if !close && !keep_alive_over && !client.draining() => {
            if client.buf.is_empty() {
                // Going idle: hold no buffers.
                scratch.release();
                head.headers = Vec::new();
            }
        }
        Ok(_) => return false,
        Err((e, _)) => {
            refuse(
                client,
                e,
                &set_cookie_fields(&renewed),
                &router.response_headers,
            )
            .await;
            return false;
        }
    }
    true
}

/// `Set-Cookie` fields for a local answer.
fn set_cookie_fields(cookies: &[String]) -> smallvec::SmallVec<[(&str, &[u8]); 1]> {
    cookies
        .iter()
        .map(|c| ("Set-Cookie", c.as_bytes()))
        .collect()
}

/// What phase `authenticate` decided.
enum Authenticated {
    /// The action runs; these are the user's fields for the target (empty: `allow` let an
    /// unauthenticated request through; `None`: the rule does not authenticate), and the
    /// `Set-Cookie` values for its answer (a renewed session, or its removal).
    Pass(Option<Vec<(&'static str, String)>>, Vec<String>),
    /// The alb answered (a sign-in's redirect, a refusal, or the end of a sign-in): the status
    /// and ALB's reason for the access log, and how writing it went.
    Answered(
        u16,
        &'static str,
        Result<bool, (ProxyError, Option<std::net::SocketAddr>)>,
    ),
}

/// Phase `authenticate` for a request routed to `priority`'s rule, called (boxed) only on a
/// listener with authenticate actions, so that other listeners' requests neither carry its
/// state nor call it. A callback to `/oauth2/idpresponse` is answered whatever the rule.
#[allow(clippy::too_many_arguments)]
async fn authenticate<S: ClientStream>(
    client: &mut Client<S>,
    head: &RequestHead,
    req: &Prepared,
    scratch: &mut Scratch,
    snap: &Snapshot<Alb>,
    router: &crate::route::Router,
    priority: Option<u32>,
    keep_alive_over: bool,
) -> Authenticated {
    use crate::auth;
    let Some(keys) = snap.compiled.auth_keys.as_ref() else {
        return Authenticated::Pass(None, Vec::new());
    };
    let answer = {
        let buf = &client.buf;
        let cookies: smallvec::SmallVec<[&[u8]; 2]> = head
            .headers
            .iter()
            .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cookie"))
            .map(|h| h.value.get(buf))
            .collect();
        let host = head.header(buf, "host").unwrap_or_default();
        let (path, query) = split_target(head.target(buf));
        if path == auth::CALLBACK && router.signs_in() {
            let providers = |p| router.provider_at(p).map(|a| &**a);
            crate::idp::callback(keys, providers, host, query, &cookies).await
        } else if let Some(v) = router.validator(priority) {
            let authorization: smallvec::SmallVec<[&[u8]; 1]> = head
                .headers
                .iter()
                .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"authorization"))
                .map(|h| h.value.get(buf))
                .collect();
            match crate::idp::validate_jwt(v, &authorization).await {
                Ok(()) => return Authenticated::Pass(None, Vec::new()),
                Err(a) => a,
            }
        } else {
            let Some(p) = router.provider(priority) else {
                return Authenticated::Pass(None, Vec::new());
            };
            let view = auth::View {
                target: head.target(buf),
                host,
                cookies: &cookies,
            };
            match crate::idp::verdict(keys, p, priority.unwrap_or(0), &view).await {
                Ok((fields, cookies)) => return Authenticated::Pass(Some(fields), cookies),
                Err(a) => a,
            }
        }
    };
    let close = req.close || keep_alive_over || body_left(client, head, req);
    scratch.ready();
    scratch.out.clear();
    let fields: smallvec::SmallVec<[(&str, &[u8]); 8]> = answer
        .fields
        .iter()
        .map(|(n, v)| (*n, v.as_bytes()))
        .collect();
    action::render(
        &mut scratch.out,
        answer.status,
        "text/plain",
        auth::body(answer.status).as_bytes(),
        close,
        &fields,
        &router.response_headers,
    );
    let elb = &snap.compiled.elb_metrics;
    let written = finish_local(client, head, req, &scratch.out, close, answer.status, elb).await;
    Authenticated::Answered(answer.status, answer.reason, written)
}

/// Whether a request body is still unread (a local answer then closes the connection rather
/// than reading a body nobody wants).
fn body_left<S: ClientStream>(client: &Client<S>, head: &RequestHead, req: &Prepared) -> bool {
    match req.framing {
        Framing::None | Framing::Close => false,
        Framing::Length(n) => (client.buf.len() - head.len) as u64 != n,
        Framing::Chunked => true,
    }
}

/// Writes a locally generated response and consumes the request.
async fn finish_local<S: ClientStream>(
    client: &mut Client<S>,
    head: &RequestHead,
    req: &Prepared,
    response: &[u8],
    close: bool,
    status: u16,
    elb: &logging::ElbMetrics,
) -> Result<bool, (ProxyError, Option<std::net::SocketAddr>)> {
    let used = match req.framing {
        Framing::Length(n) if !close => head.len + n as usize,
        _ => head.len,
    };
    client.consume(used);
    elb.count(status);
    client
        .write_all(response)
        .await
        .map_err(|_| (ProxyError::ClientGone, None))?;
    Ok(close)
}

/// Answers an error with its status (if it has one); the connection then closes.
async fn refuse<S: ClientStream>(
    client: &mut Client<S>,
    e: ProxyError,
    fields: &[(&str, &[u8])],
    mods: &causeway_config::listener_headers::ResponseHeaders,
) {
    let Some(status) = e.status() else { return };
    tracing::debug!(peer = %client.peer, error = %e, status, "refusing request");
    let mut out = Vec::new();
    let body = format!("{}\n", action::reason(status));
    action::render(
        &mut out,
        status,
        "text/plain",
        body.as_bytes(),
        true,
        fields,
        mods,
    );
    if let Err(err) = client.write_all(&out).await {
        tracing::debug!(error = %err, "writing error response");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_task_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (_tx, rx) = tokio::sync::watch::channel(false);
            let parker =
                causeway_dataplane::park::Parker::<super::Parked>::start(Default::default(), rx.clone())
                    .unwrap();
            let conn = causeway_dataplane::Conn {
                peer: c.peer_addr().unwrap(),
                local: c.local_addr().unwrap(),
                stream: c,
                shutdown: rx,
                parker,
            };
            let cfg = causeway_config::parse::<causeway_config::alb::FileAlb>(
                "alb.toml",
                "[admin]\naddress = \"127.0.0.1:1\"\n[[listeners]]\naddress = \"127.0.0.1:2\"\ndefault_action = { type = \"fixed-response\" }\n",
                &causeway_config::Context { dir: ".".into() },
            )
            .unwrap();
            let snap = causeway_dataplane::Snapshots::fixed(causeway_dataplane::Snapshot::<crate::Alb> {
                generation: 1,
                compiled: <crate::Alb as causeway_dataplane::Plane>::compile(&cfg, None).unwrap(),
                config: std::sync::Arc::new(cfg),
                groups: Default::default(),
                loaded_at: std::time::SystemTime::now(),
            });
            let snap2 = snap.clone();
            let fut = super::handle(conn, snap);
            let size = size_of_future(&fut);
            eprintln!("the per-connection future is {size} bytes");
            assert!(size <= 500, "the per-connection future is {size} bytes");
            // An HTTPS connection's state besides its task: the opening, which serves it.
            let (tx2, rx2) = tokio::sync::watch::channel(false);
            let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c2 = tokio::net::TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
            let conn = causeway_dataplane::Conn {
                peer: c2.peer_addr().unwrap(),
                local: c2.local_addr().unwrap(),
                stream: c2,
                shutdown: rx2,
                parker: causeway_dataplane::park::Parker::<super::Parked>::start(
                    Default::default(),
                    tx2.subscribe(),
                )
                .unwrap(),
            };
            let opening = size_of_future(&super::open(conn, snap2));
            eprintln!("a connection's opening is {opening} bytes");
            assert!(opening <= 3072, "a connection's opening is {opening} bytes");
        });
    }
}
