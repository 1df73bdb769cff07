//! TLS listeners: the nlb terminates TLS (certificates by SNI with a default, AWS's TLS
//! policies, NLB's ALPN policies) and relays the plaintext to TCP targets. curl is the client;
//! the targets are testkit origins (HTTP/1.1 and h2, so ALPN's choice passes through).

use causeway_config::nlb::FileNlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_nlb::Nlb;
use causeway_testkit::tls::curl;
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

async fn start(o: &Origin, policy: &str, alpn: &str) -> (Arc<Server<Nlb>>, SocketAddr) {
    start_group(o, policy, alpn, "TCP").await
}

/// [`start`], with the target group's `protocol`.
async fn start_group(
    o: &Origin,
    policy: &str,
    alpn: &str,
    group_protocol: &str,
) -> (Arc<Server<Nlb>>, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let certs = causeway_testkit::tls::certificates_toml();
    let text = format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
[[listeners]]
address = "{listen}"
protocol = "TLS"
target_group = "t"
ssl_policy = "{policy}"
alpn_policy = "{alpn}"
certificates = [{certs}]
[target_groups.t]
protocol = "{group_protocol}"
targets = [{{ address = "{target}" }}]
"#,
        admin = free_port(),
        target = o.addr(),
    );
    let cfg = parse::<FileNlb>("nlb.toml", &text, &Context { dir: ".".into() }).unwrap();
    let server = Server::<Nlb>::start(Path::new("nlb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (server, listen)
}

#[tokio::test]
async fn tls_listener_picks_certificates_by_sni_and_relays_plaintext() {
    let o = Origin::builder().name("web").start().await;
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", "HTTP2Preferred").await;
    let (out, err) = curl(addr, "a.example.test", "/x", &["--http1.1"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(err.contains("subject: CN=a.example.test"), "{err}");
    assert!(out.ends_with("origin web /x\n"), "{out}");
    // The target got the plaintext request, unchanged (no header added at L4).
    let seen = o.seen();
    assert_eq!(seen.last().unwrap().path, "/x");
    assert_eq!(seen.last().unwrap().header("x-forwarded-proto"), None);
    let (_, err) = curl(addr, "www.b.example.test", "/x", &["--http1.1"]).await;
    assert!(
        err.contains("subject: CN=b.example.test"),
        "wildcard: {err}"
    );
    let (_, err) = curl(addr, "unknown.example.test", "/x", &["-k", "--http1.1"]).await;
    assert!(
        err.contains("subject: CN=default.example.test"),
        "default: {err}"
    );
    // HTTP2Preferred: h2 is chosen when offered, and the h2 bytes pass through to the target.
    let (out, err) = curl(addr, "a.example.test", "/h2", &["--http2"]).await;
    assert!(err.contains("ALPN: server accepted h2"), "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
}

#[tokio::test]
async fn alpn_policies_take_nlbs_names() {
    let o = Origin::start().await;
    let (_a, http1) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", "HTTP1Only").await;
    let (_, err) = curl(http1, "a.example.test", "/", &["--http2"]).await;
    assert!(err.contains("ALPN: server accepted http/1.1"), "{err}");
    let (_b, none) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", "None").await;
    let (out, err) = curl(none, "a.example.test", "/", &["--http2"]).await;
    assert!(err.contains("ALPN: server did not agree"), "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let (_c, h2) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", "HTTP2Only").await;
    let (out, err) = curl(h2, "a.example.test", "/", &["--http1.1"]).await;
    assert!(
        out.is_empty(),
        "HTTP2Only refuses a client without h2: {out}\n{err}"
    );
    let (out, _) = curl(h2, "a.example.test", "/", &["--http2"]).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let (_d, opt) = start(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06", "HTTP2Optional").await;
    let (_, err) = curl(opt, "a.example.test", "/", &["--http2"]).await;
    assert!(
        err.contains("ALPN: server accepted http/1.1"),
        "HTTP2Optional prefers HTTP/1.1: {err}"
    );
}

#[tokio::test]
async fn the_tls13_only_policy_refuses_tls12() {
    let o = Origin::start().await;
    let (_s, addr) = start(&o, "ELBSecurityPolicy-TLS13-1-3-2021-06", "None").await;
    let (out, err) = curl(addr, "a.example.test", "/", &["--tls-max", "1.2"]).await;
    assert!(out.is_empty(), "TLS 1.2 refused: {out}\n{err}");
    let (out, err) = curl(addr, "a.example.test", "/", &[]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(err.contains("TLSv1.3"), "{err}");
}

/// NLB's TLS target groups: a TLS listener's flows are encrypted again to the targets (whose
/// certificate is not checked, as on NLB), with the client's ALPN choice offered to the target,
/// so h2 and HTTP/1.1 both reach a TLS origin intact; a plaintext target fails the handshake
/// and its flow is closed.
#[tokio::test]
async fn tls_target_groups_encrypt_again_to_the_targets() {
    let o = Origin::builder().name("tls").tls().start().await;
    let (_s, addr) = start_group(
        &o,
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
        "HTTP2Preferred",
        "TLS",
    )
    .await;
    for (version, line, seen_version) in [
        ("--http1.1", "HTTP/1.1 200", "HTTP/1.1"),
        ("--http2", "HTTP/2 200", "HTTP/2.0"),
    ] {
        let (out, err) = curl(addr, "a.example.test", "/again", &[version]).await;
        assert!(out.starts_with(line), "{version}: {out}\n{err}");
        assert!(out.ends_with("origin tls /again\n"), "{out}");
        let seen = o.seen().pop().unwrap();
        assert!(seen.tls, "the target was reached over TLS");
        assert_eq!(
            seen.version, seen_version,
            "{version}: the client's ALPN choice held"
        );
    }
    let plain = Origin::start().await;
    let (_p, addr) =
        start_group(&plain, "ELBSecurityPolicy-TLS13-1-2-2021-06", "None", "TLS").await;
    let (out, _) = curl(addr, "a.example.test", "/", &["--http1.1"]).await;
    assert!(out.is_empty(), "a plaintext target never answers: {out}");
    assert_eq!(plain.total(), 0);
}
