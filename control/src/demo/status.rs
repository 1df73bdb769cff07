//! The demo's live status: each data plane's `/status` (targets and their health) and the
//! request and flow rates from `/metrics`, printed every two seconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Monotonic counters sampled from `/metrics`, by plane.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub at: Option<Instant>,
    pub values: BTreeMap<String, f64>,
}

/// One sample of every plane.
#[derive(Debug, Default)]
pub struct Sample {
    pub planes: Vec<(String, Result<serde_json::Value, String>)>,
    pub counters: Counters,
    /// The edge's cache hit ratio (0..=1), by plane.
    pub hit_ratio: BTreeMap<String, f64>,
}

/// A GET through the whole pipeline (edge → nlb → alb → origin): the status line and the
/// edge's `X-Cache`.
pub async fn probe(addr: &str, path: &str) -> String {
    match fetch(addr, path).await {
        Ok(text) => {
            let status = text.lines().next().unwrap_or("").to_owned();
            let x_cache = text
                .lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("x-cache")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| "no X-Cache".into());
            format!("{status} ({x_cache})")
        }
        Err(e) => format!("failed: {e}"),
    }
}

async fn get(addr: &str, path: &str) -> Result<String, String> {
    let text = fetch(addr, path).await?;
    let (_, body) = text.split_once("\r\n\r\n").ok_or("not HTTP")?;
    Ok(body.to_owned())
}

async fn fetch(addr: &str, path: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The sum of every sample of metric `name` (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Reads `/status` and `/metrics` of each plane, given as (name, admin address).
pub async fn collect(planes: &[(&str, &str)]) -> Sample {
    let mut s = Sample::default();
    s.counters.at = Some(Instant::now());
    for (name, admin) in planes {
        let status = get(admin, "/status")
            .await
            .and_then(|b| serde_json::from_str(&b).map_err(|e| e.to_string()));
        if let Ok(m) = get(admin, "/metrics").await {
            let total = metric_sum(&m, "causeway_alb_request_count")
                + metric_sum(&m, "causeway_nlb_new_flow_count")
                + metric_sum(&m, "causeway_edge_requests_total");
            s.counters.values.insert((*name).to_owned(), total);
            if m.lines().any(|l| l.starts_with("causeway_edge_hit_ratio ")) {
                s.hit_ratio.insert(
                    (*name).to_owned(),
                    metric_sum(&m, "causeway_edge_hit_ratio"),
                );
            }
        }
        s.planes.push(((*name).to_owned(), status));
    }
    s
}

/// The status block for one sample, with rates against the previous counters.
pub fn render(now: &Sample, last: &Counters) -> String {
    let mut out = String::new();
    let secs = match (now.counters.at, last.at) {
        (Some(a), Some(b)) => a.saturating_duration_since(b).as_secs_f64(),
        _ => 0.0,
    };
    let _ = writeln!(
        out,
        "──────────────────────────────────────────────────────────────"
    );
    for (name, status) in &now.planes {
        let rate = match (now.counters.values.get(name), last.values.get(name)) {
            (Some(a), Some(b)) if secs > 0.0 => format!("{:.0}/s", (a - b) / secs),
            _ => "-".into(),
        };
        match status {
            Err(e) => {
                let _ = writeln!(out, "{name:<11} down ({e})");
            }
            Ok(v) => {
                let generation = v["generation"].as_u64().unwrap_or(0);
                let _ = write!(out, "{name:<11} gen {generation:<3} {rate:>7}  ");
                let groups = v["target_groups"].as_object().cloned().unwrap_or_default();
                if groups.is_empty() {
                    match now.hit_ratio.get(name) {
                        Some(r) => {
                            let _ = write!(out, "cache hit ratio {:.0}%", r * 100.0);
                        }
                        None => {
                            let _ = write!(out, "(no target groups)");
                        }
                    }
                }
                for (g, body) in groups {
                    let _ = write!(out, "{g}:");
                    for t in body["targets"].as_array().cloned().unwrap_or_default() {
                        let addr = t["address"].as_str().unwrap_or("?");
                        let port = addr.rsplit(':').next().unwrap_or(addr);
                        let _ = write!(out, " {port}={}", t["state"].as_str().unwrap_or("?"));
                    }
                    let _ = write!(out, "  ");
                }
                let _ = writeln!(out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_of_a_metric() {
        let m = "# TYPE x counter\ncauseway_alb_request_count{target_group=\"a\"} 3\ncauseway_alb_request_count{target_group=\"b\"} 4\ncauseway_alb_request_count_other 100\n";
        assert_eq!(metric_sum(m, "causeway_alb_request_count"), 7.0);
    }

    #[test]
    fn renders_targets_and_rates() {
        let status = serde_json::json!({
            "generation": 2,
            "target_groups": { "web": { "targets": [
                { "address": "127.0.0.1:9001", "state": "healthy" },
                { "address": "127.0.0.1:9002", "state": "unhealthy" }
            ]}}
        });
        let t0 = Instant::now();
        let last = Counters {
            at: Some(t0),
            values: [("alb".to_owned(), 100.0)].into(),
        };
        let now = Sample {
            planes: vec![
                ("alb".into(), Ok(status)),
                ("edge".into(), Err("refused".into())),
                ("edge-2".into(), Ok(serde_json::json!({ "generation": 1 }))),
            ],
            counters: Counters {
                at: Some(t0 + Duration::from_secs(2)),
                values: [("alb".to_owned(), 300.0)].into(),
            },
            hit_ratio: [("edge-2".to_owned(), 0.875)].into(),
        };
        let text = render(&now, &last);
        assert!(text.contains("gen 2") && text.contains("100/s"), "{text}");
        assert!(text.contains("9001=healthy 9002=unhealthy"), "{text}");
        assert!(text.contains("edge        down (refused)"), "{text}");
        assert!(text.contains("cache hit ratio 88%"), "{text}");
    }
}
