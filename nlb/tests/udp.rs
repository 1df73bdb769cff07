//! UDP through the nlb: echo through Maglev-chosen targets with every client's datagrams on one
//! target, nothing amplified, TCP and UDP on one TCP_UDP port, the flow table's per-source cap,
//! and live flows staying on their targets when a reload adds a target. Targets are UDP echo
//! servers on loopback (with a TCP side on the same port for health checks and TCP_UDP).

use causeway_config::load;
use causeway_config::nlb::FileNlb;
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_nlb::Nlb;
use causeway_testkit::free_port;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// A TCP listener and a UDP socket on one loopback port (an ephemeral UDP socket may hold a
/// port that is free for TCP, so it is tried until one is free for both).
async fn tcp_and_udp() -> (TcpListener, UdpSocket) {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()).await {
            return (tcp, udp);
        }
    }
}

/// A target: answers each datagram with one datagram `NAME PORT PAYLOAD` (PORT: the source port
/// it saw, i.e. the nlb's upstream socket for that flow), and on TCP echoes `NAME ` + bytes.
async fn echo_target(name: &'static str) -> SocketAddr {
    let (tcp, udp) = tcp_and_udp().await;
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let mut out = format!("{name} {} ", from.port()).into_bytes();
            out.extend_from_slice(&buf[..n]);
            udp.send_to(&out, from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = format!("{name} ").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Nlb1 {
    server: Arc<Server<Nlb>>,
    listen: SocketAddr,
    file: PathBuf,
    extra: (String, String),
}

fn config_text(listen: SocketAddr, extra: &(String, String), targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[admin]
address = "127.0.0.1:{admin}"
[[listeners]]
address = "{listen}"
target_group = "t"
{listener_extra}
[target_groups.t]
targets = [{targets}]
{group_extra}
[target_groups.t.health_check]
interval_seconds = 5
timeout_seconds = 1
"#,
        admin = free_port(),
        listener_extra = extra.0,
        group_extra = extra.1,
        targets = list.join(", ")
    )
}

impl Nlb1 {
    async fn start(targets: &[SocketAddr], listener_extra: &str, group_extra: &str) -> Nlb1 {
        let listen = free_tcp_and_udp();
        let dir = std::env::temp_dir().join(format!("causeway-nlb-udp-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nlb.toml");
        let extra = (listener_extra.to_owned(), group_extra.to_owned());
        std::fs::write(&file, config_text(listen, &extra, targets)).unwrap();
        let cfg = load::<FileNlb>(&file).unwrap();
        let server = Server::<Nlb>::start(&file, cfg, Arc::new(NetProber))
            .await
            .unwrap();
        wait_udp(listen).await;
        Nlb1 {
            server,
            listen,
            file,
            extra,
        }
    }

    async fn retarget(&self, targets: &[SocketAddr]) {
        std::fs::write(&self.file, config_text(self.listen, &self.extra, targets)).unwrap();
        self.server.reload().await.unwrap();
    }
}

/// A loopback address whose port is free for TCP and for UDP (never the same twice).
fn free_tcp_and_udp() -> SocketAddr {
    loop {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// Waits until the UDP side answers (the supervisor binds it just after start).
async fn wait_udp(listen: SocketAddr) {
    let c = client().await;
    for _ in 0..100 {
        c.send_to(b"ping", listen).await.unwrap();
        if recv(&c, Duration::from_millis(50)).await.is_some() {
            return;
        }
    }
    panic!("the nlb's UDP side never answered on {listen}");
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(c: &UdpSocket, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(wait, c.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends one datagram and returns (target name, upstream port) from the answer.
async fn ask(c: &UdpSocket, to: SocketAddr, payload: &str) -> (String, u16) {
    c.send_to(payload.as_bytes(), to).await.unwrap();
    let r = recv(c, Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("no answer to {payload}"));
    let mut parts = r.splitn(3, ' ');
    let (name, port, echoed) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap(),
    );
    assert_eq!(echoed, payload, "the payload comes back whole");
    (name, port)
}

const UDP: &str = "protocol = \"UDP\"";
const UDP_GROUP: &str = "protocol = \"UDP\"";

#[tokio::test]
async fn udp_echo_keeps_each_client_on_one_target_and_amplifies_nothing() {
    let targets = [
        echo_target("a").await,
        echo_target("b").await,
        echo_target("c").await,
    ];
    let nlb = Nlb1::start(&targets, UDP, UDP_GROUP).await;
    let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..24 {
        let c = client().await;
        let mut seen = BTreeSet::new();
        for j in 0..3 {
            seen.insert(ask(&c, nlb.listen, &format!("client {i} datagram {j}")).await);
        }
        assert_eq!(
            seen.len(),
            1,
            "one target and one upstream socket per flow: {seen:?}"
        );
        *by_target
            .entry(seen.into_iter().next().unwrap().0)
            .or_default() += 1;
        // Three datagrams in, three out: nothing more arrives.
        assert_eq!(recv(&c, Duration::from_millis(100)).await, None);
    }
    assert_eq!(by_target.len(), 3, "Maglev spreads flows: {by_target:?}");
}

#[tokio::test]
async fn a_tcp_udp_listener_serves_both_on_one_port() {
    let targets = [echo_target("a").await, echo_target("b").await];
    let nlb = Nlb1::start(&targets, "protocol = \"TCP_UDP\"", "protocol = \"TCP_UDP\"").await;
    let (name, _) = ask(&client().await, nlb.listen, "over udp").await;
    assert!(name == "a" || name == "b", "{name}");
    let mut s = tokio::net::TcpStream::connect(nlb.listen).await.unwrap();
    s.write_all(b"over tcp").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text == "a over tcp" || text == "b over tcp", "{text}");
}

#[tokio::test]
async fn the_flow_table_caps_new_flows_per_source() {
    let targets = [echo_target("a").await];
    let nlb = Nlb1::start(
        &targets,
        "protocol = \"UDP\"\nudp = { max_flows_per_source = 3 }",
        UDP_GROUP,
    )
    .await;
    // wait_udp's client holds one flow; two more fit, the fourth is refused.
    let clients = [client().await, client().await, client().await];
    ask(&clients[0], nlb.listen, "one").await;
    ask(&clients[1], nlb.listen, "two").await;
    clients[2].send_to(b"three", nlb.listen).await.unwrap();
    assert_eq!(
        recv(&clients[2], Duration::from_millis(300)).await,
        None,
        "a fourth flow from 127.0.0.1 is dropped"
    );
    // The admitted flows go on.
    ask(&clients[0], nlb.listen, "one again").await;
}

#[tokio::test]
async fn live_flows_stay_on_their_targets_when_a_target_is_added() {
    let mut targets = vec![
        echo_target("a").await,
        echo_target("b").await,
        echo_target("c").await,
    ];
    let nlb = Nlb1::start(&targets, UDP, UDP_GROUP).await;
    let mut clients = Vec::new();
    for i in 0..16 {
        let c = client().await;
        let first = ask(&c, nlb.listen, &format!("hello {i}")).await;
        clients.push((c, first));
    }
    targets.push(echo_target("d").await);
    nlb.retarget(&targets).await;
    for (i, (c, first)) in clients.iter().enumerate() {
        assert_eq!(
            &ask(c, nlb.listen, &format!("again {i}")).await,
            first,
            "a live flow keeps its target and upstream socket"
        );
    }
    // New flows may use the new target.
    let mut names = BTreeSet::new();
    for i in 0..32 {
        names.insert(
            ask(&client().await, nlb.listen, &format!("new {i}"))
                .await
                .0,
        );
    }
    assert!(names.contains("d"), "{names:?}");
}

#[tokio::test]
async fn a_flood_of_sources_is_held_to_the_flow_cap_and_nothing_is_amplified() {
    let targets = [echo_target("a").await, echo_target("b").await];
    let nlb = Nlb1::start(
        &targets,
        "protocol = \"UDP\"\nudp = { max_flows = 100 }",
        UDP_GROUP,
    )
    .await;
    // 300 sources across 127.77.0.0/16, one datagram each (wait_udp's client holds 1 flow).
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8);
        let c = UdpSocket::bind((ip, 0)).await.unwrap();
        let to = nlb.listen;
        tasks.push(tokio::spawn(async move {
            c.send_to(b"flood", to).await.unwrap();
            let mut got = 0;
            while let Some(r) = recv(&c, Duration::from_millis(500)).await {
                assert!(r.ends_with(" flood"), "{r}");
                got += 1;
            }
            got
        }));
    }
    let mut answered = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got <= 1, "one datagram in, at most one out");
        answered += got;
    }
    assert_eq!(answered, 99, "the flow table stops at max_flows");
}

/// A UDP target that answers each datagram with the source address it came from (and accepts
/// TCP on the same port, for health checks).
async fn who_target() -> SocketAddr {
    let (tcp, udp) = tcp_and_udp().await;
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (_, from) = udp.recv_from(&mut buf).await.unwrap();
            udp.send_to(from.ip().to_string().as_bytes(), from)
                .await
                .unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let _ = tcp.accept().await;
        }
    });
    addr
}

/// `preserve_client_ip.enabled` on a UDP group: the flow's socket takes the client's address
/// (127.0.0.2, which the client binds), so the target sees it; without it, the nlb's own.
#[tokio::test]
async fn preserve_client_ip_shows_a_udp_target_the_client_address() {
    let target = who_target().await;
    let on = Nlb1::start(
        &[target],
        UDP,
        "protocol = \"UDP\"\npreserve_client_ip.enabled = true",
    )
    .await;
    let off = Nlb1::start(&[target], UDP, UDP_GROUP).await;
    for (nlb, want) in [(&on, "127.0.0.2"), (&off, "127.0.0.1")] {
        let c = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        c.send_to(b"who", nlb.listen).await.unwrap();
        assert_eq!(
            recv(&c, Duration::from_secs(2)).await.as_deref(),
            Some(want),
            "through {}",
            nlb.listen
        );
    }
}
