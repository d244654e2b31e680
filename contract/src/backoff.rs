//! The one exponential backoff: a first delay that doubles per retry up to a cap. Each
//! caller keeps its own bounds; this only does the arithmetic (and, for kube watchers, the
//! iterator form with a reset).

use std::time::Duration;

/// A watcher's retry backoff: 100 ms doubling to at most 1 s, so that after an API outage
/// followers see the Lease again within a renew period (kube's default grows to 30 s).
pub const QUICK_WATCH: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

/// Delays of `min`, `2·min`, `4·min`, … capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// The delay after `doublings` doublings of `min` (0 → `min`), at most `max`.
    pub fn delay(&self, doublings: u32) -> Duration {
        self.min.saturating_mul(1u32 << doublings.min(31)).min(self.max)
    }

    /// The delays one after another, restarting at `min` on [`kube::runtime::utils::Backoff::reset`].
    pub fn delays(self) -> Delays {
        Delays { backoff: self, doublings: 0 }
    }
}

/// [`Backoff`] as an endless iterator, e.g. for `kube::runtime::WatchStreamExt::backoff`.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    doublings: u32,
}

impl Iterator for Delays {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.delay(self.doublings);
        self.doublings = self.doublings.saturating_add(1);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for Delays {
    fn reset(&mut self) {
        self.doublings = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_min_and_stops_at_max() {
        let b = Backoff::new(100 * MS, 1600 * MS);
        assert_eq!(b.delay(0), 100 * MS);
        assert_eq!(b.delay(2), 400 * MS);
        assert_eq!(b.delay(4), 1600 * MS);
        assert_eq!(b.delay(40), 1600 * MS);
        assert_eq!(b.delay(u32::MAX), 1600 * MS);
        assert_eq!(Backoff::new(Duration::from_secs(u64::MAX), Duration::MAX).delay(3), Duration::MAX, "saturates");
    }

    #[test]
    fn delays_iterate_and_reset() {
        let mut d = Backoff::new(100 * MS, 1000 * MS).delays();
        let first: Vec<_> = d.by_ref().take(6).collect();
        assert_eq!(first, vec![100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        d.reset();
        assert_eq!(d.next(), Some(100 * MS));
    }
}
