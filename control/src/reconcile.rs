//! Reconcile: discover, render each data plane's targets file, and when it changed (and the
//! safety brake allows), write it atomically (temp file + rename), reload the data plane
//! (SIGHUP by pidfile, else `POST /reload` on its admin address) and confirm through `/status`
//! that the new generation is live. `plan` stops before writing.

use crate::discover::{self, Instance};
use crate::render::{self, Brake, Change, Groups};
use causeway_config::control::{ControlConfig, DataPlane, Provider, Selector};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error(
        "{plane}: safety brake: {brake} (keeping the last good set; confirm with `apply --force`)"
    )]
    Brake { plane: String, brake: Brake },
    #[error("{plane}: writing {file}: {source}")]
    Write {
        plane: String,
        file: String,
        source: std::io::Error,
    },
    #[error("{plane}: reload failed: {why}")]
    Reload { plane: String, why: String },
}

/// Where instances come from, built once per process.
#[derive(Debug, Clone)]
pub enum Source {
    Static(PathBuf),
    Aws(std::sync::Arc<crate::aws::Discovery>),
}

impl Source {
    pub async fn new(cfg: &ControlConfig) -> Source {
        match &cfg.provider {
            Provider::Static { file } => Source::Static(file.clone()),
            Provider::Aws { region, .. } => Source::Aws(std::sync::Arc::new(
                crate::aws::Discovery::new(region).await,
            )),
        }
    }

    /// Discovers the instances of the groups that the mappings select, by name or by tags.
    pub async fn discover(&self, cfg: &ControlConfig) -> Result<Vec<Instance>, ReconcileError> {
        let selectors: BTreeSet<&Selector> = cfg
            .target_groups
            .iter()
            .map(|m| &m.auto_scaling_group)
            .collect();
        let found = match self {
            Source::Static(file) => discover::read_static(file)
                .map_err(|e| ReconcileError::Discovery(e.to_string()))
                .map(|all| {
                    all.into_iter()
                        .filter(|i| selectors.iter().any(|s| s.selects(&i.group, &i.group_tags)))
                        .collect()
                }),
            Source::Aws(aws) => {
                let (names, tags) = split(&selectors);
                aws.discover(&names, &tags)
                    .await
                    .map_err(|e| ReconcileError::Discovery(e.to_string()))
            }
        };
        if found.is_err() {
            metrics::counter!("causeway_control_discovery_failures_total").increment(1);
        }
        found
    }
}

/// Group names and tag sets, each once, in a stable order.
pub fn split(selectors: &BTreeSet<&Selector>) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut names = Vec::new();
    let mut tags = Vec::new();
    for s in selectors {
        match s {
            Selector::Name(n) => names.push(n.clone()),
            Selector::Tags(t) => tags.push(t.clone()),
        }
    }
    (names, tags)
}

/// One data plane's planned change.
#[derive(Debug)]
pub struct Planned {
    pub plane: DataPlane,
    pub text: String,
    pub changed: bool,
    pub changes: BTreeMap<String, Change>,
    pub brake: Result<(), Brake>,
}

/// Renders every data plane's file and compares it with what is on disk.
pub fn plan(cfg: &ControlConfig, instances: &[Instance]) -> Vec<Planned> {
    let want = render::desired(cfg, instances);
    cfg.data_planes
        .iter()
        .map(|d| {
            let groups = want.get(&d.name).cloned().unwrap_or_default();
            let text = render::render(&groups);
            let on_disk = std::fs::read_to_string(&d.targets_file).ok();
            let now: Groups = render::current(on_disk.as_deref());
            let changes = render::diff(&now, &groups);
            Planned {
                plane: d.clone(),
                changed: on_disk.as_deref() != Some(text.as_str()),
                brake: render::brake(&changes, cfg.max_removal_fraction),
                text,
                changes,
            }
        })
        .collect()
}

