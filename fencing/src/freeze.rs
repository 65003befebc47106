//! Freeze detection: a host frozen as a whole (hypervisor pause, SMI storm)
//! stops its own clocks with it, so no local timer sees the freeze; the
//! other hosts' lease counters do (docs/design.md §3 item 4).
//!
//! # Rule
//!
//! A live host renews at most once per renewal interval `R` (it waits `R`
//! from one renewal's issue to the next, and for each write to complete).
//! Between this host's read of a peer's counter (issued at `i1`) and the next
//! (completed at `c2`), that peer's writes that can land are those issued in
//! `[i1, c2]` plus one still in flight: at most `(c2 - i1) / R + 2`. A peer
//! that advanced by more than that plus [`SLACK`] did so while this host's
//! clock stood still: this host was frozen. Evidence from one live peer is
//! enough; with no peer renewing, nothing can be told.
//!
//! A restarted peer (new incarnation) is a new baseline, not evidence.

use std::time::Duration;

use config_schema::clock::BootInstant;

use crate::layout::LeaseRecord;

/// Renewals beyond the bound before a peer's progress counts as evidence.
pub const SLACK: u64 = 2;

/// What betrayed a freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The peer (host index) whose counter moved too far.
    pub host: u32,
    pub advanced: u64,
    /// This host's own elapsed time over the same span.
    pub elapsed: Duration,
    /// Renewals possible in `elapsed`.
    pub possible: u64,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    incarnation: u64,
    counter: u64,
    issued: BootInstant,
}

/// Per-peer counters as last read.
#[derive(Debug, Clone)]
pub struct FreezeDetector {
    renew: Duration,
    last: Vec<Option<Last>>,
}

impl FreezeDetector {
    pub fn new(hosts: usize, renew: Duration) -> Self {
        FreezeDetector {
            renew,
            last: vec![None; hosts],
        }
    }

    /// Host `h`'s lease read `rec` by a read issued at `issued` and completed
    /// at `completed` (`None`: blank or unreadable, no baseline).
    pub fn on_read(
        &mut self,
        h: usize,
        rec: Option<&LeaseRecord>,
        issued: BootInstant,
        completed: BootInstant,
    ) -> Option<Evidence> {
        let Some(rec) = rec else {
            self.last[h] = None;
            return None;
        };
        let before = self.last[h].replace(Last {
            incarnation: rec.incarnation,
            counter: rec.counter,
            issued,
        })?;
        if before.incarnation != rec.incarnation || rec.counter <= before.counter {
            return None;
        }
        let advanced = rec.counter - before.counter;
        let elapsed = completed.saturating_duration_since(before.issued);
        let possible = (elapsed.as_nanos() / self.renew.as_nanos().max(1)) as u64 + 2;
        (advanced > possible + SLACK).then_some(Evidence {
            host: h as u32,
            advanced,
            elapsed,
            possible,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rec(incarnation: u64, counter: u64) -> LeaseRecord {
        LeaseRecord {
            host: 1,
            counter,
            incarnation,
            running: vec![],
        }
    }

    fn t(ms: u64) -> BootInstant {
        BootInstant::from_nanos(1_000_000_000 + ms * 1_000_000)
    }

    #[test]
    fn a_peer_that_renewed_more_than_time_allows_betrays_a_freeze() {
        let mut f = FreezeDetector::new(3, 500 * MS);
        assert_eq!(
            f.on_read(1, Some(&rec(7, 10)), t(0), t(1)),
            None,
            "baseline"
        );
        // Normal pace, even bursty after a slow write: no evidence.
        assert_eq!(f.on_read(1, Some(&rec(7, 11)), t(500), t(501)), None);
        assert_eq!(f.on_read(1, Some(&rec(7, 15)), t(1000), t(1010)), None);
        // 20 renewals while this host's clock moved 500 ms.
        let e = f.on_read(1, Some(&rec(7, 35)), t(1500), t(1501)).unwrap();
        assert_eq!((e.host, e.advanced, e.possible), (1, 20, 3));
        assert_eq!(e.elapsed, 501 * MS);
    }

    #[test]
    fn restarts_and_unreadable_blocks_are_no_evidence() {
        let mut f = FreezeDetector::new(2, 500 * MS);
        f.on_read(1, Some(&rec(7, 10)), t(0), t(1));
        assert_eq!(f.on_read(1, Some(&rec(8, 90)), t(500), t(501)), None);
        assert_eq!(f.on_read(1, None, t(1000), t(1001)), None);
        assert_eq!(f.on_read(1, Some(&rec(8, 200)), t(1500), t(1501)), None);
        // Exactly at the bound plus slack: still no evidence.
        assert_eq!(
            f.on_read(1, Some(&rec(8, 200 + 3 + SLACK)), t(2000), t(2001)),
            None
        );
    }
}
