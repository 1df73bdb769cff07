//! The demo's built-in WordPress-like origins: `/`, `/wp-login.php` (sets a login cookie),
//! `/wp-admin/` (needs it), `/wp-content/uploads/*.jpg` (cached for a year), `/wp-json/`, and
//! `/healthz`. `POST /demo/down?seconds=N` takes an origin down for N seconds, so its health
//! can be watched turning unhealthy and coming back.

use causeway_dataplane::http1::{parse_request, Limits, RequestHead};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One response: status, content type, extra headers, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

fn page(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Page {
    Page {
        status,
        content_type,
        headers: Vec::new(),
        body: body.into(),
    }
}

/// What origin `n` answers to `method path` with this Cookie header. Pure.
pub fn respond(n: usize, method: &str, path: &str, cookie: &str) -> Page {
    let logged_in = cookie
        .split(';')
        .any(|c| c.trim().starts_with("wordpress_logged_in_"));
    let path_only = path.split('?').next().unwrap_or(path);
    match (method, path_only) {
        (_, "/healthz") => page(200, "text/plain", "ok\n"),
        ("GET" | "HEAD", "/") => {
            let mut p = page(
                200,
                "text/html; charset=utf-8",
                format!("<!doctype html><title>Causeway demo</title><h1>Hello from WordPress origin {n}</h1>\n"),
            );
            p.headers
                .push(("Cache-Control", "public, max-age=60".into()));
            p
        }
        ("GET" | "HEAD", "/wp-login.php") => page(
            200,
            "text/html; charset=utf-8",
            "<form method=post action=/wp-login.php><button>Log in</button></form>\n",
        ),
        ("POST", "/wp-login.php") => {
            let mut p = page(302, "text/plain", "logged in\n");
            p.headers.push(("Location", "/wp-admin/".into()));
            p.headers.push((
                "Set-Cookie",
                "wordpress_logged_in_demo=admin; Path=/; HttpOnly".into(),
            ));
            p.headers
                .push(("Cache-Control", "private, no-store".into()));
            p
        }
        (_, p) if p.starts_with("/wp-admin/") => {
            if logged_in {
                let mut pg = page(
                    200,
                    "text/html; charset=utf-8",
                    format!("<h1>Dashboard (origin {n})</h1>\n"),
                );
                pg.headers
                    .push(("Cache-Control", "private, no-store".into()));
                pg
            } else {
                let mut pg = page(302, "text/plain", "log in first\n");
                pg.headers.push(("Location", "/wp-login.php".into()));
                pg
            }
        }
        ("GET" | "HEAD", p) if p.starts_with("/wp-content/uploads/") && p.ends_with(".jpg") => {
            // A tiny JPEG-looking body: SOI marker, padding, EOI marker.
            let mut body = vec![0xFF, 0xD8, 0xFF, 0xE0];
            body.extend(std::iter::repeat_n(0u8, 2048));
            body.extend_from_slice(&[0xFF, 0xD9]);
            let mut pg = page(200, "image/jpeg", body);
            pg.headers.push((
                "Cache-Control",
                "public, max-age=31536000, immutable".into(),
            ));
            pg
        }
        ("GET" | "HEAD", "/wp-json/") => {
            let mut pg = page(
                200,
                "application/json",
                format!("{{\"name\":\"Causeway demo\",\"origin\":{n}}}\n"),
            );
            pg.headers.push(("Cache-Control", "no-cache".into()));
            pg
        }
        _ => page(404, "text/plain", "not found\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        _ => "Unknown",
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves origin `n` on `addr` until the process ends.
pub async fn run(n: usize, addr: SocketAddr) -> std::io::Result<()> {
    let down_until = Arc::new(AtomicU64::new(0));
    let went_down = Arc::new(tokio::sync::Notify::new());
    loop {
        let listener = TcpListener::bind(addr).await?;
        loop {
            let (s, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = went_down.notified() => break,
            };
            let (down, notify) = (down_until.clone(), went_down.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(n, s, down, notify).await {
                    tracing::debug!(origin = n, error = %e, "demo origin connection");
                }
            });
        }
        // Down: the listener is closed, so connections are refused, until the time is up.
        drop(listener);
        let until = down_until.load(Ordering::Acquire);
        tokio::time::sleep(Duration::from_secs(until.saturating_sub(now_secs()))).await;
    }
}

async fn serve(
    n: usize,
    mut s: TcpStream,
    down_until: Arc<AtomicU64>,
    went_down: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut head = RequestHead::default();
    loop {
        if down_until.load(Ordering::Acquire) > now_secs() {
            // Down: open connections close too.
            return Ok(());
        }
        let complete = loop {
            if !buf.is_empty() {
                match parse_request(&buf, &Limits::default(), &mut head) {
                    Ok(true) => break true,
                    Ok(false) => {}
                    Err(_) => break false,
                }
            }
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        if !complete {
            s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
        let method = String::from_utf8_lossy(head.method(&buf)).into_owned();
        let path = String::from_utf8_lossy(head.target(&buf)).into_owned();
        let cookie =
            String::from_utf8_lossy(head.header(&buf, "cookie").unwrap_or(b"")).into_owned();
        let body_len = head
            .header(&buf, "content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head.len + body_len {
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head.len + body_len);
        let p = if method == "POST" && path.starts_with("/demo/down") {
            let secs = path
                .split("seconds=")
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(10)
                .min(300);
            down_until.store(now_secs() + secs, Ordering::Release);
            went_down.notify_waiters();
            page(
                200,
                "text/plain",
                format!("origin {n} goes down for {secs} s\n"),
            )
        } else {
            respond(n, &method, &path, &cookie)
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: causeway-demo-origin\r\nX-Origin: {n}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            p.status,
            reason(p.status),
            p.content_type,
            p.body.len()
        );
        for (k, v) in &p.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if method != "HEAD" {
            bytes.extend_from_slice(&p.body);
        }
        s.write_all(&bytes).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordpress_like_pages() {
        assert_eq!(respond(1, "GET", "/healthz", "").status, 200);
        let home = respond(2, "GET", "/", "");
        assert!(String::from_utf8_lossy(&home.body).contains("origin 2"));
        assert!(home
            .headers
            .contains(&("Cache-Control", "public, max-age=60".into())));
        let admin = respond(1, "GET", "/wp-admin/", "");
        assert_eq!(admin.status, 302);
        let admin = respond(
            1,
            "GET",
            "/wp-admin/",
            "a=1; wordpress_logged_in_demo=admin",
        );
        assert_eq!(admin.status, 200);
        let login = respond(1, "POST", "/wp-login.php", "");
        assert!(login
            .headers
            .iter()
            .any(|(k, v)| *k == "Set-Cookie" && v.starts_with("wordpress_logged_in_")));
        let img = respond(3, "GET", "/wp-content/uploads/2026/11/cat.jpg", "");
        assert_eq!(img.content_type, "image/jpeg");
        assert!(img
            .headers
            .iter()
            .any(|(_, v)| v.contains("max-age=31536000")));
        assert_eq!(
            respond(1, "GET", "/wp-json/", "").content_type,
            "application/json"
        );
        assert_eq!(respond(1, "GET", "/nope", "").status, 404);
    }
}
