//! The late-write fence of a checkpoint take-over (`live/late_write.rs`
//! rule 2, as lockstep's go-live sets it): the old Primary may still have
//! the last epochs' writes in flight when the Secondary resumes, and such a
//! write landing after the new Primary wrote newer data to the same sectors
//! would undo an acknowledged write.
//!
//! Rules:
//! - The take-over re-writes those epochs' writes first, as their own epoch
//!   (`GatedOutputs::reissue`): same data as the old Primary's, so their
//!   order against the old writes does not matter. That epoch passes.
//! - A later epoch with a write overlapping one of them is not started
//!   before [`LATE_WRITE_BOUND_MS`] after the take-over; the disk thread
//!   keeps serving reads meanwhile (the gate's overlay holds the epoch's
//!   data), and the epochs after it wait behind it (the gate submits one at
//!   a time, in order). Its write age (`IO_AGE_LIMIT`) counts from when the
//!   fence lets it through, as lockstep's held writes do.
//! - No fence when fencing answered the win with `storage_cut`: the old
//!   host was preempted with PREEMPT AND ABORT, its commands ended
//!   (`late_write` rule 4).

use std::time::Duration;

use config_schema::clock::BootInstant;

use super::epoch::{DiskWrite, SECTOR_SIZE};
pub use crate::live::late_write::LATE_WRITE_BOUND_MS;

/// Sectors `[start, end)` of the re-written writes and until when later
/// overlapping epochs wait.
#[derive(Debug, Clone)]
pub struct LateWriteFence {
    ranges: Vec<(u64, u64)>,
    /// The epoch of the re-written writes: it and older ones pass.
    reissued_epoch: u64,
    until: BootInstant,
}

impl LateWriteFence {
    /// A fence over `writes` (re-written as `reissued_epoch`) lasting
    /// [`LATE_WRITE_BOUND_MS`] from now; `None` if there is nothing to fence
    /// or the old host is cut off at the storage.
    pub fn after_take_over(
        writes: &[DiskWrite],
        reissued_epoch: u64,
        storage_cut: bool,
    ) -> Option<Self> {
        Self::with_bound(
            writes,
            reissued_epoch,
            storage_cut,
            Duration::from_millis(LATE_WRITE_BOUND_MS),
        )
    }

    /// [`Self::after_take_over`] with another bound (tests).
    pub fn with_bound(
        writes: &[DiskWrite],
        reissued_epoch: u64,
        storage_cut: bool,
        bound: Duration,
    ) -> Option<Self> {
        if storage_cut || writes.is_empty() {
            return None;
        }
        Some(LateWriteFence {
            ranges: writes.iter().map(span).collect(),
            reissued_epoch,
            until: BootInstant::now() + bound,
        })
    }

    /// The sector ranges held.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether epoch `epoch` with `writes` must wait at `now`.
    pub fn holds(&self, epoch: u64, writes: &[DiskWrite], now: BootInstant) -> bool {
        epoch > self.reissued_epoch
            && now.as_nanos() < self.until.as_nanos()
            && writes
                .iter()
                .map(span)
                .any(|(s, e)| self.ranges.iter().any(|&(fs, fe)| s < fe && fs < e))
    }

    /// How long until the fence lifts (zero once it has).
    pub fn remaining(&self, now: BootInstant) -> Duration {
        self.until.saturating_duration_since(now)
    }
}

fn span(w: &DiskWrite) -> (u64, u64) {
    let n = (w.data.len() / SECTOR_SIZE).max(1) as u64;
    (w.sector, w.sector + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(sector: u64, sectors: usize) -> DiskWrite {
        DiskWrite {
            sector,
            data: vec![7; sectors * SECTOR_SIZE],
        }
    }

    #[test]
    fn only_later_overlapping_epochs_wait_and_only_until_the_bound() {
        let f = LateWriteFence::with_bound(&[w(8, 2)], 5, false, Duration::from_secs(60)).unwrap();
        let now = BootInstant::now();
        assert!(!f.holds(5, &[w(8, 1)], now), "the re-written epoch passes");
        assert!(f.holds(6, &[w(0, 1), w(9, 1)], now), "overlap held");
        assert!(
            !f.holds(6, &[w(10, 4)], now),
            "sectors 10.. do not overlap 8..10"
        );
        assert!(!f.holds(6, &[w(0, 8)], now), "sectors 0..8 do not overlap");
        let later = now + Duration::from_secs(61);
        assert!(!f.holds(6, &[w(8, 1)], later), "lifted after the bound");
        assert_eq!(f.remaining(later), Duration::ZERO);
        assert!(LateWriteFence::after_take_over(&[w(8, 1)], 5, true).is_none());
        assert!(LateWriteFence::after_take_over(&[], 5, false).is_none());
    }
}
