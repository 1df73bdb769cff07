//! Power of two choices over peak-EWMA latency (Finagle's and linkerd's balancer): sample two
//! usable targets at random and take the one with the lower cost (latency × load).

use std::time::{Duration, Instant};

/// A latency estimate that jumps to a new peak at once and decays toward lower samples.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    /// Estimated round trip in nanoseconds.
    pub estimate_ns: f64,
    last: Option<Instant>,
    decay: Duration,
}

impl PeakEwma {
    /// `decay` is the time constant (linkerd uses 10 s); `initial` the assumed latency of a
    /// target never measured, so new targets are neither starved nor flooded.
    pub fn new(decay: Duration, initial: Duration) -> Self {
        PeakEwma {
            estimate_ns: initial.as_nanos() as f64,
            last: None,
            decay,
        }
    }

    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let elapsed = self
                .last
                .map_or(0.0, |l| now.saturating_duration_since(l).as_nanos() as f64);
            let w = (-elapsed / self.decay.as_nanos() as f64).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.last = Some(now);
    }

    /// The cost of sending one more request: estimate × (in-flight + 1).
    pub fn cost(&self, in_flight: u64) -> f64 {
        self.estimate_ns * (in_flight as f64 + 1.0)
    }
}

/// Picks the cheaper of two distinct usable targets chosen at random; `cost(i)` is `None` for an
/// unusable target.
pub fn pick(
    n: usize,
    cost: impl Fn(usize) -> Option<f64>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let usable = (0..n).filter(|&i| cost(i).is_some()).count();
    let nth = |rank: usize| (0..n).filter(|&i| cost(i).is_some()).nth(rank);
    match usable {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rng.usize(..usable);
            let mut b = rng.usize(..usable - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            let (ca, cb) = (cost(a)?, cost(b)?);
            Some(if cb < ca { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_taken_at_once_and_decays() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_secs(10), Duration::from_millis(1));
        e.observe(Duration::from_millis(100), t0);
        assert_eq!(e.estimate_ns, 100e6);
        e.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
        // One time constant: weight e^-1 on the old value.
        let expect = 100e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((e.estimate_ns - expect).abs() < 1.0);
        assert!(e.cost(3) > e.cost(0) * 3.9);
    }

    #[test]
    fn slow_target_gets_little_traffic() {
        let costs = [1.0, 1.0, 50.0];
        let mut rng = fastrand::Rng::with_seed(3);
        let mut seen = [0usize; 3];
        for _ in 0..30_000 {
            seen[pick(3, |i| Some(costs[i]), &mut rng).unwrap()] += 1;
        }
        // The slow one wins only when it is drawn with... never: it loses every pair.
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 12_000 && seen[1] > 12_000, "{seen:?}");
    }

    #[test]
    fn equal_costs_spread_evenly_and_unusable_skipped() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut seen = [0usize; 4];
        for _ in 0..40_000 {
            seen[pick(4, |i| (i != 2).then_some(1.0), &mut rng).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0);
        for i in [0, 1, 3] {
            assert!((seen[i] as i64 - 13_333).abs() < 800, "{seen:?}");
        }
        assert_eq!(pick(1, |_| Some(1.0), &mut rng), Some(0));
        assert_eq!(pick(3, |_| None, &mut rng), None);
    }
}
