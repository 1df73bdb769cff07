//! A test origin: HTTP/1.1 and h2c (prior knowledge) on an ephemeral loopback port. It counts
//! requests, records what it saw, and answers `origin <name> <path>` with an `x-origin` header,
//! so tests can assert which target got a request. A gRPC request (`application/grpc`) gets its
//! message echoed and `grpc-status: 0` in trailers.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A response body of one data frame and then trailers (`grpc-status: 0`).
#[derive(Debug)]
pub struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl WithTrailers {
    fn grpc(data: Bytes) -> WithTrailers {
        let mut t = hyper::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t.insert("grpc-message", "ok".parse().unwrap());
        WithTrailers {
            data: Some(data),
            trailers: Some(t),
        }
    }
}

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(hyper::body::Frame::data(d)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    /// The request came over TLS (an origin built with [`Builder::tls`]).
    pub tls: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    seen: Vec<Seen>,
    /// Requests from Causeway's health checker, kept apart so that tests counting traffic are
    /// not disturbed by a check that happens to land during them.
    health_checks: Vec<Seen>,
    /// Requests (not health checks) being answered now, and the most there were at once.
    active: usize,
    peak: usize,
}

/// Counts a request as being answered while it lives.
struct Active(Arc<Mutex<State>>);

impl Active {
    fn enter(state: &Arc<Mutex<State>>) -> Active {
        let mut st = state.lock().unwrap();
        st.active += 1;
        st.peak = st.peak.max(st.active);
        Active(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.lock().unwrap().active -= 1;
    }
}

/// Per-path behaviour besides the status; changeable while the origin runs.
#[derive(Debug, Default)]
struct Extras {
    delays: HashMap<String, std::time::Duration>,
    cookies: HashMap<String, String>,
    /// Extra response fields by path. An `etag` or `last-modified` among them makes the origin
    /// answer a matching conditional request with 304.
    headers: HashMap<String, Vec<(String, String)>>,
    bodies: HashMap<String, Bytes>,
    /// Status overrides set while running (win over the builder's).
    statuses: HashMap<String, u16>,
    /// Paths whose answers wait for a pass (`hold`, `let_through`).
    gates: HashMap<String, Arc<tokio::sync::Semaphore>>,
}

/// Builds an [`Origin`].
#[derive(Debug, Default)]
pub struct Builder {
    name: Option<String>,
    addr: Option<SocketAddr>,
    statuses: HashMap<String, u16>,
    default_status: Option<u16>,
    delays: HashMap<String, std::time::Duration>,
    cookies: HashMap<String, String>,
    tls: bool,
}

impl Builder {
    /// Sends `Set-Cookie: cookie` in answers to `path`.
    pub fn set_cookie_for(mut self, path: &str, cookie: &str) -> Self {
        self.cookies.insert(path.to_owned(), cookie.to_owned());
        self
    }

    /// Waits `delay` before answering `path` (a slow request, in flight for that long).
    pub fn delay_for(mut self, path: &str, delay: std::time::Duration) -> Self {
        self.delays.insert(path.to_owned(), delay);
        self
    }

