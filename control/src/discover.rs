//! What discovery yields, whatever the provider: instances with their group, lifecycle state,
//! health, address and zone. The static provider reads them from a file.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

/// One instance of an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub group: String,
    /// Auto Scaling's lifecycle state (`InService`, `Pending`, `Terminating:Wait`, ...).
    pub lifecycle: String,
    pub healthy: bool,
    pub address: Option<IpAddr>,
    pub zone: String,
    /// EC2's state (`running`, ...), for display.
    pub ec2_state: String,
}

impl Instance {
    /// Membership is decided by Auto Scaling, not by EC2's `running`: InService and Healthy,
    /// with an address.
    pub fn serves(&self) -> bool {
        self.lifecycle == "InService" && self.healthy && self.address.is_some()
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
    let text =
        std::fs::read_to_string(path).map_err(|source| causeway_config::ConfigError::Io {
            file: file.clone(),
            source,
        })?;
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
            lifecycle: r.lifecycle_state.unwrap_or_else(|| "InService".into()),
            healthy: true,
            address: Some(address),
            zone: r.zone.unwrap_or_default(),
            ec2_state: "running".into(),
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
