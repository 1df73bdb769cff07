//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table built from the config
//! alone, so every replica with the same targets maps a flow to the same target.

/// A built Maglev table over `n` backends identified by name.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// Table of backend indices, `size` entries.
    table: Vec<u32>,
    /// Per-backend (offset, skip), to walk a key's own preference list.
    perms: Vec<(u64, u64)>,
    size: u64,
}

/// FNV-1a 64 with a seed, so the two permutation hashes are independent.
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64), since FNV's low bits mix poorly for short keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(mut m: u64) -> u64 {
    while !is_prime(m) {
        m += 1;
    }
    m
}

/// The table size for `backends`: a prime at least 100 × backends (the paper asks M ≫ N), taken
/// from a fixed ladder (65537, then the next prime after each ×10) so that adding or removing a
/// target keeps the size, and with it the other targets' slots.
pub fn table_size(backends: usize) -> u64 {
    let need = backends as u64 * 100;
    let mut m = 65_537;
    while m < need {
        m = next_prime(m * 10);
    }
    m
}

impl Maglev {
    /// Builds the table for backends named `names` (their order does not matter to the result
    /// for a given name set only if callers sort them; the nlb passes them in config order,
    /// which replicas share).
    pub fn new<S: AsRef<[u8]>>(names: &[S]) -> Self {
        Self::with_size(names, table_size(names.len()))
    }

    /// Builds with an explicit prime table size (used by the golden test).
    pub fn with_size<S: AsRef<[u8]>>(names: &[S], size: u64) -> Self {
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                let offset = hash64(0, name.as_ref()) % size;
                let skip = hash64(1, name.as_ref()) % (size - 1) + 1;
                (offset, skip)
            })
            .collect();
        Self::from_perms(perms, size)
    }

    /// Populates the table from each backend's (offset, skip) permutation.
    fn from_perms(perms: Vec<(u64, u64)>, size: u64) -> Self {
        let n = perms.len();
        let mut table = vec![u32::MAX; if n == 0 { 0 } else { size as usize }];
        if n > 0 {
            // The paper's Populate: backends take turns claiming their next preferred free slot.
            let mut next = vec![0u64; n];
            let mut filled = 0u64;
            'outer: loop {
                for i in 0..n {
                    let (offset, skip) = perms[i];
                    let mut c = (offset + next[i] * skip) % size;
                    while table[c as usize] != u32::MAX {
                        next[i] += 1;
                        c = (offset + next[i] * skip) % size;
                    }
                    table[c as usize] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == size {
                        break 'outer;
                    }
                }
            }
        }
        Maglev { table, perms, size }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The backend for a key hash.
    pub fn lookup(&self, key: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(key % self.size) as usize] as usize)
    }

    /// The first backend for `key` that `usable` accepts: the table's choice, then the rest of
    /// the key's preference order (table slots key, key+1, ... ), which every replica walks alike.
    pub fn lookup_usable(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.lookup(key)?;
        if usable(first) {
            return Some(first);
        }
        self.preference(key).find(|&i| usable(i))
    }

    /// The distinct backends in the order a key prefers them: walking the table from the key's
    /// slot. Deterministic across replicas; used to fail over on refusal.
    pub fn preference(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.perms.len();
        let start = if self.size == 0 { 0 } else { key % self.size };
        let mut seen = vec![false; n];
        let mut left = n;
        (0..self.table.len()).filter_map(move |k| {
            if left == 0 {
                return None;
            }
            let i = self.table[((start + k as u64) % self.size) as usize] as usize;
            if seen[i] {
                None
            } else {
                seen[i] = true;
                left -= 1;
                Some(i)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of the paper's Pseudocode 1 (Populate).
    fn reference(perms: &[(u64, u64)], m: u64) -> Vec<u32> {
        let n = perms.len();
        let permutation: Vec<Vec<u64>> = perms
            .iter()
            .map(|&(o, s)| (0..m).map(|j| (o + j * s) % m).collect())
            .collect();
        let mut next = vec![0usize; n];
        let mut entry = vec![u32::MAX; m as usize];
        let mut n_filled = 0;
        loop {
            for i in 0..n {
                let mut c = permutation[i][next[i]];
                while entry[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = permutation[i][next[i]];
                }
                entry[c as usize] = i as u32;
                next[i] += 1;
                n_filled += 1;
                if n_filled == m {
                    return entry;
                }
            }
        }
    }

    #[test]
    fn golden_paper_example() {
        // Table 1 of the paper: B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1), M = 7.
        let perms = [(3, 4), (0, 2), (3, 1)];
        let expect = reference(&perms, 7);
        assert_eq!(
            expect,
            vec![1, 0, 1, 0, 2, 2, 0],
            "the paper's lookup table"
        );
        assert_eq!(Maglev::from_perms(perms.to_vec(), 7).table, expect);
    }

    #[test]
    fn table_matches_reference_for_hashed_names() {
        let names: Vec<String> = (0..13).map(|i| format!("10.0.0.{i}:80")).collect();
        let m = Maglev::new(&names);
        assert_eq!(m.table, reference(&m.perms, m.size));
    }

    #[test]
    fn size_is_prime_and_at_least_100x() {
        for n in [1, 2, 3, 10, 57, 655, 656, 7000] {
            let m = table_size(n);
            assert!(is_prime(m) && m >= 100 * n as u64, "{n}: {m}");
        }
        assert_eq!(
            table_size(3),
            table_size(2),
            "one target less keeps the size"
        );
    }

    #[test]
    fn spread_is_even() {
        let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let m = Maglev::new(&names);
        let mut count = vec![0usize; 10];
        for &e in m.table() {
            count[e as usize] += 1;
        }
        let avg = m.size() as f64 / 10.0;
        for c in count {
            assert!((c as f64 - avg).abs() / avg < 0.05, "uneven: {c} vs {avg}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_at_most_1_2_over_n() {
        for n in [3usize, 5, 10, 20] {
            let names: Vec<String> = (0..n).map(|i| format!("10.1.0.{i}:443")).collect();
            let before = Maglev::new(&names);
            let removed = n / 2;
            let rest: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != removed)
                .map(|(_, s)| s.clone())
                .collect();
            let after = Maglev::new(&rest);
            let keys = 100_000u64;
            let mut moved = 0;
            for k in 0..keys {
                let key = hash64(7, &k.to_le_bytes());
                let a = &names[before.lookup(key).unwrap()];
                let b = &rest[after.lookup(key).unwrap()];
                if a != b {
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys as f64;
            assert!(frac <= 1.2 / n as f64, "n={n}: moved {frac}");
        }
    }

    #[test]
    fn same_names_same_table() {
        let names = ["a:1", "b:2", "c:3"];
        assert_eq!(Maglev::new(&names).table, Maglev::new(&names).table);
    }

    #[test]
    fn usable_walks_the_preference_list() {
        let names = ["a", "b", "c"];
        let m = Maglev::new(&names);
        for k in 0..1000u64 {
            let key = hash64(3, &k.to_le_bytes());
            let first = m.lookup(key).unwrap();
            let pref: Vec<usize> = m.preference(key).collect();
            assert_eq!(pref.len(), 3);
            assert_eq!(pref[0], first);
            let alt = m.lookup_usable(key, |i| i != first).unwrap();
            assert_eq!(alt, pref[1]);
        }
        assert_eq!(m.lookup_usable(5, |_| false), None);
    }
}
