//! ALB's automatic target weights (ATW): anomaly detection on every target group (a target
//! whose share of 5xx answers and connection failures stands out from its peers'), and, for
//! `weighted_random` groups with `anomaly_mitigation` on, a weight that shrinks step by step
//! while the target stays anomalous and grows back gradually once it recovers. Pure: the caller
//! counts each target's exchanges and calls [`evaluate`] every [`PERIOD`].
//!
//! AWS documents the signals, the peer comparison, the three-target minimum, the five-second
//! period and the gradual return; the thresholds below are this implementation's own.

use std::time::Duration;

/// How often verdicts are made and weights adjusted (AWS: every five seconds).
pub const PERIOD: Duration = Duration::from_secs(5);

/// A target's weight factor, in 1/1024: full weight.
pub const FULL: u32 = 1024;

/// The least a mitigated target keeps: 1/64 of its weight, so that it still answers enough
/// requests to show it has recovered.
pub const FLOOR: u32 = 16;

/// Anomaly detection needs at least this many eligible targets (AWS: three healthy ones).
pub const MIN_TARGETS: usize = 3;

/// Exchanges a target needs for a verdict. A target with fewer keeps counting into the next
/// period (a mitigated target gets little traffic) and keeps its last verdict meanwhile.
pub const MIN_EXCHANGES: u64 = 20;

/// Errors a target needs in its window to be anomalous at all.
const MIN_ERRORS: u64 = 5;

/// What one target saw since its last verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub exchanges: u64,
    /// 5xx answers and connection failures among them.
    pub errors: u64,
}

/// One target as [`evaluate`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub window: Window,
    /// Healthy and taking traffic: only these are judged and compared.
    pub eligible: bool,
    /// Its last verdict.
    pub anomalous: bool,
    /// Its weight factor now.
    pub factor: u32,
}

/// What [`evaluate`] decided for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub anomalous: bool,
    pub factor: u32,
    /// Whether its window was used up (the caller takes those counts off).
    pub consumed: bool,
}

/// Whether `window` stands out from its peers' pooled errors: at least twice their error rate,
/// ten points above it, and [`MIN_ERRORS`] errors.
fn stands_out(window: Window, peers: Window) -> bool {
    if window.errors < MIN_ERRORS || peers.exchanges == 0 {
        return false;
    }
    // Rates compared as cross products: e_i/n_i >= 2 e_p/n_p and e_i/n_i - e_p/n_p >= 1/10.
    let (ei, ni) = (u128::from(window.errors), u128::from(window.exchanges));
    let (ep, np) = (u128::from(peers.errors), u128::from(peers.exchanges));
    // The first test keeps the subtraction from going below zero.
    ei * np >= 2 * ep * ni && 10 * (ei * np - ep * ni) >= ni * np
}

