//! Two nlb processes with the same config send a flow to the same target: they share the
//! listening port (SO_REUSEPORT), and a flow that reaches either lands on one target.

use causeway_testkit::lifecycle::TempDir;
use causeway_testkit::process::{wait_for_port, Proc};
use causeway_testkit::{free_port, raw, Origin};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_causeway-nlb");

/// One request from a fixed source port; the name of the origin that answered.
async fn via(listen: SocketAddr, src_port: u16) -> String {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind(format!("127.0.0.1:{src_port}").parse().unwrap())
        .unwrap();
    let mut s = sock.connect(listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = raw::read_until_quiet(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let r = raw::RawResponse::parse(&out).unwrap();
    r.header("x-origin").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_agree_on_every_flow() {
    let mut origins = Vec::new();
    for name in ["a", "b", "c", "d"] {
        origins.push(Origin::builder().name(name).start().await);
    }
    let dir = TempDir::new("agreement");
    let file = dir.path().join("nlb.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let targets: Vec<String> = origins
        .iter()
        .map(|o| format!("{{ id = \"{}\", address = \"{}\" }}", o.name(), o.addr()))
        .collect();
    // Each process needs its own admin port; everything else is the same.
    let config = |admin: u16| {
        format!(
            "[admin]\naddress = \"127.0.0.1:{admin}\"\n[[listeners]]\naddress = \"{listen}\"\ntarget_group = \"t\"\n[target_groups.t]\ntargets = [{}]\nhealth_check = {{ interval_seconds = 300 }}\n",
            targets.join(", ")
        )
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let file_b = dir.path().join("nlb-b.toml");
    std::fs::write(&file, config(admin_a)).unwrap();
    std::fs::write(&file_b, config(admin_b)).unwrap();
    let mut a = Proc::spawn(Path::new(BIN), &["--config", file.to_str().unwrap()]);
    let b = Proc::spawn(Path::new(BIN), &["--config", file_b.to_str().unwrap()]);
    for admin in [admin_a, admin_b] {
        wait_for_port(
            format!("127.0.0.1:{admin}").parse().unwrap(),
            Duration::from_secs(20),
        );
    }
    let ports: Vec<u16> = (0..40).map(|_| free_port()).collect();
    // Both processes accept: the kernel spreads these flows over them.
    let mut first = BTreeMap::new();
    for &p in &ports {
        first.insert(p, via(listen, p).await);
    }
    let flows = |admin: u16| {
        causeway_testkit::lifecycle::scrape(
            format!("127.0.0.1:{admin}").parse().unwrap(),
            "causeway_nlb_new_flow_count{target_group=\"t\"}",
        )
        .unwrap_or(0.0)
    };
    let (fa, fb) = (flows(admin_a), flows(admin_b));
    assert_eq!(fa + fb, 40.0);
    assert!(
        fa > 0.0 && fb > 0.0,
        "both processes took flows: {fa} and {fb}"
    );
    // Only b is left: every flow now goes through b.
    a.signal("INT");
    a.wait_exit(Duration::from_secs(10)).expect("a stops");
    let mut spread = std::collections::BTreeSet::new();
    for &p in &ports {
        let again = via(listen, p).await;
        assert_eq!(
            again, first[&p],
            "flow from port {p} changed target between processes"
        );
        spread.insert(again);
    }
    assert!(spread.len() >= 3, "flows use the targets: {spread:?}");
    drop(b);
}
