//! The targets file that causeway-control renders: target lists per target group.

use crate::common::{validate_targets, FileTarget, TargetConfig, TargetGroupConfig};
use crate::{place_violation, ConfigError, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargets {
    /// Free text from the renderer, e.g. a hash of the discovered state.
    pub generation: Option<String>,
    #[serde(default)]
    pub target_groups: BTreeMap<String, FileTargetList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTargetList {
    #[serde(default)]
    pub targets: Vec<FileTarget>,
}

/// Reads the targets file and adds its targets to the named groups.
pub fn merge_targets_file(
    path: &Path,
    groups: &mut BTreeMap<String, TargetGroupConfig>,
) -> Result<(), ConfigError> {
    let file = path.display().to_string();
    let text = crate::read_text(path)?;
    let raw: FileTargets = crate::deserialize(&file, &text)?;
    merge(raw, groups).map_err(|v| place_violation(&file, &text, v))
}

fn merge(
    raw: FileTargets,
    groups: &mut BTreeMap<String, TargetGroupConfig>,
) -> Result<(), Violation> {
    for (name, list) in raw.target_groups {
        let path = format!("target_groups.{name}");
        let Some(group) = groups.get_mut(&name) else {
            return Err(Violation::new(
                path,
                "no target group of this name in the config file",
            ));
        };
        let targets: Vec<TargetConfig> =
            validate_targets(&format!("{path}.targets"), list.targets)?;
        for (i, t) in targets.into_iter().enumerate() {
            if group.targets.iter().any(|o| o.address == t.address) {
                return Err(Violation::new(
                    format!("{path}.targets[{i}].address"),
                    format!(
                        "target {} is also listed inline in the config file",
                        t.address
                    ),
                ));
            }
            group.targets.push(t);
        }
    }
    Ok(())
}
