//! causeway-control against moto's server: discovery of an Auto Scaling group in two zones,
//! `plan` showing exactly the changes, `apply` rendering the targets file and reloading a real
//! alb that then routes to testkit origins bound at the instances' addresses, scale-out and
//! scale-in followed, and the safety brake holding an emptied group; groups selected by tag; and
//! a scale-in under a Terminating lifecycle hook that drains the instance's in-flight requests
//! before completing the action (moto with testkit's lifecycle shim). Every address is in
//! 127.0.0.0/8 (moto's instances get 127.10.x.x from the VPC the test creates).

use causeway_testkit::lifecycle::eventually;
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

/// One instance as the moto helper lists it: (id, ip, zone, lifecycle state).
type Inst = (String, String, String, String);

/// Runs the moto helper; returns the group's instances.
fn asg(endpoint: &str, args: &[&str]) -> Vec<Inst> {
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
    let v: Vec<Inst> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

/// The environment that points control at moto.
fn aws_env(endpoint: &str) -> [(&str, &str); 5] {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn control(endpoint: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(CONTROL)
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(aws_env(endpoint))
        .env_remove("AWS_PROFILE")
        .output()
        .expect("causeway-control runs")
}

/// A real alb fed by `targets`, and the control config that feeds it from the `wordpress`
/// group (`selector`: the mapping's way of naming it; `extra`: more control config).
struct Stack {
    dir: PathBuf,
    targets: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    control_cfg: PathBuf,
    alb: Proc,
}

impl Stack {
    fn start(alb: &Path, port: u16, selector: &str, extra: &str) -> Stack {
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
        let alb = Proc::spawn(alb, &["--config", alb_cfg.to_str().unwrap()]);
        wait_for_port(admin, Duration::from_secs(20));
        let control_cfg = dir.join("control.toml");
        std::fs::write(
            &control_cfg,
            format!(
                r#"provider = "aws"
{extra}
[[data_planes]]
name = "alb-1"
kind = "alb"
admin = "{admin}"
targets_file = "{}"
[[target_groups]]
{selector}
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
        Stack {
            dir,
            targets,
            listen,
            admin,
            control_cfg,
            alb,
        }
    }

    fn stop(mut self) {
        self.alb.signal("TERM");
        self.alb.wait_exit(Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Origins at the instances' addresses, on one port, each named after its instance.
async fn origins(instances: &[Inst], port: u16, slow: Duration) -> Vec<Origin> {
    let mut out = Vec::new();
    for (id, ip, _, _) in instances {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        out.push(
            Origin::builder()
                .name(id)
                .addr(addr)
                .delay_for("/slow", slow)
                .start()
                .await,
        );
    }
    out
}

fn alb_or_skip() -> Option<PathBuf> {
    let alb = alb_bin();
    if alb.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "causeway-alb must be built in CI"
        );
        eprintln!("skipping: build causeway-alb first (cargo build --workspace --bins)");
    }
    alb
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
    let Some(alb) = alb_or_skip() else { return };
    let endpoint = moto.endpoint();
    let instances = asg(&endpoint, &["setup"]);
    assert_eq!(instances.len(), 3, "{instances:?}");
    let zones: std::collections::BTreeSet<&str> = instances.iter().map(|i| i.2.as_str()).collect();
    assert_eq!(zones.len(), 2, "two zones: {instances:?}");
    assert!(
        instances.iter().all(|i| i.1.starts_with("127.10.")),
        "{instances:?}"
    );
    let port = free_port();
    let _origins = origins(&instances, port, Duration::ZERO).await;
    let stack = Stack::start(
        &alb,
        port,
        "auto_scaling_group = \"wordpress\"",
        "[aws]\nregion = \"us-east-1\"\nauto_scaling_groups = [\"wordpress\"]",
    );
    let (targets, listen, control_cfg) = (
        stack.targets.clone(),
        stack.listen,
        stack.control_cfg.clone(),
    );

    // plan: every instance, with address and zone; three additions; nothing written.
    let out = control(&endpoint, &control_cfg, &["plan"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for (id, ip, zone, _) in &instances {
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
    for (_, ip, _, _) in &instances {
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
    // A failed discovery (nothing answers at the endpoint) also keeps the last good set.
    let dead = format!("http://{}", causeway_testkit::closed_port().await);
    let out = control(&dead, &control_cfg, &["apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("discovery failed"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&targets).unwrap(), rendered);
    // The operator confirms.
    let out = control(&endpoint, &control_cfg, &["apply", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!std::fs::read_to_string(&targets)
        .unwrap()
        .contains(&format!(":{port}\"")));

    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_selected_by_tag() {
    let Some(moto) = moto::start() else { return };
    let Some(alb) = alb_or_skip() else { return };
    let endpoint = moto.endpoint();
    let blue = asg(&endpoint, &["setup"]);
    let green = asg(&endpoint, &["group", "wordpress-green", "2", "wordpress"]);
    let other = asg(&endpoint, &["group", "intranet", "1", "-"]);
    assert_eq!((blue.len(), green.len(), other.len()), (3, 2, 1));
    let port = free_port();
    let stack = Stack::start(
        &alb,
        port,
        "tags = { \"causeway:pool\" = \"wordpress\" }",
        "[aws]\nregion = \"us-east-1\"",
    );
    let out = control(&endpoint, &stack.control_cfg, &["plan"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // Both tagged groups feed the target group; the untagged one does not.
    for (id, ip, zone, _) in blue.iter().chain(&green) {
        assert!(
            t.contains(&format!("+ wordpress {ip}:{port} {id} {zone}")),
            "{t}"
        );
    }
    assert_eq!(t.matches("\n  + ").count(), 5, "{t}");
    assert!(!t.contains(&other[0].0), "{t}");
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_with_a_lifecycle_hook_drains_first_then_completes() {
    let Some(moto) = moto::start() else { return };
    let Some(alb) = alb_or_skip() else { return };
    let endpoint = moto.endpoint();
    let instances = asg(&endpoint, &["setup"]);
    // The hook's heartbeat timeout (3 s) is shorter than the request in flight (4 s): the
    // action survives only if control sends heartbeats.
    asg(&endpoint, &["hook", "drain", "3"]);
    let slow = Duration::from_secs(4);
    let port = free_port();
    let origins = origins(&instances, port, slow).await;
    let control_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stack = Stack::start(
        &alb,
        port,
        "auto_scaling_group = \"wordpress\"",
        &format!(
            "[admin]\naddress = \"{control_admin}\"\n[aws]\nregion = \"us-east-1\"\n\
             refresh_interval_seconds = 1\n[reconcile]\ndebounce_seconds = 0\n\
             [lifecycle]\nheartbeat_interval_seconds = 1"
        ),
    );
    let _control = Proc::spawn_env(
        Path::new(CONTROL),
        &["run", "--config", stack.control_cfg.to_str().unwrap()],
        &aws_env(&endpoint),
    );
    // The loop renders the three instances and reloads the alb, which then routes to them.
    let routed = eventually(Duration::from_secs(20), || {
        let (_, body) = causeway_testkit::process::http_get(stack.admin, "/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["target_groups"]["wordpress"]["targets"].as_array()?.len() == 3).then_some(())
    });
    assert!(
        routed.is_some(),
        "control run never gave the alb the three targets"
    );
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = raw::get(stack.listen, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        served.insert(r.header("x-origin").unwrap().to_owned());
    }
    assert_eq!(served.len(), 3, "{served:?}");

    // One slow request in flight on each instance (round robin), then scale-in of the first.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let listen = stack.listen;
    let slow_requests: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { raw::get(listen, "/slow", &[]).await.unwrap() }))
        .collect();
    let in_flight = eventually(Duration::from_secs(3), || {
        origins.iter().all(|o| o.hits("/slow") == 1).then_some(())
    });
    assert!(in_flight.is_some(), "one /slow on each origin");
    let victim = &instances[0].0;
    let victim_origin = origins.iter().find(|o| o.name() == victim).unwrap();
    let after = asg(&endpoint, &["terminate", victim]);
    assert!(
        after
            .iter()
            .any(|i| &i.0 == victim && i.3 == "Terminating:Wait"),
        "{after:?}"
    );

    // control takes it out of the alb: it drains (no new requests), its request goes on.
    let draining = eventually(Duration::from_secs(5), || {
        let (_, body) = causeway_testkit::process::http_get(stack.admin, "/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let t = v["target_groups"]["wordpress"]["targets"]
            .as_array()?
            .iter()
            .find(|t| t["id"] == victim.as_str())?
            .clone();
        (t["state"] == "draining" && t["in_flight"] == 1).then_some(())
    });
    assert!(
        draining.is_some(),
        "the victim never showed as draining with its request"
    );
    let before = victim_origin.hits("/");
    for _ in 0..6 {
        let r = raw::get(stack.listen, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(
            r.header("x-origin"),
            Some(victim.as_str()),
            "sent to a draining target"
        );
    }
    assert_eq!(victim_origin.hits("/"), before);
    assert!(
        !moto.events().iter().any(|e| e.event == "complete"),
        "completed while a request was in flight: {:?}",
        moto.events()
    );

    // Every in-flight request finishes whole, the victim's included.
    let mut origins_served = Vec::new();
    for r in slow_requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        origins_served.push(r.header("x-origin").unwrap().to_owned());
    }
    assert!(origins_served.contains(victim), "{origins_served:?}");

    // Then, and only then, CONTINUE; heartbeats kept the action alive meanwhile.
    let completed = eventually(Duration::from_secs(10), || {
        moto.events()
            .into_iter()
            .find(|e| e.event == "complete" && &e.instance == victim)
    });
    let events = moto.events();
    let completed = completed.unwrap_or_else(|| panic!("no completion: {events:?}"));
    assert_eq!(completed.result.as_deref(), Some("CONTINUE"));
    assert_eq!(completed.hook, "drain");
    assert!(
        completed.t >= started + slow.as_secs_f64(),
        "completed at +{:.2} s, before the 4 s request ended: {events:?}",
        completed.t - started
    );
    let heartbeats = events
        .iter()
        .filter(|e| e.event == "heartbeat" && &e.instance == victim)
        .count();
    assert!(heartbeats >= 2, "{events:?}");
    assert!(!events.iter().any(|e| e.event == "timeout"), "{events:?}");
    assert!(
        !asg(&endpoint, &["scale", "2"])
            .iter()
            .any(|i| &i.0 == victim),
        "the instance left the group"
    );
    let metrics = eventually(Duration::from_secs(5), || {
        let v = causeway_testkit::lifecycle::scrape(
            control_admin,
            "causeway_control_lifecycle_actions_total{result=\"drained\"}",
        )?;
        (v == 1.0).then_some(v)
    });
    assert_eq!(metrics, Some(1.0));
    stack.stop();
}
