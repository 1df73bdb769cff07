//! Phases `upstream_peer` (choose a target group by weight, then a target by the group's
//! algorithm, skipping targets already tried) and `upstream_request` (a pooled or new
//! connection, the rewritten head and the body, then the response relayed to the client).
//! A connect failure is retried on another target; a failure after sending only for an
//! idempotent request whose body we still hold, and never once a response byte went out.

use crate::client::{write_joined, Client, ClientStream};
use crate::error::ProxyError;
use crate::request_filter::{BodyPace, Prepared, BODY_IDLE};
use crate::response_filter;
use crate::sticky::{self, StickyKey};
use crate::trace::{self, TraceId};
use crate::Alb;
use causeway_config::alb::{LoadBalancerAttributes, XffMode};
use causeway_config::common::Stickiness;
use causeway_config::listener_headers::{RequestRenames, ResponseHeaders};
use causeway_dataplane::capacity::{Attempt, Refusal};
use causeway_dataplane::http1::head::ConnectionList;
use causeway_dataplane::http1::{
    parse_response, ChunkedScanner, Framing, RequestHead, ResponseHead,
};
use causeway_dataplane::target::{InFlight, Target, TargetGroup};
use causeway_dataplane::{buffers, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// How long a connect to a target may take (AWS's target connection timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request, the first included.
pub const MAX_ATTEMPTS: usize = 3;
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Buffers reused across the requests of one client connection.
#[derive(Debug, Default)]
pub struct Scratch {
    pub out: Vec<u8>,
    pub ubuf: Vec<u8>,
    pub resp: ResponseHead,
}

impl Scratch {
    /// Gives the buffers back while the connection idles.
    pub fn release(&mut self) {
        buffers::give(std::mem::take(&mut self.out));
        buffers::give(std::mem::take(&mut self.ubuf));
    }

    /// Makes sure both buffers are allocated.
    pub fn ready(&mut self) {
        if self.out.capacity() == 0 {
            self.out = buffers::take();
        }
        if self.ubuf.capacity() == 0 {
            self.ubuf = buffers::take();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.release();
    }
}

/// What happened to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    pub target: SocketAddr,
    /// The client connection must close after this exchange.
    pub close: bool,
    pub target_time: Duration,
    pub attempts: usize,
    /// Bytes written to the client for this response (after a 101, all the tunnel carried
    /// to the client).
    pub sent_bytes: u64,
    /// After a 101: the bytes the tunnel carried from the client (the request's own are
    /// counted apart).
    pub tunnel_received: u64,
}

impl Outcome {
    /// A target's answer relayed on a connection that stays open.
    pub fn answered(
        status: u16,
        target: SocketAddr,
        target_time: Duration,
        attempts: usize,
        sent_bytes: u64,
    ) -> Outcome {
        Outcome {
            status,
            target,
            close: false,
            target_time,
            attempts,
            sent_bytes,
            tunnel_received: 0,
        }
    }
}

/// Picks a target group among weighted ones. With target group stickiness, a valid
/// `AWSALBTG` cookie keeps the client on the group it names while that group is in the action
/// with a weight above 0; the second value is then the cookie line naming the group chosen.
pub fn pick_group<'s>(
    snap: &'s Snapshot<Alb>,
    groups: &[(String, u32)],
    stickiness: Option<std::time::Duration>,
    tg_cookie: Option<&[u8]>,
    key: &StickyKey,
) -> Option<(&'s Arc<TargetGroup>, Option<String>)> {
    let Some(duration) = stickiness else {
        return Some((snap.group(weighted(groups)?)?, None));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stuck = tg_cookie
        .and_then(|v| sticky::decode_name(key, v, now))
        .filter(|name| groups.iter().any(|(g, w)| g == name && *w > 0));
    let name = match stuck {
        Some(n) => n,
        None => weighted(groups)?,
    };
    let line = format!(
        "{}={}; Max-Age={}; Path=/",
        sticky::TG_COOKIE,
        sticky::encode_name(key, name, now + duration.as_secs()),
        duration.as_secs()
    );
    Some((snap.group(name)?, Some(line)))
}

/// A group name by weight.
fn weighted(groups: &[(String, u32)]) -> Option<&str> {
    if groups.len() == 1 {
        return Some(&groups[0].0);
    }
    let mut rng = fastrand::Rng::new();
    let i = causeway_dataplane::select::weighted_random(groups.len(), |i| groups[i].1, &mut rng)?;
    Some(&groups[i].0)
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie_value<'b>(buf: &'b [u8], head: &RequestHead, name: &str) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cookie"))
        .find_map(|h| sticky::find_cookie(h.value.get(buf), name))
}