    /// Answers `status` for every path without its own.
    pub fn default_status(mut self, status: u16) -> Self {
        self.default_status = Some(status);
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Binds this address instead of `127.0.0.1:0`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Serves HTTPS (HTTP/1.1 and h2 by ALPN) with the `a.example.test` test certificate.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Answers `status` for `path`.
    pub fn status_for(mut self, path: &str, status: u16) -> Self {
        self.statuses.insert(path.to_owned(), status);
        self
    }

    pub async fn start(self) -> Origin {
        let bind = self.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = self.name.unwrap_or_else(|| addr.to_string());
        let state = Arc::new(Mutex::new(State::default()));
        let mut statuses = self.statuses;
        if let Some(d) = self.default_status {
            statuses.insert(String::new(), d);
        }
        let statuses = Arc::new(statuses);
        let extras = Arc::new(Mutex::new(Extras {
            delays: self.delays,
            cookies: self.cookies,
            ..Extras::default()
        }));
        let acceptor = self.tls.then(tls_acceptor);
        let task = tokio::spawn(accept(
            listener,
            acceptor,
            name.clone(),
            state.clone(),
            statuses,
            extras.clone(),
        ));
        Origin {
            name,
            addr,
            state,
            extras,
            task,
        }
    }
}

/// A running origin. Dropping it stops it.
#[derive(Debug)]
pub struct Origin {
    name: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    extras: Arc<Mutex<Extras>>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub async fn start() -> Origin {
        Builder::default().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests seen for `path` (health checks not included).
    pub fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// Health-check requests seen for `path`.
    pub fn health_check_hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .health_checks
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    /// All requests seen (health checks not included).
    pub fn total(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Stops accepting (the listener closes); connections already open are cut.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// From now on, answers `path` with these extra response fields.
    pub fn set_headers(&self, path: &str, headers: &[(&str, &str)]) {
        self.extras.lock().unwrap().headers.insert(
            path.to_owned(),
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// From now on, answers `path` with this body (instead of `origin <name> <path>`).
    pub fn set_body(&self, path: &str, body: impl Into<Bytes>) {
        self.extras
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_owned(), body.into());
    }

    /// From now on, answers `path` with this status.
    pub fn set_status(&self, path: &str, status: u16) {
        self.extras
            .lock()
            .unwrap()
            .statuses
            .insert(path.to_owned(), status);
    }

    /// From now on, requests for `path` wait (after being counted as seen and active) until
    /// [`Self::let_through`] lets them go, one pass each.
    pub fn hold(&self, path: &str) {
        self.extras
            .lock()
            .unwrap()
            .gates
            .insert(path.to_owned(), Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets `n` held requests for `path` (present or future) be answered.
    pub fn let_through(&self, path: &str, n: usize) {
        if let Some(g) = self.extras.lock().unwrap().gates.get(path) {
            g.add_permits(n);
        }
    }

    /// Requests being answered now (health checks not included).
    pub fn active(&self) -> usize {
        self.state.lock().unwrap().active
    }

    /// The most requests this origin was answering at once (health checks not included).
    pub fn peak_active(&self) -> usize {
        self.state.lock().unwrap().peak
    }

    /// From now on, waits `delay` before answering `path`.
    pub fn set_delay(&self, path: &str, delay: std::time::Duration) {
        self.extras
            .lock()
            .unwrap()
            .delays
            .insert(path.to_owned(), delay);
    }
}

/// The test certificate `a.example.test` as a TLS acceptor offering h2 and HTTP/1.1.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    crate::tls::acceptor("a.example.test", &[b"h2", b"http/1.1"])
}

async fn accept(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    name: String,
    state: Arc<Mutex<State>>,
    statuses: Arc<HashMap<String, u16>>,
    extras: Arc<Mutex<Extras>>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (name, state, statuses, extras) = (
            name.clone(),
            state.clone(),
            statuses.clone(),
            extras.clone(),
        );
        let acceptor = acceptor.clone();
        let tls = acceptor.is_some();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (name, state, statuses, extras) = (
                    name.clone(),
                    state.clone(),
                    statuses.clone(),
                    extras.clone(),
                );
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let path = parts.uri.path().to_owned();
                    let is_check = parts
                        .headers
                        .get("user-agent")
                        .is_some_and(|v| v.as_bytes().starts_with(b"Causeway-HealthChecker"));
                    let seen = Seen {
                        method: parts.method.to_string(),
                        path: parts
                            .uri
                            .path_and_query()
                            .map_or(path.clone(), |p| p.to_string()),
                        version: format!("{:?}", parts.version),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect(),
                        body: body.to_vec(),
                        peer,
                        tls,
                    };
                    let seen_body = body.clone();
                    {
                        let mut st = state.lock().unwrap();
                        if is_check {
                            st.health_checks.push(seen);
                        } else {
                            st.seen.push(seen);
                        }
                    }
                    let _active = (!is_check).then(|| Active::enter(&state));
                    let gate = extras.lock().unwrap().gates.get(&path).cloned();
                    if let (Some(g), false) = (gate, is_check) {
                        g.acquire().await.unwrap().forget();
                    }
                    let (delay, cookie, headers, body, status_override) = {
                        let x = extras.lock().unwrap();
                        (
                            x.delays.get(&path).copied(),
                            x.cookies.get(&path).cloned(),
                            x.headers.get(&path).cloned().unwrap_or_default(),
                            x.bodies.get(&path).cloned(),
                            x.statuses.get(&path).copied(),
                        )
                    };
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    let status = status_override
                        .or_else(|| statuses.get(&path).copied())
                        .or_else(|| statuses.get("").copied())
                        .unwrap_or(200);
                    let field = |n: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(n))
                            .map(|(_, v)| v.as_str())
                    };
                    let asked = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
                    let not_modified = status == 200
                        && match (asked("if-none-match"), field("etag")) {
                            (Some(inm), Some(etag)) => inm.split(',').any(|t| t.trim() == etag),
                            (None, _) => matches!(
                                (asked("if-modified-since"), field("last-modified")),
                                (Some(a), Some(b)) if a == b
                            ),
                            _ => false,
                        };
                    let body = if not_modified {
                        Bytes::new()
                    } else {
                        body.unwrap_or_else(|| Bytes::from(format!("origin {name} {path}\n")))
                    };
                    let grpc = parts
                        .headers
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    if grpc {
                        // gRPC: the request's message echoed, the status in trailers.
                        let mut resp = Response::new(Either::Right(WithTrailers::grpc(seen_body)));
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        resp.headers_mut().insert("x-origin", name.parse().unwrap());
                        return Ok(resp);
                    }
                    let mut resp = Response::new(Either::Left(Full::new(body)));
                    *resp.status_mut() = if not_modified {
                        hyper::StatusCode::NOT_MODIFIED
                    } else {
                        hyper::StatusCode::from_u16(status).unwrap()
                    };
                    resp.headers_mut().insert("x-origin", name.parse().unwrap());
                    if let Some(c) = cookie {
                        resp.headers_mut().insert("set-cookie", c.parse().unwrap());
                    }
                    for (n, v) in &headers {
                        resp.headers_mut().append(
                            hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                            v.parse().unwrap(),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Errors here are client disconnects; an origin has nothing to report.
            match acceptor {
                None => drop(builder.serve_connection(TokioIo::new(stream), svc).await),
                Some(a) => {
                    if let Ok(s) = a.accept(stream).await {
                        drop(builder.serve_connection(TokioIo::new(s), svc).await);
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}
