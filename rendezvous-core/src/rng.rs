//! The core's only randomness: a small PRNG seeded by the caller, so every run
//! is reproducible. Used for the client's retry jitter and for where the
//! server starts a discovery walk, never for anything secret.

/// SplitMix64: tiny, fast, and good enough to spread retries and walks apart.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`, near enough to uniform for jitter and walk
    /// starts (the modulo's bias is below `max / 2^64`).
    pub(crate) fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX { self.next_u64() } else { self.next_u64() % (max + 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn bounded_draws_stay_in_bounds() {
        let mut rng = Rng::new(3);
        assert!((0..1000).all(|_| rng.below_or_eq(10) <= 10));
        assert_eq!(rng.below_or_eq(0), 0);
    }
}
