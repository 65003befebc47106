//! The host's output grant from the fencing agent (docs/design.md §2): a
//! Primary's outputs leave only while the last grant is fresh. It is
//! level-triggered: no grant — fencing restarted, stuck or unable to renew
//! its lease — means hold, whoever forgot what.
//!
//! One [`HostGrant`] per ftvmm process, shared by every Primary's output
//! gate; the daemon renews it on every `OutputGrant { ok: true, valid_ms }`
//! and withdraws it on `ok: false`. Validity is measured on `CLOCK_BOOTTIME`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_schema::clock::BootInstant;

/// `until_ns` of a grant that never expires (tests and tools without fencing).
const FOREVER: u64 = u64::MAX;

/// The grant: valid until a `CLOCK_BOOTTIME` instant.
#[derive(Debug)]
pub struct HostGrant {
    /// Nanoseconds since boot until which output may leave; 0 = none.
    until_ns: AtomicU64,
}

impl HostGrant {
    /// No grant yet: everything held until fencing grants it (the daemon).
    pub fn none() -> Arc<Self> {
        Arc::new(HostGrant {
            until_ns: AtomicU64::new(0),
        })
    }

    /// Always granted (tests, the benchmark, `ftvmm run`: no fencing there).
    pub fn always() -> Arc<Self> {
        Arc::new(HostGrant {
            until_ns: AtomicU64::new(FOREVER),
        })
    }

    /// Fencing granted output for `valid` from now. Returns true if the grant
    /// was not valid before (held outputs may go now).
    pub fn renew(&self, valid: Duration) -> bool {
        let now = BootInstant::now();
        let was = self.valid_at(now);
        let until = now.checked_add(valid).map_or(FOREVER - 1, |t| t.as_nanos());
        self.until_ns.store(until, Ordering::SeqCst);
        !was
    }

    /// Fencing said no.
    pub fn withdraw(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Whether output may leave now.
    pub fn valid(&self) -> bool {
        self.valid_at(BootInstant::now())
    }

    fn valid_at(&self, now: BootInstant) -> bool {
        now.as_nanos() < self.until_ns.load(Ordering::SeqCst)
    }

    /// Milliseconds left (`None`: never expires), for status.
    pub fn remaining_ms(&self) -> Option<u64> {
        let until = self.until_ns.load(Ordering::SeqCst);
        if until == FOREVER {
            return None;
        }
        Some(until.saturating_sub(BootInstant::now().as_nanos()) / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_holds_until_renewed_and_expires_on_its_own() {
        let g = HostGrant::none();
        assert!(!g.valid(), "held until the first grant");
        assert!(g.renew(Duration::from_millis(30)));
        assert!(g.valid());
        assert!(!g.renew(Duration::from_millis(30)), "was already valid");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!g.valid(), "a grant nobody renews expires");
        g.renew(Duration::from_secs(5));
        g.withdraw();
        assert!(!g.valid());
        assert!(HostGrant::always().valid());
        assert_eq!(HostGrant::always().remaining_ms(), None);
    }
}
