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

async fn start_nlb(target: SocketAddr, check_interval: u32) -> SocketAddr {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{listen}\"\ntarget_group = \"t\"\n[target_groups.t]\ntargets = [{{ address = \"{target}\" }}]\nproxy_protocol_v2.enabled = true\nhealth_check = {{ interval_seconds = {check_interval}, timeout_seconds = 1 }}\n",
        free_port()
    );
    let cfg = parse::<FileNlb>("nlb.toml", &text, &Context { dir: ".".into() }).unwrap();
    let server = Server::<Nlb>::start(Path::new("nlb.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    std::mem::forget(server);
    listen
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