/// The plan as text: per data plane and group, each target added (+), removed (-) or removed
/// to drain before its instance terminates (~), with IP and zone, and how many stay.
pub fn describe(instances: &[Instance], planned: &[Planned]) -> String {
    let mut s = String::new();
    s.push_str(&format!("discovered {} instances:\n", instances.len()));
    for i in instances {
        s.push_str(&format!(
            "  {:<20} {:<12} {:<16} {:<12} {}{}\n",
            i.id,
            i.group,
            i.address.map_or("-".into(), |a| a.to_string()),
            if i.zone.is_empty() { "-" } else { &i.zone },
            i.lifecycle,
            if i.healthy { "" } else { " (unhealthy)" },
        ));
    }
    for p in planned {
        s.push_str(&format!(
            "{} ({}): {}\n",
            p.plane.name,
            p.plane.targets_file.display(),
            if p.changed { "changes" } else { "no change" }
        ));
        for (group, c) in &p.changes {
            for t in &c.added {
                s.push_str(&format!("  + {group} {} {} {}\n", t.address, t.id, t.zone));
            }
            for t in &c.removed {
                let hook = instances
                    .iter()
                    .find(|i| i.id == t.id)
                    .and_then(Instance::awaits_drain);
                match hook {
                    Some(h) => s.push_str(&format!(
                        "  ~ {group} {} {} {} draining, then CompleteLifecycleAction on hook {}\n",
                        t.address, t.id, t.zone, h.name
                    )),
                    None => s.push_str(&format!("  - {group} {} {} {}\n", t.address, t.id, t.zone)),
                }
            }
            s.push_str(&format!("    {group}: {} unchanged\n", c.kept));
        }
        if let Err(b) = &p.brake {
            s.push_str(&format!("  safety brake: {b}\n"));
        }
    }
    s
}

/// Applies a plan: writes and reloads each changed data plane. With `force`, the brake is
/// overridden (the operator's confirmation).
pub async fn apply(planned: &[Planned], force: bool) -> Result<usize, ReconcileError> {
    let mut reloaded = 0;
    for p in planned.iter().filter(|p| p.changed) {
        if let (Err(b), false) = (&p.brake, force) {
            metrics::counter!("causeway_control_safety_brake_total", "data_plane" => p.plane.name.clone())
                .increment(1);
            return Err(ReconcileError::Brake {
                plane: p.plane.name.clone(),
                brake: b.clone(),
            });
        }
        write_atomically(&p.plane.targets_file, &p.text).map_err(|source| {
            ReconcileError::Write {
                plane: p.plane.name.clone(),
                file: p.plane.targets_file.display().to_string(),
                source,
            }
        })?;
        reload(&p.plane)
            .await
            .map_err(|why| ReconcileError::Reload {
                plane: p.plane.name.clone(),
                why,
            })?;
        reloaded += 1;
    }
    Ok(reloaded)
}

/// Temp file in the same directory, then rename: a reader sees the old or the new file, whole.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Reloads a data plane and waits until `/status` shows a newer generation.
async fn reload(d: &DataPlane) -> Result<(), String> {
    let before = generation(d.admin).await?;
    match &d.pidfile {
        Some(pidfile) => {
            let pid = std::fs::read_to_string(pidfile)
                .map_err(|e| format!("{}: {e}", pidfile.display()))?;
            let pid = pid.trim();
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{}: not a pid", pidfile.display()));
            }
            let ok = std::process::Command::new("kill")
                .args(["-HUP", pid])
                .status()
                .map_err(|e| format!("kill: {e}"))?
                .success();
            if !ok {
                return Err(format!("kill -HUP {pid} failed"));
            }
        }
        None => {
            let (status, body) = admin_request(d.admin, "POST", "/reload").await?;
            if status != 200 {
                return Err(format!("POST /reload answered {status}: {}", body.trim()));
            }
        }
    }
    for _ in 0..100 {
        if generation(d.admin).await? > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the new generation did not show in /status within 10 s".into())
}

