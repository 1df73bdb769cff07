//! causeway-control against moto's server: discovery of an Auto Scaling group in two zones,
//! `plan` showing exactly the changes, `apply` rendering the targets file and reloading a real
//! alb that then routes to testkit origins bound at the instances' addresses, scale-out and
//! scale-in followed, and the safety brake holding an emptied group. Every address is in
//! 127.0.0.0/8 (moto's instances get 127.10.x.x from the VPC the test creates).

use causeway_testkit::process::{wait_for_port, Proc};
use causeway_testkit::{free_port, moto, raw, Origin};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const CONTROL: &str = env!("CARGO_BIN_EXE_causeway-control");

fn alb_bin() -> Option<PathBuf> {
    let p = Path::new(CONTROL).with_file_name("causeway-alb");
    p.exists().then_some(p)
}

/// The venv's python (next to moto_server), which has boto3.
fn python() -> PathBuf {
    moto::moto_server_path().with_file_name("python")
}

/// Runs the moto helper; returns the group's instances as (id, ip, zone).
fn asg(endpoint: &str, args: &[&str]) -> Vec<(String, String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto_asg.py");
    let out = Command::new(python())
        .arg(script)
        .arg(endpoint)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn control(endpoint: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(CONTROL)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("causeway-control runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_plan_apply_scale_and_the_safety_brake() {
    let Some(moto) = moto::start() else { return };
    let Some(alb) = alb_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "causeway-alb must be built in CI"
        );
        eprintln!("skipping: build causeway-alb first (cargo build --workspace --bins)");
        return;
    };
    let endpoint = moto.endpoint();
    let instances = asg(&endpoint, &["setup"]);
    assert_eq!(instances.len(), 3, "{instances:?}");
    let zones: std::collections::BTreeSet<&str> = instances.iter().map(|i| i.2.as_str()).collect();
    assert_eq!(zones.len(), 2, "two zones: {instances:?}");
    assert!(
        instances.iter().all(|i| i.1.starts_with("127.10.")),
        "{instances:?}"
    );

    // Origins at the instances' addresses, on one port.
    let port = free_port();
    let mut origins = Vec::new();
    for (id, ip, _) in &instances {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        origins.push(Origin::builder().name(id).addr(addr).start().await);
    }

    let dir = std::env::temp_dir().join(format!("causeway-control-test-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = dir.join("alb-targets.toml");
    std::fs::write(&targets, "generation = \"empty\"\n").unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let alb_cfg = dir.join("alb.toml");
    std::fs::write(
        &alb_cfg,
        format!(
            r#"targets_file = "{}"
[admin]
address = "{admin}"
[[listeners]]
address = "{listen}"
default_action = {{ type = "forward", target_group = "wordpress" }}
[target_groups.wordpress]
health_check = {{ path = "/", interval_seconds = 5, healthy_threshold_count = 2 }}
"#,
            targets.display()
        ),
    )
    .unwrap();
    let mut alb_proc = Proc::spawn(&alb, &["--config", alb_cfg.to_str().unwrap()]);
    wait_for_port(admin, Duration::from_secs(20));
    let control_cfg = dir.join("control.toml");
    std::fs::write(
        &control_cfg,
        format!(
            r#"provider = "aws"
[aws]
region = "us-east-1"
auto_scaling_groups = ["wordpress"]
[[data_planes]]
name = "alb-1"
kind = "alb"
admin = "{admin}"
targets_file = "{}"
[[target_groups]]
auto_scaling_group = "wordpress"
port = {port}
data_plane = "alb-1"
target_group = "wordpress"
[safety]
max_removal_fraction = 0.5
"#,
            targets.display()
        ),
    )
    .unwrap();

    // plan: every instance, with address and zone; three additions; nothing written.
    let out = control(&endpoint, &control_cfg, &["plan"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for (id, ip, zone) in &instances {
        assert!(t.contains(id.as_str()) && t.contains(zone.as_str()), "{t}");
        assert!(
            t.contains(&format!("+ wordpress {ip}:{port} {id} {zone}")),
            "{t}"
        );
    }
    assert_eq!(t.matches("\n  + ").count(), 3, "{t}");
    assert_eq!(
        std::fs::read_to_string(&targets).unwrap(),
        "generation = \"empty\"\n"
    );

    // apply: written, reloaded, confirmed; the alb routes to the discovered instances.
    let out = control(&endpoint, &control_cfg, &["apply"]);
    assert!(out.status.success(), "{}", text(&out));
    let rendered = std::fs::read_to_string(&targets).unwrap();
    for (_, ip, _) in &instances {
        assert!(rendered.contains(&format!("{ip}:{port}")), "{rendered}");
    }
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = raw::get(listen, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        served.insert(r.header("x-origin").unwrap().to_owned());
    }
    assert_eq!(
        served.len(),
        3,
        "round robin over the three instances: {served:?}"
    );
    // Nothing changed: no write, no reload.
    let out = control(&endpoint, &control_cfg, &["plan"]);
    assert!(
        text(&out).contains("alb-1 ") && text(&out).contains("no change"),
        "{}",
        text(&out)
    );

    // Scale out to 4: one more target.
    let after = asg(&endpoint, &["scale", "4"]);
    assert_eq!(after.len(), 4);
    let out = control(&endpoint, &control_cfg, &["apply"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("\n  + ").count(), 1, "{}", text(&out));
    let rendered = std::fs::read_to_string(&targets).unwrap();
    assert_eq!(
        rendered.matches(&format!(":{port}\"")).count(),
        4,
        "{rendered}"
    );

    // Scale in to 0: the brake holds the last good set (exit 4, file unchanged).
    asg(&endpoint, &["scale", "0"]);
    let out = control(&endpoint, &control_cfg, &["apply"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("safety brake"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&targets).unwrap(), rendered);
    // The operator confirms.
    let out = control(&endpoint, &control_cfg, &["apply", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!std::fs::read_to_string(&targets)
        .unwrap()
        .contains(&format!(":{port}\"")));

    alb_proc.signal("TERM");
    alb_proc.wait_exit(Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}
