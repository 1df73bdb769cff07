//! The control plane's config file: the discovery provider, the data planes it feeds, and the
//! mapping from Auto Scaling groups to their target groups.

use crate::common::{AdminConfig, FileAdmin};
use crate::error::{in_range, one_of, socket_addr};
use crate::{ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControl {
    pub provider: String,
    pub admin: Option<FileAdmin>,
    pub aws: Option<FileAws>,
    #[serde(rename = "static")]
    pub static_: Option<FileStatic>,
    #[serde(default)]
    pub data_planes: Vec<FileDataPlane>,
    #[serde(default)]
    pub target_groups: Vec<FileMapping>,
    #[serde(default)]
    pub safety: FileSafety,
    #[serde(default)]
    pub lifecycle: FileLifecycle,
    #[serde(default)]
    pub reconcile: FileReconcile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAws {
    pub region: String,
    #[serde(default)]
    pub auto_scaling_groups: Vec<String>,
    pub refresh_interval_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStatic {
    pub file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDataPlane {
    pub name: String,
    pub kind: String,
    pub admin: String,
    pub targets_file: String,
    pub pidfile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMapping {
    pub auto_scaling_group: Option<String>,
    pub tags: Option<BTreeMap<String, String>>,
    pub port: i64,
    pub data_plane: String,
    pub target_group: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSafety {
    pub max_removal_fraction: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLifecycle {
    pub enabled: Option<bool>,
    pub drain_timeout_seconds: Option<i64>,
    pub heartbeat_interval_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReconcile {
    pub debounce_seconds: Option<i64>,
}

/// Where targets come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Aws {
        region: String,
        auto_scaling_groups: Vec<String>,
        refresh_interval: Duration,
    },
    Static {
        file: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataPlane {
    pub name: String,
    pub kind: String,
    pub admin: SocketAddr,
    pub targets_file: PathBuf,
    pub pidfile: Option<PathBuf>,
}

/// Which Auto Scaling groups a mapping takes its instances from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    /// The group of this name.
    Name(String),
    /// Every group that carries all of these tags (key = value).
    Tags(BTreeMap<String, String>),
}

impl Selector {
    /// Whether a group with this name and these tags is selected.
    pub fn selects(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Name(n) => n == name,
            Selector::Tags(want) => want.iter().all(|(k, v)| tags.get(k) == Some(v)),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Name(n) => f.write_str(n),
            Selector::Tags(t) => {
                let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "tags {}", parts.join(","))
            }
        }
    }
}

/// Draining before scale-in, for groups with a Terminating lifecycle hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub enabled: bool,
    /// The longest control waits for a terminating instance's in-flight work.
    pub drain_timeout: Duration,
    /// Heartbeats on long drains; `None`: a third of the hook's heartbeat timeout.
    pub heartbeat_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub auto_scaling_group: Selector,
    pub port: u16,
    pub data_plane: String,
    pub target_group: String,
}

/// A validated control config.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub provider: Provider,
    pub admin: Option<AdminConfig>,
    pub data_planes: Vec<DataPlane>,
    pub target_groups: Vec<Mapping>,
    pub max_removal_fraction: f64,
    pub lifecycle: Lifecycle,
    /// How long a changed discovery result must stay the same before `run` applies it.
    pub debounce: Duration,
}

impl ConfigFile for FileControl {
    type Valid = ControlConfig;

    fn validate(self, cx: &Context) -> Result<ControlConfig, Invalid> {
        let provider = match one_of("provider", &self.provider, &["aws", "static"])? {
            "aws" => {
                let aws = self
                    .aws
                    .ok_or_else(|| Violation::new("aws", "required when provider = \"aws\""))?;
                if aws.region.is_empty() {
                    return Err(Violation::new("aws.region", "must not be empty").into());
                }
                let refresh = in_range(
                    "aws.refresh_interval_seconds",
                    aws.refresh_interval_seconds.unwrap_or(15),
                    1,
                    3600,
                )?;
                Provider::Aws {
                    region: aws.region,
                    auto_scaling_groups: aws.auto_scaling_groups,
                    refresh_interval: Duration::from_secs(refresh as u64),
                }
            }
            _ => {
                let s = self.static_.ok_or_else(|| {
                    Violation::new("static", "required when provider = \"static\"")
                })?;
                Provider::Static {
                    file: cx.resolve(&s.file),
                }
            }
        };
        let admin = match self.admin {
            Some(a) => Some(a.validate("admin")?),
            None => None,
        };
        let mut data_planes = Vec::new();
        for (i, d) in self.data_planes.into_iter().enumerate() {
            let p = format!("data_planes[{i}]");
            one_of(&format!("{p}.kind"), &d.kind, &["alb", "nlb"])?;
            if data_planes.iter().any(|o: &DataPlane| o.name == d.name) {
                return Err(
                    Violation::new(format!("{p}.name"), "duplicate data plane name").into(),
                );
            }
            data_planes.push(DataPlane {
                admin: socket_addr(&format!("{p}.admin"), &d.admin)?,
                targets_file: cx.resolve(&d.targets_file),
                pidfile: d.pidfile.as_deref().map(|f| cx.resolve(f)),
                name: d.name,
                kind: d.kind,
            });
        }
        let mut target_groups = Vec::new();
        for (i, m) in self.target_groups.into_iter().enumerate() {
            let p = format!("target_groups[{i}]");
            let port = in_range(&format!("{p}.port"), m.port, 1, 65535)?;
            if !data_planes.iter().any(|d| d.name == m.data_plane) {
                return Err(Violation::new(
                    format!("{p}.data_plane"),
                    format!("no data plane named \"{}\"", m.data_plane),
                )
                .into());
            }
            let selector = match (m.auto_scaling_group, m.tags) {
                (Some(name), None) => {
                    if let Provider::Aws {
                        auto_scaling_groups,
                        ..
                    } = &provider
                    {
                        if !auto_scaling_groups.is_empty() && !auto_scaling_groups.contains(&name) {
                            return Err(Violation::new(
                                format!("{p}.auto_scaling_group"),
                                format!("\"{name}\" is not in aws.auto_scaling_groups"),
                            )
                            .into());
                        }
                    }
                    Selector::Name(name)
                }
                (None, Some(tags)) => {
                    if !matches!(provider, Provider::Aws { .. }) {
                        return Err(Violation::new(
                            format!("{p}.tags"),
                            "groups are selected by tag only with provider = \"aws\"",
                        )
                        .into());
                    }
                    if tags.is_empty() {
                        return Err(Violation::new(
                            format!("{p}.tags"),
                            "must name at least one tag",
                        )
                        .into());
                    }
                    if let Some(k) = tags.keys().find(|k| k.is_empty() || k.len() > 128) {
                        return Err(Violation::new(
                            format!("{p}.tags"),
                            format!("tag keys are 1..=128 characters, got \"{k}\""),
                        )
                        .into());
                    }
                    Selector::Tags(tags)
                }
                (Some(_), Some(_)) => {
                    return Err(Violation::new(
                        format!("{p}.tags"),
                        "give auto_scaling_group or tags, not both",
                    )
                    .into())
                }
                (None, None) => {
                    return Err(Violation::new(
                        format!("{p}.auto_scaling_group"),
                        "required (or tags, to select groups by tag)",
                    )
                    .into())
                }
            };
            if target_groups
                .iter()
                .any(|o: &Mapping| o.data_plane == m.data_plane && o.target_group == m.target_group)
            {
                return Err(Violation::new(
                    format!("{p}.target_group"),
                    "another mapping already feeds this data plane's target group",
                )
                .into());
            }
            target_groups.push(Mapping {
                auto_scaling_group: selector,
                port: port as u16,
                data_plane: m.data_plane,
                target_group: m.target_group,
            });
        }
        let frac = self.safety.max_removal_fraction.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&frac) {
            return Err(Violation::new(
                "safety.max_removal_fraction",
                format!("must be 0.0..=1.0, got {frac}"),
            )
            .into());
        }
        let drain = in_range(
            "lifecycle.drain_timeout_seconds",
            self.lifecycle.drain_timeout_seconds.unwrap_or(300),
            1,
            7200,
        )?;
        let heartbeat = match self.lifecycle.heartbeat_interval_seconds {
            Some(s) => Some(Duration::from_secs(in_range(
                "lifecycle.heartbeat_interval_seconds",
                s,
                1,
                3600,
            )? as u64)),
            None => None,
        };
        let debounce = in_range(
            "reconcile.debounce_seconds",
            self.reconcile.debounce_seconds.unwrap_or(5),
            0,
            300,
        )?;
        Ok(ControlConfig {
            provider,
            admin,
            data_planes,
            target_groups,
            max_removal_fraction: frac,
            lifecycle: Lifecycle {
                enabled: self.lifecycle.enabled.unwrap_or(true),
                drain_timeout: Duration::from_secs(drain as u64),
                heartbeat_interval: heartbeat,
            },
            debounce: Duration::from_secs(debounce as u64),
        })
    }
}
