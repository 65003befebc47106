//! When the sender cuts a batch (issue 17): every channel message costs a
//! Noise encryption, a frame and a wake-up on both sides, and the Output Rule
//! needs a round trip only for a record a held output waits on.
//!
//! [`Batching::Coalesced`] (the default) sends the pending records when
//! - a held output waits on one of them (its covering `Outputs` record is
//!   pending: `State::wanted > pending_first`), at once;
//! - they reach [`COALESCE_BYTES`], at once;
//! - the gate is not `ByAcks` or the VM is stopping (a hand-over or a go-live
//!   wants everything shipped), at once;
//! - else [`COALESCE_DELAY`] after the oldest of them was appended: records
//!   nobody waits on ride with the next batch.
//!
//! [`Batching::Eager`] sends whatever is pending at once (the sender before
//! issue 17; kept so the benchmark can compare).
//!
//! **Liveness and performance only.** When a record is sent decides when an
//! ack can come, never what an ack releases: the Output Rule (`gate.rs`)
//! releases an output only after the Secondary freshly acknowledged the
//! `Outputs` record covering it, however the records were cut into batches.

use std::time::{Duration, Instant};

use super::Batch;
use super::{Gate, PrimaryLog, State};

/// A record no held output waits on is sent at most this long after it was
/// appended (the Secondary's replay, and so the failover's replay, runs at
/// most this much further behind). 1 ms merged little in the benchmark: there
/// a PUT takes ~20 ms and its records come milliseconds apart (5.5 batches
/// per 7.9 records).
pub const COALESCE_DELAY: Duration = Duration::from_millis(5);
/// Pending records of at least this many bytes are sent at once.
pub const COALESCE_BYTES: usize = 64 << 10;

// A full window always has something due: a vCPU waiting for room never
// waits for the delay.
const _: () = assert!(COALESCE_BYTES <= super::MAX_UNACKED_BYTES);

/// How the sender cuts batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batching {
    /// Send what is pending at once (the sender before issue 17).
    Eager,
    /// Send when a held output waits, at [`COALESCE_BYTES`], or after
    /// [`COALESCE_DELAY`] (module docs).
    #[default]
    Coalesced,
}

impl State {
    /// When the pending records must be sent: `None` if nothing is pending.
    pub(super) fn send_due(&self) -> Option<Instant> {
        let since = self.pending_since?;
        let now_due = self.batching == Batching::Eager
            || self.gate != Gate::ByAcks
            || self.stopping
            || self.wanted > self.pending_first
            || self.pending.len() >= COALESCE_BYTES;
        Some(if now_due {
            since
        } else {
            since + COALESCE_DELAY
        })
    }

    /// Whether the pending records must be sent now.
    pub(super) fn send_due_now(&self) -> bool {
        self.send_due().is_some_and(|at| at <= Instant::now())
    }
}

impl PrimaryLog {
    /// Takes the oldest pending records as one batch once they are due under
    /// the log's [`Batching`] (sender thread); waits up to `wait` for that.
    /// `None` when nothing became due meanwhile.
    pub fn take_due_batch(&self, wait: Duration) -> Option<Batch> {
        let end = Instant::now() + wait;
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let until = match st.send_due() {
                Some(at) if at <= now => break,
                Some(at) => at.min(end),
                None => end,
            };
            if now >= end {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(Self::take_locked(&mut st))
    }

    /// Chooses how the sender cuts batches (the benchmark compares them).
    pub fn set_batching(&self, batching: Batching) {
        self.lock().batching = batching;
        self.cv.notify_all();
    }
}
