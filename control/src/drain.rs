//! Drain before scale-in: an instance that a Terminating lifecycle hook holds in
//! `Terminating:Wait` is first taken out of every data plane's targets (by the reconcile pass),
//! then watched through each data plane's `/status` until none has in-flight work for it (or
//! the drain timeout passes), with heartbeats on long drains, and only then is its lifecycle
//! action completed with CONTINUE. The verdict on a `/status` document is pure; the loop talks
//! to the world through [`Fleet`], so it runs on a paused clock in tests.

use crate::discover::{Hook, Instance};
use causeway_config::control::{ControlConfig, Lifecycle};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How often a draining instance's data planes are asked.
const POLL: Duration = Duration::from_millis(250);

/// Where a terminating instance may still have work: one target in one data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub plane: String,
    pub admin: SocketAddr,
    pub target_group: String,
    pub address: SocketAddr,
}

/// An instance waiting on its Terminating hook, and every place it was a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub instance: String,
    pub group: String,
    pub hook: Hook,
    pub places: Vec<Place>,
}

/// The instances to drain: those in `Terminating:Wait` under a Terminating hook, with the
/// data-plane targets the mappings made of them.
pub fn waiting(cfg: &ControlConfig, instances: &[Instance]) -> Vec<Waiting> {
    instances
        .iter()
        .filter_map(|i| {
            let hook = i.awaits_drain()?.clone();
            let ip = i.address?;
            let places = cfg
                .target_groups
                .iter()
                .filter(|m| m.auto_scaling_group.selects(&i.group, &i.group_tags))
                .filter_map(|m| {
                    let plane = cfg.data_planes.iter().find(|d| d.name == m.data_plane)?;
                    Some(Place {
                        plane: plane.name.clone(),
                        admin: plane.admin,
                        target_group: m.target_group.clone(),
                        address: SocketAddr::new(ip, m.port),
                    })
                })
                .collect();
            Some(Waiting {
                instance: i.id.clone(),
                group: i.group.clone(),
                hook,
                places,
            })
        })
        .collect()
}

/// What one data plane's `/status` says of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a target any more, or draining with nothing in flight.
    Drained,
    /// Draining, with this much work still in flight.
    Busy(u64),
    /// Still a target that gets new work (its removal has not been applied there).
    Routed,
}

