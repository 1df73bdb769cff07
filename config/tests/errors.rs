//! Config errors name the file, line, column, key path and rule; the examples validate.

use causeway_config::alb::{Action, FileAlb};
use causeway_config::common::{Algorithm, HealthCheckKind};
use causeway_config::{parse, ConfigError, Context, Kind};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn cx() -> Context {
    Context {
        dir: PathBuf::from("."),
    }
}

const BASE: &str = r#"[admin]
address = "127.0.0.1:9182"

[[listeners]]
address = "127.0.0.1:8082"
default_action = { type = "forward", target_group = "wordpress" }

[target_groups.wordpress]
targets = [{ address = "127.0.0.1:9001" }]

[target_groups.wordpress.health_check]
path = "/"
  interval_seconds = 0
"#;

#[test]
fn range_error_names_file_line_column_key_and_rule() {
    let err = parse::<FileAlb>("alb.toml", BASE, &cx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "alb.toml:13:3: target_groups.wordpress.health_check.interval_seconds: must be 1..=300, got 0"
    );
}

#[test]
fn unknown_key_is_an_error_naming_key_and_line() {
    let text = BASE
        .replace("  interval_seconds = 0", "interval_seconds = 5")
        .replace("path = \"/\"", "path = \"/\"\nhealthy_treshold_count = 3");
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("alb.toml:13:1: target_groups.wordpress.health_check.healthy_treshold_count: unknown field `healthy_treshold_count`"),
        "{msg}"
    );
    assert_eq!(err.place().unwrap().line, 13);
}

#[test]
fn unknown_top_level_key() {
    let text = format!("bogus = 1\n{BASE}");
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("alb.toml:1:1: bogus: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let text = BASE.replace("  interval_seconds = 0", "interval_seconds = \"ten\"");
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert_eq!(
        err.key(),
        Some("target_groups.wordpress.health_check.interval_seconds"),
        "{err}"
    );
    assert_eq!(err.place().unwrap().line, 13);
}

#[test]
fn syntax_error_has_a_place() {
    let err = parse::<FileAlb>("alb.toml", "[admin\naddress = 1", &cx()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().starts_with("alb.toml:1:"), "{err}");
}

#[test]
fn forward_to_a_missing_group_is_refused() {
    let text = BASE.replace("  interval_seconds = 0", "").replace(
        "target_group = \"wordpress\" }",
        "target_group = \"nope\" }",
    );
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "alb.toml:6:38: listeners[0].default_action.target_group: no target group named \"nope\""
    );
}

#[test]
fn aws_defaults_apply() {
    let text = BASE.replace("  interval_seconds = 0", "");
    let cfg = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap();
    let tg = &cfg.target_groups["wordpress"];
    assert_eq!(tg.health_check.interval, Duration::from_secs(30));
    assert_eq!(tg.health_check.timeout, Duration::from_secs(5));
    assert_eq!(tg.health_check.healthy_threshold, 5);
    assert_eq!(tg.health_check.unhealthy_threshold, 2);
    assert!(
        matches!(&tg.health_check.kind, HealthCheckKind::Http { matcher, .. } if matcher.matches(200) && !matcher.matches(301))
    );
    assert_eq!(tg.deregistration_delay, Duration::from_secs(300));
    assert_eq!(tg.algorithm, Algorithm::RoundRobin);
    assert_eq!(tg.targets[0].weight, 1);
    assert_eq!(
        cfg.listeners[0].default_action,
        Action::Forward {
            target_groups: vec![("wordpress".into(), 1)],
            group_stickiness: None,
        }
    );
}

#[test]
fn timeout_longer_than_interval_is_refused() {
    let text = BASE.replace(
        "  interval_seconds = 0",
        "interval_seconds = 5\ntimeout_seconds = 6",
    );
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert_eq!(
        err.key(),
        Some("target_groups.wordpress.health_check.timeout_seconds")
    );
    assert_eq!(err.place().unwrap().line, 14);
}

