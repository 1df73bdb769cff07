//! Active health checks: TCP connect and HTTP GET probes, run by one jittered loop per target
//! that stops when the target is retired or the process shuts down.

use crate::health::Outcome;
use crate::target::Target;
use causeway_config::common::{HealthCheckConfig, HealthCheckKind};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Runs one probe. The real one uses the network; tests script outcomes.
pub trait Prober: Send + Sync + 'static {
    fn probe<'a>(
        &'a self,
        addr: SocketAddr,
        hc: &'a HealthCheckConfig,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// Probes over the network.
#[derive(Debug, Default)]
pub struct NetProber;

impl Prober for NetProber {
    fn probe<'a>(
        &'a self,
        addr: SocketAddr,
        hc: &'a HealthCheckConfig,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            match tokio::time::timeout(hc.timeout, probe_once(addr, hc)).await {
                Ok(o) => o,
                Err(_) => Outcome::Timeout,
            }
        })
    }
}

async fn probe_once(addr: SocketAddr, hc: &HealthCheckConfig) -> Outcome {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return Outcome::Failed;
    };
    if hc.proxy_protocol_v2
        && s.write_all(&crate::proxy_protocol::encode_v2_local())
            .await
            .is_err()
    {
        return Outcome::Failed;
    }
    let (path, matcher) = match &hc.kind {
        HealthCheckKind::Tcp => return Outcome::Success,
        HealthCheckKind::Grpc { path, matcher } => {
            return if hc.tls {
                match crate::tls::connect_target(s, true).await {
                    Ok(tls) => grpc_probe(tls, addr, path, matcher).await,
                    Err(_) => Outcome::Failed,
                }
            } else {
                grpc_probe(s, addr, path, matcher).await
            };
        }
        HealthCheckKind::Http { path, matcher } => (path, matcher),
    };
    if hc.tls {
        return match crate::tls::connect_target(s, false).await {
            Ok(tls) => http_probe(tls, addr, path, matcher).await,
            Err(_) => Outcome::Failed,
        };
    }
    http_probe(s, addr, path, matcher).await
}

/// A gRPC call over h2 on a connected stream: an empty message to `path`; the `grpc-status`
/// (in the head of a trailers-only answer, or in the trailers) decides.
async fn grpc_probe<S>(
    s: S,
    addr: SocketAddr,
    path: &str,
    matcher: &causeway_config::common::StatusMatcher,
) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(s);
    let Ok((mut send, conn)) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Full<bytes::Bytes>>(io)
            .await
    else {
        return Outcome::Failed;
    };
    let task = tokio::spawn(conn);
    let outcome = async {
        let req = hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "Causeway-HealthChecker/1.0")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .ok()?;
        let resp = send.send_request(req).await.ok()?;
        if resp.status() != hyper::StatusCode::OK {
            return Some(Outcome::BadStatus(resp.status().as_u16()));
        }
        let code = |h: &hyper::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
        };
        // In the head of a trailers-only answer, or else in the trailers; an answer that
        // ends without one is malformed, not a connection failure.
        let status = match code(resp.headers()) {
            Some(c) => Some(c),
            None => {
                let body = resp.into_body().collect().await.ok()?;
                body.trailers().and_then(code)
            }
        };
        Some(match status {
            Some(c) if matcher.matches(c) => Outcome::Answered(c),
            Some(c) => Outcome::BadGrpcStatus(c),
            None => Outcome::GrpcStatusMissing,
        })
    }
    .await;
    task.abort();
    outcome.unwrap_or(Outcome::Failed)
}

/// An HTTP GET on a connected stream: the status line decides.
async fn http_probe<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    path: &str,
    matcher: &causeway_config::common::StatusMatcher,
) -> Outcome {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Causeway-HealthChecker/1.0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return Outcome::Failed;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    // The status line's first 12 bytes ("HTTP/1.1 200") are all we need.
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return Outcome::Failed,
            Ok(k) => n += k,
        }
    }
    match parse_status(&buf[..n]) {
        Some(code) if matcher.matches(code) => Outcome::Answered(code),
        Some(code) => Outcome::BadStatus(code),
        None => Outcome::Failed,
    }
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The address a target is checked at: its own, or the configured check port.
pub fn check_addr(target: &Target) -> SocketAddr {
    let mut a = target.cfg.address;
    if let Some(p) = target.health_check.port {
        a.set_port(p);
    }
    a
}

/// An interval with ±10% jitter, so checks of many targets do not beat in step.
pub fn jittered(interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    let spread = interval.as_millis() as u64 / 10;
    let ms = interval.as_millis() as u64 - spread + rng.u64(..=2 * spread);
    Duration::from_millis(ms)
}

