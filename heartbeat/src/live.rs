//! The timing heartbeat takes live from an applied config (`ftctl apply`):
//! the heartbeat interval (how often the send thread sends) and the failure
//! timeout (when a silent peer is suspected). Shared between the status
//! service, which adopts a persisted config, and the daemon's threads, which
//! read it every round.
//!
//! Safe in any order of adoption across hosts: heartbeat suspicion is never a
//! safety input (docs/architecture.md §3). The interval is taken only when it
//! leaves fencing's lease renewal as it is (`config_schema::timing_live`);
//! otherwise the booted one stays until reboot. During a change a peer may
//! be suspected for a moment (a peer that raised its interval past this
//! host's old timeout): that moves placement and status, nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use config_schema::timing_live;
use config_schema::Timing;

/// The booted timing and the live one.
#[derive(Debug)]
pub struct LiveTiming {
    booted_interval_ms: u64,
    interval_ms: AtomicU64,
    failure_timeout_ms: AtomicU64,
    /// The config generation the live values come from (0: booted).
    generation: AtomicU64,
}

impl LiveTiming {
    pub fn new(interval_ms: u64, failure_timeout_ms: u64) -> Self {
        LiveTiming {
            booted_interval_ms: interval_ms,
            interval_ms: AtomicU64::new(interval_ms),
            failure_timeout_ms: AtomicU64::new(failure_timeout_ms),
            generation: AtomicU64::new(0),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.load(Ordering::Relaxed).max(1)
    }

    pub fn failure_timeout_ms(&self) -> u64 {
        self.failure_timeout_ms.load(Ordering::Relaxed)
    }

    /// The interval the receive gate counts tokens in: the shorter of the
    /// booted and live intervals, so the per-source rate allowed never drops
    /// below the booted one while peers may still send at the old rate.
    pub fn gate_interval_ms(&self) -> u64 {
        self.interval_ms().min(self.booted_interval_ms.max(1))
    }

    /// Sets the interval without the lease-renewal rule (tests: a long
    /// interval to shorten, which no config could change live).
    #[cfg(test)]
    pub(crate) fn force_interval_ms(&self, ms: u64) {
        self.interval_ms.store(ms, Ordering::Relaxed);
    }

    /// Takes `t` from config `generation` (an older generation than one
    /// taken is ignored); the console line saying what changed, if anything.
    pub fn adopt(&self, generation: u64, t: &Timing) -> Option<String> {
        if self.generation.fetch_max(generation, Ordering::SeqCst) > generation {
            return None;
        }
        let running = Timing {
            heartbeat_interval_ms: self.interval_ms(),
            failure_timeout_ms: self.failure_timeout_ms(),
            lag_limit_ms: t.lag_limit_ms,
        };
        let take = timing_live::adoptable(&running, t);
        let mut changed = Vec::new();
        if take.heartbeat_interval_ms != running.heartbeat_interval_ms {
            self.interval_ms
                .store(take.heartbeat_interval_ms, Ordering::Relaxed);
            changed.push(format!(
                "interval {} -> {} ms",
                running.heartbeat_interval_ms, take.heartbeat_interval_ms
            ));
        }
        if take.failure_timeout_ms != running.failure_timeout_ms {
            self.failure_timeout_ms
                .store(take.failure_timeout_ms, Ordering::Relaxed);
            changed.push(format!(
                "failure timeout {} -> {} ms",
                running.failure_timeout_ms, take.failure_timeout_ms
            ));
        }
        if take.heartbeat_interval_ms != t.heartbeat_interval_ms {
            changed.push(format!(
                "interval {} ms kept until reboot (fencing's lease renewal would change)",
                running.heartbeat_interval_ms
            ));
        }
        (!changed.is_empty()).then(|| {
            format!(
                "heartbeat: timing of config generation {generation} taken live: {}",
                changed.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(hb: u64, ft: u64) -> Timing {
        Timing {
            heartbeat_interval_ms: hb,
            failure_timeout_ms: ft,
            lag_limit_ms: 500,
        }
    }

    #[test]
    fn takes_interval_and_timeout_in_generation_order() {
        let l = LiveTiming::new(100, 1000);
        let line = l.adopt(2, &t(50, 3000)).unwrap();
        assert!(line.contains("interval 100 -> 50 ms"), "{line}");
        assert!(line.contains("failure timeout 1000 -> 3000 ms"), "{line}");
        assert_eq!((l.interval_ms(), l.failure_timeout_ms()), (50, 3000));
        // The gate allows the faster of booted and live.
        assert_eq!(l.gate_interval_ms(), 50);
        // An older generation is ignored; the same again changes nothing.
        assert_eq!(l.adopt(1, &t(100, 1000)), None);
        assert_eq!(l.adopt(2, &t(50, 3000)), None);
        assert_eq!((l.interval_ms(), l.failure_timeout_ms()), (50, 3000));
        // Back up: the gate keeps the booted rate.
        l.adopt(3, &t(100, 500)).unwrap();
        assert_eq!((l.interval_ms(), l.failure_timeout_ms()), (100, 500));
        assert_eq!(l.gate_interval_ms(), 100);
    }

    #[test]
    fn an_interval_that_moves_the_lease_renewal_waits_for_a_reboot() {
        let l = LiveTiming::new(100, 1000);
        let line = l.adopt(2, &t(400, 4000)).unwrap();
        assert!(line.contains("kept until reboot"), "{line}");
        assert_eq!((l.interval_ms(), l.failure_timeout_ms()), (100, 4000));
    }
}
