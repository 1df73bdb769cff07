//! WebSockets through the alb with real clients (tokio-tungstenite) to a tokio-tungstenite
//! target: over HTTP/1.1, where the tunnel opens after the target's 101; and over HTTP/2 (RFC
//! 8441 extended CONNECT from hyper's client) to the same HTTP/1.1 target. A target's refusal
//! is relayed; a 2xx without a 101 is a 502; an h2 target group and a fixed response refuse
//! with 501. A tunnel with no byte either way for the idle timeout is closed, as ALB does.

use bytes::Bytes;
use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_testkit::{free_port, Origin};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the WebSocket target saw of each handshake: method, path, and the headers.
type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

/// A tokio-tungstenite server: accepts the `chat` subprotocol when offered, then answers each
/// text message upper-cased and each binary message reversed, until the client closes.
async fn ws_target() -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                // The callback's shape is tungstenite's, its large error type included.
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, mut resp: Response| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    log.lock().unwrap().push((
                        req.method().to_string(),
                        req.uri().to_string(),
                        headers,
                    ));
                    if req
                        .headers()
                        .get("sec-websocket-protocol")
                        .is_some_and(|v| v.to_str().unwrap_or("").contains("chat"))
                    {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let answer = match m {
                        Message::Text(t) => Message::text(t.to_uppercase()),
                        Message::Binary(b) => {
                            Message::binary(b.iter().rev().copied().collect::<Vec<u8>>())
                        }
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An alb forwarding `/ws*` to `ws`, `/h2*` to an h2 group, everything else to `other`.
async fn alb(ws: SocketAddr, other: SocketAddr) -> (Arc<Server<Alb>>, SocketAddr) {
    alb_with(ws, other, "").await
}

/// `alb`, with `lb` as its `[load_balancer]` attributes.
async fn alb_with(ws: SocketAddr, other: SocketAddr, lb: &str) -> (Arc<Server<Alb>>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
[load_balancer]
{lb}
[admin]
address = "127.0.0.1:{admin}"
[[listeners]]
address = "{addr}"
default_action = {{ type = "forward", target_group = "other" }}
[[listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/ws*"] }}, {{ field = "http-request-method", values = ["GET"] }}]
action = {{ type = "forward", target_group = "ws" }}
[[listeners.rules]]
priority = 2
conditions = [{{ field = "path-pattern", values = ["/h2*"] }}]
action = {{ type = "forward", target_group = "h2" }}
[[listeners.rules]]
priority = 3
conditions = [{{ field = "path-pattern", values = ["/fixed"] }}]
action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "not a socket" }}
[target_groups.ws]
targets = [{{ address = "{ws}" }}]
health_check.interval_seconds = 300
[target_groups.other]
targets = [{{ address = "{other}" }}]
health_check.interval_seconds = 300
[target_groups.h2]
protocol_version = "HTTP2"
targets = [{{ address = "{other}" }}]
health_check.interval_seconds = 300
"#,
        admin = free_port(),
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (server, addr)
}

/// Text, binary, a ping and the close handshake over `ws`.
async fn converse<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text("hello over the alb")).await.unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m, Message::text("HELLO OVER THE ALB"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let m = ws.next().await.unwrap().unwrap();
    let back: Vec<u8> = big.iter().rev().copied().collect();
    assert_eq!(m, Message::binary(back), "200 KB binary message reversed");
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m, Message::Pong(Bytes::from_static(b"p")));
    ws.close(None).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        assert!(m.is_close(), "only the close answer is left: {m:?}");
    }
}

#[tokio::test]
async fn a_websocket_over_http1_reaches_the_target_and_echoes() {
    let (ws, seen) = ws_target().await;
    let other = Origin::start().await;
    let (_s, addr) = alb(ws, other.addr()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://a.example.test:{}/ws/chat", addr.port());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    let (mut client, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    converse(&mut client).await;
    let seen = seen.lock().unwrap();
    let (method, path, headers) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/ws/chat"));
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto"), Some("http"));
}

/// An h2c connection whose SETTINGS from the alb have arrived (a first GET answered, by
/// whichever target).
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let warm = hyper::Request::get(format!("http://a.example.test:{}/warm", addr.port()))
        .body(Empty::new())
        .unwrap();
    s.send_request(warm).await.unwrap();
    s
}

