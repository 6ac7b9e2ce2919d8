//! Random choices: a fast seeded RNG, weighted picks and skewed (zipf) ranks.

use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A shard's own random stream. Shards get disjoint streams by jumping 2^128 steps.
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// The stream for shard `index`: `index` jumps of 2^128 from the seed's stream.
    pub fn for_shard(seed: u64, index: usize) -> Rng {
        let mut r = Xoshiro256PlusPlus::seed_from_u64(seed);
        for _ in 0..index {
            r.jump();
        }
        Rng(r)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below 2^-32 for our sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        (((self.next_u64() >> 32) * n) >> 32).min(n.saturating_sub(1))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A fixed weighted choice over a few items (linear scan of cumulative weights).
pub struct Weighted<T: Copy> {
    items: Vec<(T, u64)>,
    total: u64,
}

impl<T: Copy> Weighted<T> {
    pub fn new(weights: &[(T, u32)]) -> Weighted<T> {
        let mut acc = 0u64;
        let items = weights
            .iter()
            .map(|&(t, w)| {
                acc += u64::from(w);
                (t, acc)
            })
            .collect();
        Weighted { items, total: acc }
    }

    pub fn sample(&self, rng: &mut Rng) -> T {
        let x = rng.below(self.total);
        for &(t, upto) in &self.items {
            if x < upto {
                return t;
            }
        }
        self.items[self.items.len() - 1].0
    }
}

/// Picks a rank in `0..n`: uniform, or zipf-skewed (rank 0 the most popular).
///
/// Zipf uses a cumulative table and binary search: exact, O(log n), 8 bytes per item.
pub enum Skewed {
    Uniform(u64),
    Zipf(Vec<f64>),
}

impl Skewed {
    pub fn uniform(n: u64) -> Skewed {
        Skewed::Uniform(n.max(1))
    }

    pub fn zipf(n: usize, exponent: f64) -> Skewed {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 1..=n {
            acc += 1.0 / (k as f64).powf(exponent);
            cdf.push(acc);
        }
        for v in &mut cdf {
            *v /= acc;
        }
        Skewed::Zipf(cdf)
    }

    pub fn len(&self) -> u64 {
        match self {
            Skewed::Uniform(n) => *n,
            Skewed::Zipf(cdf) => cdf.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match self {
            Skewed::Uniform(n) => rng.below(*n),
            Skewed::Zipf(cdf) => {
                let u = rng.unit();
                (cdf.partition_point(|&c| c <= u) as u64).min(cdf.len() as u64 - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{EventType, EVENT_TYPES, QUERY_TYPES};

    /// Pearson chi-square statistic of observed counts against expected shares.
    fn chi_square(observed: &[u64], shares: &[f64]) -> f64 {
        let n: u64 = observed.iter().sum();
        observed
            .iter()
            .zip(shares)
            .map(|(&o, &p)| {
                let e = n as f64 * p;
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn should_follow_event_mix() {
        let w = Weighted::new(&EVENT_TYPES);
        let mut rng = Rng::new(7);
        let mut counts = [0u64; 5];
        for _ in 0..100_000 {
            counts[w.sample(&mut rng) as usize] += 1;
        }
        let shares: Vec<f64> = EVENT_TYPES
            .iter()
            .map(|&(_, w)| w as f64 / 1000.0)
            .collect();
        // 4 degrees of freedom: 18.47 is the 0.999 quantile.
        assert!(chi_square(&counts, &shares) < 18.47, "{counts:?}");
        for (i, &(_, w)) in EVENT_TYPES.iter().enumerate() {
            let share = counts[i] as f64 / 1000.0; // percent of 100k
            assert!(
                (share - w as f64 / 10.0).abs() < 1.0,
                "{:?}",
                EventType::ALL[i]
            );
        }
    }

    #[test]
    fn should_follow_query_mix() {
        let w = Weighted::new(&QUERY_TYPES);
        let mut rng = Rng::new(11);
        let mut counts = [0u64; 3];
        for _ in 0..100_000 {
            counts[w.sample(&mut rng) as usize] += 1;
        }
        // 2 degrees of freedom: 13.82 is the 0.999 quantile.
        assert!(chi_square(&counts, &[0.7, 0.2, 0.1]) < 13.82, "{counts:?}");
    }

    #[test]
    fn should_skew_zipf_like_theory() {
        let z = Skewed::zipf(100, 1.0);
        let mut rng = Rng::new(3);
        let mut counts = vec![0u64; 100];
        for _ in 0..200_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        let h: f64 = (1..=100).map(|k| 1.0 / k as f64).sum();
        let shares: Vec<f64> = (1..=100).map(|k| 1.0 / k as f64 / h).collect();
        // 99 degrees of freedom: 148.2 is the 0.999 quantile.
        assert!(chi_square(&counts, &shares) < 148.2);
        assert!(counts[0] > 5 * counts[9]);
    }

    #[test]
    fn should_be_uniform_when_asked() {
        let u = Skewed::uniform(10);
        let mut rng = Rng::new(5);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[u.sample(&mut rng) as usize] += 1;
        }
        assert!(chi_square(&counts, &[0.1; 10]) < 27.88);
    }

    #[test]
    fn should_give_shards_distinct_streams() {
        let mut a = Rng::for_shard(1, 0);
        let mut b = Rng::for_shard(1, 1);
        let mut a2 = Rng::for_shard(1, 0);
        let (x, y, z) = (a.next_u64(), b.next_u64(), a2.next_u64());
        assert_ne!(x, y);
        assert_eq!(x, z);
    }

    #[test]
    fn should_stay_in_range() {
        let mut rng = Rng::new(9);
        for n in [1u64, 2, 3, 1000, u32::MAX as u64] {
            for _ in 0..1000 {
                assert!(rng.below(n) < n);
            }
        }
        let z = Skewed::zipf(1, 1.2);
        assert_eq!(z.sample(&mut rng), 0);
    }
}
