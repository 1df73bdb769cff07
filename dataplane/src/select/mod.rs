//! Target selection algorithms: pure functions over indices, with no I/O, so they can be unit
//! tested and benchmarked. A target is offered to an algorithm through closures that say whether
//! it is usable and what its weight, load or cost is.

pub mod maglev;
pub mod p2c;
pub mod rendezvous;
pub mod slow_start;
pub mod wrr;

pub use maglev::Maglev;
pub use p2c::PeakEwma;
pub use wrr::SmoothWrr;

/// Least outstanding requests: the usable target with the fewest in-flight requests.
/// Ties are broken from a random starting point so equal targets share the load.
pub fn least_outstanding(
    n: usize,
    load: impl Fn(usize) -> Option<u64>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = rng.usize(..n);
    let mut best: Option<(u64, usize)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if let Some(l) = load(i) {
            if best.is_none_or(|(b, _)| l < b) {
                best = Some((l, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Weighted random: a usable target with probability proportional to its weight.
pub fn weighted_random(
    n: usize,
    weight: impl Fn(usize) -> u32,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let total: u64 = (0..n).map(|i| weight(i) as u64).sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.u64(..total);
    for i in 0..n {
        let w = weight(i) as u64;
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_outstanding_picks_the_least_loaded_usable() {
        let loads = [5u64, 2, 9, 2];
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = [0usize; 4];
        for _ in 0..1000 {
            let i = least_outstanding(4, |i| Some(loads[i]), &mut rng).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen[0] + seen[2], 0);
        assert!(seen[1] > 400 && seen[3] > 400, "ties shared: {seen:?}");
        // An unusable target is never chosen, however idle.
        let i = least_outstanding(4, |i| (i != 1 && i != 3).then_some(loads[i]), &mut rng);
        assert_eq!(i, Some(0));
        assert_eq!(least_outstanding(3, |_| None, &mut rng), None);
    }

    #[test]
    fn weighted_random_follows_weights() {
        let w = [1u32, 3, 0, 6];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = [0usize; 4];
        let n = 100_000;
        for _ in 0..n {
            seen[weighted_random(4, |i| w[i], &mut rng).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0);
        for (i, &wi) in w.iter().enumerate() {
            let expect = n as f64 * wi as f64 / 10.0;
            assert!(
                (seen[i] as f64 - expect).abs() < n as f64 * 0.01,
                "{i}: {seen:?}"
            );
        }
        assert_eq!(weighted_random(2, |_| 0, &mut rng), None);
    }
}
