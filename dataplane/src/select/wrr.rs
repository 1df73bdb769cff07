//! Smooth weighted round robin (nginx's algorithm): exact proportions, spread evenly in time.

use std::sync::Mutex;

/// Per-group state: each target's current weight.
#[derive(Debug, Default)]
pub struct SmoothWrr {
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks among `n` targets; `weight(i) == 0` marks a target unusable.
    pub fn pick(&self, n: usize, weight: impl Fn(usize) -> u32) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.len() != n {
            cur.clear();
            cur.resize(n, 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            let w = weight(i) as i64;
            if w == 0 {
                continue;
            }
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cur[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_rotate() {
        let s = SmoothWrr::new();
        let picks: Vec<usize> = (0..6).map(|_| s.pick(3, |_| 1).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_exact_and_smooth() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a, never five a's in a row.
        let w = [5u32, 1, 1];
        let s = SmoothWrr::new();
        let picks: Vec<usize> = (0..7).map(|_| s.pick(3, |i| w[i]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut count = [0; 3];
        for _ in 0..700 {
            count[s.pick(3, |i| w[i]).unwrap()] += 1;
        }
        assert_eq!(count, [500, 100, 100]);
    }

    #[test]
    fn unusable_targets_are_skipped() {
        let s = SmoothWrr::new();
        for _ in 0..10 {
            assert_ne!(s.pick(3, |i| if i == 1 { 0 } else { 1 }), Some(1));
        }
        assert_eq!(s.pick(3, |_| 0), None);
    }
}
