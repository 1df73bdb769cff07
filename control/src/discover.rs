//! What discovery yields, whatever the provider: instances with their group (and its tags),
//! lifecycle state, health, address, zone and, while terminating, the lifecycle hook that holds
//! them. The static provider reads them from a file.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// The lifecycle state of an instance that a Terminating hook holds for us.
pub const TERMINATING_WAIT: &str = "Terminating:Wait";

/// A group's `autoscaling:EC2_INSTANCE_TERMINATING` lifecycle hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    /// Auto Scaling applies the hook's default result when neither a heartbeat nor a completion
    /// comes within this long.
    pub heartbeat_timeout: Duration,
}

/// One instance of an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub group: String,
    /// The group's tags (empty for the static provider).
    pub group_tags: BTreeMap<String, String>,
    /// Auto Scaling's lifecycle state (`InService`, `Pending`, `Terminating:Wait`, ...).
    pub lifecycle: String,
    pub healthy: bool,
    pub address: Option<IpAddr>,
    pub zone: String,
    /// EC2's state (`running`, ...), for display.
    pub ec2_state: String,
    /// In `Terminating:Wait` under a Terminating hook: the hook to heartbeat and complete.
    pub hook: Option<Hook>,
}

impl Instance {
    /// Membership is decided by Auto Scaling, not by EC2's `running`: InService and Healthy,
    /// with an address.
    pub fn serves(&self) -> bool {
        self.lifecycle == "InService" && self.healthy && self.address.is_some()
    }

    /// Waiting on a lifecycle hook that control must complete once the instance is drained.
    pub fn awaits_drain(&self) -> Option<&Hook> {
        self.hook
            .as_ref()
            .filter(|_| self.lifecycle == TERMINATING_WAIT)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStatic {
    #[serde(default)]
    instances: Vec<FileInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstance {
    id: String,
    auto_scaling_group: String,
    address: String,
    zone: Option<String>,
    lifecycle_state: Option<String>,
}

/// The static provider: `[[instances]]` with `id`, `auto_scaling_group`, `address` (an IP),
/// and optional `zone` and `lifecycle_state` (default `InService`).
pub fn read_static(path: &Path) -> Result<Vec<Instance>, causeway_config::ConfigError> {
    let file = path.display().to_string();
    let text = causeway_config::read_text(path)?;
    let raw: FileStatic = causeway_config::deserialize(&file, &text)?;
    let mut out = Vec::new();
    for (i, r) in raw.instances.into_iter().enumerate() {
        let address: IpAddr = r.address.parse().map_err(|_| {
            causeway_config::place_violation(
                &file,
                &text,
                causeway_config::Violation::new(
                    format!("instances[{i}].address"),
                    format!("must be an IP address, got \"{}\"", r.address),
                ),
            )
        })?;
        out.push(Instance {
            id: r.id,
            group: r.auto_scaling_group,
            group_tags: BTreeMap::new(),
            lifecycle: r.lifecycle_state.unwrap_or_else(|| "InService".into()),
            healthy: true,
            address: Some(address),
            zone: r.zone.unwrap_or_default(),
            ec2_state: "running".into(),
            hook: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_static_provider_reads_instances_and_places_errors() {
        let dir = std::env::temp_dir().join(format!("causeway-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("instances.toml");
        std::fs::write(
            &f,
            "[[instances]]\nid = \"i-1\"\nauto_scaling_group = \"wordpress\"\naddress = \"127.0.0.1\"\nzone = \"us-east-1a\"\n\
             [[instances]]\nid = \"i-2\"\nauto_scaling_group = \"wordpress\"\naddress = \"127.0.0.2\"\nlifecycle_state = \"Terminating:Wait\"\n",
        )
        .unwrap();
        let list = super::read_static(&f).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].serves());
        assert!(!list[1].serves(), "only InService instances are targets");
        std::fs::write(
            &f,
            "[[instances]]\nid = \"i-1\"\nauto_scaling_group = \"w\"\naddress = \"nope\"\n",
        )
        .unwrap();
        let err = super::read_static(&f).unwrap_err().to_string();
        assert!(
            err.contains("instances[0].address: must be an IP address"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