/// How a target group sticks: the cookie we set, its lifetime, and for application-based
/// stickiness the application cookie whose setting triggers ours.
#[derive(Debug, Clone, Copy)]
pub struct StickyMode<'a> {
    pub cookie: &'static str,
    pub duration: Duration,
    pub app_cookie: Option<&'a str>,
}

impl<'a> StickyMode<'a> {
    pub fn of(s: &'a Stickiness) -> Option<StickyMode<'a>> {
        Some(match s {
            Stickiness::SourceIp => return None,
            Stickiness::LbCookie { duration } => StickyMode {
                cookie: sticky::LB_COOKIE,
                duration: *duration,
                app_cookie: None,
            },
            Stickiness::AppCookie {
                cookie_name,
                duration,
            } => StickyMode {
                cookie: sticky::APP_COOKIE,
                duration: *duration,
                app_cookie: Some(cookie_name),
            },
        })
    }
}

/// The target a valid sticky cookie names, if it is registered and routable.
pub fn sticky_target(
    group: &TargetGroup,
    cookie: Option<&[u8]>,
    key: &StickyKey,
    now_unix: u64,
) -> Option<Arc<Target>> {
    let addr = cookie.and_then(|v| sticky::decode(key, v, now_unix))?;
    group
        .targets
        .iter()
        .find(|t| t.cfg.address == addr && group.accepts(t))
        .cloned()
}

/// Phase `upstream_peer`: the sticky target if there is one (and it is under its concurrency
/// limit), else the group's algorithm's choice; never a target already tried.
pub fn upstream_peer(
    group: &TargetGroup,
    tried: &[SocketAddr],
    hash: u64,
    sticky: Option<&Arc<Target>>,
) -> Option<Arc<Target>> {
    if let Some(t) = sticky.filter(|t| !tried.contains(&t.cfg.address) && t.has_room()) {
        return Some(t.clone());
    }
    if let Some(t) = group.select(hash) {
        if !tried.contains(&t.cfg.address) {
            return Some(t);
        }
    }
    group
        .preference(hash)
        .into_iter()
        .find(|t| !tried.contains(&t.cfg.address))
}

/// Phase `upstream_peer` with the request counted on its target: a target not yet tried,
/// claimed for this request. Under `target_control` the target must be under its concurrency
/// limit; when every target is at it, a first attempt waits its turn in the group's queue (up
/// to the queue timeout), and a `retry` gives up at once.
pub async fn claim_peer(
    group: &TargetGroup,
    tried: &[SocketAddr],
    hash: u64,
    sticky: Option<&Arc<Target>>,
    retry: bool,
) -> Result<(Arc<Target>, InFlight), ProxyError> {
    if group.cfg.target_control.is_none() {
        let t = upstream_peer(group, tried, hash, sticky).ok_or(ProxyError::NoTargets)?;
        let f = t.begin();
        return Ok((t, f));
    }
    if group.queue.waiting() == 0 {
        match group.claim(tried, || upstream_peer(group, tried, hash, sticky)) {
            Attempt::Claimed(c) => return Ok(c),
            Attempt::Nothing => return Err(ProxyError::NoTargets),
            Attempt::Busy => {}
        }
    }
    let sticky = sticky.map(|t| t.cfg.address);
    // Boxed: the common case above keeps the request's future small.
    Box::pin(queue_for_peer(group, tried, hash, sticky, retry)).await
}

/// [`claim_peer`] for a group with `target_control` whose targets are full or that has
/// requests waiting: waits in the group's queue, or gets `TargetsAtCapacity`. Each look is at
/// the group as it is now (a reload may have changed its targets and limits), and at the
/// sticky target only while it still takes requests.
async fn queue_for_peer(
    group: &TargetGroup,
    tried: &[SocketAddr],
    hash: u64,
    sticky: Option<SocketAddr>,
    retry: bool,
) -> Result<(Arc<Target>, InFlight), ProxyError> {
    let (timeout, max) = match group.cfg.target_control {
        Some(tc) if !retry => (tc.queue_timeout, tc.max_queued),
        _ => (Duration::ZERO, 0),
    };
    let look = || {
        let newest = group.latest();
        let g = newest.as_deref().unwrap_or(group);
        let stuck = sticky.and_then(|a| {
            g.targets
                .iter()
                .find(|t| t.cfg.address == a && g.accepts(t) && !t.is_ejected())
                .cloned()
        });
        g.claim(tried, || upstream_peer(g, tried, hash, stuck.as_ref()))
    };
    match group.queue.admit(timeout, max, &group.queued, look).await {
        Ok(c) => Ok(c),
        Err(Refusal::NoTarget) => Err(ProxyError::NoTargets),
        Err(Refusal::Full | Refusal::TimedOut) => {
            // ALB's TargetControlRequestRejectCount. A retry that finds no room is not a
            // rejection: the client gets the first attempt's error.
            if !retry {
                group.rejected.increment(1);
            }
            Err(ProxyError::TargetsAtCapacity)
        }
    }
}

/// What a target may be told about a request that came over TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFacts<'a> {
    /// The negotiated cipher suite and protocol version, in OpenSSL's names
    /// (`causeway_dataplane::tls::log_names`).
    pub names: Option<(&'static str, &'static str)>,
    /// On a listener that does mutual TLS, the client certificate's fields for the target
    /// (`causeway_dataplane::tls::client_cert_fields`; empty without a certificate). There a
    /// client's own `X-Amzn-Mtls-Clientcert*` fields are dropped.
    pub mtls: Option<&'a [(&'static str, String)]>,
    /// The listener's new names for these fields, as when the connection opened; a client's
    /// own fields of those names are dropped too.
    pub renames: Option<&'a RequestRenames>,
    /// On a rule that authenticates (`authenticate_oidc`), the user's fields for the target
    /// (`auth::FIELDS`; empty for a request let through unauthenticated). There a client's
    /// own fields of those names are dropped.
    pub oidc: Option<&'a [(&'static str, String)]>,
}

