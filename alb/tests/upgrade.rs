//! Binary upgrade without a gap: twenty times in a row, a new causeway-alb started with
//! `--upgrade` takes the listening sockets (and the admin socket) from the running one over
//! `server.upgrade_socket`, while clients open a new connection for every request. No connection
//! is refused, every request is answered 200 by the origin, and each old process drains and
//! exits 0.

use causeway_testkit::load::Clients;
use causeway_testkit::process::{http_get, wait_for_port, Proc};
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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

    // 4 clients, a new connection per request, until told to stop (at most 120 s).
    let clients = Clients::start(4, listen, "/", Duration::from_secs(120), |r| {
        r.status == 200 && r.header("x-origin") == Some("o1")
    });

    for i in 0..20 {
        let before = clients.served();
        let next = Proc::spawn(Path::new(BIN), &["--config", &cfg, "--upgrade"]);
        let exit = current.wait_exit(Duration::from_secs(20));
        assert!(
            exit.is_some_and(|s| s.success()),
            "upgrade {i}: the old process drains and exits 0, got {exit:?}"
        );
        current = next;
        assert!(current.is_running(), "upgrade {i}: the new process serves");
        // Traffic flows through the new process before the next round.
        clients
            .wait_for(before, 20, Duration::from_secs(10), &format!("upgrade {i}"))
            .await;
    }
    // The admin socket moved along: the newest process answers on it.
    let (status, body) = http_get(admin, "/status").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"listeners\":[\"{listen}\"]")),
        "{body}"
    );
    // Each target's ALB AnomalyDetection: clean targets are normal and unmitigated.
    assert!(
        body.contains(
            "\"anomaly_detection\":{\"mitigation_in_effect\":\"no\",\"result\":\"normal\"}"
        ),
        "{body}"
    );
    let (served, failed, errors) = clients.finish().await;
    assert!(served >= 400, "{served} requests");
    assert_eq!(failed, 0, "{served} served; failures: {errors:?}");
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