async fn generation(admin: SocketAddr) -> Result<u64, String> {
    status(admin).await?["generation"]
        .as_u64()
        .ok_or_else(|| "no generation in /status".to_owned())
}

/// A data plane's `/status` document.
pub async fn status(admin: SocketAddr) -> Result<serde_json::Value, String> {
    let (code, body) = admin_request(admin, "GET", "/status").await?;
    if code != 200 {
        return Err(format!("/status answered {code}"));
    }
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

impl crate::drain::Fleet for crate::aws::Discovery {
    async fn status(&self, admin: SocketAddr) -> Result<serde_json::Value, String> {
        status(admin).await
    }

    async fn heartbeat(&self, w: &crate::drain::Waiting) -> Result<(), String> {
        crate::aws::Discovery::heartbeat(self, &w.group, &w.hook.name, &w.instance)
            .await
            .map_err(|e| e.to_string())
    }

    async fn complete(&self, w: &crate::drain::Waiting) -> Result<(), String> {
        crate::aws::Discovery::complete(self, &w.group, &w.hook.name, &w.instance)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The `run` loop's debounce: a changed plan is applied only once discovery has returned the
/// same change for `quiet` (a burst of scaling events becomes one reload).
#[derive(Debug)]
pub struct Debounce {
    quiet: Duration,
    pending: Option<(u64, tokio::time::Instant)>,
}

/// What the loop does with this pass's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Idle,
    /// Apply it now.
    Apply,
    /// Look again after this long; apply if it is still the same.
    Wait(Duration),
}

impl Debounce {
    pub fn new(quiet: Duration) -> Debounce {
        Debounce {
            quiet,
            pending: None,
        }
    }

    /// `change`: a fingerprint of what the pass would write, `None` when nothing changed.
    pub fn observe(&mut self, change: Option<u64>, now: tokio::time::Instant) -> Step {
        let Some(fp) = change else {
            self.pending = None;
            return Step::Idle;
        };
        match self.pending {
            _ if self.quiet.is_zero() => Step::Apply,
            Some((p, since)) if p == fp => {
                let waited = now - since;
                if waited >= self.quiet {
                    self.pending = None;
                    Step::Apply
                } else {
                    Step::Wait(self.quiet - waited)
                }
            }
            _ => {
                self.pending = Some((fp, now));
                Step::Wait(self.quiet)
            }
        }
    }
}

/// A fingerprint of what a plan would write, `None` when it changes nothing.
pub fn fingerprint(planned: &[Planned]) -> Option<u64> {
    let mut text = String::new();
    for p in planned.iter().filter(|p| p.changed) {
        text.push_str(&p.plane.name);
        text.push('\0');
        text.push_str(&p.text);
    }
    (!text.is_empty()).then(|| render::fnv(text.as_bytes()))
}

/// One HTTP/1.1 request to a data plane's admin server.
async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(15), io)
        .await
        .map_err(|_| format!("admin {addr}: timed out"))?
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("admin {addr}: not HTTP"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn the_debounce_applies_a_change_once_it_holds_still() {
        let mut d = Debounce::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(d.observe(None, t0), Step::Idle);
        assert_eq!(d.observe(Some(1), t0), Step::Wait(Duration::from_secs(5)));
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(d.observe(Some(1), t2), Step::Wait(Duration::from_secs(3)));
        // Another change restarts the wait.
        assert_eq!(d.observe(Some(2), t2), Step::Wait(Duration::from_secs(5)));
        assert_eq!(d.observe(Some(2), t2 + Duration::from_secs(5)), Step::Apply);
        // Back to nothing to do, then a new change waits again.
        let t9 = t0 + Duration::from_secs(9);
        assert_eq!(d.observe(None, t9), Step::Idle);
        assert_eq!(d.observe(Some(2), t9), Step::Wait(Duration::from_secs(5)));
        let mut now = Debounce::new(Duration::ZERO);
        assert_eq!(now.observe(Some(3), t0), Step::Apply);
    }
}
