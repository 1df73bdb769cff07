//! HTTP/2 on the alb: h2c with prior knowledge on an HTTP listener and h2 by ALPN on an HTTPS
//! one (hyper's client and curl), every action, HTTP/1.1 and h2 to targets, gRPC trailers
//! passing through, AWS's 464 for HTTP/1.1 to a gRPC group, retries and stickiness; and abuse
//! with raw frames (CONTINUATION flood, HPACK bomb, control-frame flood, a zero-window stall),
//! each while an honest client on another connection is served.

use bytes::Bytes;
use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_testkit::{closed_port, free_port, until, Origin};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::header::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/fixed"] }]
action = { type = "fixed-response", status_code = 418, content_type = "text/plain", message_body = "teapot over h2" }
[[listeners.rules]]
priority = 2
conditions = [{ field = "path-pattern", values = ["/old"] }]
action = { type = "redirect", status_code = "HTTP_301", path = "/new", query = "from=#{path}" }
[[listeners.rules]]
priority = 3
conditions = [{ field = "http-header", header_name = "x-route", values = ["grpc"] }]
action = { type = "forward", target_group = "grpc" }
"#;

/// An alb on `protocol` (`HTTP` or `HTTPS`) whose default action forwards to `web`, with a
/// `grpc` group (`protocol_version = "GRPC"`) behind the `x-route: grpc` rule.
async fn start(protocol: &str, web: &str, grpc: &Origin) -> (Arc<Server<Alb>>, SocketAddr) {
    start_with(protocol, web, "", grpc).await
}

/// Like [`start`], with more keys for the `web` group.
async fn start_with(
    protocol: &str,
    web: &str,
    web_extra: &str,
    grpc: &Origin,
) -> (Arc<Server<Alb>>, SocketAddr) {
    start_full(protocol, "", web, web_extra, grpc).await
}

