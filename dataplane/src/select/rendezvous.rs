//! Consistent hashing on an arbitrary key by weighted rendezvous hashing (HRW): each key ranks
//! every target by a hash score; removing a target moves only the keys it owned.

use super::maglev::hash64;

/// The usable target with the highest weighted score for `key`. `id(i)` is a stable name of
/// target `i`; `weight(i) == 0` marks it unusable.
pub fn pick<S: AsRef<[u8]>>(
    key: &[u8],
    n: usize,
    id: impl Fn(usize) -> S,
    weight: impl Fn(usize) -> u32,
) -> Option<usize> {
    let k = hash64(11, key);
    let mut best: Option<(f64, usize)> = None;
    for i in 0..n {
        let w = weight(i);
        if w == 0 {
            continue;
        }
        let h = hash64(k, id(i).as_ref());
        // Map to (0, 1), then score = -w / ln(u): the weighted HRW of Schindelhauer & Schomaker.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -(w as f64) / u.ln();
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("edge-{i}")).collect()
    }

    #[test]
    fn removing_a_target_moves_only_its_keys() {
        let all = ids(5);
        let mut moved_other = 0;
        for k in 0..20_000u32 {
            let key = k.to_le_bytes();
            let a = pick(&key, 5, |i| all[i].as_str(), |_| 1).unwrap();
            let b = pick(&key, 5, |i| all[i].as_str(), |i| u32::from(i != 2)).unwrap();
            if a != 2 && a != b {
                moved_other += 1;
            }
        }
        assert_eq!(moved_other, 0);
    }

    #[test]
    fn weights_shape_the_share() {
        let all = ids(2);
        let mut seen = [0usize; 2];
        for k in 0..40_000u32 {
            seen[pick(&k.to_le_bytes(), 2, |i| all[i].as_str(), |i| [1, 3][i]).unwrap()] += 1;
        }
        let share = seen[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{seen:?}");
        assert_eq!(pick(b"k", 2, |i| all[i].as_str(), |_| 0), None);
    }
}
