//! A raw-socket suite against the alb: framing, header and request-line tricks, pipelining,
//! bodies on GET, bad response framing from a target, and upgrades. Each is refused or
//! normalised, and nothing ambiguous reaches the origin, which records the exact requests.

use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_testkit::raw::{self, RawResponse};
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn alb_to(target: SocketAddr) -> SocketAddr {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[load_balancer]\nrequest_header_timeout_seconds = 2\n[[listeners]]\naddress = \"{addr}\"\ndefault_action = {{ type = \"forward\", target_group = \"o\" }}\n[target_groups.o]\ntargets = [{{ address = \"{target}\" }}]\nhealth_check.interval_seconds = 300\noutlier_detection.enabled = false\n",
        free_port()
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() }).unwrap();
    let s = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    std::mem::forget(s);
    addr
}

/// Every response in `raw`, in order (Content-Length framed).
fn responses(mut raw: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let Some(r) = RawResponse::parse(raw) else {
            break;
        };
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let total = (end + 4 + len).min(raw.len());
        out.push(r);
        raw = &raw[total..];
    }
    out
}

async fn send(addr: SocketAddr, bytes: &[u8]) -> Vec<RawResponse> {
    let out = raw::exchange(addr, bytes, Duration::from_millis(1500))
        .await
        .unwrap();
    responses(&out)
}

#[tokio::test]
async fn header_and_request_line_tricks_get_400_and_close() {
    let origin = Origin::start().await;
    let alb = alb_to(origin.addr()).await;
    let cases: [&[u8]; 9] = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    ];
    for c in cases {
        let rs = send(alb, c).await;
        assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(c));
        assert_eq!(rs[0].status, 400, "{:?}", String::from_utf8_lossy(c));
        assert_eq!(rs[0].header("connection"), Some("close"));
    }
    // The chunk-size overflow one had a valid head; nothing may have been forwarded past it.
    assert!(origin.seen().iter().all(|s| s.body.is_empty()));
    assert!(origin.total() <= 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_stop_at_an_error() {
    let origin = Origin::start().await;
    let alb = alb_to(origin.addr()).await;
    let rs = send(
        alb,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nabGET /four HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 400]);
    assert_eq!(rs[0].text(), format!("origin {} /one\n", origin.name()));
    assert_eq!(rs[1].text(), format!("origin {} /two\n", origin.name()));
    let paths: Vec<String> = origin.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/one", "/two"],
        "nothing after the bad request was processed"
    );
}

#[tokio::test]
async fn a_get_with_a_body_is_refused_in_strictest_mode() {
    // AWS's classifier calls a GET with a non-zero Content-Length ambiguous: in the default
    // strictest mode it gets a 400 and a close, and the bytes after the head are never parsed.
    let origin = Origin::start().await;
    let alb = alb_to(origin.addr()).await;
    let rs = send(
        alb,
        b"GET /g HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![400]);
    assert_eq!(origin.total(), 0);
    // A GET with Content-Length: 0 is acceptable and forwarded.
    let rs = send(
        alb,
        b"GET /z HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(rs[0].status, 200);
    assert_eq!(origin.seen()[0].path, "/z");
}

#[tokio::test]
async fn bad_response_framing_from_a_target_is_a_502() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"garbage\r\n\r\n",
    ] {
        let target = raw::canned_target_lingering(bad, Duration::from_millis(500)).await;
        let alb = alb_to(target).await;
        let rs = send(alb, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(rs[0].status, 502, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test]
async fn bytes_after_a_refused_upgrade_are_never_read_as_a_request() {
    let origin = Origin::start().await;
    let alb = alb_to(origin.addr()).await;
    // The origin does not speak WebSocket: it answers 200, not 101.
    let mut s = TcpStream::connect(alb).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = raw::read_until_quiet(&mut s, Duration::from_millis(1500))
        .await
        .unwrap();
    let rs = responses(&out);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 200);
    assert_eq!(rs[0].header("connection"), Some("close"));
    let paths: Vec<String> = origin.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        vec!["/ws"],
        "the bytes after the refused upgrade were not forwarded"
    );
}
