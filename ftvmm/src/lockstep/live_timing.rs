//! The timing ftvmm takes live from an applied config (`ftctl apply`, sent by
//! heartbeat in `ctl::Request::ConfigApplied`): the failure timeout and the
//! lag limit. One per daemon ([`crate::members::Members::timing`]); every
//! pair member's driver reads it each step.
//!
//! How each use of the failure timeout follows it (the argument is
//! `config_schema::timing_live`; docs/architecture.md §7):
//! - a Primary's channel silence before it holds and races, and a Primary's
//!   wait for the grant before it hands over: the live value (a race is
//!   decided by Disk Paxos, a hold releases nothing);
//! - a Secondary's channel silence before it drains and races:
//!   `max(booted, live)`, never below the value both members booted with;
//! - the Primary's ack freshness limit: the booted value, never changed
//!   live (`pair::new_gate`). So freshness <= the Secondary's wait on every
//!   host, whichever of them took the new config first.
//!
//! The lag limit (the Primary's throttle) is local performance: live.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use config_schema::timing_live;
use config_schema::Timing;

/// Live overrides of the booted timing (0: none yet).
#[derive(Debug, Default)]
pub struct LiveTiming {
    failure_timeout_ms: AtomicU64,
    lag_limit_ms: AtomicU64,
    /// The config generation they come from (0: booted).
    generation: AtomicU64,
}

impl LiveTiming {
    /// Takes `t` from config `generation` (older than one taken: ignored);
    /// the console line when something changed.
    pub fn adopt(&self, generation: u64, t: &Timing) -> Option<String> {
        if self.generation.fetch_max(generation, Ordering::SeqCst) > generation {
            return None;
        }
        let mut changed = Vec::new();
        for (what, cell, new) in [
            (
                "failure timeout",
                &self.failure_timeout_ms,
                t.failure_timeout_ms,
            ),
            ("lag limit", &self.lag_limit_ms, t.lag_limit_ms),
        ] {
            let old = cell.swap(new, Ordering::SeqCst);
            if old != new {
                changed.push(format!("{what} {new} ms"));
            }
        }
        (!changed.is_empty()).then(|| {
            format!(
                "ftvmm: timing of config generation {generation} taken live: {}",
                changed.join(", ")
            )
        })
    }

    /// The generation the live values come from (0: none taken).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn get(cell: &AtomicU64, booted: Duration) -> Duration {
        match cell.load(Ordering::SeqCst) {
            0 => booted,
            ms => Duration::from_millis(ms),
        }
    }

    /// The live failure timeout (`booted` until a config set one).
    pub fn failure_timeout(&self, booted: Duration) -> Duration {
        Self::get(&self.failure_timeout_ms, booted)
    }

    /// The live lag limit (`booted` until a config set one).
    pub fn lag_limit(&self, booted: Duration) -> Duration {
        Self::get(&self.lag_limit_ms, booted)
    }

    /// A Secondary's channel silence before it races: never below `booted`.
    pub fn secondary_silence(&self, booted: Duration) -> Duration {
        let live = self.failure_timeout(booted).as_millis() as u64;
        Duration::from_millis(timing_live::secondary_silence_ms(
            booted.as_millis() as u64,
            live,
        ))
    }

    /// For status.
    pub fn status(&self, booted: &Timing) -> serde_json::Value {
        let ms = |d: Duration| d.as_millis() as u64;
        let ft = Duration::from_millis(booted.failure_timeout_ms);
        serde_json::json!({
            "generation": self.generation(),
            "failure_timeout_ms": ms(self.failure_timeout(ft)),
            "secondary_silence_ms": ms(self.secondary_silence(ft)),
            "ack_freshness_ms": booted.failure_timeout_ms,
            "lag_limit_ms": ms(self.lag_limit(Duration::from_millis(booted.lag_limit_ms))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ft: u64, lag: u64) -> Timing {
        Timing {
            heartbeat_interval_ms: 100,
            failure_timeout_ms: ft,
            lag_limit_ms: lag,
        }
    }

    #[test]
    fn booted_values_until_a_config_sets_them_then_in_generation_order() {
        let l = LiveTiming::default();
        let s = Duration::from_secs(1);
        let lag = Duration::from_millis(500);
        assert_eq!((l.failure_timeout(s), l.lag_limit(lag)), (s, lag));
        let line = l.adopt(8, &t(3000, 200)).unwrap();
        assert!(
            line.contains("failure timeout 3000 ms, lag limit 200 ms"),
            "{line}"
        );
        assert_eq!(l.failure_timeout(s), Duration::from_secs(3));
        assert_eq!(l.lag_limit(lag), Duration::from_millis(200));
        assert_eq!(l.adopt(7, &t(400, 900)), None, "older generation");
        assert_eq!(l.adopt(8, &t(3000, 200)), None, "nothing new");
        assert_eq!(l.failure_timeout(s), Duration::from_secs(3));
    }

    #[test]
    fn a_secondary_waits_at_least_the_booted_timeout() {
        let l = LiveTiming::default();
        let booted = Duration::from_secs(1);
        l.adopt(8, &t(3000, 500));
        assert_eq!(l.secondary_silence(booted), Duration::from_secs(3));
        l.adopt(9, &t(300, 500));
        assert_eq!(l.failure_timeout(booted), Duration::from_millis(300));
        assert_eq!(l.secondary_silence(booted), booted);
        let st = l.status(&t(1000, 500));
        assert_eq!(st["ack_freshness_ms"], 1000);
        assert_eq!(st["secondary_silence_ms"], 1000);
        assert_eq!(st["failure_timeout_ms"], 300);
    }
}
