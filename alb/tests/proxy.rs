//! End-to-end behaviour of the alb's HTTP/1.1 engine against testkit origins that report what
//! they saw: forwarding, keep-alive, bodies, rules and actions, retries, limits, desync.

use causeway_alb::Alb;
use causeway_config::alb::FileAlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::park::PARK_AFTER;
use causeway_dataplane::Server;
use causeway_testkit::raw::{self, read_response, RawResponse};
use causeway_testkit::{free_port, until, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Alb1 {
    server: Arc<Server<Alb>>,
    addr: SocketAddr,
}

fn targets(os: &[&Origin]) -> String {
    os.iter()
        .map(|o| format!("{{ address = \"{}\" }}", o.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts an alb with these target groups (TOML), default action and rules. A `[load_balancer]`
/// table at the start of `groups` is merged into the alb's own.
async fn start(groups: &str, default_action: &str, rules: &str) -> Alb1 {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (lb_extra, groups) = match groups.strip_prefix("[load_balancer]\n") {
        Some(rest) => {
            let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
            (&rest[..end], &rest[end..])
        }
        None => ("", groups),
    };
    let text = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
[load_balancer]
request_header_timeout_seconds = 2
{lb_extra}
[[listeners]]
address = "{addr}"
default_action = {default_action}
{rules}
{groups}
"#,
        admin = free_port()
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Alb>::start(Path::new("alb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    Alb1 { server, addr }
}

fn group(name: &str, os: &[&Origin]) -> String {
    format!(
        "[target_groups.{name}]\ntargets = [{}]\nhealth_check.interval_seconds = 300\n",
        targets(os)
    )
}

/// Origins named `names` behind an alb whose default action forwards to them all.
async fn web_alb(names: &[&str]) -> (Vec<Origin>, Alb1) {
    let os = origins(names).await;
    let refs: Vec<&Origin> = os.iter().collect();
    let alb = start(
        &group("web", &refs),
        r#"{ type = "forward", target_group = "web" }"#,
        "",
    )
    .await;
    (os, alb)
}

async fn origins(names: &[&str]) -> Vec<Origin> {
    let mut v = Vec::new();
    for n in names {
        v.push(Origin::builder().name(n).start().await);
    }
    v
}

/// An alb whose default action answers 200 `ok` itself.
async fn answering_alb(lb: &str) -> Alb1 {
    let ok = r#"{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "ok" }"#;
    start(lb, ok, "").await
}

/// A drain does not wait on idle keep-alive connections (it used to wait for its whole grace
/// period, 30 s by default, whenever a client held one open), whether they still wait in their
/// tasks or have been parked.
#[tokio::test(start_paused = true)]
async fn a_drain_closes_idle_keep_alive_connections_and_answers_a_last_request() {
    for idle in [Duration::ZERO, PARK_AFTER * 4] {
        let alb = answering_alb("[load_balancer]\nidle_timeout.timeout_seconds = 600\n").await;
        let server = alb.server.clone();
        let watched = alb.server.clone();
        let parked = tokio::spawn(async move {
            // Both connections are parked once they have idled past the park delay.
            tokio::time::sleep(PARK_AFTER * 2).await;
            watched.parked_connections()
        });
        raw::check_drain_closes_idle_connections(
            alb.addr,
            "/",
            causeway_dataplane::client::DRAIN_LINGER,
            idle,
            async move { server.shutdown().await },
        )
        .await;
        let parked = parked.await.unwrap();
        assert_eq!(parked, if idle.is_zero() { 0 } else { 2 }, "idle {idle:?}");
        assert_eq!(alb.server.live_connections(), 0);
    }
}

/// A keep-alive connection idle past the park delay leaves its task; its next request is
/// served as before (routed on, to the next target), and it still closes exactly at the idle
/// timeout, parked again.
#[tokio::test(start_paused = true)]
async fn a_parked_connection_serves_its_next_request_and_closes_at_the_idle_timeout() {
    let os = origins(&["a", "b"]).await;
    let alb = start(
        &format!(
            "[load_balancer]\nidle_timeout.timeout_seconds = 40\n{}",
            group("web", &[&os[0], &os[1]])
        ),
        r#"{ type = "forward", target_group = "web" }"#,
        "",
    )
    .await;
    let mut c = TcpStream::connect(alb.addr).await.unwrap();
    let mut who = Vec::new();
    for (i, wait) in [0, 30, 39].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let parked = alb.server.parked_connections();
        assert_eq!(
            parked,
            usize::from(wait > 0),
            "request {i}: parked while idle"
        );
        let req = format!("GET /p{i} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "still kept alive");
        let origin = r.header("x-origin").unwrap().to_owned();
        assert_eq!(r.text(), format!("origin {origin} /p{i}\n"));
        who.push(origin);
        assert_eq!(alb.server.parked_connections(), 0, "resumed to serve it");
    }
    assert_eq!(
        who,
        ["a", "b", "a"],
        "round robin carries on across parking"
    );
    assert_eq!(os[1].seen()[0].path, "/p1");
    assert_eq!(alb.server.live_connections(), 1);
    assert_eq!(raw::closed_after(c).await, Duration::from_secs(40));
    assert_eq!(alb.server.parked_connections(), 0);
    assert_eq!(alb.server.live_connections(), 0);
}

/// A connection that sends nothing is closed at the header timeout (2 s here), with no answer;
/// once the process drains, a silent one goes after the drain's linger instead. Silent past
/// the park delay, it waits parked, and is closed at the same moments.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_header_timeout_or_the_drain() {
    let alb = answering_alb("").await;
    let c = TcpStream::connect(alb.addr).await.unwrap();
    let server = alb.server.clone();
    let parked = tokio::spawn(async move {
        tokio::time::sleep(PARK_AFTER * 2).await;
        server.parked_connections()
    });
    assert_eq!(raw::closed_after(c).await, Duration::from_secs(2));
    assert_eq!(parked.await.unwrap(), 1, "parked while silent");
    let linger = causeway_dataplane::client::DRAIN_LINGER;
    let c = TcpStream::connect(alb.addr).await.unwrap();
    // Accepted before the drain stops the accept loop.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let parked = TcpStream::connect(alb.addr).await.unwrap();
    tokio::time::sleep(PARK_AFTER * 2).await;
    assert_eq!(alb.server.parked_connections(), 2);
    let server = alb.server.clone();
    let drained = tokio::spawn(async move { server.shutdown().await });
    let (a, b) = tokio::join!(raw::closed_after(c), raw::closed_after(parked));
    assert_eq!((a, b), (linger, linger));
    assert!(drained.await.unwrap());
}

/// A new connection that waited parked for its first bytes is served when they come, as
/// HTTP/1.1 or as h2c with prior knowledge, and its header deadline still counts from when it
/// was accepted.
#[tokio::test(start_paused = true)]
async fn a_new_connection_parked_before_its_first_bytes_is_served_when_they_come() {
    let alb = answering_alb("").await;
    let mut h1 = TcpStream::connect(alb.addr).await.unwrap();
    let mut h2 = TcpStream::connect(alb.addr).await.unwrap();
    let slow = TcpStream::connect(alb.addr).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alb.server.parked_connections(), 3);
    h1.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut h1).await;
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
    // The h2 preface and an empty SETTINGS frame: the alb answers with its own SETTINGS.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    h2.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame: served as h2c");
    assert_eq!(alb.server.parked_connections(), 1);
    // The third sends half a request line at 1.5 s: the header deadline is still 2 s from
    // its accept, so it gets a 408 at 2 s.
    let mut slow = slow;
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(b"GET / HT").await.unwrap();
    let start = tokio::time::Instant::now();
    let r = read_response(&mut slow).await;
    assert_eq!(r.status, 408);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

/// ALB's header attributes over cleartext HTTP/1.1: with `drop_invalid_header_fields` a field
/// named with an underscore never reaches the target; with
/// `x_amzn_tls_version_and_cipher_suite` a client's forged TLS fields are dropped and none are
/// added (the request did not come over TLS); with `xff_client_port` the entry for the client
/// carries its port. Off (the default), all three leave the request as it was.
#[tokio::test]
async fn header_attributes_drop_invalid_names_and_forged_tls_fields() {
    let o = Origin::start().await;
    let on = "[load_balancer]\n\
        routing.http.drop_invalid_header_fields.enabled = true\n\
        routing.http.x_amzn_tls_version_and_cipher_suite.enabled = true\n\
        routing.http.xff_client_port.enabled = true\n";
    for attributes in [on, ""] {
        let alb = start(
            &format!("{attributes}{}", group("web", &[&o])),
            r#"{ type = "forward", target_group = "web" }"#,
            "",
        )
        .await;
        let mut s = TcpStream::connect(alb.addr).await.unwrap();
        let port = s.local_addr().unwrap().port();
        s.write_all(
            b"GET /attrs HTTP/1.1\r\nHost: shop.example\r\nX_User: admin\r\n\
              X-Amzn-Tls-Version: TLSv1.3\r\nX-Kept-1: yes\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        let got = o.seen().pop().unwrap();
        assert_eq!(got.header("x-kept-1"), Some("yes"));
        if attributes.is_empty() {
            assert_eq!(got.header("x_user"), Some("admin"));
            assert_eq!(got.header("x-amzn-tls-version"), Some("TLSv1.3"));
            assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
        } else {
            assert_eq!(got.header("x_user"), None, "{got:?}");
            assert_eq!(got.header("x-amzn-tls-version"), None, "{got:?}");
            assert_eq!(got.header("x-amzn-tls-cipher-suite"), None, "{got:?}");
            assert_eq!(
                got.header("x-forwarded-for"),
                Some(format!("127.0.0.1:{port}").as_str())
            );
        }
    }
}

#[tokio::test]
async fn round_robin_keep_alive_and_forwarded_headers() {
    let (os, alb) = web_alb(&["a", "b", "c"]).await;
    let mut s = TcpStream::connect(alb.addr).await.unwrap();
    let mut seen = Vec::new();
    for i in 0..6 {
        let req = format!("GET /k{i}?q=1 HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: keep-alive\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        let who = r.header("x-origin").unwrap().to_owned();
        assert_eq!(r.text(), format!("origin {who} /k{i}\n"));
        assert!(
            r.header("connection").is_none(),
            "no hop-by-hop header leaks: {:?}",
            r.headers
        );
        seen.push(who);
    }
    assert_eq!(
        seen,
        ["a", "b", "c", "a", "b", "c"],
        "round robin, one connection"
    );
    let got = os[0].seen()[0].clone();
    assert_eq!(got.path, "/k0?q=1");
    let port = alb.addr.port();
    assert_eq!(
        got.header("host"),
        Some(format!("shop.example:{port}").as_str())
    );
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("x-forwarded-port"),
        Some(port.to_string().as_str())
    );
    assert!(got.header("connection").is_none() || got.header("connection") == Some("keep-alive"));
    // A request id, as ALB's X-Amzn-Trace-Id: a new Root per request.
    let ids: Vec<String> = os
        .iter()
        .flat_map(|o| o.seen())
        .map(|r| r.header("x-amzn-trace-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6);
    for id in &ids {
        let rest = id.strip_prefix("Root=1-").unwrap_or_else(|| panic!("{id}"));
        let (secs, random) = rest.split_once('-').unwrap();
        assert_eq!((secs.len(), random.len()), (8, 24), "{id}");
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "every request has its own id");
    // A client's Root is kept, with a Self in front.
    raw::get(
        alb.addr,
        "/traced",
        &[(
            "X-Amzn-Trace-Id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        )],
    )
    .await
    .unwrap();
    let got = os
        .iter()
        .flat_map(|o| o.seen())
        .find(|r| r.path == "/traced")
        .unwrap();
    let id = got.header("x-amzn-trace-id").unwrap();
    assert!(
        id.starts_with("Self=1-")
            && id.ends_with(";Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
        "{id}"
    );
}

#[tokio::test]
async fn request_bodies_arrive_intact() {
    let (os, alb) = web_alb(&["a"]).await;
    let body = "x".repeat(100_000);
    let r = raw::request(alb.addr, "POST", "/upload", &[], body.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let mut s = TcpStream::connect(alb.addr).await.unwrap();
    s.write_all(b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let seen = os[0].seen();
    assert_eq!(seen[0].body.len(), 100_000);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[1].body, b"hello world");
}

#[tokio::test]
async fn rules_route_by_every_condition_and_local_actions_answer() {
    let os = origins(&[
        "default", "admin", "api", "canary", "post", "preview", "local",
    ])
    .await;
    let mut groups = String::new();
    for o in &os {
        groups.push_str(&group(o.name(), &[o]));
    }
    let rules = r#"
[[listeners.rules]]
priority = 10
conditions = [{ field = "path-pattern", values = ["/wp-admin/*"] }]
action = { type = "forward", target_group = "admin" }
[[listeners.rules]]
priority = 20
conditions = [{ field = "host-header", values = ["api.*"] }]
action = { type = "forward", target_group = "api" }
[[listeners.rules]]
priority = 30
conditions = [{ field = "http-header", header_name = "X-Canary", values = ["on"] }]
action = { type = "forward", target_group = "canary" }
[[listeners.rules]]
priority = 40
conditions = [{ field = "http-request-method", values = ["POST"] }]
action = { type = "forward", target_group = "post" }
[[listeners.rules]]
priority = 50
conditions = [{ field = "query-string", values = [{ key = "preview", value = "true" }] }]
action = { type = "forward", target_group = "preview" }
[[listeners.rules]]
priority = 60
conditions = [{ field = "source-ip", values = ["127.0.0.0/8"] }, { field = "path-pattern", values = ["/local"] }]
action = { type = "forward", target_group = "local" }
[[listeners.rules]]
priority = 70
conditions = [{ field = "path-pattern", values = ["/old/*"] }]
action = { type = "redirect", status_code = "HTTP_301", protocol = "HTTPS", port = "443", path = "/new/#{path}" }
[[listeners.rules]]
priority = 80
conditions = [{ field = "path-pattern", values = ["/maintenance"] }]
action = { type = "fixed-response", status_code = 503, content_type = "text/plain", message_body = "down for maintenance" }
"#;
    let alb = start(
        &groups,
        r#"{ type = "forward", target_group = "default" }"#,
        rules,
    )
    .await;
    let who = |r: RawResponse| r.header("x-origin").map(str::to_owned).unwrap_or_default();
    let a = alb.addr;
    assert_eq!(who(raw::get(a, "/", &[]).await.unwrap()), "default");
    assert_eq!(
        who(raw::get(a, "/wp-admin/post.php", &[]).await.unwrap()),
        "admin"
    );
    let two_hosts = raw::get(a, "/", &[("Host", "api.example.com")])
        .await
        .unwrap();
    assert_eq!(
        two_hosts.status, 400,
        "a second Host is refused, not routed"
    );
    assert_eq!(
        who(raw::get(a, "/", &[("X-Canary", "ON")]).await.unwrap()),
        "canary"
    );
    assert_eq!(
        who(raw::request(a, "POST", "/", &[], b"x").await.unwrap()),
        "post"
    );
    assert_eq!(
        who(raw::get(a, "/?a=1&preview=true", &[]).await.unwrap()),
        "preview"
    );
    assert_eq!(who(raw::get(a, "/local", &[]).await.unwrap()), "local");
    let r = raw::get(a, "/old/page?x=1", &[]).await.unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(
            format!("https://{a}/new/old/page?x=1")
                .replace(&format!(":{}", a.port()), "")
                .as_str()
        )
    );
    let r = raw::get(a, "/maintenance", &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "down for maintenance");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // host-header through a raw request with that Host only.
    let mut s = TcpStream::connect(a).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(who(read_response(&mut s).await), "api");
    assert_eq!(os[1].total(), 1);
}

#[tokio::test]
async fn dead_target_is_retried_with_no_client_error() {
    let (os, alb) = web_alb(&["a", "b", "c"]).await;
    for i in 0..6 {
        assert_eq!(
            raw::get(alb.addr, &format!("/warm{i}"), &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    os[1].stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..60 {
        let r = raw::get(alb.addr, &format!("/after{i}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_ne!(r.header("x-origin"), Some("b"));
    }
    // A POST whose target refuses the connection was never sent: retried too.
    let r = raw::request(alb.addr, "POST", "/form", &[], b"a=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn all_targets_down_is_502_and_empty_group_is_503() {
    let dead = causeway_testkit::closed_port().await;
    let groups = format!(
        "[target_groups.dead]\ntargets = [{{ address = \"{dead}\" }}]\nhealth_check.interval_seconds = 300\n[target_groups.empty]\nhealth_check.interval_seconds = 300\n"
    );
    let rules = r#"
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/empty"] }]
action = { type = "forward", target_group = "empty" }
"#;
    let alb = start(
        &groups,
        r#"{ type = "forward", target_group = "dead" }"#,
        rules,
    )
    .await;
    assert_eq!(raw::get(alb.addr, "/", &[]).await.unwrap().status, 502);
    assert_eq!(raw::get(alb.addr, "/empty", &[]).await.unwrap().status, 503);
}

#[tokio::test]
async fn limits_and_desync_refusals_never_reach_the_origin() {
    let (os, alb) = web_alb(&["a"]).await;
    let a = alb.addr;
    let long = format!("/{}", "a".repeat(17 * 1024));
    assert_eq!(raw::get(a, &long, &[]).await.unwrap().status, 414);
    let big = "b".repeat(17 * 1024);
    assert_eq!(
        raw::get(a, "/", &[("X-Big", &big)]).await.unwrap().status,
        431
    );
    let cases: [&[u8]; 6] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for raw_req in cases {
        let out = raw::exchange(a, raw_req, Duration::from_secs(3))
            .await
            .unwrap();
        let r = RawResponse::parse(&out)
            .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw_req)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw_req));
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(os[0].total(), 0, "nothing ambiguous reached the origin");
}

#[tokio::test]
async fn slow_header_gets_408() {
    let (os, alb) = web_alb(&["a"]).await;
    let mut s = TcpStream::connect(alb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let out = raw::read_until_quiet(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let r = RawResponse::parse(&out).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(os[0].total(), 0, "an incomplete head is never forwarded");
}

fn sticky_group(os: &[&Origin]) -> String {
    format!(
        "{}stickiness.enabled = true\nstickiness.type = \"lb_cookie\"\nstickiness.lb_cookie.duration_seconds = 3600\n",
        group("web", os)
    )
}

async fn start_sticky(os: &[&Origin]) -> Alb1 {
    start(
        &sticky_group(os),
        r#"{ type = "forward", target_group = "web" }"#,
        "",
    )
    .await
}

fn cookie_of(r: &RawResponse) -> String {
    let sc = r
        .header("set-cookie")
        .expect("sticky responses set the cookie");
    assert!(sc.contains("Max-Age=3600") && sc.contains("Path=/"), "{sc}");
    sc.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn lb_cookie_stickiness_holds_refuses_forgery_and_re_sticks() {
    let os = origins(&["a", "b", "c"]).await;
    let refs: Vec<&Origin> = os.iter().collect();
    let alb = start_sticky(&refs).await;
    let first = raw::get(alb.addr, "/", &[]).await.unwrap();
    let stuck_to = first.header("x-origin").unwrap().to_owned();
    let cookie = cookie_of(&first);
    assert!(cookie.starts_with("AWSALB="), "{cookie}");
    for _ in 0..10 {
        let r = raw::get(alb.addr, "/again", &[("Cookie", &format!("x=1; {cookie}"))])
            .await
            .unwrap();
        assert_eq!(r.header("x-origin"), Some(stuck_to.as_str()), "sticky");
    }
    // A forged cookie naming another target is ignored: round robin decides, as without one.
    let stuck = os.iter().find(|o| o.name() == stuck_to).unwrap();
    let other = os.iter().find(|o| o.name() != stuck_to).unwrap();
    let forged = cookie.replace(&stuck.addr().to_string(), &other.addr().to_string());
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = raw::get(alb.addr, "/forged", &[("Cookie", &forged)])
            .await
            .unwrap();
        names.insert(r.header("x-origin").unwrap().to_owned());
        assert_ne!(cookie_of(&r), forged, "a forged cookie is replaced");
    }
    assert_eq!(names.len(), 3, "forgery does not pin a target: {names:?}");
    // The sticky target dies: the request goes elsewhere and the cookie follows it.
    stuck.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = raw::get(alb.addr, "/failover", &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let new_home = r.header("x-origin").unwrap().to_owned();
    assert_ne!(new_home, stuck_to);
    let new_cookie = cookie_of(&r);
    let r = raw::get(alb.addr, "/after", &[("Cookie", &new_cookie)])
        .await
        .unwrap();
    assert_eq!(
        r.header("x-origin"),
        Some(new_home.as_str()),
        "re-stuck to the new target"
    );
}

#[tokio::test]
async fn replicas_sharing_a_secret_honour_each_others_cookies() {
    let os = origins(&["a", "b", "c"]).await;
    let refs: Vec<&Origin> = os.iter().collect();
    let groups = format!(
        "[load_balancer]\nstickiness_secret = \"a shared secret of the fleet\"\n{}",
        sticky_group(&refs)
    );
    let one = start(&groups, r#"{ type = "forward", target_group = "web" }"#, "").await;
    let two = start(&groups, r#"{ type = "forward", target_group = "web" }"#, "").await;
    // Move replica two's round robin off step with replica one.
    raw::get(two.addr, "/", &[]).await.unwrap();
    let first = raw::get(one.addr, "/", &[]).await.unwrap();
    let home = first.header("x-origin").unwrap().to_owned();
    let cookie = cookie_of(&first);
    for _ in 0..5 {
        let r = raw::get(two.addr, "/", &[("Cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(r.header("x-origin"), Some(home.as_str()));
    }
}

/// A raw origin that answers a WebSocket upgrade with 101, then echoes bytes back upper-cased.
async fn websocket_origin() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut tmp).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_lowercase();
                assert!(head.contains("upgrade: websocket"), "{head}");
                assert!(head.contains("connection: upgrade"), "{head}");
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                    .await
                    .unwrap();
                loop {
                    let n = s.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let up: Vec<u8> = tmp[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_tunnel_after_101() {
    let ws = websocket_origin().await;
    let groups = format!(
        "[target_groups.ws]\ntargets = [{{ address = \"{ws}\" }}]\nhealth_check.interval_seconds = 300\n"
    );
    let alb = start(&groups, r#"{ type = "forward", target_group = "ws" }"#, "").await;
    let mut s = TcpStream::connect(alb.addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let r = RawResponse::parse(&got).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    for msg in [&b"hello"[..], b"frames both ways"] {
        s.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg.to_ascii_uppercase());
    }
}

#[tokio::test]
async fn an_upgrade_the_target_refuses_stays_http() {
    let (os, alb) = web_alb(&["a"]).await;
    // h2c upgrade requests are not honoured: the Upgrade header is dropped, the request served.
    let r = raw::get(
        alb.addr,
        "/",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = &os[0].seen()[0];
    assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    assert!(
        seen.header("http2-settings").is_none(),
        "headers named by Connection are dropped"
    );
}

#[tokio::test]
async fn a_target_failing_five_times_in_a_row_is_ejected() {
    let good = origins(&["a", "c"]).await;
    let bad = Origin::builder()
        .name("bad")
        .default_status(503)
        .start()
        .await;
    let alb = start(
        &group("web", &[&good[0], &bad, &good[1]]),
        r#"{ type = "forward", target_group = "web" }"#,
        "",
    )
    .await;
    let mut errors = 0;
    for i in 0..45 {
        let r = raw::get(alb.addr, &format!("/{i}"), &[]).await.unwrap();
        if r.status != 200 {
            assert_eq!(r.status, 503, "a target's 5xx passes through");
            errors += 1;
        }
    }
    assert_eq!(bad.total(), 5, "ejected after its fifth failure in a row");
    assert_eq!(errors, 5);
    assert_eq!(good[0].total() + good[1].total(), 40);
}

#[tokio::test]
async fn access_log_lines_follow_alb_field_order() {
    let os = origins(&["a"]).await;
    let dir = causeway_testkit::lifecycle::TempDir::new("accesslog");
    let log = dir.path().join("access.log");
    let conn_log = dir.path().join("connection.log");
    let groups = format!(
        "[load_balancer]\naccess_logs.enabled = true\naccess_logs.path = \"{}\"\n\
         connection_logs.enabled = true\nconnection_logs.path = \"{}\"\n{}",
        log.display(),
        conn_log.display(),
        group("web", &[&os[0]])
    );
    let rules = r#"
[[listeners.rules]]
priority = 7
conditions = [{ field = "path-pattern", values = ["/fixed"] }]
action = { type = "fixed-response", status_code = 404, message_body = "nope" }
"#;
    let alb = start(
        &groups,
        r#"{ type = "forward", target_group = "web" }"#,
        rules,
    )
    .await;
    raw::get(
        alb.addr,
        "/page?x=1",
        &[("User-Agent", "curl/8 \"quoted\"")],
    )
    .await
    .unwrap();
    raw::get(alb.addr, "/fixed", &[]).await.unwrap();
    // Two requests on one keep-alive connection.
    let mut kept = TcpStream::connect(alb.addr).await.unwrap();
    for path in ["/kept/1", "/kept/2"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        kept.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut kept).await.status, 200);
    }
    raw::exchange(
        alb.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let text = causeway_testkit::lifecycle::log_lines(&log, 5).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    // The last six fields: classification, classification_reason, conn_trace_id,
    // transformed_host, transformed_uri, request_transform_status.
    let tail = |line: &str| -> Vec<String> {
        let mut t: Vec<String> = line.rsplitn(7, ' ').take(6).map(str::to_owned).collect();
        t.reverse();
        t
    };
    let tid = |line: &str| tail(line)[2].clone();
    for line in &lines {
        let t = tid(line);
        assert!(
            t.len() == 36 && t.starts_with("TID_") && t[4..].bytes().all(|b| b.is_ascii_hexdigit()),
            "conn_trace_id: {line}"
        );
        assert_eq!(
            tail(line)[3..],
            ["\"-\"", "\"-\"", "\"-\""],
            "no transform: {line}"
        );
    }
    assert_eq!(
        tid(lines[2]),
        tid(lines[3]),
        "one connection, one conn_trace_id"
    );
    assert_ne!(tid(lines[0]), tid(lines[1]), "each connection its own");
    assert_ne!(tid(lines[1]), tid(lines[2]));
    assert!(
        lines[2].contains("/kept/1 HTTP") && lines[3].contains("/kept/2 HTTP"),
        "{text}"
    );
    // The connection log: one line per connection (four), cleartext, whose conn_trace_id is
    // the one its requests carry.
    let conns = causeway_testkit::lifecycle::log_lines(&conn_log, 4).await;
    let conns: Vec<&str> = conns.lines().collect();
    assert_eq!(conns.len(), 4, "{conns:?}");
    for (c, request) in conns.iter().zip([0, 1, 2, 4]) {
        assert!(
            c.contains(&format!(
                " {} - - - - - - - {} - app/causeway-alb/{} {}",
                alb.addr.port(),
                tid(lines[request]),
                alb.addr,
                alb.addr.ip()
            )),
            "{c}\n{}",
            lines[request]
        );
    }
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[0], "http");
    assert!(f[1].ends_with('Z') && f[1].contains('T'), "time: {}", f[1]);
    assert_eq!(f[2], format!("app/causeway-alb/{}", alb.addr));
    assert!(f[3].starts_with("127.0.0.1:"), "client:port {}", f[3]);
    assert_eq!(f[4], os[0].addr().to_string(), "target:port");
    assert_eq!((f[8], f[9]), ("200", "200"), "elb and target status");
    let port = alb.addr.port();
    assert!(
        lines[0].contains(&format!(
            "\"GET http://{}:{port}/page?x=1 HTTP/1.1\" \"curl/8 \\\"quoted\\\"\"",
            alb.addr.ip()
        )),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"forward\""), "{}", lines[0]);
    // trace_id: the X-Amzn-Trace-Id the target got.
    let sent = os[0].seen()[0]
        .header("x-amzn-trace-id")
        .unwrap()
        .to_owned();
    assert!(
        lines[0].contains(&format!(" web \"{sent}\" ")),
        "trace id logged: {}",
        lines[0]
    );
    assert_eq!(
        tail(lines[0])[..2],
        ["\"-\"", "\"-\""],
        "compliant: {}",
        lines[0]
    );
    assert!(
        lines[1].contains(" 404 - ")
            && lines[1].contains("\"fixed-response\"")
            && lines[1].contains(" 7 "),
        "{}",
        lines[1]
    );
    assert!(lines[4].contains(" 400 - "), "{}", lines[4]);
    assert_eq!(
        tail(lines[4])[..2],
        ["\"Severe\"", "\"MultipleContentLength\""],
        "classification logged: {}",
        lines[4]
    );
}

/// Sends `n` GETs on one keep-alive connection, returning the statuses (0 for a broken
/// connection).
async fn keep_alive_load(addr: SocketAddr, n: usize, tag: usize) -> Vec<u16> {
    let mut out = Vec::new();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 0..n {
        let req = format!("GET /load/{tag}/{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            out.push(0);
            s = TcpStream::connect(addr).await.unwrap();
            continue;
        }
        let r = read_response(&mut s).await;
        out.push(r.status);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_targets_under_get_load_loses_nothing() {
    let (os, alb) = web_alb(&["a", "b", "c"]).await;
    let clients: Vec<_> = (0..8)
        .map(|t| tokio::spawn(keep_alive_load(alb.addr, 150, t)))
        .collect();
    // Kill b while the load runs: its listener and its open (pooled) connections go away.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = os[1].total();
    os[1].stop();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert_eq!(statuses.len(), 1200);
    let bad: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        bad.is_empty(),
        "client errors after killing a target: {bad:?}"
    );
    assert!(before > 0, "b served traffic before it died");
    // A GET that reached b just before it died may have been retried (it is idempotent), so
    // the origins may count a few more than the clients sent; never fewer.
    assert!(os.iter().map(Origin::total).sum::<usize>() >= 1200);
}

/// Sends `n` POSTs on one keep-alive connection, each with its own id as the body; returns
/// (path, status), status 0 for a broken connection.
async fn keep_alive_posts(addr: SocketAddr, n: usize, tag: usize) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 0..n {
        let path = format!("/post/{tag}/{i}");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            out.push((path, 0));
            s = TcpStream::connect(addr).await.unwrap();
            continue;
        }
        let r = read_response(&mut s).await;
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            s = TcpStream::connect(addr).await.unwrap();
        }
        out.push((path, r.status));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_targets_under_post_load_fails_only_what_reached_it_and_sends_nothing_twice(
) {
    let os = origins(&["a", "b", "c"]).await;
    let dir = causeway_testkit::lifecycle::TempDir::new("postkill");
    let log = dir.path().join("access.log");
    let refs: Vec<&Origin> = os.iter().collect();
    let groups = format!(
        "[load_balancer]\naccess_logs.enabled = true\naccess_logs.path = \"{}\"\n{}",
        log.display(),
        group("web", &refs)
    );
    let alb = start(&groups, r#"{ type = "forward", target_group = "web" }"#, "").await;
    let clients: Vec<_> = (0..8)
        .map(|t| tokio::spawn(keep_alive_posts(alb.addr, 100, t)))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = os[1].total();
    os[1].stop();
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.unwrap());
    }
    assert_eq!(results.len(), 800);
    assert!(before > 0, "b served traffic before it died");
    // Nothing is sent twice: every body reached at most one origin, once.
    let mut delivered = std::collections::HashMap::new();
    for o in &os {
        for seen in o.seen() {
            *delivered
                .entry(String::from_utf8(seen.body).unwrap())
                .or_insert(0) += 1;
        }
    }
    assert!(
        delivered.values().all(|&n| n == 1),
        "a POST reached a target twice"
    );
    for (path, status) in &results {
        if *status == 200 {
            assert_eq!(
                delivered.get(path),
                Some(&1),
                "{path} answered but not delivered"
            );
        }
    }
    // Every failure was a request sent to the dead target, as the access log shows.
    let failed: Vec<&String> = results
        .iter()
        .filter(|(_, s)| *s != 200)
        .map(|(p, _)| p)
        .collect();
    let dead = os[1].addr().to_string();
    let text = causeway_testkit::lifecycle::log_lines(&log, 800).await;
    for path in &failed {
        let needle = format!("{path} HTTP/1.1\"");
        let line = text
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no access log line for failed {path}"));
        let target = line.split(' ').nth(4).unwrap();
        assert_eq!(target, dead, "{path} failed on a live target: {line}");
    }
    eprintln!(
        "{} of 800 POSTs failed, all sent to the dead target",
        failed.len()
    );
    assert!(
        failed.len() <= 8,
        "at most one in-flight POST per client connection can be lost: {failed:?}"
    );
}

#[tokio::test]
async fn a_target_removed_by_reload_drains_its_in_flight_request() {
    let a = Origin::builder().name("a").start().await;
    let b = Origin::builder()
        .name("b")
        .delay_for("/slow", Duration::from_millis(800))
        .start()
        .await;
    let dir = causeway_testkit::lifecycle::TempDir::new("drain");
    let file = dir.path().join("alb.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = |targets: &str| {
        format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{listen}\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n[target_groups.web]\ntargets = [{targets}]\nderegistration_delay.timeout_seconds = 5\nhealth_check.interval_seconds = 300\n",
            free_port()
        )
    };
    std::fs::write(&file, config(&targets(&[&a, &b]))).unwrap();
    let cfg = causeway_config::load::<FileAlb>(&file).unwrap();
    let server = Server::<Alb>::start(&file, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    // Round robin: the first request goes to a, the second (slow) one to b.
    assert_eq!(
        raw::get(listen, "/", &[]).await.unwrap().header("x-origin"),
        Some("a")
    );
    let slow = tokio::spawn(async move { raw::get(listen, "/slow", &[]).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.hits("/slow"), 1, "the slow request is in flight on b");
    // Deregister b.
    std::fs::write(&file, config(&targets(&[&a]))).unwrap();
    let summary = server.reload().await.unwrap();
    assert_eq!(summary.targets_removed, vec![format!("web/{}", b.addr())]);
    let snap = server.snapshot();
    let draining = snap.group("web").unwrap().draining.lock().unwrap().clone();
    assert_eq!(draining.len(), 1);
    assert_eq!(
        draining[0].state(),
        causeway_dataplane::health::State::Draining
    );
    assert_eq!(draining[0].in_flight(), 1);
    for i in 0..10 {
        let r = raw::get(listen, &format!("/new{i}"), &[]).await.unwrap();
        assert_eq!(
            r.header("x-origin"),
            Some("a"),
            "no new request goes to a draining target"
        );
    }
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    assert_eq!(r.header("x-origin"), Some("b"));
    assert_eq!(draining[0].in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let os = origins(&["a", "b", "c"]).await;
    let dir = causeway_testkit::lifecycle::TempDir::new("reload-load");
    let file = dir.path().join("alb.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = free_port();
    let config = |os: &[&Origin], algo: &str| {
        format!(
            "[admin]\naddress = \"127.0.0.1:{admin}\"\n[[listeners]]\naddress = \"{listen}\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n[target_groups.web]\ntargets = [{}]\nload_balancing.algorithm.type = \"{algo}\"\nderegistration_delay.timeout_seconds = 5\nhealth_check.interval_seconds = 300\n",
            targets(os)
        )
    };
    std::fs::write(&file, config(&[&os[0], &os[1], &os[2]], "round_robin")).unwrap();
    let cfg = causeway_config::load::<FileAlb>(&file).unwrap();
    let server = Server::<Alb>::start(&file, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let clients: Vec<_> = (0..8)
        .map(|t| tokio::spawn(keep_alive_load(listen, 150, t)))
        .collect();
    let broken = "[admin]\naddress = \"oops\"\n";
    for i in 0..40 {
        let text = match i % 4 {
            0 => config(&[&os[0], &os[1]], "least_outstanding_requests"),
            1 => broken.to_owned(),
            2 => config(&[&os[1], &os[2]], "round_robin"),
            _ => config(&[&os[0], &os[1], &os[2]], "weighted_random"),
        };
        std::fs::write(&file, text).unwrap();
        let r = server.reload().await;
        assert_eq!(r.is_ok(), i % 4 != 1, "reload {i}: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert_eq!(statuses.len(), 1200);
    assert!(
        statuses.iter().all(|&s| s == 200),
        "errors during reloads: {:?}",
        statuses.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
    assert_eq!(
        server.snapshot().generation,
        31,
        "30 good reloads, 10 refused"
    );
}

#[tokio::test]
async fn a_reload_applies_to_the_next_request_of_a_keep_alive_connection() {
    let os = origins(&["a"]).await;
    let dir = causeway_testkit::lifecycle::TempDir::new("per-request");
    let file = dir.path().join("alb.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{listen}\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n",
        free_port()
    );
    let groups = group("web", &[&os[0]]);
    std::fs::write(&file, format!("{base}{groups}")).unwrap();
    let cfg = causeway_config::load::<FileAlb>(&file).unwrap();
    let server = Server::<Alb>::start(&file, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    let rule = "[[listeners.rules]]\npriority = 1\nconditions = [{ field = \"path-pattern\", values = [\"/x\"] }]\naction = { type = \"fixed-response\", status_code = 418, message_body = \"new rule\" }\n";
    std::fs::write(&file, format!("{base}{rule}{groups}")).unwrap();
    server.reload().await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (418, "new rule"),
        "same connection, new rules"
    );
    assert_eq!(os[0].total(), 1);
}

#[tokio::test]
async fn app_cookie_stickiness_follows_the_application_cookie() {
    let mut os = Vec::new();
    for n in ["a", "b", "c"] {
        os.push(
            Origin::builder()
                .name(n)
                .set_cookie_for("/login", "SESSIONID=s1; Path=/")
                .start()
                .await,
        );
    }
    let refs: Vec<&Origin> = os.iter().collect();
    let groups = format!(
        "{}stickiness.enabled = true\nstickiness.type = \"app_cookie\"\nstickiness.app_cookie.cookie_name = \"SESSIONID\"\nstickiness.app_cookie.duration_seconds = 600\n",
        group("web", &refs)
    );
    let alb = start(&groups, r#"{ type = "forward", target_group = "web" }"#, "").await;
    let r = raw::get(alb.addr, "/page", &[]).await.unwrap();
    assert!(
        r.header("set-cookie").is_none(),
        "no application cookie, no stickiness cookie"
    );
    let login = raw::get(alb.addr, "/login", &[]).await.unwrap();
    let home = login.header("x-origin").unwrap().to_owned();
    let ours: Vec<&str> = login
        .headers
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("AWSALBAPP-0="))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", login.headers);
    assert!(ours[0].contains("Max-Age=600"));
    let cookie = ours[0].split(';').next().unwrap().to_owned();
    for _ in 0..6 {
        let r = raw::get(
            alb.addr,
            "/page",
            &[("Cookie", &format!("SESSIONID=s1; {cookie}"))],
        )
        .await
        .unwrap();
        assert_eq!(
            r.header("x-origin"),
            Some(home.as_str()),
            "stuck to the application's session"
        );
    }
}

#[tokio::test]
async fn per_source_connection_cap_refuses_the_extra_connection() {
    let os = origins(&["a"]).await;
    let alb = start(
        &group("web", &[&os[0]]),
        "{ type = \"forward\", target_group = \"web\" }\nmax_connections_per_source = 2",
        "",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(alb.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        held.push(s);
    }
    let mut third = TcpStream::connect(alb.addr).await.unwrap();
    let sent = third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap();
    assert!(
        sent.is_err() || matches!(r, Ok(0) | Err(_)),
        "refused: {r:?}"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        raw::get(alb.addr, "/", &[]).await.unwrap().status,
        200,
        "room again"
    );
    assert_eq!(os[0].total(), 3);
}

#[tokio::test]
async fn metrics_follow_alb_names_by_target_group() {
    // The binary installs the recorder before anything registers a metric; do the same.
    causeway_dataplane::telemetry::metrics();
    let os = origins(&["a"]).await;
    let rules = r#"
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", values = ["/teapot"] }]
action = { type = "fixed-response", status_code = 418 }
"#;
    let alb = start(
        &group("metricsgroup", &[&os[0]]),
        r#"{ type = "forward", target_group = "metricsgroup" }"#,
        rules,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(raw::get(alb.addr, "/", &[]).await.unwrap().status, 200);
    }
    assert_eq!(
        raw::get(alb.addr, "/teapot", &[]).await.unwrap().status,
        418
    );
    let text = causeway_dataplane::telemetry::metrics().render();
    let m = |series: &str| causeway_testkit::metric(&text, series).unwrap_or(-1.0);
    assert_eq!(
        m("causeway_alb_request_count{target_group=\"metricsgroup\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        m("causeway_alb_httpcode_target_count{target_group=\"metricsgroup\",class=\"2XX\"}"),
        3.0
    );
    assert!(m("causeway_alb_httpcode_elb_count{class=\"4XX\"}") >= 1.0);
    assert!(
        text.contains("causeway_alb_target_response_time_seconds"),
        "histogram present"
    );
}

/// The `AWSALBTG` cookie of a response (name=value), if it set one.
fn group_cookie_of(r: &RawResponse) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v)
        .find(|v| v.starts_with("AWSALBTG="))
        .map(|v| {
            assert!(v.contains("Max-Age=600") && v.contains("Path=/"), "{v}");
            v.split(';').next().unwrap().to_owned()
        })
}

#[tokio::test]
async fn target_group_stickiness_keeps_a_client_on_its_weighted_group() {
    let os = origins(&["blue-1", "green-1"]).await;
    let groups = format!("{}{}", group("blue", &[&os[0]]), group("green", &[&os[1]]));
    let weighted = r#"[{ name = "blue", weight = 1 }, { name = "green", weight = 1 }]"#;
    let alb = start(
        &groups,
        &format!(
            r#"{{ type = "forward", target_groups = {weighted}, target_group_stickiness_config = {{ enabled = true, duration_seconds = 600 }} }}"#
        ),
        "",
    )
    .await;
    let first = raw::get(alb.addr, "/", &[]).await.unwrap();
    assert_eq!(first.status, 200);
    let home = first.header("x-origin").unwrap().to_owned();
    let cookie = group_cookie_of(&first).expect("a weighted sticky forward sets AWSALBTG");
    for _ in 0..12 {
        let r = raw::get(alb.addr, "/again", &[("Cookie", &format!("x=1; {cookie}"))])
            .await
            .unwrap();
        assert_eq!(
            r.header("x-origin"),
            Some(home.as_str()),
            "stays with its group"
        );
        assert!(group_cookie_of(&r).is_some(), "the cookie is refreshed");
    }
    // A forged cookie naming the other group is ignored: the weights decide, as without one.
    let (mine, other) = if home.starts_with("blue") {
        ("blue", "green")
    } else {
        ("green", "blue")
    };
    let forged = cookie.replacen(mine, other, 1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let r = raw::get(alb.addr, "/forged", &[("Cookie", &forged)])
            .await
            .unwrap();
        seen.insert(r.header("x-origin").unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "forgery does not pin a group: {seen:?}");
    // Without the setting, no group cookie.
    let plain = start(
        &groups,
        &format!(r#"{{ type = "forward", target_groups = {weighted} }}"#),
        "",
    )
    .await;
    let r = raw::get(plain.addr, "/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(group_cookie_of(&r), None);
}

/// Header modification on the responses the alb writes itself over HTTP/1.1: a refused
/// request's 400 carries the listener's fields and, with `server.enabled = false`, no `Server`
/// field; a listener without the attributes keeps `Server: causeway`.
#[tokio::test]
async fn header_modification_reaches_refusals() {
    let fixed = r#"{ type = "fixed-response", status_code = 200 }"#;
    let modified = start(
        "",
        fixed,
        "routing.http.response.x_content_type_options.header_value = \"nosniff\"\nrouting.http.response.server.enabled = false",
    )
    .await;
    let plain = start("", fixed, "").await;
    let bad = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    for (alb, server, nosniff) in [
        (&modified, None, Some("nosniff")),
        (&plain, Some("causeway"), None),
    ] {
        let mut s = TcpStream::connect(alb.addr).await.unwrap();
        s.write_all(bad.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.header("server"), server);
        assert_eq!(r.header("x-content-type-options"), nosniff);
    }
}

/// Rules with `regex_values` route real requests: a path regex and a Host regex that sees the
/// port the client sent; a request neither matches is forwarded.
#[tokio::test]
async fn regex_conditions_route_requests() {
    let os = origins(&["web"]).await;
    let rules = r#"
[[listeners.rules]]
priority = 1
conditions = [{ field = "path-pattern", regex_values = ["^/api/v[0-9]+/", "\\.bak$"] }]
action = { type = "fixed-response", status_code = 403, message_body = "path" }
[[listeners.rules]]
priority = 2
conditions = [{ field = "host-header", regex_values = ["^admin\\.example\\.com:8443$"] }]
action = { type = "fixed-response", status_code = 403, message_body = "host" }
"#;
    let alb = start(
        &group("web", &[&os[0]]),
        r#"{ type = "forward", target_group = "web" }"#,
        rules,
    )
    .await;
    for (path, host, status, body) in [
        ("/api/v1/users", "www.example.com", 403, "path"),
        ("/wp-config.php.bak", "www.example.com", 403, "path"),
        ("/", "admin.example.com:8443", 403, "host"),
        ("/", "admin.example.com", 200, ""),
        ("/api/users", "www.example.com", 200, ""),
    ] {
        let mut s = TcpStream::connect(alb.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, status, "{host}{path}");
        if status == 403 {
            assert_eq!(r.body, body.as_bytes());
        }
    }
    assert_eq!(os[0].total(), 2);
}

/// ALB's health check logs: a line per active check with AWS's fields, `PASS` and the status
/// for a target that answers, `FAIL` and AWS's reason for one that refuses connections.
#[tokio::test]
async fn health_check_logs_have_a_line_per_check() {
    let os = origins(&["a"]).await;
    let dir = causeway_testkit::lifecycle::TempDir::new("hclog");
    let log = dir.path().join("health.log");
    let dead = free_port();
    let groups = format!(
        "[load_balancer]\nhealth_check_logs.enabled = true\nhealth_check_logs.path = \"{}\"\n\
         [target_groups.web]\ntargets = [{{ address = \"{}\" }}, {{ address = \"127.0.0.1:{dead}\" }}]\n\
         health_check.interval_seconds = 5\n",
        log.display(),
        os[0].addr()
    );
    let alb = start(&groups, r#"{ type = "forward", target_group = "web" }"#, "").await;
    // The first checks come within a tenth of the interval.
    let text = causeway_testkit::lifecycle::log_lines(&log, 2).await;
    let tail = format!(" app/causeway-alb/{} {}", alb.addr, alb.addr.ip());
    let find = |target: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" {target} web ")))
            .unwrap_or_else(|| panic!("no check of {target}: {text}"))
            .to_owned()
    };
    let live = find(&os[0].addr().to_string());
    let f: Vec<&str> = live.split(' ').collect();
    assert_eq!(f[0], "http", "{live}");
    assert!(f[1].ends_with('Z') && f[1].contains('T'), "{live}");
    assert!(
        f[2].split('.').nth(1).map(str::len) == Some(9),
        "latency: {live}"
    );
    assert!(live.ends_with(&format!(" web PASS 200 -{tail}")), "{live}");
    let gone = find(&format!("127.0.0.1:{dead}"));
    assert!(
        gone.ends_with(&format!(" web FAIL - ConnectionReset{tail}")),
        "{gone}"
    );
}

/// `GET /slow` with `Connection: close`, read to its end however long the alb takes (at most
/// 120 s of the test's clock).
async fn patient_get(addr: SocketAddr) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: capped.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    RawResponse::parse(&out).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&out)))
}

/// An alb forwarding to a `capped` group of `os` with this `target_control` table.
async fn capped_alb(os: &[Origin], control: &str) -> Alb1 {
    let refs: Vec<&Origin> = os.iter().collect();
    start(
        &format!("{}target_control = {control}\n", group("capped", &refs)),
        r#"{ type = "forward", target_group = "capped" }"#,
        "",
    )
    .await
}

/// Two `GET /slow` in flight, once both of `os` (holding `/slow`) are answering one.
async fn fill_both(addr: SocketAddr, os: &[Origin]) -> [tokio::task::JoinHandle<RawResponse>; 2] {
    let held = [
        tokio::spawn(patient_get(addr)),
        tokio::spawn(patient_get(addr)),
    ];
    until(Duration::from_secs(2), "both targets busy", || {
        os.iter().map(Origin::active).sum::<usize>() == 2
    })
    .await;
    held
}

/// `target_control` (ALB's Target Optimizer, HAProxy's `maxconn` and queue): no target ever
/// answers more requests at once than its limit. Without a queue (ALB's way) a request that
/// finds every target full gets a 503 at once and reaches no target; with one, it waits its
/// turn and takes the first target to free up, until the queue is full (503 at once) or its
/// timeout ends (503 then).
#[tokio::test(start_paused = true)]
async fn target_control_caps_requests_per_target_and_queues_or_refuses_the_rest() {
    causeway_dataplane::telemetry::metrics();
    let os = origins(&["a", "b"]).await;
    for o in &os {
        o.hold("/slow");
    }
    let busy = |os: &[Origin]| os.iter().map(Origin::active).sum::<usize>();
    let get = |addr: SocketAddr| tokio::spawn(patient_get(addr));

    // ALB's way: no queue.
    let alb = capped_alb(&os, "{ max_concurrent_requests = 1 }").await;
    let held = fill_both(alb.addr, &os).await;
    let started = tokio::time::Instant::now();
    let refused = patient_get(alb.addr).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    assert_eq!(
        os[0].hits("/slow") + os[1].hits("/slow"),
        2,
        "no target saw it"
    );
    for o in &os {
        o.let_through("/slow", 1);
    }
    let mut who = Vec::new();
    for h in held {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200);
        who.push(r.header("x-origin").unwrap().to_owned());
    }
    who.sort();
    assert_eq!(who, ["a", "b"], "one each");
    let text = causeway_dataplane::telemetry::metrics().render();
    assert_eq!(
        causeway_testkit::metric(
            &text,
            "causeway_alb_target_control_request_reject_count{target_group=\"capped\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // HAProxy's way: a queue of one, waiting up to 30 s.
    let alb = capped_alb(
        &os,
        "{ max_concurrent_requests = 1, queue_timeout_seconds = 30, max_queued_requests = 1 }",
    )
    .await;
    let held = fill_both(alb.addr, &os).await;
    let queued = get(alb.addr);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!queued.is_finished(), "it waits");
    assert_eq!(busy(&os), 2, "and reaches no target yet");
    let started = tokio::time::Instant::now();
    let full = patient_get(alb.addr).await;
    assert_eq!(full.status, 503, "the queue holds one");
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    // Target b frees up: the queued request takes it, and waits there in turn.
    os[1].let_through("/slow", 1);
    until(
        Duration::from_secs(2),
        "the queued request reaches b",
        || os[1].hits("/slow") == 3,
    )
    .await;
    assert_eq!(os[0].hits("/slow"), 2, "a was never asked twice at once");
    os[0].let_through("/slow", 1);
    os[1].let_through("/slow", 1);
    let mut who = Vec::new();
    for h in held.into_iter().chain([queued]) {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200);
        who.push(r.header("x-origin").unwrap().to_owned());
    }
    assert_eq!(
        who[2], "b",
        "the queued request went to the target that freed up"
    );
    // Nothing frees up: a queued request gives up at the timeout.
    let held = fill_both(alb.addr, &os).await;
    let started = tokio::time::Instant::now();
    let late = patient_get(alb.addr).await;
    assert_eq!(late.status, 503);
    assert_eq!(started.elapsed().as_secs(), 30, "after the queue timeout");
    for o in &os {
        o.let_through("/slow", 1);
        assert_eq!(o.peak_active(), 1, "never two at once on {}", o.name());
    }
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
}

/// A reload while requests wait for room: they look at the group as it is now, so a target
/// the reload adds serves them at once; and a target the reload carries over (its health
/// check changed) keeps counting the requests it already has against its limit.
#[tokio::test(start_paused = true)]
async fn requests_waiting_for_room_take_a_target_a_reload_adds() {
    let a = Origin::builder().name("a").start().await;
    let c = Origin::builder().name("c").start().await;
    a.hold("/slow");
    let dir = causeway_testkit::lifecycle::TempDir::new("capped-reload");
    let file = dir.path().join("alb.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = free_port();
    let config = |targets: &str, interval: u32| {
        format!(
            "[admin]\naddress = \"127.0.0.1:{admin}\"\n[[listeners]]\naddress = \"{listen}\"\ndefault_action = {{ type = \"forward\", target_group = \"web\" }}\n[target_groups.web]\ntargets = [{targets}]\nhealth_check.interval_seconds = {interval}\ntarget_control = {{ max_concurrent_requests = 1, queue_timeout_seconds = 30 }}\n"
        )
    };
    std::fs::write(&file, config(&targets(&[&a]), 300)).unwrap();
    let cfg = causeway_config::load::<FileAlb>(&file).unwrap();
    let server = Server::<Alb>::start(&file, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let first = tokio::spawn(patient_get(listen));
    until(Duration::from_secs(2), "a busy", || a.active() == 1).await;
    let queued = tokio::spawn(patient_get(listen));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!queued.is_finished(), "a is full: it waits");
    let started = tokio::time::Instant::now();
    std::fs::write(&file, config(&targets(&[&a, &c]), 299)).unwrap();
    server.reload().await.unwrap();
    let r = queued.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("c"), "the added target");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // a was carried over with its request still running: it stays full.
    for _ in 0..3 {
        let r = patient_get(listen).await;
        assert_eq!(r.header("x-origin"), Some("c"));
    }
    a.let_through("/slow", 1);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(a.peak_active(), 1);
    assert_eq!(a.hits("/slow"), 1);
}