/// Where each check's result is logged, if anywhere: the plane's health check log as the
/// current config has it (swapped on reload).
pub type HealthLogs = Arc<arc_swap::ArcSwapOption<crate::healthlog::HealthLog>>;

/// Starts the checker of `target` unless it has one. The loop holds only a weak reference.
pub fn spawn_checker(
    target: &Arc<Target>,
    prober: Arc<dyn Prober>,
    shutdown: watch::Receiver<bool>,
    logs: HealthLogs,
) {
    if !target.health_check.enabled || !target.claim_checker() {
        return;
    }
    let weak = Arc::downgrade(target);
    tokio::spawn(check_loop(weak, prober, shutdown, logs));
}

async fn check_loop(
    weak: Weak<Target>,
    prober: Arc<dyn Prober>,
    mut shutdown: watch::Receiver<bool>,
    logs: HealthLogs,
) {
    let mut rng = fastrand::Rng::new();
    // The first check comes soon, spread over a tenth of the interval.
    let first = {
        let Some(t) = weak.upgrade() else { return };
        let spread = t.health_check.interval.as_millis() as u64 / 10;
        Duration::from_millis(rng.u64(..=spread))
    };
    let mut wait = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let Some(t) = weak.upgrade() else { return };
        if t.is_retired() || !t.state().checked() {
            return;
        }
        let (started, clock) = (std::time::SystemTime::now(), tokio::time::Instant::now());
        let outcome = prober.probe(check_addr(&t), &t.health_check).await;
        if t.is_retired() {
            return;
        }
        if let Some(log) = logs.load_full() {
            log.record(&t, started, clock.elapsed(), outcome);
        }
        t.record_check(outcome);
        wait = jittered(t.health_check.interval, &mut rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::State;
    use causeway_config::common::{StatusMatcher, TargetConfig};
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    /// A prober whose answer the test sets (0 success, 1 refused, 2 timeout), counting calls.
    struct Scripted(AtomicU8, AtomicUsize);

    fn scripted(mode: u8) -> Arc<Scripted> {
        Arc::new(Scripted(AtomicU8::new(mode), AtomicUsize::new(0)))
    }

    impl Prober for Scripted {
        fn probe<'a>(
            &'a self,
            _: SocketAddr,
            hc: &'a HealthCheckConfig,
        ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match self.0.load(Ordering::SeqCst) {
                    0 => Outcome::Success,
                    1 => Outcome::Failed,
                    _ => {
                        tokio::time::sleep(hc.timeout).await;
                        Outcome::Timeout
                    }
                }
            })
        }
    }

    fn hc() -> HealthCheckConfig {
        HealthCheckConfig {
            enabled: true,
            kind: HealthCheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy_threshold: 3,
            unhealthy_threshold: 2,
            proxy_protocol_v2: false,
            tls: false,
        }
    }

    fn target() -> Arc<Target> {
        let cfg = TargetConfig {
            id: "t".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
            zone: None,
        };
        Target::new(cfg, Arc::from("g"), &hc())
    }

    async fn run_for(secs: u64) {
        for _ in 0..secs * 10 {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }

    /// Advances the paused clock until the prober has been called `n` times in all (and the
    /// result recorded); returns the time that took.
    async fn until_calls(p: &Scripted, n: usize) -> Duration {
        let start = tokio::time::Instant::now();
        for _ in 0..10_000 {
            if p.1.load(Ordering::SeqCst) >= n {
                let took = start.elapsed();
                // Let a timed-out probe finish and its result be recorded.
                run_for(3).await;
                return took;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        panic!("prober never reached {n} calls");
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_on_a_paused_clock() {
        let (_tx, rx) = watch::channel(false);
        let p = scripted(0);
        let t = target();
        spawn_checker(&t, p.clone(), rx, HealthLogs::default());
        // Healthy threshold 3: initial after two successes, healthy after the third.
        let first = until_calls(&p, 1).await;
        assert!(
            first <= Duration::from_millis(1300),
            "first check comes soon: {first:?}"
        );
        until_calls(&p, 2).await;
        assert_eq!(t.state(), State::Initial);
        until_calls(&p, 3).await;
        assert_eq!(t.state(), State::Healthy);
        // Unhealthy threshold 2: one refusal is not enough, two are.
        p.0.store(1, Ordering::SeqCst);
        until_calls(&p, 4).await;
        assert_eq!(t.state(), State::Healthy);
        // The gap between checks is the interval, jittered by at most 10%.
        let gap = until_calls(&p, 5).await;
        // (until_calls already spent 3 s after the previous call, and observes a call up to two
        // 100 ms steps late.)
        assert!(
            gap >= Duration::from_millis(5700) && gap <= Duration::from_millis(8300),
            "{gap:?}"
        );
        assert_eq!(t.state(), State::Unhealthy);
        assert_eq!(t.reason(), crate::health::Reason::FailedHealthChecks);
        // Timeouts keep it unhealthy; three successes bring it back, not two.
        p.0.store(2, Ordering::SeqCst);
        until_calls(&p, 6).await;
        assert_eq!(t.reason(), crate::health::Reason::Timeout);
        p.0.store(0, Ordering::SeqCst);
        until_calls(&p, 8).await;
        assert_eq!(t.state(), State::Unhealthy);
        until_calls(&p, 9).await;
        assert_eq!(t.state(), State::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn checker_stops_when_target_drains_or_on_shutdown() {
        let (tx, rx) = watch::channel(false);
        let p = scripted(1);
        let t = target();
        spawn_checker(&t, p.clone(), rx.clone(), HealthLogs::default());
        spawn_checker(&t, p.clone(), rx, HealthLogs::default()); // a second call starts nothing
        until_calls(&p, 1).await;
        t.drain(tokio::time::Instant::now() + Duration::from_secs(60));
        run_for(50).await;
        assert_eq!(
            p.1.load(Ordering::SeqCst),
            1,
            "no check runs on a draining target"
        );
        assert_eq!(t.state(), State::Draining);

        let t2 = target();
        spawn_checker(&t2, p.clone(), tx.subscribe(), HealthLogs::default());
        until_calls(&p, 2).await;
        tx.send(true).unwrap();
        run_for(50).await;
        assert_eq!(p.1.load(Ordering::SeqCst), 2, "no check after shutdown");
    }

    /// A target that is up for `period`, down for `period`, and so on, on the paused clock.
    struct Flapping {
        start: tokio::time::Instant,
        period: Duration,
        calls: AtomicUsize,
        flips: AtomicUsize,
        last_up: std::sync::atomic::AtomicBool,
    }

    impl Prober for Flapping {
        fn probe<'a>(
            &'a self,
            _addr: SocketAddr,
            _hc: &'a HealthCheckConfig,
        ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
            let phase = self.start.elapsed().as_millis() / self.period.as_millis();
            let up = phase.is_multiple_of(2);
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.last_up.swap(up, Ordering::SeqCst) != up {
                self.flips.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move {
                if up {
                    Outcome::Success
                } else {
                    Outcome::Failed
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_target_changes_state_a_bounded_number_of_times_and_fail_open_holds() {
        let (_tx, rx) = watch::channel(false);
        let p = Arc::new(Flapping {
            start: tokio::time::Instant::now(),
            period: Duration::from_secs(4),
            calls: AtomicUsize::new(0),
            flips: AtomicUsize::new(0),
            last_up: std::sync::atomic::AtomicBool::new(true),
        });
        let group = crate::target::TargetGroup::build(
            causeway_config::common::TargetGroupConfig {
                health_check: hc(),
                ..crate::target::tests::tg(&[1, 2], causeway_config::common::Algorithm::RoundRobin)
            },
            None,
        );
        for t in &group.targets {
            spawn_checker(t, p.clone(), rx.clone(), HealthLogs::default());
        }
        // One virtual hour, sampled every 100 ms.
        let mut changes = 0;
        let mut all_down_samples = 0;
        let mut last = group.targets[0].state();
        for _ in 0..36_000 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = group.targets[0].state();
            if now != last {
                changes += 1;
                last = now;
            }
            if group.targets.iter().all(|t| t.state() == State::Unhealthy) {
                all_down_samples += 1;
                assert!(
                    group.select(7).is_some(),
                    "fail open: with every target unhealthy, requests still go somewhere"
                );
            }
        }
        let checks = p.calls.load(Ordering::SeqCst) / 2;
        let flips = p.flips.load(Ordering::SeqCst);
        assert!(
            checks >= 330,
            "{checks} checks in an hour at a 10 s interval"
        );
        // Hysteresis: a down-and-up cycle needs 2 failures then 3 successes in a row, so at
        // most 2 changes per 5 checks, and far fewer than the raw outcome flips.
        assert!(changes >= 4, "the target does flap: {changes} changes");
        assert!(
            changes * 5 <= checks * 2,
            "{changes} changes in {checks} checks"
        );
        assert!(
            changes * 2 < flips,
            "{changes} state changes for {flips} flips of the raw outcome"
        );
        assert!(
            all_down_samples > 0,
            "both targets were down together at times"
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), &mut rng);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0"), None);
    }

    #[tokio::test]
    async fn real_probes_over_loopback() {
        let origin = causeway_testkit::Origin::builder()
            .status_for("/bad", 500)
            .start()
            .await;
        let mut hc = hc();
        hc.kind = HealthCheckKind::Http {
            path: "/healthz".into(),
            matcher: StatusMatcher::parse("200-399").unwrap(),
        };
        assert_eq!(
            NetProber.probe(origin.addr(), &hc).await,
            Outcome::Answered(200)
        );
        hc.kind = HealthCheckKind::Http {
            path: "/bad".into(),
            matcher: StatusMatcher::parse("200").unwrap(),
        };
        assert_eq!(
            NetProber.probe(origin.addr(), &hc).await,
            Outcome::BadStatus(500)
        );
        assert_eq!(origin.health_check_hits("/healthz"), 1);
        assert_eq!(origin.total(), 0, "checks are not counted as traffic");
        hc.kind = HealthCheckKind::Tcp;
        assert_eq!(NetProber.probe(origin.addr(), &hc).await, Outcome::Success);
        let closed = causeway_testkit::closed_port().await;
        assert_eq!(NetProber.probe(closed, &hc).await, Outcome::Failed);
        // HTTPS: the same GET over TLS; a plain origin fails it, a TLS one passes.
        hc.kind = HealthCheckKind::Http {
            path: "/tls".into(),
            matcher: StatusMatcher::parse("200").unwrap(),
        };
        hc.tls = true;
        assert_eq!(NetProber.probe(origin.addr(), &hc).await, Outcome::Failed);
        let secure = causeway_testkit::Origin::builder().tls().start().await;
        assert_eq!(
            NetProber.probe(secure.addr(), &hc).await,
            Outcome::Answered(200)
        );
        assert_eq!(secure.health_check_hits("/tls"), 1);
        // gRPC over h2 (the testkit origin answers grpc-status 0 in trailers), cleartext and
        // TLS; AWS's default matcher (12) calls that unhealthy.
        hc.tls = false;
        hc.kind = HealthCheckKind::Grpc {
            path: "/AWS.ALB/healthcheck".into(),
            matcher: StatusMatcher::parse_grpc("0").unwrap(),
        };
        assert_eq!(
            NetProber.probe(origin.addr(), &hc).await,
            Outcome::Answered(0)
        );
        assert_eq!(origin.health_check_hits("/AWS.ALB/healthcheck"), 1);
        hc.tls = true;
        assert_eq!(
            NetProber.probe(secure.addr(), &hc).await,
            Outcome::Answered(0)
        );
        hc.kind = HealthCheckKind::Grpc {
            path: "/AWS.ALB/healthcheck".into(),
            matcher: StatusMatcher::parse_grpc("12").unwrap(),
        };
        assert_eq!(
            NetProber.probe(secure.addr(), &hc).await,
            Outcome::BadGrpcStatus(0)
        );
        hc.tls = false;
        assert_eq!(
            NetProber.probe(closed, &hc).await,
            Outcome::Failed,
            "nothing listening"
        );
    }

    /// An h2c server that answers every gRPC call the same way: `mode` 0, HTTP 503; 1, 200
    /// with a message and no grpc-status anywhere; 2, a trailers-only answer with
    /// grpc-status 14 in its head.
    async fn grpc_server(mode: u8) -> SocketAddr {
        use http_body_util::Full;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut resp =
                        hyper::Response::new(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")));
                    match mode {
                        0 => *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE,
                        1 => {}
                        _ => {
                            *resp.body_mut() = Full::new(bytes::Bytes::new());
                            resp.headers_mut()
                                .insert("grpc-status", "14".parse().unwrap());
                        }
                    }
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_grpc_check_tells_its_http_status_from_its_grpc_status_and_from_none() {
        let hc = HealthCheckConfig {
            kind: HealthCheckKind::Grpc {
                path: "/AWS.ALB/healthcheck".into(),
                matcher: StatusMatcher::parse_grpc("0").unwrap(),
            },
            ..hc()
        };
        let cases = [
            (0, Outcome::BadStatus(503)),
            (1, Outcome::GrpcStatusMissing),
            (2, Outcome::BadGrpcStatus(14)),
        ];
        for (mode, want) in cases {
            let addr = grpc_server(mode).await;
            assert_eq!(NetProber.probe(addr, &hc).await, want, "mode {mode}");
            assert!(!want.passed());
        }
    }
}