fn connect(addr: SocketAddr, path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::builder()
        .method("CONNECT")
        .uri(format!("http://a.example.test:{}{path}", addr.port()))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        // Not part of RFC 8441: the alb sends the target its own key instead.
        .header("sec-websocket-key", "Y2xpZW50J3Mgb3duIGtleQ==")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_websocket_over_h2_reaches_an_http1_target_as_a_get_upgrade() {
    let (ws, seen) = ws_target().await;
    let other = Origin::start().await;
    let (_s, addr) = alb(ws, other.addr()).await;
    let mut s = h2c(addr).await;
    let resp = s
        .send_request(connect(addr, "/ws/h2?room=1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "RFC 8441: a 2xx opens the tunnel");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut client =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    converse(&mut client).await;
    // The same h2 connection still serves requests.
    let again = hyper::Request::get(format!("http://a.example.test:{}/after", addr.port()))
        .body(Empty::new())
        .unwrap();
    assert_eq!(s.send_request(again).await.unwrap().status(), 200);
    let seen = seen.lock().unwrap();
    let (method, path, headers) = &seen[0];
    // Routed and forwarded as the GET it stands for (the rule matches GET only).
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/ws/h2?room=1"));
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("upgrade"), Some("websocket"));
    assert_eq!(h("sec-websocket-version"), Some("13"));
    let keys: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-key")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(keys.len(), 1, "one key: {keys:?}");
    assert_eq!(keys[0].len(), 24);
    assert_ne!(
        keys[0], "Y2xpZW50J3Mgb3duIGtleQ==",
        "the alb's key, not the client's"
    );
    assert_eq!(
        h("host"),
        Some(format!("a.example.test:{}", addr.port()).as_str())
    );
    assert_eq!(h("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn h2_websocket_refusals_are_relayed_and_a_2xx_without_101_is_a_502() {
    let (ws, _) = ws_target().await;
    let forbidden = causeway_testkit::raw::canned_target(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope\n",
    )
    .await;
    let (_s, addr) = alb(ws, forbidden).await;
    let mut s = h2c(addr).await;
    // The default group's target refuses the upgrade: its 403 and body reach the client.
    let resp = s.send_request(connect(addr, "/refused")).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"nope\n");

    // A target that answers 200 to the upgrade: no tunnel, so no 2xx to the client.
    let plain = Origin::start().await;
    let (_s2, addr2) = alb(ws, plain.addr()).await;
    let mut s2 = h2c(addr2).await;
    let resp = s2.send_request(connect(addr2, "/plain")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        plain.hits("/plain"),
        1,
        "the upgrade reached the target once"
    );
    // An h2 target group cannot carry it.
    let resp = s2.send_request(connect(addr2, "/h2/x")).await.unwrap();
    assert_eq!(resp.status(), 501);
    // A fixed response cannot be a WebSocket's other end.
    let resp = s2.send_request(connect(addr2, "/fixed")).await.unwrap();
    assert_eq!(resp.status(), 501);
    // A CONNECT that is not a WebSocket is still refused.
    let plain_connect = hyper::Request::builder()
        .method("CONNECT")
        .uri(format!("a.example.test:{}", addr2.port()))
        .body(Empty::new())
        .unwrap();
    let resp = s2.send_request(plain_connect).await.unwrap();
    assert_eq!(resp.status(), 405);
}

/// Sends `text`, checks its echo, then waits (at most 10 s) for `ws` to end, by a close, a reset
/// or an error; returns how long the wait took.
async fn echo_then_wait<S>(ws: &mut WebSocketStream<S>, text: &str) -> std::time::Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo, Message::text(text.to_uppercase()));
    let from = std::time::Instant::now();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) => assert!(m.is_close(), "nothing but a close: {m:?}"),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle tunnel is still open after 10 s");
    from.elapsed()
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_idle_timeout_over_http1_and_h2() {
    let (ws, _) = ws_target().await;
    let other = Origin::start().await;
    let (_s, addr) = alb_with(ws, other.addr(), "idle_timeout.timeout_seconds = 1").await;
    let second = std::time::Duration::from_secs(1);

    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://a.example.test:{}/ws/idle", addr.port());
    let (mut client, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let took = echo_then_wait(&mut client, "still here").await;
    assert!(took >= second * 9 / 10, "closed early, after {took:?}");

    let mut s = h2c(addr).await;
    let resp = s.send_request(connect(addr, "/ws/idle-h2")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut client =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let took = echo_then_wait(&mut client, "h2 too").await;
    assert!(took >= second * 9 / 10, "h2: closed early, after {took:?}");
    // The h2 connection idles out at the same moment, but it cuts open streams only
    // `IDLE_GRACE` (5 s) after its GOAWAY: an end this soon is the tunnel's own timeout.
    assert!(
        took < second * 4,
        "h2: the tunnel ended with the connection, not by its own timeout: {took:?}"
    );
}

/// ALB's access log for a WebSocket: type `ws`, written when the tunnel closes, with the bytes
/// the whole connection carried each way (here a 200 KB message each way).
#[tokio::test]
async fn a_websocket_is_logged_as_ws_with_the_tunnel_bytes() {
    let (ws, _seen) = ws_target().await;
    let other = Origin::start().await;
    let dir = causeway_testkit::lifecycle::TempDir::new("wslog");
    let log = dir.path().join("access.log");
    let lb = format!(
        "access_logs.enabled = true\naccess_logs.path = \"{}\"",
        log.display()
    );
    let (_s, addr) = alb_with(ws, other.addr(), &lb).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://a.example.test:{}/ws/chat", addr.port());
    let (mut client, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    converse(&mut client).await;
    // The client's socket closes; the tunnel ends when the target's side has closed too.
    drop(client);
    let text = causeway_testkit::lifecycle::log_lines(&log, 1).await;
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no line: {text}"));
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[0], "ws", "{line}");
    assert_eq!((f[8], f[9]), ("101", "101"), "{line}");
    let (received, sent): (u64, u64) = (f[10].parse().unwrap(), f[11].parse().unwrap());
    assert!(received > 200_000 && sent > 200_000, "{line}");
    assert!(line.contains(" \"GET http://a.example.test:"), "{line}");
}
