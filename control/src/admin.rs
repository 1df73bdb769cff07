//! control's own admin server (`admin.address`, for `run`): `GET /metrics` (Prometheus: passes,
//! discovery failures, the safety brake, reloads, lifecycle actions, drains in progress),
//! `GET /healthz` (503 while discovery fails or the brake holds) and `GET /status` (JSON).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the last pass found, for `/status` and `/healthz`.
#[derive(Debug, Default)]
struct State {
    passes: u64,
    last_pass_unix: u64,
    instances: usize,
    problem: Option<String>,
    draining: Vec<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    passes: 0,
    last_pass_unix: 0,
    instances: 0,
    problem: None,
    draining: Vec::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records one pass of the loop: how many instances it found, and what held it back (a failed
/// discovery, the safety brake, a failed reload), if anything did.
pub fn record_pass(instances: usize, problem: Option<String>) {
    metrics::counter!("causeway_control_passes_total").increment(1);
    metrics::gauge!("causeway_control_discovered_instances").set(instances as f64);
    let mut s = state();
    s.passes += 1;
    s.last_pass_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    s.instances = instances;
    s.problem = problem;
}

/// The instances being drained now.
pub fn set_draining(ids: &BTreeSet<String>) {
    metrics::gauge!("causeway_control_drains_in_progress").set(ids.len() as f64);
    state().draining = ids.iter().cloned().collect();
}

fn status() -> serde_json::Value {
    let s = state();
    json!({
        "name": "causeway-control",
        "version": env!("CARGO_PKG_VERSION"),
        "passes": s.passes,
        "last_pass_unix": s.last_pass_unix,
        "discovered_instances": s.instances,
        "problem": s.problem,
        "draining": s.draining,
    })
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            causeway_dataplane::telemetry::metrics().render(),
        ),
        "/healthz" => {
            let s = state();
            match (&s.problem, s.passes) {
                (None, 1..) => reply(StatusCode::OK, "text/plain", "ok\n"),
                (None, 0) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n"),
                (Some(p), _) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{p}\n"),
                ),
            }
        }
        "/status" => reply(StatusCode::OK, "application/json", status().to_string()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /status\n",
        ),
    }
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| {
                let r = handle(req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
