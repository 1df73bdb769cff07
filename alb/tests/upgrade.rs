//! Binary upgrade without a gap: twenty times in a row, a new causeway-alb started with
//! `--upgrade` takes the listening sockets (and the admin socket) from the running one over
//! `server.upgrade_socket`, while clients open a new connection for every request. No connection
//! is refused, every request is answered 200 by the origin, and each old process drains and
//! exits 0.

use causeway_testkit::process::{http_get, wait_for_port, Proc};
use causeway_testkit::{free_port, raw, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_causeway-alb");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_upgrades_under_load_refuse_no_connection() {
    let origin = Origin::builder().name("o1").start().await;
    let dir = std::env::temp_dir().join(format!("causeway-upgrade-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("alb.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
grace_period_seconds = 10
upgrade_socket = "{}"
[admin]
address = "{admin}"
[[listeners]]
address = "{listen}"
default_action = {{ type = "forward", target_group = "web" }}
[target_groups.web]
targets = [{{ address = "{}" }}]
health_check = {{ path = "/", interval_seconds = 30 }}
"#,
            dir.join("up.sock").display(),
            origin.addr()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let mut current = Proc::spawn(Path::new(BIN), &["--config", &cfg]);
    wait_for_port(listen, Duration::from_secs(20));

    // Four clients, a new connection per request, until told to stop (at most 120 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match raw::get(listen, "/", &[]).await {
                    Ok(r) if r.status == 200 && r.header("x-origin") == Some("o1") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("status {}", r.status));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        }));
    }

    for i in 0..20 {
        let before = ok.load(Ordering::Relaxed);
        let next = Proc::spawn(Path::new(BIN), &["--config", &cfg, "--upgrade"]);
        let exit = current.wait_exit(Duration::from_secs(20));
        assert!(
            exit.is_some_and(|s| s.success()),
            "upgrade {i}: the old process drains and exits 0, got {exit:?}"
        );
        current = next;
        assert!(current.is_running(), "upgrade {i}: the new process serves");
        // Traffic flows through the new process before the next round.
        let t = Instant::now();
        while ok.load(Ordering::Relaxed) < before + 20 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "upgrade {i}: no traffic"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The admin socket moved along: the newest process answers on it.
    let (status, body) = http_get(admin, "/status").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"listeners\":[\"{listen}\"]")),
        "{body}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.await.unwrap());
    }
    let served = ok.load(Ordering::Relaxed);
    assert!(served >= 400, "{served} requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{served} served; failures: {errors:?}"
    );
    current.signal("TERM");
    assert!(current
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn upgrade_without_a_running_process_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("causeway-upgrade-none-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("alb.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
upgrade_socket = "{}"
[admin]
address = "127.0.0.1:{}"
[[listeners]]
address = "127.0.0.1:{}"
default_action = {{ type = "fixed-response", status_code = 200 }}
"#,
            dir.join("up.sock").display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "--upgrade"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upgrade socket") && err.contains("up.sock"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