/// Like [`start_with`], with `[load_balancer]` keys.
async fn start_full(
    protocol: &str,
    lb_extra: &str,
    web: &str,
    web_extra: &str,
    grpc: &Origin,
) -> (Arc<Server<Alb>>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls = if protocol == "HTTPS" {
        format!(
            "certificates = [{}]\n",
            causeway_testkit::tls::certificates_toml()
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
[load_balancer]
{lb_extra}
[[listeners]]
address = "{addr}"
protocol = "{protocol}"
{tls}default_action = {{ type = "forward", target_group = "web" }}
{RULES}
[target_groups.web]
targets = [{web}]
health_check.interval_seconds = 300
{web_extra}
[target_groups.grpc]
protocol_version = "GRPC"
targets = [{{ address = "{grpc}" }}]
health_check.interval_seconds = 300
health_check.matcher = "0"
"#,
        admin = free_port(),
        grpc = grpc.addr(),
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (server, addr)
}

fn targets(os: &[&Origin]) -> String {
    os.iter()
        .map(|o| format!("{{ address = \"{}\" }}", o.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An h2c connection with prior knowledge.
async fn h2c(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// curl with these arguments, off the test's runtime thread.
async fn curl(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-v", "-i", "--max-time", "10"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn send(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Answer {
    let mut b = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from_static(body))).unwrap();
    s.ready().await.unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_takes_every_action_and_reaches_http1_targets() {
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let port = addr.port();
    let mut s = h2c(addr).await;
    let base = format!("http://a.example.test:{port}");

    // forward, over HTTP/1.1 to the target, with the forwarding fields.
    let a = send(
        &mut s,
        "GET",
        &format!("{base}/x?y=1"),
        &[("connection-ish", "1")],
        b"",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "origin web-1 /x\n");
    assert_eq!(a.headers["x-origin"], "web-1");
    let seen = web.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, "HTTP/1.1");
    assert_eq!(seen[0].path, "/x?y=1");
    assert_eq!(
        seen[0].header("host"),
        Some(format!("a.example.test:{port}").as_str())
    );
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen[0]
        .header("x-amzn-trace-id")
        .is_some_and(|v| v.starts_with("Root=1-")));
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen[0].header("x-forwarded-port"),
        Some(port.to_string().as_str())
    );

    // A body reaches the target whole.
    let a = send(&mut s, "POST", &format!("{base}/form"), &[], b"name=value").await;
    assert_eq!(a.status, 200);
    assert_eq!(web.seen()[1].body, b"name=value");
    assert_eq!(
        web.seen()[0].peer,
        web.seen()[1].peer,
        "the second request reuses the pooled target connection"
    );

    // Many streams at once on one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut s = s.clone();
        let uri = format!("{base}/many/{i}");
        tasks.push(tokio::spawn(async move {
            send(&mut s, "GET", &uri, &[], b"").await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, format!("origin web-1 /many/{i}\n"));
    }

    // fixed-response and redirect, answered by the alb.
    let a = send(&mut s, "GET", &format!("{base}/fixed"), &[], b"").await;
    assert_eq!((a.status, &a.body[..]), (418, &b"teapot over h2"[..]));
    let a = send(&mut s, "GET", &format!("{base}/old"), &[], b"").await;
    assert_eq!(a.status, 301);
    assert_eq!(
        a.headers["location"],
        format!("http://a.example.test:{port}/new?from=old").as_str()
    );
    assert_eq!(web.hits("/fixed") + web.hits("/old"), 0);

    // A mismatched Host is refused, and only that stream fails.
    let a = send(
        &mut s,
        "GET",
        &format!("{base}/x"),
        &[("host", "other.test")],
        b"",
    )
    .await;
    assert_eq!(a.status, 400);
    let a = send(&mut s, "GET", &format!("{base}/after"), &[], b"").await;
    assert_eq!(a.status, 200);

    // curl, a real client, with prior knowledge.
    let out = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{port}/curl"),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.starts_with("HTTP/2 200"), "{text}\n{err}");
    assert!(text.ends_with("origin web-1 /curl\n"), "{text}");

    // HTTP/1.1 still works on the same listener.
    let out = curl(&["--http1.1", &format!("http://127.0.0.1:{port}/plain")]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn grpc_passes_through_over_h2_with_trailers_and_http1_gets_464() {
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut s = h2c(addr).await;
    let message: &[u8] = b"\x00\x00\x00\x00\x05hello";
    let a = send(
        &mut s,
        "POST",
        &format!("http://grpc.example.test:{}/pkg.Echo/Say", addr.port()),
        &[
            ("x-route", "grpc"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
        b"\x00\x00\x00\x00\x05hello",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(&a.body[..], message, "the message comes back");
    let trailers = a.trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    let seen = grpc.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].version, "HTTP/2.0",
        "gRPC goes to the target over h2"
    );
    assert_eq!(seen[0].path, "/pkg.Echo/Say");
    assert_eq!(seen[0].header("te"), Some("trailers"));
    assert_eq!(seen[0].body, message);
    assert_eq!(web.total(), 0);

    // HTTP/1.1 to the gRPC group: AWS's 464, and the target never sees it.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /pkg.Echo/Say HTTP/1.1\r\nHost: grpc.example.test\r\nx-route: grpc\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 464"), "{text}");
    assert_eq!(grpc.total(), 1);
}

#[tokio::test]
async fn h2_requests_are_retried_past_a_dead_target() {
    let live = Origin::builder().name("live").start().await;
    let other = Origin::builder().name("other").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let dead = closed_port().await;
    let web = format!("{{ address = \"{dead}\" }}, {}", targets(&[&live]));
    let (_s, addr) = start("HTTP", &web, &grpc).await;
    let mut s = h2c(addr).await;
    let base = format!("http://a.example.test:{}", addr.port());
    for i in 0..6 {
        let a = send(&mut s, "GET", &format!("{base}/r/{i}"), &[], b"").await;
        assert_eq!(a.status, 200, "request {i}");
        assert_eq!(a.headers["x-origin"], "live");
    }
    // A POST whose connect failed was never sent: it is retried too.
    let a = send(&mut s, "POST", &format!("{base}/post"), &[], b"x=1").await;
    assert_eq!(a.status, 200);
    assert_eq!(live.hits("/post"), 1);
    assert_eq!(other.total(), 0);
}

#[tokio::test]
async fn h2_requests_stick_to_their_target_by_signed_cookie() {
    let a = Origin::builder().name("a").start().await;
    let b = Origin::builder().name("b").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let sticky = "stickiness.enabled = true\nstickiness.type = \"lb_cookie\"\nstickiness.lb_cookie.duration_seconds = 3600\n";
    let (_s, addr) = start_with("HTTP", &targets(&[&a, &b]), sticky, &grpc).await;
    let mut s = h2c(addr).await;
    let base = format!("http://a.example.test:{}", addr.port());
    let first = send(&mut s, "GET", &format!("{base}/cart"), &[], b"").await;
    let stuck = first.headers["x-origin"].to_str().unwrap().to_owned();
    let cookie = first.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("AWSALB="), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..8 {
        let r = send(
            &mut s,
            "GET",
            &format!("{base}/cart"),
            &[("cookie", &pair)],
            b"",
        )
        .await;
        assert_eq!(r.headers["x-origin"], stuck.as_str());
    }
    let hits = if stuck == "a" { &a } else { &b }.hits("/cart");
    assert_eq!(hits, 9);
}

#[tokio::test]
async fn h2_by_alpn_on_https_and_http1_alongside() {
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTPS", &targets(&[&web]), &grpc).await;
    let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/tls", &[]).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    assert!(err.contains("subject: CN=a.example.test"), "{err}");
    assert!(out.ends_with("origin web-1 /tls\n"), "{out}");
    let seen = web.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[0].version, "HTTP/1.1");
    let (out, err) = causeway_testkit::tls::curl(addr, "a.example.test", "/old", &[]).await;
    assert!(out.starts_with("HTTP/2 301"), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "location: https://a.example.test:{}/new?from=old",
            addr.port()
        )),
        "{out}"
    );
    let (out, err) =
        causeway_testkit::tls::curl(addr, "a.example.test", "/one", &["--http1.1"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(err.contains("ALPN: server accepted http/1.1"), "{err}");
}

#[tokio::test]
async fn https_target_groups_reach_targets_over_tls_and_reuse_the_connection() {
    let secure = Origin::builder().name("secure").tls().start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start_with(
        "HTTP",
        &targets(&[&secure]),
        "protocol = \"HTTPS\"\n",
        &grpc,
    )
    .await;
    let port = addr.port();
    // HTTP/1.1 client: two requests, one after the other.
    let out = curl(&[
        "--http1.1",
        &format!("http://127.0.0.1:{port}/one"),
        &format!("http://127.0.0.1:{port}/two"),
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("origin secure /one\n") && text.contains("origin secure /two\n"));
    let seen = secure.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.tls && s.version == "HTTP/1.1"));
    assert_eq!(
        seen[0].peer, seen[1].peer,
        "the second request reuses the pooled TLS connection"
    );
    // h2 client, HTTP/1.1 over TLS to the target.
    let mut s = h2c(addr).await;
    let a = send(
        &mut s,
        "GET",
        &format!("http://a.example.test:{port}/h2"),
        &[],
        b"",
    )
    .await;
    assert_eq!((a.status, &a.body[..]), (200, &b"origin secure /h2\n"[..]));
    let last = secure.seen().pop().unwrap();
    assert!(last.tls && last.version == "HTTP/1.1");
    drop(s);

    // protocol_version HTTP2 over TLS: h2 by ALPN to the target.
    let (_s2, addr2) = start_with(
        "HTTP",
        &targets(&[&secure]),
        "protocol = \"HTTPS\"\nprotocol_version = \"HTTP2\"\n",
        &grpc,
    )
    .await;
    let mut s = h2c(addr2).await;
    let a = send(
        &mut s,
        "GET",
        &format!("http://a.example.test:{}/h2tls", addr2.port()),
        &[],
        b"",
    )
    .await;
    assert_eq!(a.status, 200);
    let last = secure.seen().pop().unwrap();
    assert_eq!(last.path, "/h2tls");
    assert!(last.tls);
    assert_eq!(last.version, "HTTP/2.0");
}

/// An honest client on its own connection gets its answer.
async fn honest(addr: SocketAddr) {
    let mut s = h2c(addr).await;
    let a = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        send(
            &mut s,
            "GET",
            &format!("http://a.example.test:{}/honest", addr.port()),
            &[],
            b"",
        ),
    )
    .await
    .expect("an honest client is served during the attack");
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_and_never_reaches_a_target() {
    use causeway_testkit::h2raw::*;
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut c = connect(addr, &settings(&[])).await;
    let block = get_block("a.example.test", "/flood");
    c.write_all(&frame(HEADERS, 0, 1, &block)).await.unwrap();
    let mut junk = Vec::new();
    for i in 0..100 {
        literal(&mut junk, format!("x-flood-{i}").as_bytes(), b"0123456789");
    }
    let mut sent = 0usize;
    // At most 8 MiB of header block, far past the 64 KiB the alb accepts.
    while sent < 8 << 20 {
        if c.write_all(&frame(CONTINUATION, 0, 1, &junk))
            .await
            .is_err()
        {
            break;
        }
        sent += junk.len();
    }
    let (frames, closed) = read_frames(
        &mut c,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(10),
    )
    .await;
    let goaway = frames.iter().any(|f| f.kind == GOAWAY);
    assert!(
        goaway || closed,
        "the flood ends the connection: {frames:?}"
    );
    assert!(
        sent < 8 << 20 || closed,
        "the alb stopped reading the flood"
    );
    honest(addr).await;
    assert_eq!(web.hits("/flood"), 0);
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_without_reaching_a_target() {
    use causeway_testkit::h2raw::*;
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut c = connect(addr, &settings(&[])).await;
    // One 4000-byte value in the dynamic table, then 4000 one-byte references to it: 16 MB of
    // headers from a 12 KB block.
    let mut block = get_block("a.example.test", "/bomb");
    literal_indexed(&mut block, b"x-bomb", &[b'a'; 4000]);
    for _ in 0..4000 {
        indexed(&mut block, 62);
    }
    // Split into frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, part) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if last { END_HEADERS } else { 0 } | if i == 0 { END_STREAM } else { 0 };
        if c.write_all(&frame(kind, flags, 1, part)).await.is_err() {
            break;
        }
    }
    let (frames, closed) = read_frames(
        &mut c,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(10),
    )
    .await;
    let answered = frames
        .iter()
        .any(|f| (f.kind == RST_STREAM || f.kind == HEADERS) && f.stream == 1)
        || frames.iter().any(|f| f.kind == GOAWAY);
    assert!(answered || closed, "the bomb is refused: {frames:?}");
    honest(addr).await;
    assert_eq!(web.hits("/bomb"), 0, "the bomb never reaches a target");
}

#[tokio::test]
async fn a_control_frame_flood_breaks_the_budget_gets_a_goaway_and_a_close() {
    use causeway_dataplane::h2conn::FREE_CONTROL_FRAMES;
    use causeway_testkit::h2raw::*;
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut c = connect(addr, &settings(&[])).await;
    // 20,000 PINGs and 20,000 SETTINGS frames, written without reading the answers.
    let mut burst = Vec::new();
    for i in 0..1000u64 {
        burst.extend_from_slice(&frame(PING, 0, 0, &i.to_be_bytes()));
        burst.extend_from_slice(&settings(&[(0x3, 100)]));
    }
    let attack = tokio::spawn(async move {
        for _ in 0..20 {
            if c.write_all(&burst).await.is_err() {
                break;
            }
        }
        c
    });
    honest(addr).await;
    let mut c = tokio::time::timeout(std::time::Duration::from_secs(20), attack)
        .await
        .expect("the flood's writes end (all buffered, or refused)")
        .unwrap();
    let (frames, closed) = read_frames(
        &mut c,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(10),
    )
    .await;
    let acks = frames
        .iter()
        .filter(|f| (f.kind == PING || f.kind == SETTINGS) && f.flags & ACK != 0)
        .count();
    // The client's first SETTINGS and then PINGs and SETTINGS alternately: the alb answers
    // what fits in the budget and reads nothing past it.
    assert!(acks > 0, "control frames within the budget are answered");
    assert!(
        acks as u64 <= FREE_CONTROL_FRAMES,
        "nothing past the budget is answered: {acks} acks"
    );
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "the flood gets a GOAWAY"
    );
    assert!(closed, "then a close (within the read limit)");
    honest(addr).await;
}

#[tokio::test]
async fn a_rapid_reset_flood_is_closed_by_the_premature_reset_rule() {
    use causeway_testkit::h2raw::*;
    let web = Origin::builder().name("web-1").start().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut c = connect(addr, &settings(&[])).await;
    // 500 streams, each opened and cancelled at once (CVE-2023-44487), in bursts of 50 that
    // the alb accepts before their resets arrive (the h2 crate's own cap counts only resets of
    // streams not yet accepted); then a request that is answered if the flood is still read.
    let block = get_block("a.example.test", "/reset");
    for b in 0..10u32 {
        let mut burst = Vec::new();
        for s in 0..50u32 {
            let id = 2 * (50 * b + s) + 1;
            burst.extend_from_slice(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            burst.extend_from_slice(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if c.write_all(&burst).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = get_block("a.example.test", "/after");
    let _ = c
        .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1001, &after))
        .await;
    let (frames, closed) = read_frames(
        &mut c,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "the flood gets a GOAWAY"
    );
    assert!(closed, "then a close");
    assert!(
        !frames.iter().any(|f| f.kind == HEADERS && f.stream == 1001),
        "nothing after the 250th premature reset is read"
    );
    assert_eq!(web.hits("/after"), 0);
    assert!(
        web.hits("/reset") <= 250,
        "{} reached the target",
        web.hits("/reset")
    );
    honest(addr).await;
}

#[tokio::test]
async fn a_zero_window_stall_is_closed_after_the_idle_timeout() {
    use causeway_testkit::h2raw::*;
    let web = Origin::builder().name("web-1").start().await;
    web.set_body("/big", vec![b'x'; 1 << 20]);
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start_full(
        "HTTP",
        "idle_timeout.timeout_seconds = 1\n",
        &targets(&[&web]),
        "",
        &grpc,
    )
    .await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the alb may send no body byte, and the client never
    // opens the window.
    let mut c = connect(addr, &settings(&[(0x4, 0)])).await;
    let block = get_block("a.example.test", "/big");
    c.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (frames, closed) = read_frames(
        &mut c,
        std::time::Duration::from_secs(15),
        std::time::Duration::from_secs(15),
    )
    .await;
    assert!(closed, "the stalled connection is closed: {frames:?}");
    assert!(frames.iter().any(|f| f.kind == GOAWAY), "after a GOAWAY");
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == DATA && !f.payload.is_empty()),
        "no body byte went past the zero window"
    );
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(12),
        "closed at idle timeout + grace, took {took:?}"
    );
    assert_eq!(web.hits("/big"), 1);
    honest(addr).await;
}

/// A request body of several frames with no length known in advance.
struct Pieces(Vec<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let next = if self.0.is_empty() {
            None
        } else {
            Some(Ok(hyper::body::Frame::data(self.0.remove(0))))
        };
        std::task::Poll::Ready(next)
    }
}

/// An HTTP/1.1 origin that answers every request with a chunked body and records the raw
/// bytes of each request it read.
async fn chunked_origin() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    // A request ends at its head (GET) or at the chunked body's last chunk.
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let chunked = text[..head_end]
                        .to_ascii_lowercase()
                        .contains("transfer-encoding: chunked");
                    if chunked && !text[head_end..].contains("\r\n0\r\n\r\n") {
                        continue;
                    }
                    record.lock().unwrap().push(std::mem::take(&mut buf));
                    let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: chunky\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn h2_streams_relay_chunked_and_large_bodies_to_and_from_http1_targets() {
    let (chunky, raw) = chunked_origin().await;
    let grpc = Origin::builder().name("grpc-1").start().await;
    let (_s, addr) = start("HTTP", &format!("{{ address = \"{chunky}\" }}"), &grpc).await;
    let base = format!("http://a.example.test:{}", addr.port());
    // A chunked response arrives decoded as h2 data.
    let mut s = h2c(addr).await;
    for _ in 0..2 {
        let a = send(&mut s, "GET", &format!("{base}/c"), &[], b"").await;
        assert_eq!((a.status, &a.body[..]), (200, &b"hello world"[..]));
        assert_eq!(a.headers["x-origin"], "chunky");
        assert!(a.headers.get("transfer-encoding").is_none());
    }
    // A body of unknown length goes to the target chunked.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut p, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("{base}/upload"))
        .body(Pieces(vec![Bytes::from("abc"), Bytes::from("defg")]))
        .unwrap();
    let resp = p.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello world");
    let got = raw.lock().unwrap().last().cloned().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("POST /upload HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"),
        "{text}"
    );

    // A large body streams through whole, and HEAD gets no body.
    let web = Origin::builder().name("web-1").start().await;
    web.set_body("/big", vec![b'z'; 3 << 20]);
    let (_s2, addr2) = start("HTTP", &targets(&[&web]), &grpc).await;
    let mut s = h2c(addr2).await;
    let base2 = format!("http://a.example.test:{}", addr2.port());
    let a = send(&mut s, "GET", &format!("{base2}/big"), &[], b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 3 << 20);
    assert!(a.body.iter().all(|&b| b == b'z'));
    let a = send(&mut s, "HEAD", &format!("{base2}/big"), &[], b"").await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    // The connection is reused after each complete body.
    let a = send(&mut s, "GET", &format!("{base2}/after"), &[], b"").await;
    assert_eq!(a.status, 200);
    let peers: std::collections::HashSet<_> = web.seen().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "one pooled target connection for all three");
}

