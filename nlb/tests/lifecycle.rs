//! causeway-nlb keeps the lifecycle contract and starts with its example.

use causeway_testkit::lifecycle::{check_example, check_lifecycle, examples_dir};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_causeway-nlb");

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
target_group = "t"
[target_groups.t]
targets = [{{ address = "127.0.0.1:9" }}]
"#
        )
    });
}

#[test]
fn example_starts_and_serves_metrics() {
    check_example(
        Path::new(BIN),
        &examples_dir().join("nlb.toml"),
        "127.0.0.1:9181".parse().unwrap(),
    );
}