#[test]
fn targets_file_is_merged_and_its_errors_name_it() {
    let dir = std::env::temp_dir().join(format!("causeway-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "targets_file = \"targets.toml\"\n{}",
        BASE.replace("  interval_seconds = 0", "")
    );
    let good = "[target_groups.wordpress]\ntargets = [{ id = \"i-1\", address = \"127.10.0.5:80\", zone = \"us-east-1a\" }]\n";
    std::fs::write(dir.join("targets.toml"), good).unwrap();
    let cx = Context { dir: dir.clone() };
    let cfg = parse::<FileAlb>("alb.toml", &text, &cx).unwrap();
    let t = &cfg.target_groups["wordpress"].targets;
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].id, "i-1");
    assert_eq!(t[1].zone.as_deref(), Some("us-east-1a"));

    let bad = "[target_groups.other]\ntargets = []\n";
    std::fs::write(dir.join("targets.toml"), bad).unwrap();
    let err = parse::<FileAlb>("alb.toml", &text, &cx).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("targets.toml:1:"), "{msg}");
    assert!(
        msg.contains("target_groups.other: no target group of this name"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_example_validates() {
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (file, kind) in [
        ("alb.toml", Kind::Alb),
        ("alb-2.toml", Kind::Alb),
        ("nlb.toml", Kind::Nlb),
        ("edge.toml", Kind::Edge),
        ("control.toml", Kind::Control),
    ] {
        causeway_config::check(kind, &ex.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn duplicate_target_ids_and_odd_values_are_refused() {
    let text = BASE.replace("  interval_seconds = 0", "").replace(
        "targets = [{ address = \"127.0.0.1:9001\" }]",
        "targets = [{ id = \"i-1\", address = \"127.0.0.1:9001\" }, { id = \"i-1\", address = \"127.0.0.1:9002\" }]",
    );
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert_eq!(
        err.key(),
        Some("target_groups.wordpress.targets[1].id"),
        "{err}"
    );

    let text = BASE.replace("  interval_seconds = 0", "").replace(
        "default_action = { type = \"forward\", target_group = \"wordpress\" }",
        "default_action = { type = \"fixed-response\", status_code = 302 }",
    );
    let err = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap_err();
    assert!(err.to_string().contains("must be 2XX, 4XX or 5XX"), "{err}");

    let nlb = "[admin]\naddress = \"127.0.0.1:9181\"\n[[listeners]]\naddress = \"127.0.0.1:8081\"\ntarget_group = \"t\"\n[target_groups.t]\nslow_start.duration_seconds = 60\n";
    let err = parse::<causeway_config::nlb::FileNlb>("nlb.toml", nlb, &cx()).unwrap_err();
    assert!(
        err.to_string().contains("the nlb has no slow start"),
        "{err}"
    );
}

const EDGE: &str = r#"[admin]
address = "127.0.0.1:9180"

[[listeners]]
address = "127.0.0.1:8080"

[origins.a]
address = "127.0.0.1:9001"

[[cache_behaviors]]
path_pattern = "/wp-content/*"
target_origin_id = "missing"

[default_cache_behavior]
target_origin_id = "a"
"#;

#[test]
fn edge_errors_name_the_behavior_key() {
    use causeway_config::edge::FileEdge;
    let err = parse::<FileEdge>("edge.toml", EDGE, &cx()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "edge.toml:12:1: cache_behaviors[0].target_origin_id: no origin or origin group named \"missing\""
    );
    let text = EDGE.replace(
        "\"missing\"",
        "\"a\"\ncache_key.query_strings = \"allow-list\"",
    );
    let err = parse::<FileEdge>("edge.toml", &text, &cx()).unwrap_err();
    assert!(
        err.to_string().contains(
            "cache_behaviors[0].cache_key.query_strings: \"allow-list\" needs a list in query_string_names"
        ),
        "{err}"
    );
    let text = EDGE.replace(
        "\"missing\"",
        "\"a\"\nallowed_methods = [\"GET\", \"POST\"]",
    );
    let err = parse::<FileEdge>("edge.toml", &text, &cx()).unwrap_err();
    assert!(
        err.to_string()
            .contains("cache_behaviors[0].allowed_methods: must be"),
        "{err}"
    );
    let ok = EDGE.replace("\"missing\"", "\"a\"");
    let cfg = parse::<FileEdge>("edge.toml", &ok, &cx()).unwrap();
    assert_eq!(cfg.cache_behaviors[0].path_pattern, "/wp-content/*");
    assert_eq!(
        cfg.default_cache_behavior.default_ttl,
        Duration::from_secs(86_400)
    );
    assert_eq!(cfg.cache.error_caching_min_ttl, Duration::from_secs(10));
}

#[test]
fn cross_zone_defaults_follow_aws_and_take_the_server_zone() {
    let alb = BASE
        .replace("  interval_seconds = 0", "interval_seconds = 5")
        .replace("[admin]", "[server]\nzone = \"us-east-1a\"\n[admin]");
    let cfg = parse::<FileAlb>("alb.toml", &alb, &cx()).unwrap();
    let tg = &cfg.target_groups["wordpress"];
    assert!(tg.cross_zone, "on by default for an ALB");
    assert_eq!(tg.local_zone.as_deref(), Some("us-east-1a"));
    let off = alb.replace(
        "[target_groups.wordpress.health_check]",
        "[target_groups.wordpress.load_balancing]\ncross_zone.enabled = false\n[target_groups.wordpress.health_check]",
    );
    let cfg = parse::<FileAlb>("alb.toml", &off, &cx()).unwrap();
    assert!(!cfg.target_groups["wordpress"].cross_zone);
    let nlb = "[admin]\naddress = \"127.0.0.1:9181\"\n[[listeners]]\naddress = \"127.0.0.1:8081\"\ntarget_group = \"t\"\n[target_groups.t]\ntargets = [{ address = \"127.0.0.1:9001\" }]\n";
    let cfg = parse::<causeway_config::nlb::FileNlb>("nlb.toml", nlb, &cx()).unwrap();
    assert!(
        !cfg.target_groups["t"].cross_zone,
        "off by default for an NLB"
    );
}

const CONTROL: &str = r#"provider = "aws"
[aws]
region = "us-east-1"
[[data_planes]]
name = "alb-1"
kind = "alb"
admin = "127.0.0.1:9182"
targets_file = "t.toml"
[[target_groups]]
MAPPING
port = 80
data_plane = "alb-1"
target_group = "wordpress"
EXTRA
"#;

fn control(mapping: &str, extra: &str) -> Result<causeway_config::control::ControlConfig, String> {
    let text = CONTROL.replace("MAPPING", mapping).replace("EXTRA", extra);
    parse::<causeway_config::control::FileControl>("control.toml", &text, &cx())
        .map_err(|e| e.to_string())
}

#[test]
fn control_mappings_select_groups_by_name_or_by_tags() {
    use causeway_config::control::Selector;
    let by_tag = control("tags = { \"causeway:pool\" = \"wordpress\" }", "").unwrap();
    let Selector::Tags(t) = &by_tag.target_groups[0].auto_scaling_group else {
        panic!("{by_tag:?}")
    };
    assert_eq!(
        t.get("causeway:pool").map(String::as_str),
        Some("wordpress")
    );
    let tags: std::collections::BTreeMap<String, String> = [
        ("causeway:pool".into(), "wordpress".into()),
        ("env".into(), "prod".into()),
    ]
    .into();
    assert!(by_tag.target_groups[0]
        .auto_scaling_group
        .selects("any-name", &tags));
    assert!(!by_tag.target_groups[0]
        .auto_scaling_group
        .selects("any-name", &Default::default()));
    assert_eq!(
        control(
            "auto_scaling_group = \"wordpress\"\ntags = { a = \"b\" }",
            ""
        )
        .unwrap_err(),
        "control.toml:11:1: target_groups[0].tags: give auto_scaling_group or tags, not both"
    );
    assert_eq!(
        control("", "").unwrap_err(),
        "control.toml:9:1: target_groups[0].auto_scaling_group: required (or tags, to select groups by tag)"
    );
    assert_eq!(
        control("tags = {}", "").unwrap_err(),
        "control.toml:10:1: target_groups[0].tags: must name at least one tag"
    );
}

#[test]
fn control_lifecycle_and_debounce_keys_have_defaults_and_ranges() {
    let c = control("auto_scaling_group = \"wordpress\"", "").unwrap();
    assert!(c.lifecycle.enabled);
    assert_eq!(c.lifecycle.drain_timeout, Duration::from_secs(300));
    assert_eq!(c.lifecycle.heartbeat_interval, None);
    assert_eq!(c.debounce, Duration::from_secs(5));
    let err = control(
        "auto_scaling_group = \"wordpress\"",
        "[lifecycle]\ndrain_timeout_seconds = 0",
    )
    .unwrap_err();
    assert_eq!(
        err,
        "control.toml:15:1: lifecycle.drain_timeout_seconds: must be 1..=7200, got 0"
    );
    let err = control(
        "auto_scaling_group = \"wordpress\"",
        "[reconcile]\ndebounce_seconds = 301",
    )
    .unwrap_err();
    assert_eq!(
        err,
        "control.toml:15:1: reconcile.debounce_seconds: must be 0..=300, got 301"
    );
}

fn nlb(listener: &str, group: &str) -> Result<causeway_config::nlb::NlbConfig, String> {
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:9181\"\n[[listeners]]\naddress = \"127.0.0.1:8081\"\ntarget_group = \"t\"\n{listener}\n[target_groups.t]\ntargets = [{{ address = \"127.0.0.1:9001\" }}]\n{group}\n"
    );
    parse::<causeway_config::nlb::FileNlb>("nlb.toml", &text, &cx()).map_err(|e| e.to_string())
}

#[test]
fn nlb_udp_listeners_pair_with_udp_groups_as_on_nlb() {
    use causeway_config::nlb::Protocol;
    let c = nlb("protocol = \"UDP\"", "protocol = \"UDP\"").unwrap();
    assert_eq!(c.listeners[0].protocol, Protocol::Udp);
    assert_eq!(c.listeners[0].udp.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        (
            c.listeners[0].udp.max_flows,
            c.listeners[0].udp.max_flows_per_source
        ),
        (65_536, 1024)
    );
    nlb("protocol = \"TCP_UDP\"", "protocol = \"TCP_UDP\"").unwrap();
    nlb("protocol = \"UDP\"", "protocol = \"TCP_UDP\"").unwrap();
    assert_eq!(
        nlb("protocol = \"UDP\"", "").unwrap_err(),
        "nlb.toml:5:1: listeners[0].target_group: a UDP listener cannot forward to the TCP target group \"t\""
    );
    assert_eq!(
        nlb("protocol = \"TCP_UDP\"", "protocol = \"UDP\"").unwrap_err(),
        "nlb.toml:5:1: listeners[0].target_group: a TCP_UDP listener cannot forward to the UDP target group \"t\""
    );
    // A TLS group (TLS again to the targets) serves TLS listeners only.
    assert_eq!(
        nlb("", "protocol = \"TLS\"").unwrap_err(),
        "nlb.toml:5:1: listeners[0].target_group: a TCP listener cannot forward to the TLS target group \"t\""
    );
    assert_eq!(
        nlb("protocol = \"UDP\"", "protocol = \"TLS\"").unwrap_err(),
        "nlb.toml:5:1: listeners[0].target_group: a UDP listener cannot forward to the TLS target group \"t\""
    );
    assert!(nlb(
        "protocol = \"UDP\"",
        "protocol = \"UDP\"\nproxy_protocol_v2.enabled = true"
    )
    .unwrap_err()
    .contains(
        "target_groups.t.proxy_protocol_v2.enabled: PROXY protocol v2 is for TCP target groups"
    ));
    // Client IP preservation: TCP, TCP_UDP and UDP groups may ask for it.
    assert!(nlb("", "preserve_client_ip.enabled = true").is_ok());
    let both = nlb(
        "protocol = \"TCP_UDP\"",
        "protocol = \"TCP_UDP\"\npreserve_client_ip.enabled = true",
    )
    .unwrap();
    assert!(both.target_groups["t"].preserve_client_ip);
    assert!(
        !nlb("", "").unwrap().target_groups["t"].preserve_client_ip,
        "off by default"
    );
    let alb = BASE
        .replace("  interval_seconds = 0", "interval_seconds = 5")
        .replace(
            "targets = [{ address = \"127.0.0.1:9001\" }]",
            "targets = [{ address = \"127.0.0.1:9001\" }]\npreserve_client_ip.enabled = true",
        );
    assert!(parse::<FileAlb>("alb.toml", &alb, &cx())
        .unwrap_err()
        .to_string()
        .contains(
            "preserve_client_ip.enabled: client IP preservation is an nlb target group attribute"
        ));
    assert!(
        nlb(
            "protocol = \"UDP\"",
            "protocol = \"UDP\"\npreserve_client_ip.enabled = true"
        )
        .unwrap()
        .target_groups["t"]
            .preserve_client_ip
    );
    assert!(nlb(
        "protocol = \"UDP\"\nudp.idle_timeout.seconds = 0",
        "protocol = \"UDP\""
    )
    .unwrap_err()
    .ends_with("listeners[0].udp.idle_timeout.seconds: must be 1..=6000, got 0"));
}

#[test]
fn target_group_stickiness_needs_a_duration_in_range() {
    let two = BASE.replace("interval_seconds = 0", "interval_seconds = 5")
        + "[target_groups.green]\ntargets = [{ address = \"127.0.0.1:9002\" }]\n";
    let with = |gs: &str| {
        two.replace(
            r#"default_action = { type = "forward", target_group = "wordpress" }"#,
            &format!(
                r#"default_action = {{ type = "forward", target_groups = [{{ name = "wordpress", weight = 1 }}, {{ name = "green", weight = 1 }}], target_group_stickiness_config = {gs} }}"#
            ),
        )
    };
    let ok = parse::<FileAlb>(
        "alb.toml",
        &with("{ enabled = true, duration_seconds = 3600 }"),
        &cx(),
    )
    .unwrap();
    assert!(matches!(
        &ok.listeners[0].default_action,
        Action::Forward { group_stickiness: Some(d), .. } if *d == Duration::from_secs(3600)
    ));
    let err = parse::<FileAlb>("alb.toml", &with("{ enabled = true }"), &cx()).unwrap_err();
    assert!(
        err.to_string()
            .contains("target_group_stickiness_config.duration_seconds: required when enabled"),
        "{err}"
    );
    let err = parse::<FileAlb>(
        "alb.toml",
        &with("{ enabled = true, duration_seconds = 604801 }"),
        &cx(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be 1..=604800"), "{err}");
}

#[test]
fn target_group_protocol_version_and_https() {
    let ok = BASE.replace("  interval_seconds = 0", "interval_seconds = 5");
    let text = ok.replace(
        "[target_groups.wordpress]\n",
        "[target_groups.wordpress]\nprotocol = \"HTTPS\"\nprotocol_version = \"GRPC\"\n",
    );
    let cfg = parse::<FileAlb>("alb.toml", &text, &cx()).unwrap();
    let g = &cfg.target_groups["wordpress"];
    assert_eq!(g.protocol, "HTTPS");
    assert_eq!(
        g.protocol_version,
        causeway_config::common::ProtocolVersion::Grpc
    );
    assert!(
        g.health_check.tls,
        "an HTTPS group checks over HTTPS by default"
    );
    assert!(
        matches!(&g.health_check.kind, HealthCheckKind::Grpc { path, matcher }
            if path == "/" && matcher.matches(12) && !matcher.matches(0)),
        "a gRPC group checks with gRPC, AWS's default code 12: {:?}",
        g.health_check.kind
    );
    let bad_code = text.replace("path = \"/\"", "matcher = \"200\"");
    let err = parse::<FileAlb>("alb.toml", &bad_code, &cx()).unwrap_err();
    assert!(
        err.to_string()
            .contains("health_check.matcher: must be codes or ranges of 0..=99"),
        "{err}"
    );
    let plain = parse::<FileAlb>("alb.toml", &ok, &cx()).unwrap();
    let g = &plain.target_groups["wordpress"];
    assert_eq!(g.protocol_version, Default::default());
    assert!(!g.health_check.tls);
    let bad = ok.replace(
        "[target_groups.wordpress]\n",
        "[target_groups.wordpress]\nprotocol_version = \"HTTP3\"\n",
    );
    let err = parse::<FileAlb>("alb.toml", &bad, &cx()).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "alb.toml:9:1: target_groups.wordpress.protocol_version: must be one of HTTP1, HTTP2, GRPC"
        ),
        "{err}"
    );
}

#[test]
fn an_endless_or_binary_file_is_refused_by_name_without_reading_it_all() {
    // /dev/zero never ends: the read stops past the limit.
    let e = causeway_config::load::<FileAlb>(Path::new("/dev/zero")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("/dev/zero: cannot read:"), "{msg}");
    assert!(msg.contains("larger than 16 MiB"), "{msg}");
    // Not UTF-8: refused by name too.
    let dir = std::env::temp_dir().join(format!("causeway-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("alb.toml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let e = causeway_config::load::<FileAlb>(&bin)
        .unwrap_err()
        .to_string();
    assert!(e.contains("alb.toml: cannot read:"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mutual_authentication`: only on HTTPS listeners; `verify` needs a trust store that exists,
/// its revocation lists must exist, and only `verify` takes a trust store, revocation lists or
/// `advertise_trust_store_ca_names` (on or off); each refusal names the key and its line.
#[test]
fn mutual_authentication_is_checked_key_by_key() {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/certs");
    let https = |table: &str| {
        BASE.replace("  interval_seconds = 0", "interval_seconds = 5")
            .replace(
                "address = \"127.0.0.1:8082\"\n",
                &format!(
                    "address = \"127.0.0.1:8082\"\nprotocol = \"HTTPS\"\ncertificates = [{{ certificate_file = \"{c}/a.example.test.pem\", private_key_file = \"{c}/a.example.test.key\" }}]\nmutual_authentication = {table}\n",
                    c = certs.display()
                ),
            )
    };
    let ok = |table: &str| parse::<FileAlb>("alb.toml", &https(table), &cx());
    let store = format!("{}/client-ca.pem", certs.display());
    let cfg = ok(&format!(
        "{{ mode = \"verify\", trust_store = \"{store}\" }}"
    ))
    .unwrap();
    assert_eq!(
        cfg.listeners[0].tls.as_ref().unwrap().client_auth,
        causeway_config::tls::ClientAuth::Verify(causeway_config::tls::TrustStore {
            file: PathBuf::from(&store),
            revocation_lists: vec![],
            ignore_expiry: false,
            advertise_ca_names: false,
        })
    );
    let crl = format!("{}/client-ca-2.crl.pem", certs.display());
    let cfg = ok(&format!(
        "{{ mode = \"verify\", trust_store = \"{store}\", revocation_lists = [\"{crl}\"], advertise_trust_store_ca_names = \"on\" }}"
    ))
    .unwrap();
    assert_eq!(
        cfg.listeners[0].tls.as_ref().unwrap().client_auth,
        causeway_config::tls::ClientAuth::Verify(causeway_config::tls::TrustStore {
            file: PathBuf::from(&store),
            revocation_lists: vec![PathBuf::from(&crl)],
            ignore_expiry: false,
            advertise_ca_names: true,
        })
    );
    let cfg = ok("{ mode = \"passthrough\" }").unwrap();
    assert_eq!(
        cfg.listeners[0].tls.as_ref().unwrap().client_auth,
        causeway_config::tls::ClientAuth::Passthrough
    );
    for (table, want) in [
        (
            "{ mode = \"verify\" }".to_owned(),
            "listeners[0].mutual_authentication.trust_store: mode = \"verify\" needs a trust store",
        ),
        (
            "{ mode = \"verify\", trust_store = \"/nonexistent/ca.pem\" }".to_owned(),
            "listeners[0].mutual_authentication.trust_store: no such file: /nonexistent/ca.pem",
        ),
        (
            format!("{{ mode = \"passthrough\", trust_store = \"{store}\" }}"),
            "listeners[0].mutual_authentication.trust_store: only mode = \"verify\" takes it",
        ),
        (
            format!("{{ mode = \"verify\", trust_store = \"{store}\", revocation_lists = [\"{crl}\", \"/nonexistent/b.crl\"] }}"),
            "listeners[0].mutual_authentication.revocation_lists[1]: no such file: /nonexistent/b.crl",
        ),
        (
            format!("{{ mode = \"passthrough\", revocation_lists = [\"{crl}\"] }}"),
            "listeners[0].mutual_authentication.revocation_lists: only mode = \"verify\" takes it",
        ),
        (
            format!("{{ mode = \"verify\", trust_store = \"{store}\", advertise_trust_store_ca_names = \"yes\" }}"),
            "listeners[0].mutual_authentication.advertise_trust_store_ca_names: must be one of on, off",
        ),
        (
            "{ mode = \"off\", advertise_trust_store_ca_names = \"off\" }".to_owned(),
            "listeners[0].mutual_authentication.advertise_trust_store_ca_names: only mode = \"verify\" takes it",
        ),
        (
            "{ mode = \"optional\" }".to_owned(),
            "listeners[0].mutual_authentication.mode: must be one of",
        ),
    ] {
        let err = ok(&table).unwrap_err().to_string();
        let (place, rest) = err.split_once(": ").unwrap();
        assert!(
            place.starts_with("alb.toml:8:"),
            "the listener's line: {err}"
        );
        assert!(rest.starts_with(want), "{table}: {err}");
    }
    let http = BASE
        .replace("  interval_seconds = 0", "interval_seconds = 5")
        .replace(
            "address = \"127.0.0.1:8082\"\n",
            "address = \"127.0.0.1:8082\"\nmutual_authentication = { mode = \"passthrough\" }\n",
        );
    let err = parse::<FileAlb>("alb.toml", &http, &cx())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("alb.toml:6:1: listeners[0].mutual_authentication: only an HTTPS listener takes mutual_authentication"),
        "{err}"
    );
}

/// Header modification attributes: a field AWS does not name, or a value with a line break,
/// is refused at its own line, naming the key.
#[test]
fn header_modification_values_are_checked_at_their_line() {
    for (line, want) in [
        (
            "routing.http.response.x_powered_by.header_value = \"PHP\"",
            "listeners[0].routing.http.response.x_powered_by: must be one of server, strict_transport_security,",
        ),
        (
            "routing.http.response.x_frame_options.header_value = \"DENY\\nSet-Cookie: a=b\"",
            "listeners[0].routing.http.response.x_frame_options.header_value: may not contain the byte 0x0a",
        ),
    ] {
        let text = BASE
            .replace("  interval_seconds = 0", "interval_seconds = 5")
            .replace(
                "address = \"127.0.0.1:8082\"\n",
                &format!("address = \"127.0.0.1:8082\"\n{line}\n"),
            );
        let err = parse::<FileAlb>("alb.toml", &text, &cx())
            .unwrap_err()
            .to_string();
        let (place, rest) = err.split_once(": ").unwrap();
        assert!(place.starts_with("alb.toml:6:"), "the key's line: {err}");
        assert!(rest.starts_with(want), "{err}");
    }
}

/// `target_group_health.unhealthy_state_routing.minimum_healthy_targets`: a count of 1 or
/// more, and a percentage that is "off" or 1..=100 (as a string, as AWS writes it, or an
/// integer); anything else names the key.
#[test]
fn minimum_healthy_targets_are_checked() {
    let key = "target_groups.wordpress.target_group_health.unhealthy_state_routing.minimum_healthy_targets";
    let with = |lines: &str| {
        BASE.replace("  interval_seconds = 0", "interval_seconds = 5")
            .replace(
                "[target_groups.wordpress.health_check]",
                &format!("[target_groups.wordpress.target_group_health.unhealthy_state_routing.minimum_healthy_targets]\n{lines}\n[target_groups.wordpress.health_check]"),
            )
    };
    for (lines, count, percentage) in [
        ("", 1, 0),
        ("count = 3\npercentage = \"off\"", 3, 0),
        ("percentage = \"50\"", 1, 50),
        ("percentage = 75", 1, 75),
    ] {
        let cfg = parse::<FileAlb>("alb.toml", &with(lines), &cx()).unwrap();
        let m = cfg.target_groups["wordpress"].minimum_healthy;
        assert_eq!((m.count, m.percentage), (count, percentage), "{lines}");
    }
    for (lines, want) in [
        (
            "count = 0",
            format!("{key}.count: must be 1..=10000, got 0"),
        ),
        (
            "percentage = \"half\"",
            format!("{key}.percentage: must be \"off\" or 1..=100, got \"half\""),
        ),
        (
            "percentage = 0",
            format!("{key}.percentage: must be 1..=100, got 0"),
        ),
        (
            "percentage = \"101\"",
            format!("{key}.percentage: must be 1..=100, got 101"),
        ),
    ] {
        let err = parse::<FileAlb>("alb.toml", &with(lines), &cx())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&want), "{lines}: {err}");
    }
}

/// `regex_values`: instead of `values`, on host-header, path-pattern and http-header only, 1 to
/// 5 expressions of at most 128 characters in ALB's syntax (no look-around); each refusal names
/// the key.
#[test]
fn regex_values_are_checked() {
    let with = |cond: &str| {
        BASE.replace("  interval_seconds = 0", "interval_seconds = 5")
            .replace(
                "default_action = { type = \"forward\", target_group = \"wordpress\" }\n",
                &format!("default_action = {{ type = \"forward\", target_group = \"wordpress\" }}\n[[listeners.rules]]\npriority = 1\nconditions = [{cond}]\naction = {{ type = \"fixed-response\", status_code = 404 }}\n"),
            )
    };
    let cfg = parse::<FileAlb>(
        "alb.toml",
        &with(r#"{ field = "path-pattern", regex_values = ["^/api/v[0-9]+/"] }"#),
        &cx(),
    )
    .unwrap();
    assert_eq!(
        cfg.listeners[0].rules[0].conditions,
        [causeway_config::alb::Condition::PathPatternRegex(vec![
            "^/api/v[0-9]+/".into()
        ])]
    );
    let p = "listeners[0].rules[0].conditions[0].regex_values";
    for (cond, want) in [
        (
            r#"{ field = "path-pattern", values = ["/a"], regex_values = ["^/a"] }"#.to_owned(),
            format!("{p}: a condition takes values or regex_values, not both"),
        ),
        (
            r#"{ field = "query-string", regex_values = ["a"] }"#.to_owned(),
            format!("{p}: only host-header, path-pattern and http-header"),
        ),
        (
            r#"{ field = "path-pattern", regex_values = ["^/(?=admin)"] }"#.to_owned(),
            format!("{p}[0]: not a regular expression ALB accepts"),
        ),
        (
            format!(
                r#"{{ field = "host-header", regex_values = ["{}"] }}"#,
                "a".repeat(129)
            ),
            format!("{p}[0]: must be 1 to 128 characters, got 129"),
        ),
        (
            r#"{ field = "http-header", regex_values = ["x"] }"#.to_owned(),
            "listeners[0].rules[0].conditions[0].header_name: required for http-header".to_owned(),
        ),
        (
            r#"{ field = "path-pattern" }"#.to_owned(),
            "listeners[0].rules[0].conditions[0].values: must list 1 to 5 values".to_owned(),
        ),
    ] {
        let err = parse::<FileAlb>("alb.toml", &with(&cond), &cx())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&want), "{cond}: {err}");
    }
}

/// Rule transforms: on forwarding rules only, one of each type, ALB's regex syntax, a visible
/// ASCII replacement; each refusal names the key.
#[test]
fn rule_transforms_are_checked() {
    let with = |action: &str, transforms: &str| {
        BASE.replace("  interval_seconds = 0", "interval_seconds = 5")
            .replace(
                "default_action = { type = \"forward\", target_group = \"wordpress\" }\n",
                &format!("default_action = {{ type = \"forward\", target_group = \"wordpress\" }}\n[[listeners.rules]]\npriority = 1\nconditions = [{{ field = \"path-pattern\", values = [\"/a/*\"] }}]\naction = {action}\ntransforms = [{transforms}]\n"),
            )
    };
    let fwd = r#"{ type = "forward", target_group = "wordpress" }"#;
    let cfg = parse::<FileAlb>(
        "alb.toml",
        &with(
            fwd,
            r#"{ type = "url-rewrite", regex = "^/a/(.*)$", replace = "/b/$1" }"#,
        ),
        &cx(),
    )
    .unwrap();
    assert_eq!(
        cfg.listeners[0].rules[0].transforms.url,
        Some(causeway_config::alb::Rewrite {
            regex: "^/a/(.*)$".into(),
            replace: "/b/$1".into()
        })
    );
    let p = "listeners[0].rules[0].transforms";
    for (action, transforms, want) in [
        (
            r#"{ type = "fixed-response", status_code = 404 }"#,
            r#"{ type = "url-rewrite", regex = "a", replace = "b" }"#,
            format!("{p}[0]: transforms rewrite requests forwarded to targets"),
        ),
        (
            fwd,
            r#"{ type = "url-rewrite", regex = "a", replace = "b" }, { type = "url-rewrite", regex = "c", replace = "d" }"#,
            format!("{p}[1].type: a rule takes one url-rewrite transform"),
        ),
        (
            fwd,
            r#"{ type = "path-rewrite", regex = "a", replace = "b" }"#,
            format!("{p}[0].type: must be one of host-header-rewrite, url-rewrite"),
        ),
        (
            fwd,
            r#"{ type = "host-header-rewrite", regex = "(?<=x)y", replace = "b" }"#,
            format!("{p}[0].regex: not a regular expression ALB accepts"),
        ),
        (
            fwd,
            r#"{ type = "url-rewrite", regex = "a", replace = "b\r\nX: y" }"#,
            format!("{p}[0].replace: at most 1024 visible ASCII characters"),
        ),
    ] {
        let err = parse::<FileAlb>("alb.toml", &with(action, transforms), &cx())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&want), "{transforms}: {err}");
    }
}

/// The base alb config with `lines` added to its `wordpress` target group.
fn wordpress_group_with(lines: &str) -> Result<causeway_config::alb::AlbConfig, String> {
    let text = BASE
        .replace("  interval_seconds = 0", "interval_seconds = 5")
        .replace(
            "targets = [{ address = \"127.0.0.1:9001\" }]",
            &format!("targets = [{{ address = \"127.0.0.1:9001\" }}]\n{lines}"),
        );
    parse::<FileAlb>("alb.toml", &text, &cx()).map_err(|e| e.to_string())
}

#[test]
fn anomaly_mitigation_needs_weighted_random() {
    let with = wordpress_group_with;
    let on = with(
        "load_balancing.algorithm.type = \"weighted_random\"\nload_balancing.algorithm.anomaly_mitigation = \"on\"",
    )
    .unwrap();
    assert!(on.target_groups["wordpress"].anomaly_mitigation);
    assert!(
        !with("").unwrap().target_groups["wordpress"].anomaly_mitigation,
        "off by default"
    );
    assert!(with("load_balancing.algorithm.anomaly_mitigation = \"on\"")
        .unwrap_err()
        .ends_with("target_groups.wordpress.load_balancing.algorithm.anomaly_mitigation: anomaly mitigation works with load_balancing.algorithm.type = \"weighted_random\" only (as on AWS)"));
    assert!(
        with("load_balancing.algorithm.anomaly_mitigation = \"yes\"")
            .unwrap_err()
            .contains("load_balancing.algorithm.anomaly_mitigation")
    );
}

#[test]
fn target_control_limits_requests_per_target_on_the_alb_only() {
    let with = wordpress_group_with;
    assert_eq!(
        with("").unwrap().target_groups["wordpress"].target_control,
        None
    );
    let defaults = with("target_control.max_concurrent_requests = 8").unwrap();
    assert_eq!(
        defaults.target_groups["wordpress"].target_control,
        Some(causeway_config::common::TargetControl {
            max_concurrent: 8,
            queue_timeout: Duration::ZERO,
            max_queued: 1024,
        }),
        "by default a busy group answers 503 at once, as ALB does"
    );
    let queued = with(
        "target_control = { max_concurrent_requests = 1, queue_timeout_seconds = 30, max_queued_requests = 50 }",
    )
    .unwrap();
    assert_eq!(
        queued.target_groups["wordpress"].target_control,
        Some(causeway_config::common::TargetControl {
            max_concurrent: 1,
            queue_timeout: Duration::from_secs(30),
            max_queued: 50,
        })
    );
    let p = "target_groups.wordpress.target_control";
    for (lines, want) in [
        (
            "target_control.max_concurrent_requests = 0",
            format!("{p}.max_concurrent_requests: must be 1..=100000, got 0"),
        ),
        (
            "target_control = { max_concurrent_requests = 4, queue_timeout_seconds = 3601 }",
            format!("{p}.queue_timeout_seconds: must be 0..=3600, got 3601"),
        ),
        (
            "target_control.queue_timeout_seconds = 5",
            format!("{p}.queue_timeout_seconds: needs target_control.max_concurrent_requests"),
        ),
        (
            "target_control.max_waiting = 5",
            "unknown field `max_waiting`".to_owned(),
        ),
    ] {
        let err = with(lines).unwrap_err();
        assert!(err.contains(&want), "{lines}: {err}");
        assert!(err.starts_with("alb.toml:"), "{err}");
    }
    let err = nlb("", "target_control.max_concurrent_requests = 4").unwrap_err();
    assert!(
        err.contains("target_groups.t.target_control.max_concurrent_requests: target_control is an alb target group attribute"),
        "{err}"
    );
}
