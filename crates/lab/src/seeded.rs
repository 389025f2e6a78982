//! The benches' only source of randomness: SplitMix64 from a seed the user gives, so that a
//! sequence of faults can be replayed (`--seed`). The same seed draws the same numbers on
//! every machine.

/// A seed from the clock, for a bench run without `--seed` (printed, so it can be replayed).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator for one purpose (`stream`: a run's number), independent of how many
    /// numbers this one drew: run 13 of seed 7 draws the same fault alone or after 12 others.
    pub fn fork(&self, stream: u64) -> Rng {
        let mut forked = Rng::new(self.state ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        forked.next_u64();
        forked
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (`low` when the range is empty).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }

    /// One of `items`, uniformly (None when there is none).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let i = (self.next_u64() % items.len() as u64) as usize;
        items.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let drawn: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(drawn, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(
            drawn,
            (0..5).map(|_| Rng::new(8).next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_fork_depends_on_the_seed_and_the_stream_only() {
        let root = Rng::new(42);
        let mut used = Rng::new(42);
        used.next_u64();
        assert_ne!(root.fork(3).next_u64(), root.fork(4).next_u64());
        // A fork of a fresh generator is what a replay of one run makes.
        assert_eq!(root.fork(3).next_u64(), Rng::new(42).fork(3).next_u64());
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let n = rng.between(3, 5);
            assert!((3..=5).contains(&n), "{n}");
        }
        assert_eq!(rng.between(9, 2), 9);
        assert_eq!(rng.pick::<u8>(&[]), None);
        assert_eq!(rng.pick(&[4]), Some(4));
    }
}