/// Whether a field name is one ALB forwards under `drop_invalid_header_fields`: letters,
/// digits and hyphens only (an underscore is a valid token character, but a CGI or PHP target
/// reads `X_User` and `X-User` as the same variable, so a client could forge one).
pub fn valid_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// The fields the alb sets itself when `x_amzn_tls_version_and_cipher_suite` is on; a client's
/// own copies are dropped so that a target can trust them.
pub fn is_tls_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"x-amzn-tls-version")
        || name.eq_ignore_ascii_case(b"x-amzn-tls-cipher-suite")
}

/// Whether the attributes (or mutual TLS, `mtls`) drop a client's field of this name before
/// it reaches a target (besides the hop-by-hop and X-Forwarded-* ones, which every path drops
/// on its own): the usual names of the fields the alb sets, and their new names (`renames`).
pub fn attribute_drops(
    lb: &LoadBalancerAttributes,
    name: &[u8],
    mtls: bool,
    renames: Option<&RequestRenames>,
) -> bool {
    (lb.drop_invalid_header_fields && !valid_field_name(name))
        || (lb.tls_headers && is_tls_field(name))
        || (mtls && causeway_dataplane::tls::is_mtls_field(name))
        || renames.is_some_and(|r| !r.0.is_empty() && r.drops(name, lb.tls_headers, mtls))
}

