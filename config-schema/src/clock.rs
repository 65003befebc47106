//! `CLOCK_BOOTTIME` instants: the clock every safety timer of the appliance
//! uses (lease arithmetic, the output grant, fresh acknowledgements, the age
//! of a disk write).
//!
//! `std::time::Instant` reads `CLOCK_MONOTONIC`, which stops while the machine
//! is suspended; `CLOCK_BOOTTIME` keeps counting, so a host that slept through
//! a failover sees that time passed (docs/design.md §3). Neither helps when the
//! whole machine is frozen with its clocks (a hypervisor pause): that case is
//! covered by the fencing agent's freeze detection and by storage fencing.

use std::time::Duration;

/// A point on `CLOCK_BOOTTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the
        // call; CLOCK_BOOTTIME exists on every Linux this runs on (>= 2.6.39).
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
        BootInstant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Nanoseconds since boot (what goes on the wire).
    pub fn as_nanos(&self) -> u64 {
        self.0.as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after boot.
    pub fn from_nanos(ns: u64) -> Self {
        BootInstant(Duration::from_nanos(ns))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(&self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time since this instant.
    pub fn elapsed(&self) -> Duration {
        BootInstant::now().saturating_duration_since(*self)
    }

    pub fn checked_add(&self, d: Duration) -> Option<BootInstant> {
        self.0.checked_add(d).map(BootInstant)
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0 + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward_and_round_trips() {
        let a = BootInstant::now();
        std::thread::sleep(Duration::from_millis(5));
        let b = BootInstant::now();
        assert!(b > a);
        assert!(b.saturating_duration_since(a) >= Duration::from_millis(5));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
        assert_eq!(BootInstant::from_nanos(a.as_nanos()), a);
        assert_eq!(
            a + Duration::from_secs(1),
            a.checked_add(Duration::from_secs(1)).unwrap()
        );
    }
}
