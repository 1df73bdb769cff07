//! Master mode: `causeway-alb --master` keeps its PID while its worker is upgraded three times
//! by SIGUSR2 under load (no request fails, each old worker exits), passes SIGHUP on as a
//! reload, survives a failed upgrade with the old worker serving, and stops its worker on
//! SIGTERM. A worker whose master is killed drains and exits.

use causeway_testkit::load::Clients;
use causeway_testkit::process::{http_get, wait_for_port, Proc};
use causeway_testkit::{free_port, until, Origin};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_causeway-alb");

fn config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    origin: SocketAddr,
    body: &str,
) -> String {
    format!(
        r#"[server]
grace_period_seconds = 5
upgrade_socket = "{}"
[admin]
address = "{admin}"
[[listeners]]
address = "{listen}"
default_action = {{ type = "forward", target_group = "web" }}
[[listeners.rules]]
priority = 1
conditions = [{{ field = "path-pattern", values = ["/version"] }}]
action = {{ type = "fixed-response", status_code = 200, content_type = "text/plain", message_body = "{body}" }}
[target_groups.web]
targets = [{{ address = "{origin}" }}]
health_check = {{ path = "/", interval_seconds = 30 }}
"#,
        dir.join("up.sock").display()
    )
}

/// The PID of the process answering on the admin port.
fn serving_pid(admin: SocketAddr) -> u32 {
    let (status, body) = http_get(admin, "/status").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// Whether `pid` is still a process (not yet reaped).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_keeps_its_pid_across_upgrades_and_passes_signals_on() {
    let origin = Origin::builder().name("o1").start().await;
    let dir = std::env::temp_dir().join(format!("causeway-master-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("alb.toml");
    std::fs::write(&cfg, config(&dir, listen, admin, origin.addr(), "one")).unwrap();
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let mut master = Proc::spawn(Path::new(BIN), &["--master", "--config", &cfg_s]);
    wait_for_port(listen, Duration::from_secs(20));
    wait_for_port(admin, Duration::from_secs(20));
    let mut worker = serving_pid(admin);
    assert_ne!(
        worker,
        master.pid(),
        "a worker child serves, not the master"
    );

    // 2 clients, a new connection per request, until told to stop (at most 120 s).
    let clients = Clients::start(2, listen, "/", Duration::from_secs(120), |r| {
        r.status == 200 && r.header("x-origin") == Some("o1")
    });

    for i in 0..3 {
        let before = clients.served();
        master.signal("USR2");
        // Until the old worker has stopped accepting, either may answer on the shared admin
        // socket: the new worker is the one that answered with a new PID.
        let mut answered = worker;
        until(
            Duration::from_secs(20),
            &format!("upgrade {i}: a new worker answers"),
            || {
                answered = serving_pid(admin);
                answered != worker
            },
        )
        .await;
        let old = worker;
        worker = answered;
        until(
            Duration::from_secs(20),
            &format!("upgrade {i}: the old worker exits"),
            || !exists(old),
        )
        .await;
        assert!(master.is_running(), "upgrade {i}: the master stays");
        clients
            .wait_for(before, 20, Duration::from_secs(10), &format!("upgrade {i}"))
            .await;
    }

    // SIGHUP to the master reloads the worker.
    std::fs::write(&cfg, config(&dir, listen, admin, origin.addr(), "two")).unwrap();
    master.signal("HUP");
    until(
        Duration::from_secs(10),
        "the reload reached the worker",
        || http_get(listen, "/version").is_ok_and(|(_, b)| b.contains("two")),
    )
    .await;
    assert_eq!(serving_pid(admin), worker, "a reload keeps the worker");

    // A failed upgrade (the new worker cannot load the config) leaves the old one serving.
    std::fs::write(&cfg, "[[listeners]]\naddress = 7\n").unwrap();
    master.signal("USR2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        master.is_running(),
        "a failed upgrade does not stop the master"
    );
    assert_eq!(serving_pid(admin), worker, "the old worker goes on");
    std::fs::write(&cfg, config(&dir, listen, admin, origin.addr(), "two")).unwrap();

    let (served, failed, errors) = clients.finish().await;
    assert_eq!(failed, 0, "{served} served; failures: {errors:?}");
    master.signal("TERM");
    let exit = master.wait_exit(Duration::from_secs(15));
    assert!(exit.is_some_and(|s| s.success()), "master exit: {exit:?}");
    assert!(!exists(worker), "the worker stopped with the master");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_worker_drains_and_exits_when_its_master_is_killed() {
    let origin = Origin::builder().name("o1").start().await;
    let dir = std::env::temp_dir().join(format!("causeway-master-kill-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("alb.toml");
    std::fs::write(&cfg, config(&dir, listen, admin, origin.addr(), "one")).unwrap();
    let mut master = Proc::spawn(
        Path::new(BIN),
        &["--master", "--config", cfg.to_str().unwrap()],
    );
    wait_for_port(admin, Duration::from_secs(20));
    let worker = serving_pid(admin);
    master.signal("KILL");
    master.wait_exit(Duration::from_secs(5)).unwrap();
    until(Duration::from_secs(15), "the orphaned worker exits", || {
        !exists(worker)
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn master_mode_needs_an_upgrade_socket() {
    let dir = std::env::temp_dir().join(format!("causeway-master-none-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("alb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\n[[listeners]]\naddress = \"127.0.0.1:{}\"\ndefault_action = {{ type = \"fixed-response\", status_code = 200 }}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--master", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--master needs server.upgrade_socket"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