/// Reads a data plane's `/status` document for one target.
pub fn verdict(status: &Value, target_group: &str, address: SocketAddr) -> Verdict {
    let address = address.to_string();
    let targets = status["target_groups"][target_group]["targets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut in_flight = 0;
    for t in targets.iter().filter(|t| t["address"] == address.as_str()) {
        match t["state"].as_str() {
            Some("draining") => in_flight += t["in_flight"].as_u64().unwrap_or(0),
            Some("unused") => {}
            _ => return Verdict::Routed,
        }
    }
    if in_flight > 0 {
        Verdict::Busy(in_flight)
    } else {
        Verdict::Drained
    }
}

/// The world a drain talks to: data planes' `/status`, and the lifecycle calls.
pub trait Fleet: Send + Sync {
    fn status(&self, admin: SocketAddr) -> impl Future<Output = Result<Value, String>> + Send;
    fn heartbeat(&self, w: &Waiting) -> impl Future<Output = Result<(), String>> + Send;
    fn complete(&self, w: &Waiting) -> impl Future<Output = Result<(), String>> + Send;
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every data plane was done with it; the action was completed after this long.
    Drained { after: Duration, heartbeats: u32 },
    /// The drain timeout passed first (the last verdicts say why); the action was completed
    /// anyway, as Auto Scaling would at its own timeout.
    TimedOut {
        after: Duration,
        heartbeats: u32,
        last: Vec<(String, Verdict)>,
    },
    /// CompleteLifecycleAction failed (the instance may be gone already).
    Failed(String),
}

impl Outcome {
    /// The label of `causeway_control_lifecycle_actions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Drained { .. } => "drained",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Waits until no data plane has work for `w`, heartbeating, then completes its action.
pub async fn drain<F: Fleet>(fleet: &F, w: &Waiting, policy: &Lifecycle) -> Outcome {
    let start = Instant::now();
    let deadline = start + policy.drain_timeout;
    let every = policy
        .heartbeat_interval
        .unwrap_or(w.hook.heartbeat_timeout / 3)
        .max(Duration::from_secs(1));
    let mut next_heartbeat = start + every;
    let mut heartbeats = 0;
    loop {
        let mut last = Vec::new();
        for p in &w.places {
            let v = match fleet.status(p.admin).await {
                Ok(status) => verdict(&status, &p.target_group, p.address),
                Err(e) => {
                    tracing::warn!(instance = %w.instance, plane = %p.plane, error = %e,
                        "drain: data plane status unavailable");
                    Verdict::Routed
                }
            };
            if v != Verdict::Drained {
                last.push((p.plane.clone(), v));
            }
        }
        let now = Instant::now();
        let timed_out = now >= deadline;
        if last.is_empty() || timed_out {
            if let Err(e) = fleet.complete(w).await {
                return Outcome::Failed(e);
            }
            let after = now - start;
            return if last.is_empty() {
                Outcome::Drained { after, heartbeats }
            } else {
                Outcome::TimedOut {
                    after,
                    heartbeats,
                    last,
                }
            };
        }
        if now >= next_heartbeat {
            match fleet.heartbeat(w).await {
                Ok(()) => heartbeats += 1,
                Err(e) => {
                    tracing::warn!(instance = %w.instance, error = %e, "drain: heartbeat failed")
                }
            }
            next_heartbeat = now + every;
        }
        let wake = (now + POLL).min(deadline).min(next_heartbeat);
        tokio::time::sleep_until(wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    fn waiting() -> Waiting {
        Waiting {
            instance: "i-1".into(),
            group: "wordpress".into(),
            hook: Hook {
                name: "drain".into(),
                heartbeat_timeout: Duration::from_secs(30),
            },
            places: vec![
                Place {
                    plane: "alb-1".into(),
                    admin: "127.0.0.1:9182".parse().unwrap(),
                    target_group: "wordpress".into(),
                    address: "127.10.1.4:80".parse().unwrap(),
                },
                Place {
                    plane: "alb-2".into(),
                    admin: "127.0.0.1:9183".parse().unwrap(),
                    target_group: "wordpress".into(),
                    address: "127.10.1.4:80".parse().unwrap(),
                },
            ],
        }
    }

    fn status(state: &str, in_flight: u64) -> Value {
        json!({ "generation": 3, "target_groups": { "wordpress": { "targets": [
            { "address": "127.10.1.5:80", "state": "healthy", "in_flight": 7 },
            { "address": "127.10.1.4:80", "state": state, "in_flight": in_flight },
        ]}}})
    }

    #[test]
    fn the_verdict_reads_state_and_in_flight() {
        let a: SocketAddr = "127.10.1.4:80".parse().unwrap();
        assert_eq!(
            verdict(&status("healthy", 0), "wordpress", a),
            Verdict::Routed
        );
        assert_eq!(
            verdict(&status("draining", 2), "wordpress", a),
            Verdict::Busy(2)
        );
        assert_eq!(
            verdict(&status("draining", 0), "wordpress", a),
            Verdict::Drained
        );
        assert_eq!(
            verdict(&status("unused", 0), "wordpress", a),
            Verdict::Drained
        );
        let gone = json!({ "target_groups": { "wordpress": { "targets": [] } } });
        assert_eq!(verdict(&gone, "wordpress", a), Verdict::Drained);
        assert_eq!(
            verdict(&status("unhealthy", 0), "wordpress", a),
            Verdict::Routed,
            "an unhealthy target is still registered: its removal has not been applied"
        );
        assert_eq!(verdict(&status("healthy", 0), "other", a), Verdict::Drained);
    }

    /// A fleet whose alb-1 is busy until `busy_until`; alb-2 is done at once.
    struct Fake {
        start: Instant,
        busy_until: Duration,
        calls: Mutex<Vec<(Duration, &'static str)>>,
    }

    impl Fleet for Fake {
        async fn status(&self, admin: SocketAddr) -> Result<Value, String> {
            let busy = admin.port() == 9182 && self.start.elapsed() < self.busy_until;
            Ok(if busy {
                status("draining", 1)
            } else {
                status("draining", 0)
            })
        }
        async fn heartbeat(&self, _: &Waiting) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push((self.start.elapsed(), "heartbeat"));
            Ok(())
        }
        async fn complete(&self, _: &Waiting) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push((self.start.elapsed(), "complete"));
            Ok(())
        }
    }

    fn policy(timeout: u64) -> Lifecycle {
        Lifecycle {
            enabled: true,
            drain_timeout: Duration::from_secs(timeout),
            heartbeat_interval: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn completes_once_every_plane_is_drained_with_heartbeats_meanwhile() {
        let fake = Fake {
            start: Instant::now(),
            busy_until: Duration::from_secs(25),
            calls: Mutex::new(Vec::new()),
        };
        let out = drain(&fake, &waiting(), &policy(300)).await;
        let calls = fake.calls.lock().unwrap().clone();
        // Heartbeats every 10 s (a third of the hook's 30 s), then the completion at 25 s.
        assert_eq!(
            calls,
            vec![
                (Duration::from_secs(10), "heartbeat"),
                (Duration::from_secs(20), "heartbeat"),
                (Duration::from_secs(25), "complete"),
            ]
        );
        assert_eq!(
            out,
            Outcome::Drained {
                after: Duration::from_secs(25),
                heartbeats: 2
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_instance_completes_at_once() {
        let fake = Fake {
            start: Instant::now(),
            busy_until: Duration::ZERO,
            calls: Mutex::new(Vec::new()),
        };
        let out = drain(&fake, &waiting(), &policy(300)).await;
        assert_eq!(
            *fake.calls.lock().unwrap(),
            vec![(Duration::ZERO, "complete")]
        );
        assert_eq!(out.label(), "drained");
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_timeout_completes_anyway_and_says_why() {
        let fake = Fake {
            start: Instant::now(),
            busy_until: Duration::from_secs(3600),
            calls: Mutex::new(Vec::new()),
        };
        let mut p = policy(45);
        p.heartbeat_interval = Some(Duration::from_secs(20));
        let out = drain(&fake, &waiting(), &p).await;
        assert_eq!(
            *fake.calls.lock().unwrap(),
            vec![
                (Duration::from_secs(20), "heartbeat"),
                (Duration::from_secs(40), "heartbeat"),
                (Duration::from_secs(45), "complete"),
            ]
        );
        assert_eq!(
            out,
            Outcome::TimedOut {
                after: Duration::from_secs(45),
                heartbeats: 2,
                last: vec![("alb-1".into(), Verdict::Busy(1))],
            }
        );
    }
}
