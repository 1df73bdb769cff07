//! The control plane's config file: the discovery provider, the data planes it feeds, and the
//! mapping from Auto Scaling groups to their target groups.

use crate::common::{AdminConfig, FileAdmin};
use crate::error::{in_range, one_of, socket_addr};
use crate::{ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
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
    pub auto_scaling_group: String,
    pub port: i64,
    pub data_plane: String,
    pub target_group: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSafety {
    pub max_removal_fraction: Option<f64>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub auto_scaling_group: String,
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
            if let Provider::Aws {
                auto_scaling_groups,
                ..
            } = &provider
            {
                if !auto_scaling_groups.is_empty()
                    && !auto_scaling_groups.contains(&m.auto_scaling_group)
                {
                    return Err(Violation::new(
                        format!("{p}.auto_scaling_group"),
                        format!(
                            "\"{}\" is not in aws.auto_scaling_groups",
                            m.auto_scaling_group
                        ),
                    )
                    .into());
                }
            }
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
                auto_scaling_group: m.auto_scaling_group,
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
        Ok(ControlConfig {
            provider,
            admin,
            data_planes,
            target_groups,
            max_removal_fraction: frac,
        })
    }
}
