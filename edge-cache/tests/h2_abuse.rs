//! HTTP/2 abuse against the edge with the `h2` crate as a client: a rapid-reset flood ends with
//! a GOAWAY and a closed connection, and so does a PING flood past the control-frame budget,
//! while an honest client on another connection is served.

use causeway_config::edge::FileEdge;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_edge::Edge;
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

async fn edge(origin: SocketAddr) -> (Arc<Server<Edge>>, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"{addr}\"\n[origins.o]\naddress = \"{origin}\"\n[default_cache_behavior]\ntarget_origin_id = \"o\"\n",
        free_port()
    );
    let cfg = parse::<FileEdge>("edge.toml", &text, &Context { dir: ".".into() }).unwrap();
    let s = Server::<Edge>::start(Path::new("edge.toml"), cfg, Arc::new(NetProber))
        .await
        .unwrap();
    (s, addr)
}

async fn h2_client(addr: SocketAddr) -> h2_crate::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2_crate::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A new connection's GET /ok is answered 200 within 5 s.
async fn honest(addr: SocketAddr) {
    let mut c = h2_client(addr).await;
    c = c.ready().await.unwrap();
    let (resp, _) = c.send_request(get(addr, "/ok"), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

fn get(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_a_goaway_and_honest_clients_are_served() {
    let o = Origin::start().await;
    o.set_headers("/slow", &[("cache-control", "no-store")]);
    o.set_delay("/slow", Duration::from_millis(200));
    let (_s, addr) = edge(o.addr()).await;
    let mut attacker = h2_client(addr).await;
    let mut sent = 0;
    let mut refused = false;
    let mut why = String::new();
    for _ in 0..2000 {
        match attacker.clone().ready().await {
            Ok(r) => attacker = r,
            Err(e) => {
                refused = true;
                why = format!("{e:?}");
                break;
            }
        }
        match attacker.send_request(get(addr, "/slow"), true) {
            Ok((resp, mut stream)) => {
                stream.send_reset(h2_crate::Reason::CANCEL);
                drop(resp);
                sent += 1;
            }
            Err(e) => {
                refused = true;
                why = format!("{e:?}");
                break;
            }
        }
    }
    // hyper answers a reset flood with GOAWAY (ENHANCE_YOUR_CALM) and closes; the client sees
    // the GOAWAY or, mid-write, the closed socket.
    if refused {
        assert!(
            why.contains("GoAway") || why.contains("BrokenPipe") || why.contains("ConnectionReset"),
            "{why}"
        );
    }
    // The flood is cut: the connection ends before 2,000 resets go through.
    if !refused {
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match attacker.clone().ready().await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => return e,
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "the attacking connection was never closed after {sent} resets"
        );
    }
    // Meanwhile an honest client is served.
    honest(addr).await;
    assert!(
        o.hits("/slow") < 2000,
        "the resets did not all reach the origin: {}",
        o.hits("/slow")
    );
}

#[tokio::test]
async fn a_ping_flood_past_the_budget_gets_a_goaway_and_a_close() {
    use causeway_dataplane::h2conn::FREE_CONTROL_FRAMES;
    use causeway_testkit::h2raw::*;
    use tokio::io::AsyncWriteExt;
    let o = Origin::start().await;
    let (_s, addr) = edge(o.addr()).await;
    let mut c = connect(addr, &settings(&[])).await;
    // 10,000 PINGs, written without reading the answers.
    let burst: Vec<u8> = (0..10_000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let _ = c.write_all(&burst).await;
    let (frames, closed) =
        read_frames(&mut c, Duration::from_secs(5), Duration::from_secs(10)).await;
    let pongs = frames
        .iter()
        .filter(|f| f.kind == PING && f.flags & ACK != 0)
        .count();
    // The first SETTINGS and 999 PINGs are within the budget; the PING past it is never read.
    assert_eq!(
        pongs as u64,
        FREE_CONTROL_FRAMES - 1,
        "{pongs} PINGs answered"
    );
    assert!(frames.iter().any(|f| f.kind == GOAWAY), "a GOAWAY");
    assert!(closed, "and a close");
    // Another connection is served.
    honest(addr).await;
}
