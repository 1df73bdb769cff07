//! Render, pure: the desired targets of each data plane's target groups from the discovered
//! instances, the targets file text (deterministic: same state, same bytes), the diff against
//! what a data plane has now, and the safety brake's verdict.

use crate::discover::Instance;
use causeway_config::control::ControlConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// One target as rendered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub address: SocketAddr,
    pub id: String,
    pub zone: String,
}

/// Target group name → its targets, sorted.
pub type Groups = BTreeMap<String, Vec<Target>>;

/// Data plane name → its target groups.
pub fn desired(cfg: &ControlConfig, instances: &[Instance]) -> BTreeMap<String, Groups> {
    let mut out: BTreeMap<String, Groups> = cfg
        .data_planes
        .iter()
        .map(|d| (d.name.clone(), Groups::new()))
        .collect();
    for m in &cfg.target_groups {
        let mut targets: Vec<Target> = instances
            .iter()
            .filter(|i| m.auto_scaling_group.selects(&i.group, &i.group_tags) && i.serves())
            .filter_map(|i| {
                Some(Target {
                    address: SocketAddr::new(i.address?, m.port),
                    id: i.id.clone(),
                    zone: i.zone.clone(),
                })
            })
            .collect();
        targets.sort();
        targets.dedup();
        out.entry(m.data_plane.clone())
            .or_default()
            .entry(m.target_group.clone())
            .or_default()
            .extend(targets);
    }
    for groups in out.values_mut() {
        for t in groups.values_mut() {
            t.sort();
            t.dedup();
        }
    }
    out
}

/// The targets file for one data plane. `generation` is a hash of the content, so a data plane's
/// `/status` and the file say which discovered state is live.
pub fn render(groups: &Groups) -> String {
    let mut body = String::new();
    for (name, targets) in groups {
        body.push_str(&format!(
            "\n[target_groups.{}]\ntargets = [\n",
            quote_key(name)
        ));
        for t in targets {
            body.push_str(&format!(
                "  {{ address = \"{}\", id = \"{}\", zone = \"{}\" }},\n",
                t.address,
                escape(&t.id),
                escape(&t.zone)
            ));
        }
        body.push_str("]\n");
    }
    let generation = fnv(body.as_bytes());
    format!(
        "# Rendered by causeway-control from the discovered state; do not edit.\ngeneration = \"{generation:016x}\"\n{body}"
    )
}

fn quote_key(k: &str) -> String {
    if k.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_owned()
    } else {
        format!("\"{}\"", escape(k))
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// FNV-1a, 64 bits: a stable content hash (not for security).
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads the targets a data plane has now from its targets file (missing file: none).
pub fn current(text: Option<&str>) -> Groups {
    let mut out = Groups::new();
    let Some(text) = text else { return out };
    let Ok(raw) =
        causeway_config::deserialize::<causeway_config::targets::FileTargets>("targets", text)
    else {
        return out;
    };
    for (name, list) in raw.target_groups {
        let mut ts: Vec<Target> = list
            .targets
            .into_iter()
            .filter_map(|t| {
                Some(Target {
                    address: t.address.parse().ok()?,
                    id: t.id.unwrap_or_default(),
                    zone: t.zone.unwrap_or_default(),
                })
            })
            .collect();
        ts.sort();
        out.insert(name, ts);
    }
    out
}

/// What changes for one target group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<Target>,
    pub removed: Vec<Target>,
    pub kept: usize,
}

/// The per-group changes from `now` to `want`.
pub fn diff(now: &Groups, want: &Groups) -> BTreeMap<String, Change> {
    let names: BTreeSet<&String> = now.keys().chain(want.keys()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        let empty = Vec::new();
        let a: BTreeSet<&Target> = now.get(name).unwrap_or(&empty).iter().collect();
        let b: BTreeSet<&Target> = want.get(name).unwrap_or(&empty).iter().collect();
        out.insert(
            name.clone(),
            Change {
                added: b.difference(&a).map(|t| (*t).clone()).collect(),
                removed: a.difference(&b).map(|t| (*t).clone()).collect(),
                kept: a.intersection(&b).count(),
            },
        );
    }
    out
}

/// Why the safety brake holds the last good set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Brake {
    #[error("target group {group} would lose all {had} targets")]
    Empty { group: String, had: usize },
    #[error("target group {group} would lose {removed} of {had} targets, more than the allowed {max:.0}%")]
    TooMany {
        group: String,
        removed: usize,
        had: usize,
        max: f64,
    },
}

/// Checks a change against the brake: never empty a group that has targets, never remove more
/// than `max_fraction` of a group's targets at once.
pub fn brake(changes: &BTreeMap<String, Change>, max_fraction: f64) -> Result<(), Brake> {
    for (group, c) in changes {
        let had = c.kept + c.removed.len();
        if had == 0 || c.removed.is_empty() {
            continue;
        }
        if c.kept == 0 && c.added.is_empty() {
            return Err(Brake::Empty {
                group: group.clone(),
                had,
            });
        }
        if c.removed.len() as f64 > max_fraction * had as f64 {
            return Err(Brake::TooMany {
                group: group.clone(),
                removed: c.removed.len(),
                had,
                max: max_fraction * 100.0,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ip: &str, id: &str) -> Target {
        Target {
            address: format!("{ip}:80").parse().unwrap(),
            id: id.into(),
            zone: "us-east-1a".into(),
        }
    }

    #[test]
    fn rendering_is_deterministic_and_reads_back() {
        let mut g = Groups::new();
        g.insert(
            "wordpress".into(),
            vec![t("10.0.0.1", "i-1"), t("10.0.0.2", "i-2")],
        );
        let a = render(&g);
        assert_eq!(a, render(&g), "same state, same bytes");
        assert!(a.contains("generation = \""));
        assert_eq!(current(Some(&a)), g);
        let mut g2 = g.clone();
        g2.get_mut("wordpress").unwrap().pop();
        assert_ne!(render(&g2), a);
    }

    #[test]
    fn diff_and_brake() {
        let mut now = Groups::new();
        now.insert(
            "w".into(),
            vec![
                t("10.0.0.1", "i-1"),
                t("10.0.0.2", "i-2"),
                t("10.0.0.3", "i-3"),
                t("10.0.0.4", "i-4"),
            ],
        );
        let mut want = Groups::new();
        want.insert(
            "w".into(),
            vec![
                t("10.0.0.1", "i-1"),
                t("10.0.0.2", "i-2"),
                t("10.0.0.5", "i-5"),
            ],
        );
        let d = diff(&now, &want);
        assert_eq!(d["w"].added, vec![t("10.0.0.5", "i-5")]);
        assert_eq!(d["w"].removed.len(), 2);
        assert_eq!(d["w"].kept, 2);
        assert_eq!(brake(&d, 0.5), Ok(()), "2 of 4 is not more than half");
        assert!(matches!(
            brake(&d, 0.25),
            Err(Brake::TooMany {
                removed: 2,
                had: 4,
                ..
            })
        ));
        let empty = diff(&now, &Groups::new());
        assert!(matches!(
            brake(&empty, 1.0),
            Err(Brake::Empty { had: 4, .. })
        ));
        let first = diff(&Groups::new(), &want);
        assert_eq!(brake(&first, 0.0), Ok(()), "adding is always allowed");
    }
}
