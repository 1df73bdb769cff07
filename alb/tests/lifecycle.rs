//! causeway-alb keeps the lifecycle contract, starts with its examples, and `--check` names
//! the file, line and key of an error.

use causeway_testkit::lifecycle::{check_example, check_lifecycle, examples_dir, TempDir};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_causeway-alb");

#[test]
fn lifecycle_contract() {
    check_lifecycle(Path::new(BIN), |listen, admin| {
        format!(
            r#"
[server]
grace_period_seconds = 5
[admin]
address = "{admin}"
[[listeners]]
address = "{listen}"
default_action = {{ type = "forward", target_group = "web" }}
[target_groups.web]
targets = [{{ address = "127.0.0.1:9" }}]
"#
        )
    });
}

#[test]
fn examples_start_and_serve_metrics() {
    let ex = examples_dir();
    check_example(
        Path::new(BIN),
        &ex.join("alb.toml"),
        "127.0.0.1:9182".parse().unwrap(),
    );
    check_example(
        Path::new(BIN),
        &ex.join("alb-2.toml"),
        "127.0.0.1:9183".parse().unwrap(),
    );
}

#[test]
fn check_flag_reports_file_line_and_key() {
    let ok = Command::new(BIN)
        .args(["--check", examples_dir().join("alb.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");

    let dir = TempDir::new("check");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(examples_dir().join("alb.toml")).unwrap();
    // A typo in the first health check written as a table (not inline).
    let text = text.replacen(
        "\ninterval_seconds = 2\n",
        "\ninterval_seconds = 2\nintervall_seconds = 3\n",
        1,
    );
    std::fs::write(&bad, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("intervall_seconds"))
        .unwrap()
        + 1;
    let out = Command::new(BIN)
        .args(["--check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("bad.toml:{line}:1: target_groups.wordpress.health_check.intervall_seconds: unknown field")),
        "{err}"
    );
}

/// `--check` loads what a start would load: a trust store (or certificate, or revocation list)
/// that is not one is refused, naming the config, the listener and the file, and nothing is
/// created.
#[test]
fn check_flag_loads_certificates_and_trust_stores() {
    let dir = TempDir::new("check-tls");
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/certs");
    let store = dir.path().join("clients.pem");
    std::fs::write(
        &store,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let log = dir.path().join("access.log");
    let cfg = dir.path().join("mtls.toml");
    let write = |store: &Path, crl: &Path| {
        std::fs::write(
            &cfg,
            format!(
                r#"[admin]
address = "127.0.0.1:1"
[load_balancer]
access_logs.enabled = true
access_logs.path = "{log}"
[[listeners]]
address = "127.0.0.1:2"
protocol = "HTTPS"
certificates = [{{ certificate_file = "{c}/a.example.test.pem", private_key_file = "{c}/a.example.test.key" }}]
mutual_authentication = {{ mode = "verify", trust_store = "{store}", revocation_lists = ["{crl}"] }}
default_action = {{ type = "fixed-response", status_code = 200 }}
"#,
                log = log.display(),
                c = certs.display(),
                store = store.display(),
                crl = crl.display()
            ),
        )
        .unwrap()
    };
    // `--check` fails, naming the config, the listener and `why`.
    let refused = |why: &str| {
        let out = Command::new(BIN)
            .args(["--check", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("mtls.toml: listener 127.0.0.1:2: ") && err.contains(why),
            "{err}"
        );
    };
    let crl = certs.join("client-ca-2.crl.pem");
    write(&store, &crl);
    refused("clients.pem: not a CA certificate");
    // A revocation list that is a certificate, not a CRL.
    write(&certs.join("client-ca.pem"), &certs.join("client-2.pem"));
    refused("client-2.pem: no certificate revocation list in the file");
    write(&certs.join("client-ca.pem"), &crl);
    let out = Command::new(BIN)
        .args(["--check", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!log.exists(), "--check opens no access log");
}

#[test]
fn version_and_help() {
    let v = Command::new(BIN).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("causeway-alb "));
    let h = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&h.stdout);
    assert!(
        help.contains("--config") && help.contains("--check"),
        "{help}"
    );
}