/// One period's verdicts and weight factors. With `mitigate` off, factors stay [`FULL`] and
/// only the verdicts are made. At most half of the eligible targets are mitigated at once;
/// when more stand out, the worst are mitigated first.
pub fn evaluate(targets: &[Input], mitigate: bool) -> Vec<Step> {
    let eligible = targets.iter().filter(|t| t.eligible).count();
    let mut steps: Vec<Step> = targets
        .iter()
        .map(|t| Step {
            anomalous: t.eligible && eligible >= MIN_TARGETS && t.anomalous,
            factor: t.factor,
            consumed: !t.eligible || eligible < MIN_TARGETS,
        })
        .collect();
    if eligible >= MIN_TARGETS {
        let total = targets
            .iter()
            .filter(|t| t.eligible)
            .fold(Window::default(), |a, t| Window {
                exchanges: a.exchanges + t.window.exchanges,
                errors: a.errors + t.window.errors,
            });
        for (t, s) in targets.iter().zip(steps.iter_mut()) {
            if !t.eligible || t.window.exchanges < MIN_EXCHANGES {
                continue;
            }
            let peers = Window {
                exchanges: total.exchanges - t.window.exchanges,
                errors: total.errors - t.window.errors,
            };
            s.anomalous = stands_out(t.window, peers);
            s.consumed = true;
        }
    }
    // Who may be mitigated: anomalous ones, worst error rate first, up to half the eligible.
    let mut worst: Vec<usize> = (0..targets.len()).filter(|&i| steps[i].anomalous).collect();
    let rate = |i: usize| {
        let w = targets[i].window;
        w.errors as f64 / w.exchanges.max(1) as f64
    };
    worst.sort_by(|&a, &b| rate(b).total_cmp(&rate(a)));
    worst.truncate(if mitigate { eligible / 2 } else { 0 });
    for (i, s) in steps.iter_mut().enumerate() {
        s.factor = if worst.contains(&i) {
            (s.factor / 2).max(FLOOR)
        } else {
            s.factor.saturating_mul(2).min(FULL)
        };
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(exchanges: u64, errors: u64) -> Input {
        Input {
            window: Window { exchanges, errors },
            eligible: true,
            anomalous: false,
            factor: FULL,
        }
    }

    #[test]
    fn a_target_failing_far_more_than_its_peers_is_anomalous_and_mitigated() {
        let s = evaluate(&[t(100, 40), t(100, 1), t(100, 0)], true);
        assert_eq!(
            s[0],
            Step {
                anomalous: true,
                factor: FULL / 2,
                consumed: true
            }
        );
        assert!(!s[1].anomalous && !s[2].anomalous);
        assert_eq!((s[1].factor, s[2].factor), (FULL, FULL));
    }

    #[test]
    fn errors_spread_evenly_make_no_anomaly() {
        let s = evaluate(&[t(100, 30), t(100, 25), t(100, 35)], true);
        assert!(s.iter().all(|s| !s.anomalous && s.factor == FULL), "{s:?}");
        // Twice the peers' rate but a few errors only, or only a little above them.
        let s = evaluate(&[t(1000, 4), t(1000, 0), t(1000, 0)], true);
        assert!(!s[0].anomalous, "below MIN_ERRORS");
        let s = evaluate(&[t(100, 12), t(100, 5), t(100, 5)], true);
        assert!(!s[0].anomalous, "12% against 5%: under ten points apart");
    }

    #[test]
    fn fewer_than_three_eligible_targets_are_never_judged() {
        let mut two = vec![t(100, 90), t(100, 0)];
        assert!(evaluate(&two, true).iter().all(|s| !s.anomalous));
        two.push(Input {
            eligible: false,
            ..t(100, 0)
        });
        assert!(evaluate(&two, true).iter().all(|s| !s.anomalous));
    }

    #[test]
    fn mitigation_halves_to_the_floor_then_gives_back_gradually() {
        let mut inputs = vec![t(100, 50), t(100, 0), t(100, 0)];
        let mut factors = Vec::new();
        for _ in 0..8 {
            let s = evaluate(&inputs, true);
            factors.push(s[0].factor);
            inputs[0].factor = s[0].factor;
            inputs[0].anomalous = s[0].anomalous;
        }
        assert_eq!(factors, [512, 256, 128, 64, 32, 16, 16, 16]);
        // Recovered: its errors are gone.
        inputs[0].window = Window {
            exchanges: 100,
            errors: 0,
        };
        let mut back = Vec::new();
        for _ in 0..7 {
            let s = evaluate(&inputs, true);
            assert!(!s[0].anomalous);
            back.push(s[0].factor);
            inputs[0].factor = s[0].factor;
        }
        assert_eq!(back, [32, 64, 128, 256, 512, 1024, 1024]);
    }

    #[test]
    fn too_few_exchanges_keep_the_last_verdict_and_the_window() {
        let mut quiet = t(10, 10);
        quiet.anomalous = true;
        quiet.factor = FLOOR;
        let s = evaluate(&[quiet, t(100, 0), t(100, 0)], true);
        assert_eq!(
            s[0],
            Step {
                anomalous: true,
                factor: FLOOR,
                consumed: false
            }
        );
        assert!(s[1].consumed && s[2].consumed);
    }

    #[test]
    fn at_most_half_the_group_is_mitigated_worst_first() {
        // Two of three stand out against the pooled rest; half of three is one.
        let s = evaluate(&[t(100, 50), t(100, 60), t(1000, 0)], true);
        assert!(s[0].anomalous && s[1].anomalous && !s[2].anomalous);
        let mitigated: Vec<usize> = (0..3).filter(|&i| s[i].factor < FULL).collect();
        assert_eq!(mitigated, [1], "the worst one only");
        // Three of eight: all may be.
        let mut eight = vec![t(100, 60), t(100, 90), t(100, 70)];
        eight.extend(std::iter::repeat_n(t(100, 0), 5));
        let s = evaluate(&eight, true);
        let mitigated: Vec<usize> = (0..8).filter(|&i| s[i].factor < FULL).collect();
        assert_eq!(mitigated, [0, 1, 2]);
    }

    #[test]
    fn without_mitigation_only_the_verdicts_are_made() {
        let s = evaluate(&[t(100, 50), t(100, 0), t(100, 0)], false);
        assert!(s[0].anomalous);
        assert!(s.iter().all(|s| s.factor == FULL));
    }
}
