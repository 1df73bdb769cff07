//! The admin server: `GET /metrics` (Prometheus), `GET /healthz`, `GET /status` (JSON) and
//! `POST /reload` (the same as SIGHUP).

use crate::server::{Plane, Server};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve<P: Plane>(
    listener: TcpListener,
    server: Arc<Server<P>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(crate::listener::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, server).await) }
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

/// Binds `addr` and serves the admin API there in a task of its own, until the returned
/// sender sends `true` or is dropped.
pub async fn spawn<P: Plane>(
    addr: SocketAddr,
    server: Arc<Server<P>>,
) -> std::io::Result<watch::Sender<bool>> {
    let listener = TcpListener::bind(addr).await?;
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(serve(listener, server, stop_rx));
    Ok(stop)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

async fn handle<P: Plane>(req: Request<Incoming>, server: Arc<Server<P>>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::telemetry::metrics().render(),
        ),
        (&Method::GET, "/healthz") => {
            if server.is_draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        (&Method::GET, "/status") => json_reply(StatusCode::OK, status(&server)),
        (&Method::POST, "/reload") => match server.reload().await {
            Ok(summary) => json_reply(
                StatusCode::OK,
                json!({ "result": "ok", "generation": summary.generation, "summary": summary }),
            ),
            Err(e) => json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "result": "failed", "generation": server.snapshot().generation,
                        "error": e.to_string() }),
            ),
        },
        (_, "/metrics" | "/healthz" | "/status" | "/reload") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => {
            let method = req.method().as_str().to_string();
            let path = req.uri().path().to_string();
            let body = match http_body_util::Limited::new(req.into_body(), 1 << 20)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        "body too large\n",
                    )
                }
            };
            match P::admin_extra(&method, &path, &body, &server.snapshot()) {
                // A bare string is a document of its own (the alb's PEM keys), sent as text.
                Some((status, serde_json::Value::String(text))) => reply(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "text/plain",
                    text,
                ),
                Some((status, v)) => json_reply(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    v,
                ),
                None => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found: try /metrics, /healthz, /status, POST /reload\n",
                ),
            }
        }
    }
}

/// The `/status` document.
pub fn status<P: Plane>(server: &Server<P>) -> serde_json::Value {
    let snap = server.snapshot();
    let groups: serde_json::Map<String, serde_json::Value> = snap
        .groups
        .iter()
        .map(|(name, g)| {
            let draining = g.draining.lock().map(|d| d.clone()).unwrap_or_default();
            let targets: Vec<serde_json::Value> = g
                .targets
                .iter()
                .chain(draining.iter())
                .map(|t| {
                    let (anomalous, mitigated) = t.anomaly();
                    json!({
                        "id": t.cfg.id,
                        "address": t.cfg.address.to_string(),
                        "zone": t.cfg.zone,
                        "weight": t.cfg.weight,
                        "state": t.state(),
                        "reason": t.reason(),
                        "in_flight": t.in_flight(),
                        // ALB's AnomalyDetection, with its values.
                        "anomaly_detection": {
                            "result": if anomalous { "anomalous" } else { "normal" },
                            "mitigation_in_effect": if mitigated { "yes" } else { "no" },
                        },
                    })
                })
                .collect();
            let (healthy, unhealthy) = g.host_counts();
            (
                name.clone(),
                json!({ "healthy": healthy, "unhealthy": unhealthy, "targets": targets }),
            )
        })
        .collect();
    let listeners: Vec<String> = server
        .bound_listeners()
        .iter()
        .map(SocketAddr::to_string)
        .collect();
    let loaded = snap
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "name": P::NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "config_file": server.config_path().display().to_string(),
        "generation": snap.generation,
        "loaded_at_unix": loaded,
        "draining": server.is_draining(),
        "live_connections": server.live_connections(),
        "parked_connections": server.parked_connections(),
        "listeners": listeners,
        "target_groups": groups,
    })
}
