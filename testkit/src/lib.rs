//! Dev-only test helpers: origins on ephemeral ports that report what they saw (h1 and h2),
//! raw-socket helpers, child-process helpers, and a moto server fixture.

pub mod h2raw;
pub mod h3client;
pub mod idp;
pub mod jwt;
pub mod lifecycle;
pub mod load;
pub mod moto;
pub mod origin;
pub mod process;
pub mod raw;
pub mod tls;

pub use origin::{Origin, Seen};

use std::net::SocketAddr;

/// Polls `cond` every 20 ms of the test's clock (tokio's: a paused clock moves on) until it
/// holds; panics with `what` once `wait` has passed.
pub async fn until(wait: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < wait, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A loopback port with nothing listening on it (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A free loopback port, for configs that must name a port before the process binds it. Never
/// the same port twice in one test process (the kernel may hand a just-released port out again,
/// and one config naming it twice is refused).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The value of a Prometheus sample whose line starts with `series` (name and labels, exactly
/// as rendered, e.g. `causeway_healthy_host_count{target_group="web"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
