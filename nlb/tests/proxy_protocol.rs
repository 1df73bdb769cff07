//! PROXY protocol v2 to targets: the exact bytes a target receives, on traffic and on health
//! checks, and a real peer (nginx with `listen ... proxy_protocol`) that accepts them.

use causeway_config::nlb::FileNlb;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::proxy_protocol::SIGNATURE;
use causeway_dataplane::Server;
use causeway_nlb::Nlb;
use causeway_testkit::lifecycle::TempDir;
use causeway_testkit::process::{wait_for_port, Proc};
use causeway_testkit::{free_port, raw};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An nlb in front of one raw target that speaks PROXY v2; `listener_extra` adds listener keys.
async fn start_with(target: SocketAddr, check_interval: u32, listener_extra: &str) -> SocketAddr {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{listen}\"\ntarget_group = \"t\"\n{listener_extra}\n[target_groups.t]\ntargets = [{{ address = \"{target}\" }}]\nproxy_protocol_v2.enabled = true\nhealth_check = {{ interval_seconds = {check_interval}, timeout_seconds = 1 }}\n",
        free_port()
    );
    let cfg = parse::<FileNlb>("nlb.toml", &text, &Context { dir: ".".into() }).unwrap();
    let server = Server::<Nlb>::start(Path::new("nlb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    std::mem::forget(server);
    listen
}

async fn start_nlb(target: SocketAddr, check_interval: u32) -> SocketAddr {
    start_with(target, check_interval, "").await
}

#[tokio::test]
async fn targets_receive_the_spec_layout_then_the_client_bytes() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taddr = target.local_addr().unwrap();
    let listen = start_nlb(taddr, 300).await;
    let mut client = TcpStream::connect(listen).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"hello").await.unwrap();
    // Health checks may connect first: find the connection that carries "hello".
    let got = loop {
        let (mut s, _) = target.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 16 {
            n += s.read(&mut buf[n..]).await.unwrap();
        }
        if buf[12] == 0x20 {
            continue; // a LOCAL header: a health check
        }
        while n < 16 + 12 + 5 {
            n += s.read(&mut buf[n..]).await.unwrap();
        }
        break buf[..n].to_vec();
    };
    assert_eq!(&got[..12], &SIGNATURE);
    assert_eq!(got[12], 0x21, "version 2, PROXY");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(u16::from_be_bytes([got[14], got[15]]), 12);
    assert_eq!(&got[16..20], &[127, 0, 0, 1], "source: the client");
    assert_eq!(&got[20..24], &[127, 0, 0, 1], "destination: the listener");
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), client_addr.port());
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), listen.port());
    assert_eq!(&got[28..], b"hello");
}

#[tokio::test]
async fn health_checks_send_a_local_header() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taddr = target.local_addr().unwrap();
    let _listen = start_nlb(taddr, 1).await;
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), target.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..12], &SIGNATURE);
    assert_eq!(&buf[12..], &[0x20, 0x00, 0x00, 0x00], "LOCAL, no addresses");
}

fn nginx_path() -> Option<&'static Path> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

#[tokio::test]
async fn nginx_accepts_the_header_and_sees_the_client() {
    let Some(nginx) = nginx_path() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install nginx (scripts/test.sh)"
        );
        eprintln!("skipping: nginx is not installed");
        return;
    };
    let dir = TempDir::new("nginx-pp2");
    let port = free_port();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n    location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port server=$proxy_protocol_server_addr:$proxy_protocol_server_port\\n\"; }}\n  }}\n}}\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _nginx = Proc::spawn(
        nginx,
        &[
            "-c",
            conf.to_str().unwrap(),
            "-p",
            dir.path().to_str().unwrap(),
        ],
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(target, Duration::from_secs(10));
    let listen = start_nlb(target, 300).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = raw::read_until_quiet(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let r = raw::RawResponse::parse(&out).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!(
            "client={}:{} server=127.0.0.1:{}\n",
            me.ip(),
            me.port(),
            listen.port()
        )
    );
}

/// An nlb whose listener requires PROXY headers from `allowed`, in front of a raw target.
async fn start_accepting(target: SocketAddr, allowed: &str) -> SocketAddr {
    let extra = format!(
        "proxy_protocol = {{ enabled = true, allowed_cidrs = [\"{allowed}\"], receive_timeout_seconds = 5 }}"
    );
    start_with(target, 300, &extra).await
}

/// Reads what the target gets on its next connection that is not a health check: the parsed
/// PROXY header and the bytes after it.
async fn target_receives(
    target: &TcpListener,
    want_data: usize,
) -> (causeway_dataplane::proxy_protocol::Header, Vec<u8>) {
    loop {
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), target.accept())
            .await
            .unwrap()
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Ok(Some((h, n))) = causeway_dataplane::proxy_protocol::parse(&buf) {
                if h.addresses.is_none() {
                    break; // a health check
                }
                if buf.len() >= n + want_data {
                    return (h, buf[n..].to_vec());
                }
            }
            let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(k > 0, "closed early: {buf:?}");
            buf.extend_from_slice(&chunk[..k]);
        }
    }
}

#[tokio::test]
async fn a_trusted_v1_header_names_the_client_to_the_target() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = start_accepting(target.local_addr().unwrap(), "127.0.0.0/8").await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 443\r\nhello")
        .await
        .unwrap();
    let (h, data) = target_receives(&target, 5).await;
    assert_eq!(
        h.addresses,
        Some((
            "198.51.100.7:40000".parse().unwrap(),
            "203.0.113.1:443".parse().unwrap()
        ))
    );
    assert_eq!(data, b"hello", "bytes sent with the header are relayed");
}

#[tokio::test]
async fn v2_tlvs_including_aws_vpce_pass_through() {
    use causeway_dataplane::proxy_protocol::{encode_v2, TLV_AWS};
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = start_accepting(target.local_addr().unwrap(), "127.0.0.1/32").await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    let header = encode_v2(
        "[2001:db8::7]:5555".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
        &[(TLV_AWS, b"\x01vpce-0123456789abcdef0")],
    );
    c.write_all(&header).await.unwrap();
    c.write_all(b"data").await.unwrap();
    let (h, data) = target_receives(&target, 4).await;
    assert_eq!(
        h.addresses.unwrap().0,
        "[2001:db8::7]:5555".parse().unwrap()
    );
    assert_eq!(
        h.tlvs,
        vec![(TLV_AWS, b"\x01vpce-0123456789abcdef0".to_vec())]
    );
    assert_eq!(data, b"data");
}

async fn closed_without_reaching_target(listen: SocketAddr, target: &TcpListener, send: &[u8]) {
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.write_all(send).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the nlb closes the connection");
    // Health checks may connect (with a LOCAL header); a relayed flow would send PROXY.
    while let Ok(accepted) = tokio::time::timeout(Duration::from_millis(300), target.accept()).await
    {
        let (mut s, _) = accepted.unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[12], 0x20, "only health checks reach the target");
    }
}

#[tokio::test]
async fn untrusted_sources_and_malformed_headers_are_closed() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taddr = target.local_addr().unwrap();
    let untrusted = start_accepting(taddr, "10.0.0.0/8").await;
    closed_without_reaching_target(
        untrusted,
        &target,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /",
    )
    .await;
    let trusted = start_accepting(taddr, "127.0.0.0/8").await;
    closed_without_reaching_target(trusted, &target, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    closed_without_reaching_target(trusted, &target, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n")
        .await;
    let mut bad_v2 = causeway_dataplane::proxy_protocol::SIGNATURE.to_vec();
    bad_v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
    closed_without_reaching_target(trusted, &target, &bad_v2).await;
}