/// `routing.http2.enabled = false` on an HTTP listener: the h2 preface is read as the HTTP/1.1
/// request line it resembles (`PRI * HTTP/2.0`) and refused with a close; nothing reaches a
/// target, and HTTP/1.1 is served as before.
#[tokio::test]
async fn h2c_is_refused_when_http2_is_turned_off() {
    let (web, grpc) = (Origin::start().await, Origin::start().await);
    let (_s, addr) = start_full(
        "HTTP",
        "routing.http2.enabled = false",
        &targets(&[&web]),
        "",
        &grpc,
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the alb closes the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(web.seen().is_empty() && grpc.seen().is_empty());
    let r = causeway_testkit::raw::get(addr, "/one", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

/// `target_control` over h2: streams are requests, so each counts against its target's
/// limit, whether the target speaks HTTP/1.1 or h2; a stream that finds every target full
/// gets a 503 at once (no queue, as on ALB) and reaches no target.
#[tokio::test]
async fn h2_streams_count_against_each_targets_concurrency_limit() {
    for version in ["HTTP1", "HTTP2"] {
        let os = [
            Origin::builder().name("a").start().await,
            Origin::builder().name("b").start().await,
        ];
        let grpc = Origin::builder().name("grpc-1").start().await;
        for o in &os {
            o.hold("/slow");
        }
        let extra = format!(
            "protocol_version = \"{version}\"\ntarget_control.max_concurrent_requests = 1\n"
        );
        let (_s, addr) = start_with("HTTP", &targets(&[&os[0], &os[1]]), &extra, &grpc).await;
        let s = h2c(addr).await;
        let uri = format!("http://a.example.test:{}/slow", addr.port());
        let held: Vec<_> = (0..2)
            .map(|_| {
                let (mut s, uri) = (s.clone(), uri.clone());
                tokio::spawn(async move { send(&mut s, "GET", &uri, &[], b"").await })
            })
            .collect();
        until(Duration::from_secs(2), "both targets busy", || {
            os.iter().map(Origin::active).sum::<usize>() == 2
        })
        .await;
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            send(&mut s.clone(), "GET", &uri, &[], b""),
        )
        .await
        .expect("refused, not held");
        assert_eq!(refused.status, 503, "{version}");
        assert_eq!(
            os[0].total() + os[1].total(),
            2,
            "{version}: no target saw it"
        );
        for o in &os {
            o.let_through("/slow", 1);
        }
        let mut who = Vec::new();
        for h in held {
            let a = h.await.unwrap();
            assert_eq!(a.status, 200, "{version}");
            who.push(a.headers["x-origin"].to_str().unwrap().to_owned());
        }
        who.sort();
        assert_eq!(who, ["a", "b"], "{version}: one each");
        for o in &os {
            assert_eq!(o.peak_active(), 1, "{version}: {}", o.name());
        }
    }
}
