//! SplitMix64: a tiny seeded generator, so that a randomised run (e.g. `tests/chaos.rs`)
//! is reproducible from its seed. Not for anything that needs unpredictability.

use std::time::Duration;

/// The generator; its state is the seed, advanced by the golden-ratio increment.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n` > 0); the modulo bias is irrelevant for the small `n` of the tests.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform whole milliseconds in `from..=to`.
    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_the_reference_sequence_of_splitmix64() {
        // The first outputs for seed 0 of the reference implementation (Vigna, splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn millis_stay_within_their_bounds() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let d = rng.millis(200, 300);
            assert!((200..=300).contains(&d.as_millis()), "{d:?}");
        }
    }
}
