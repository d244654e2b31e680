//! Time for deadlines. Lease expiry and renew deadlines are judged on a local clock that
//! never jumps and keeps running through system suspend (`CLOCK_BOOTTIME`), never by
//! comparing wall clocks across nodes. tokio's `Instant` (`CLOCK_MONOTONIC`) stops during
//! suspend, so a leader resuming from suspend would think no time had passed.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the boot-time clock. Only differences between two `Moment`s of the same
/// process mean anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(Duration);

impl Moment {
    /// The origin, for simulations and tests.
    pub const ZERO: Moment = Moment(Duration::ZERO);

    /// A moment `d` after the origin, for simulations and tests.
    pub const fn from_origin(d: Duration) -> Self {
        Moment(d)
    }

    /// Now on `CLOCK_BOOTTIME`.
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime only writes into the timespec we pass; CLOCK_BOOTTIME
        // exists on every Linux since 2.6.39, so it cannot fail with valid arguments.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        debug_assert_eq!(rc, 0);
        Moment(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;
    fn add(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }
}

impl Sub<Moment> for Moment {
    type Output = Duration;
    fn sub(self, earlier: Moment) -> Duration {
        self.since(earlier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_advances_and_differences_saturate() {
        let a = Moment::now();
        let b = Moment::now();
        assert!(b >= a);
        assert_eq!(a.since(b + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!((a + Duration::from_secs(2)) - a, Duration::from_secs(2));
    }
}
