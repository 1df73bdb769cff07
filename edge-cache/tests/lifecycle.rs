//! causeway-edge keeps the lifecycle contract and starts with its example.

use causeway_testkit::lifecycle::{check_example, check_lifecycle, examples_dir};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_causeway-edge");

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
[origins.o]
address = "127.0.0.1:9"
[default_cache_behavior]
target_origin_id = "o"
"#
        )
    });
}

#[test]
fn example_starts_and_serves_metrics() {
    check_example(
        Path::new(BIN),
        &examples_dir().join("edge.toml"),
        "127.0.0.1:9180".parse().unwrap(),
    );
}
