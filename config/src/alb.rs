//! The alb's config file: listeners with their default action, and target groups.

use crate::common::{
    validate_target_groups, AdminConfig, FileAdmin, FileServer, FileTargetGroup, Plane,
    ServerConfig, TargetGroupConfig,
};
use crate::error::{in_range, one_of, socket_addr, Check};
use crate::{targets::merge_targets_file, ConfigFile, Context, Invalid, Violation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlb {
    #[serde(default)]
    pub server: FileServer,
    pub admin: FileAdmin,
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub target_groups: BTreeMap<String, FileTargetGroup>,
    pub targets_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    pub protocol: Option<String>,
    pub default_action: FileAction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAction {
    #[serde(rename = "type")]
    pub kind: String,
    pub target_group: Option<String>,
    pub status_code: Option<i64>,
    pub content_type: Option<String>,
    pub message_body: Option<String>,
}

/// A validated alb config.
#[derive(Debug, Clone, PartialEq)]
pub struct AlbConfig {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub listeners: Vec<Listener>,
    pub target_groups: BTreeMap<String, TargetGroupConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub default_action: Action,
}

/// What a listener does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward {
        target_group: String,
    },
    FixedResponse {
        status: u16,
        content_type: String,
        body: String,
    },
}

impl FileAction {
    pub fn validate(
        self,
        path: &str,
        groups: &BTreeMap<String, TargetGroupConfig>,
    ) -> Check<Action> {
        let kind = one_of(
            &format!("{path}.type"),
            &self.kind,
            &["forward", "fixed-response"],
        )?;
        if kind == "forward" {
            let tg_path = format!("{path}.target_group");
            let tg = self
                .target_group
                .ok_or_else(|| Violation::new(&tg_path, "required for a forward action"))?;
            if !groups.contains_key(&tg) {
                return Err(Violation::new(
                    tg_path,
                    format!("no target group named \"{tg}\""),
                ));
            }
            return Ok(Action::Forward { target_group: tg });
        }
        let status = in_range(
            &format!("{path}.status_code"),
            self.status_code.unwrap_or(200),
            200,
            599,
        )?;
        let content_type = self.content_type.unwrap_or_else(|| "text/plain".to_owned());
        one_of(
            &format!("{path}.content_type"),
            &content_type,
            &[
                "text/plain",
                "text/css",
                "text/html",
                "application/javascript",
                "application/json",
            ],
        )?;
        let body = self.message_body.unwrap_or_default();
        if body.len() > 1024 {
            return Err(Violation::new(
                format!("{path}.message_body"),
                format!("must be at most 1024 bytes, got {}", body.len()),
            ));
        }
        Ok(Action::FixedResponse {
            status: status as u16,
            content_type,
            body,
        })
    }
}

/// Refuses two listeners on one address.
pub(crate) fn unique_address(
    seen: &mut Vec<SocketAddr>,
    path: &str,
    raw: &str,
) -> Check<SocketAddr> {
    let addr = socket_addr(path, raw)?;
    if seen.contains(&addr) {
        return Err(Violation::new(
            path,
            format!("another listener uses {addr}"),
        ));
    }
    seen.push(addr);
    Ok(addr)
}

impl ConfigFile for FileAlb {
    type Valid = AlbConfig;

    fn validate(self, cx: &Context) -> Result<AlbConfig, Invalid> {
        let server = self.server.validate("server")?;
        let admin = self.admin.validate("admin")?;
        let mut target_groups = validate_target_groups(self.target_groups, Plane::Alb)?;
        if let Some(f) = &self.targets_file {
            merge_targets_file(&cx.resolve(f), &mut target_groups)?;
        }
        if self.listeners.is_empty() {
            return Err(Violation::new("listeners", "at least one listener is required").into());
        }
        let mut seen = vec![admin.address];
        let mut listeners = Vec::new();
        for (i, l) in self.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            let address = unique_address(&mut seen, &format!("{path}.address"), &l.address)?;
            one_of(
                &format!("{path}.protocol"),
                l.protocol.as_deref().unwrap_or("HTTP"),
                &["HTTP"],
            )?;
            let default_action = l
                .default_action
                .validate(&format!("{path}.default_action"), &target_groups)?;
            listeners.push(Listener {
                address,
                default_action,
            });
        }
        Ok(AlbConfig {
            server,
            admin,
            listeners,
            target_groups,
        })
    }
}