/// Writes the request head the target gets: hop-by-hop headers (and those the Connection
/// header names) dropped, Host as the attributes say, X-Forwarded-For/Proto/Port set, and the
/// TLS fields when the attributes ask for them.
#[allow(clippy::too_many_arguments)]
pub fn build_request_head<S: ClientStream>(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    req: &Prepared,
    client: &Client<S>,
    lb: &LoadBalancerAttributes,
    trace: &TraceId,
    tls: TlsFacts<'_>,
) {
    out.clear();
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    let rewrite = req.rewrite.as_ref();
    match rewrite.and_then(|r| r.target.as_deref()) {
        Some(t) => out.extend_from_slice(t.as_bytes()),
        None => out.extend_from_slice(head.target(buf)),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let port = client.local.port();
    let listed = ConnectionList::of(buf, &head.headers);
    for h in &head.headers {
        let name = h.name.get(buf);
        let mut value = h.value.get(buf);
        if listed.drops(name)
            || name.eq_ignore_ascii_case(b"x-forwarded-for")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-port")
            || name.eq_ignore_ascii_case(trace::HEADER.as_bytes())
            || (req.expect_continue && name.eq_ignore_ascii_case(b"expect"))
            || attribute_drops(lb, name, tls.mtls.is_some(), tls.renames)
            || (tls.oidc.is_some() && crate::auth::is_oidc_field(name))
        {
            continue;
        }
        if let Some(h) = rewrite.and_then(|r| r.host.as_deref()) {
            if name.eq_ignore_ascii_case(b"host") {
                value = h.as_bytes();
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        if name.eq_ignore_ascii_case(b"host")
            && !lb.preserve_host_header
            && port != 80
            && port != 443
            && crate::route::host_without_port(value) == value
        {
            // AWS: without preserve_host_header, a non-default listener port is appended.
            out.push(b':');
            out.extend_from_slice(crate::action::itoa(port as u64).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut prior = head
        .headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
        .map(|h| h.value.get(buf));
    match lb.xff {
        XffMode::Remove => {}
        XffMode::Preserve => {
            for v in prior {
                out.extend_from_slice(b"X-Forwarded-For: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        XffMode::Append => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            for v in prior.by_ref() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
            push_client(out, client.peer, lb.xff_client_port);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"X-Forwarded-Proto: ");
    out.extend_from_slice(client.scheme().as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    out.extend_from_slice(crate::action::itoa(port as u64).as_bytes());
    let renamed = |usual: &'static str| tls.renames.map_or(usual, |r| r.name(usual));
    if let Some((cipher, version)) = tls.names.filter(|_| lb.tls_headers) {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(renamed("X-Amzn-Tls-Version").as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(version.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(renamed("X-Amzn-Tls-Cipher-Suite").as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(cipher.as_bytes());
    }
    for (name, value) in tls.mtls.unwrap_or_default() {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(renamed(name).as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    for (name, value) in tls.oidc.unwrap_or_default() {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"\r\nX-Amzn-Trace-Id: ");
    trace.write(head.header(buf, trace::HEADER), out);
    out.extend_from_slice(b"\r\n");
    if req.framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if req.websocket {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the client's X-Forwarded-For entry: its address ([`push_ip`]), and with `port` its
/// port after a colon, an IPv6 address then in brackets (`[2001:db8::1]:5000`).
pub fn push_client(out: &mut Vec<u8>, peer: SocketAddr, port: bool) {
    if !port {
        return push_ip(out, peer);
    }
    let v6 = matches!(peer.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none());
    if v6 {
        out.push(b'[');
    }
    push_ip(out, peer);
    if v6 {
        out.push(b']');
    }
    out.push(b':');
    out.extend_from_slice(crate::action::itoa(u64::from(peer.port())).as_bytes());
}

/// Writes the client's address as X-Forwarded-For lists it: IPv4 (also mapped into IPv6) in
/// dotted decimal, without `fmt` (which cost a thousand instructions a request), and IPv6 as
/// its `Display` writes it.
pub fn push_ip(out: &mut Vec<u8>, peer: SocketAddr) {
    let v6 = match peer.ip() {
        std::net::IpAddr::V4(v4) => return push_ipv4(out, v4),
        std::net::IpAddr::V6(v6) => v6,
    };
    match v6.to_ipv4_mapped() {
        Some(v4) => push_ipv4(out, v4),
        None => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if o >= 100 {
            out.push(b'0' + o / 100);
        }
        if o >= 10 {
            out.push(b'0' + o / 10 % 10);
        }
        out.push(b'0' + o % 10);
    }
}

/// How much of the request body is already buffered, and whether it is all there.
fn buffered_body(
    buf: &[u8],
    head_len: usize,
    framing: Framing,
) -> Result<(usize, bool, ChunkedScanner), ProxyError> {
    let avail = buf.len() - head_len;
    let mut scanner = ChunkedScanner::new();
    Ok(match framing {
        Framing::None | Framing::Close => (0, true, scanner),
        Framing::Length(n) => {
            let have = (n.min(avail as u64)) as usize;
            (have, have as u64 == n, scanner)
        }
        Framing::Chunked => {
            let n = scanner
                .feed(&buf[head_len..])
                .map_err(|_| ProxyError::Client(400, "invalid chunked body"))?;
            (n, scanner.is_done(), scanner)
        }
    })
}

/// A TCP connection to a target within the connect timeout, with TCP_NODELAY.
pub(crate) async fn connect(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            Ok(s)
        }
        Ok(Err(_)) => Err(ProxyError::ConnectFailed),
        Err(_) => Err(ProxyError::ConnectTimeout),
    }
}

/// A connection to a target: plain TCP, or TLS for groups with protocol HTTPS.
#[derive(Debug)]
pub enum Up {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Up {
    /// An idle pooled connection of the right kind.
    pub fn pooled(target: &Target, tls: bool) -> Option<Up> {
        if tls {
            target.tls_pool.take().map(|s| Up::Tls(Box::new(s)))
        } else {
            target.pool.take().map(Up::Plain)
        }
    }

    /// A new connection, with the TLS handshake for HTTPS groups (no certificate check, as
    /// AWS).
    pub async fn connect(addr: SocketAddr, tls: bool) -> Result<Up, ProxyError> {
        let tcp = connect(addr).await?;
        if !tls {
            return Ok(Up::Plain(tcp));
        }
        // Boxed: a TLS handshake's state would make every request's future larger.
        match timeout(
            CONNECT_TIMEOUT,
            Box::pin(causeway_dataplane::tls::connect_target(tcp, false)),
        )
        .await
        {
            Ok(Ok(s)) => Ok(Up::Tls(Box::new(s))),
            Ok(Err(e)) => {
                tracing::debug!(target = %addr, error = %e, "TLS to target failed");
                Err(ProxyError::ConnectFailed)
            }
            Err(_) => Err(ProxyError::ConnectTimeout),
        }
    }

    /// Back to the target's pool after a complete exchange.
    pub fn give_back(self, target: &Target) {
        match self {
            Up::Plain(s) => target.pool.put(s),
            Up::Tls(s) => target.tls_pool.put(*s),
        }
    }
}

impl tokio::io::AsyncRead for Up {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Up::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Up::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Up {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Up::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Up::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Up::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Up::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Up::Plain(s) => s.is_write_vectored(),
            Up::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Up::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Up::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Up::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Up::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Forwards the request at the start of `client.buf` and relays the response. On success the
/// request's bytes have been consumed from `client.buf`.
#[allow(clippy::too_many_arguments)]
pub async fn forward<S: ClientStream>(
    client: &mut Client<S>,
    head: &RequestHead,
    req: &Prepared,
    group: &TargetGroup,
    lb: &LoadBalancerAttributes,
    scratch: &mut Scratch,
    hash: u64,
    key: &StickyKey,
    cookies: &[&str],
    trace: &TraceId,
    tls: TlsFacts<'_>,
    mods: &ResponseHeaders,
) -> Result<Outcome, (ProxyError, Option<SocketAddr>)> {
    let (prefix, complete, scanner) =
        buffered_body(&client.buf, head.len, req.framing).map_err(|e| (e, None))?;
    if req.expect_continue && !complete {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| (ProxyError::ClientGone, None))?;
    }
    scratch.ready();
    build_request_head(
        &mut scratch.out,
        &client.buf,
        head,
        req,
        client,
        lb,
        trace,
        tls,
    );
    let head_out_len = scratch.out.len();
    let stickiness = group.cfg.stickiness.as_ref().and_then(StickyMode::of);
    let now_unix = stickiness.map(|_| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let stuck = stickiness.zip(now_unix).and_then(|(m, now)| {
        let cookie = cookie_value(&client.buf, head, m.cookie);
        sticky_target(group, cookie, key, now)
    });
    let tls = group.cfg.protocol == "HTTPS";
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
        let claimed = claim_peer(group, &tried, hash, stuck.as_ref(), attempt > 1).await;
        let (target, _in_flight) = match claimed {
            Ok(c) => c,
            Err(e) => {
                if attempt == 1 {
                    last = e;
                }
                break;
            }
        };
        // The cookie names this target (re-sticking after a failover). lb_cookie: every
        // response refreshes it; app_cookie: responses that set the application's cookie.
        let set_cookie = stickiness.zip(now_unix).map(|(m, now)| {
            let line = format!(
                "{}={}; Max-Age={}; Path=/",
                m.cookie,
                sticky::encode(key, target.cfg.address, now + m.duration.as_secs()),
                m.duration.as_secs()
            );
            (line, m.app_cookie)
        });
        let addr = target.cfg.address;
        let pooled = Up::pooled(&target, tls);
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(s) => s,
            None => match Up::connect(addr, tls).await {
                Ok(s) => s,
                Err(e) => {
                    metrics::counter!("causeway_alb_target_connection_error_count",
                        "target_group" => group.cfg.name.clone())
                    .increment(1);
                    target.record_passive_failure();
                    group.record_outcome(&target, true);
                    tried.push(addr);
                    last = e;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let body = &client.buf[head.len..head.len + prefix];
        // A retry resends the head alone plus the body again.
        scratch.out.truncate(head_out_len);
        // flush: a no-op on TCP; TLS may hold the last record until flushed.
        let written = match write_joined(&mut up, &mut scratch.out, body).await {
            Ok(()) => up.flush().await,
            Err(e) => Err(e),
        };
        let result = match written {
            Err(_) => Err(ProxyError::UpstreamFailed),
            Ok(()) => {
                let sent = Sent {
                    upto: head.len + prefix,
                    complete,
                    remaining: match req.framing {
                        Framing::Length(n) => n - prefix as u64,
                        _ => 0,
                    },
                    scanner: scanner.clone(),
                };
                exchange(
                    client,
                    up,
                    sent,
                    req,
                    scratch,
                    lb,
                    &target,
                    started,
                    set_cookie.as_ref().map(|(l, app)| (l.as_str(), *app)),
                    cookies,
                    mods,
                )
                .await
            }
        };
        match result {
            Ok((mut o, reusable)) => {
                if let Some(s) = reusable {
                    s.give_back(&target);
                }
                group.record_outcome(&target, o.status >= 500);
                o.attempts = attempt;
                return Ok(o);
            }
            Err(e) if e.retryable(req.idempotent, complete) => {
                if !reused && e.blames_target() {
                    target.record_passive_failure();
                    group.record_outcome(&target, true);
                }
                tracing::debug!(target = %addr, reused, error = %e, "retrying");
                if !reused {
                    tried.push(addr);
                }
                last = e;
            }
            Err(e) => {
                if e.blames_target() && !reused {
                    target.record_passive_failure();
                    group.record_outcome(&target, true);
                }
                return Err((e, Some(addr)));
            }
        }
    }
    Err((last, tried.last().copied()))
}

/// What of the request went out with its head.
#[derive(Debug, Clone)]
struct Sent {
    /// Bytes of `client.buf` written (head and buffered body).
    upto: usize,
    /// The whole body was among them.
    complete: bool,
    /// Content-Length bytes still to stream.
    remaining: u64,
    scanner: ChunkedScanner,
}

/// Sends the rest of the body if needed, reads the response head, and relays the response.
/// Returns the upstream connection when it can be reused.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: ClientStream>(
    client: &mut Client<S>,
    mut up: Up,
    mut sent: Sent,
    req: &Prepared,
    scratch: &mut Scratch,
    lb: &LoadBalancerAttributes,
    target: &Target,
    started: Instant,
    set_cookie: Option<(&str, Option<&str>)>,
    cookies: &[&str],
    mods: &ResponseHeaders,
) -> Result<(Outcome, Option<Up>), ProxyError> {
    let idle = lb.idle_timeout;
    if !sent.complete {
        // No retry is possible once the body streams: the buffered part can go now.
        client.consume(sent.upto);
        stream_request_body(
            client,
            &mut up,
            req.framing,
            sent.remaining,
            &mut sent.scanner,
        )
        .await?;
    }
    // Response head, relaying interim 1xx responses.
    let ubuf = &mut scratch.ubuf;
    ubuf.clear();
    let mut response_started = false;
    loop {
        let complete = !ubuf.is_empty()
            && parse_response(ubuf, MAX_RESPONSE_HEAD, &mut scratch.resp)
                .map_err(|_| ProxyError::BadResponse)?;
        if complete {
            let resp = &scratch.resp;
            if resp.status >= 100 && resp.status < 200 && resp.status != 101 {
                client
                    .write_all(&ubuf[..resp.len])
                    .await
                    .map_err(|_| ProxyError::ResponseCut)?;
                response_started = true;
                ubuf.drain(..resp.len);
                continue;
            }
            break;
        }
        if ubuf.capacity() - ubuf.len() < 1024 {
            ubuf.reserve(READ_CHUNK);
        }
        match timeout(idle, up.read_buf(ubuf)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Ok(0)) | Ok(Err(_)) if ubuf.is_empty() && !response_started => {
                return Err(ProxyError::UpstreamFailed)
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::BadResponse),
            Ok(Ok(_)) => {}
        }
    }
    // A response has begun: no retry from here, so the request's bytes can go.
    if sent.complete {
        client.consume(sent.upto);
    }
    let target_time = started.elapsed();
    target.observe_latency(target_time);
    let resp = &scratch.resp;
    let status = resp.status;
    if status == 101 {
        if !req.websocket {
            return Err(ProxyError::BadResponse);
        }
        let head = response_filter::switching_head(ubuf, &scratch.resp, cookies);
        return tunnel(client, &mut up, &head, target, target_time, idle)
            .await
            .map(|o| (o, None));
    }
    let framing = resp
        .framing(ubuf, req.is_head)
        .map_err(|_| ProxyError::BadResponse)?;
    let upstream_reusable =
        resp.minor_version == 1 && !resp.lists_token(ubuf, "connection", "close");
    // A refused upgrade closes: bytes the client sent after it must not be read as requests.
    let close = req.close || req.websocket || framing == Framing::Close || client.draining();
    let set_cookie = set_cookie.and_then(|(line, app)| match app {
        None => Some(line),
        Some(name) => {
            let sets = resp
                .headers
                .iter()
                .filter(|h| h.name.get(ubuf).eq_ignore_ascii_case(b"set-cookie"))
                .map(|h| h.value.get(ubuf));
            sticky::sets_cookie(sets, name).then_some(line)
        }
    });
    response_filter::build_response_head(
        &mut scratch.out,
        ubuf,
        resp,
        framing,
        close,
        set_cookie,
        cookies,
        mods,
    );
    let head_len = resp.len;
    let avail = ubuf.len() - head_len;
    let mut scan = ChunkedScanner::new();
    let (first, done) = match framing {
        Framing::None => (0, true),
        Framing::Length(n) => {
            let k = n.min(avail as u64) as usize;
            (k, k as u64 == n)
        }
        Framing::Chunked => {
            let k = scan
                .feed(&ubuf[head_len..])
                .map_err(|_| ProxyError::BadResponse)?;
            (k, scan.is_done())
        }
        Framing::Close => (avail, false),
    };
    let leftover = avail - first;
    let mut sent_bytes = (scratch.out.len() + first) as u64;
    // A client that stops reading holds nothing past the idle timeout.
    timeout(
        idle,
        write_joined(
            &mut client.stream,
            &mut scratch.out,
            &ubuf[head_len..head_len + first],
        ),
    )
    .await
    .map_err(|_| ProxyError::ResponseCut)?
    .map_err(|_| ProxyError::ResponseCut)?;
    let clean = if done {
        leftover == 0
    } else {
        let remaining = match framing {
            Framing::Length(n) => n - first as u64,
            _ => 0,
        };
        let (clean, relayed) =
            relay_response_body(client, &mut up, ubuf, framing, remaining, &mut scan, idle).await?;
        sent_bytes += relayed;
        clean
    };
    let outcome = Outcome {
        status,
        target: target.cfg.address,
        close,
        target_time,
        attempts: 1,
        sent_bytes,
        tunnel_received: 0,
    };
    let reusable = clean && upstream_reusable && framing != Framing::Close;
    Ok((outcome, reusable.then_some(up)))
}

/// The body of a response past what was read with its head. Returns whether the upstream
/// connection ended cleanly at the body's end (so it can be reused), and the bytes relayed.
async fn relay_response_body<S: ClientStream>(
    client: &mut Client<S>,
    up: &mut Up,
    ubuf: &mut Vec<u8>,
    framing: Framing,
    mut remaining: u64,
    scan: &mut ChunkedScanner,
    idle: Duration,
) -> Result<(bool, u64), ProxyError> {
    let mut relayed = 0u64;
    loop {
        ubuf.clear();
        if ubuf.capacity() < READ_CHUNK {
            ubuf.reserve(READ_CHUNK);
        }
        let n = match timeout(idle, up.read_buf(ubuf)).await {
            Err(_) => return Err(ProxyError::ResponseCut),
            Ok(Err(_)) => return Err(ProxyError::ResponseCut),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return if framing == Framing::Close {
                Ok((false, relayed))
            } else {
                Err(ProxyError::ResponseCut)
            };
        }
        let (take, done) = match framing {
            Framing::Length(_) => {
                let k = remaining.min(n as u64) as usize;
                remaining -= k as u64;
                (k, remaining == 0)
            }
            Framing::Chunked => {
                let k = scan.feed(&ubuf[..n]).map_err(|_| ProxyError::ResponseCut)?;
                (k, scan.is_done())
            }
            _ => (n, false),
        };
        timeout(idle, client.stream.write_all(&ubuf[..take]))
            .await
            .map_err(|_| ProxyError::ResponseCut)?
            .map_err(|_| ProxyError::ResponseCut)?;
        relayed += take as u64;
        if done {
            return Ok((take == n, relayed));
        }
    }
}

/// The request body past what was buffered with its head, streamed from client to target.
async fn stream_request_body<S: ClientStream>(
    client: &mut Client<S>,
    up: &mut Up,
    framing: Framing,
    mut remaining: u64,
    scanner: &mut ChunkedScanner,
) -> Result<(), ProxyError> {
    let mut pace = BodyPace::new(Instant::now());
    loop {
        if client.buf.is_empty() {
            let wait = pace.deadline().min(Instant::now() + BODY_IDLE);
            match tokio::time::timeout_at(wait, client.fill()).await {
                Err(_) if pace.too_slow(Instant::now()) => {
                    metrics::counter!("causeway_alb_slow_request_body_total").increment(1);
                    return Err(ProxyError::Client(408, "request body too slow"));
                }
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(ProxyError::ClientGone),
                Ok(Ok(n)) => pace.add(n),
            }
        }
        let (take, done) = match framing {
            Framing::Length(_) => {
                let k = remaining.min(client.buf.len() as u64) as usize;
                remaining -= k as u64;
                (k, remaining == 0)
            }
            Framing::Chunked => {
                let k = scanner
                    .feed(&client.buf)
                    .map_err(|_| ProxyError::Client(400, "invalid chunked body"))?;
                (k, scanner.is_done())
            }
            Framing::None | Framing::Close => (0, true),
        };
        up.write_all(&client.buf[..take])
            .await
            .map_err(|_| ProxyError::UpstreamFailed)?;
        up.flush().await.map_err(|_| ProxyError::UpstreamFailed)?;
        client.consume(take);
        if done {
            return Ok(());
        }
    }
}

/// After a 101: relay the response head and everything after, both ways, until both close or
/// no byte has passed either way for `idle`.
async fn tunnel<S: ClientStream>(
    client: &mut Client<S>,
    up: &mut Up,
    ubuf: &[u8],
    target: &Target,
    target_time: Duration,
    idle: Duration,
) -> Result<Outcome, ProxyError> {
    client
        .write_all(ubuf)
        .await
        .map_err(|_| ProxyError::ResponseCut)?;
    if !client.buf.is_empty() {
        up.write_all(&client.buf)
            .await
            .map_err(|_| ProxyError::ResponseCut)?;
        up.flush().await.map_err(|_| ProxyError::ResponseCut)?;
        client.consume(client.buf.len());
    }
    let early = client.buf.len() as u64;
    let never = std::future::pending();
    let (n, ended) = causeway_dataplane::relay::relay(&mut client.stream, up, idle, never).await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "websocket tunnel ended");
    }
    Ok(Outcome {
        status: 101,
        target: target.cfg.address,
        close: true,
        target_time,
        attempts: 1,
        sent_bytes: ubuf.len() as u64 + n.target_to_client,
        tunnel_received: early + n.client_to_target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_its_port_a_client_is_written_as_a_socket_address() {
        for (addr, want) in [
            ("192.0.2.7:5000", "192.0.2.7:5000"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("[::ffff:203.0.113.7]:9", "203.0.113.7:9"),
        ] {
            let mut out = Vec::new();
            push_client(&mut out, addr.parse().unwrap(), true);
            assert_eq!(String::from_utf8(out).unwrap(), want);
            let mut out = Vec::new();
            push_client(&mut out, addr.parse().unwrap(), false);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                want.rsplit_once(':').unwrap().0.trim_matches(['[', ']'])
            );
        }
    }

    #[test]
    fn only_letters_digits_and_hyphens_make_a_valid_field_name() {
        for ok in ["Host", "x-amzn-trace-id", "X-1", "a"] {
            assert!(valid_field_name(ok.as_bytes()), "{ok}");
        }
        for bad in ["X_User", "x.y", "a b", "", "x:", "é", "x~y"] {
            assert!(!valid_field_name(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        let ips = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.9",
            "1.20.199.250",
            "2001:db8::1",
            "::1",
            "::",
            "::ffff:203.0.113.7",
            "fe80::1:2:3:4",
        ];
        for ip in ips {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let want = match ip {
                std::net::IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(ip.to_string(), |v4| v4.to_string()),
                std::net::IpAddr::V4(_) => ip.to_string(),
            };
            let mut out = b"x".to_vec();
            push_ip(&mut out, SocketAddr::new(ip, 9));
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{want}"));
        }
    }
}
