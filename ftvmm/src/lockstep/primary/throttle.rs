//! The lag throttle: keeps the Secondary's replay backlog near the configured
//! lag limit by slowing the Primary's vCPU.
//!
//! **The measure** is the backlog's span in the Primary's time: the send time
//! of the newest batch minus that of the oldest one the Secondary has not
//! replayed ([`State::backlog_ms`]). That is the Primary's execution a go-live
//! must replay first. It is not the age of the oldest unreplayed batch
//! ([`super::Lag::ms`], reported in status): that age keeps growing while the
//! Primary itself waits, so a throttle on it waits for the Secondary to catch
//! up completely (measured by the benchmark: two waits of about 600 ms each in
//! one KV run), where this one waits only for the part past the limit.
//!
//! **Liveness and performance only.** Nothing here releases or holds an
//! output: the Output Rule (`gate.rs`) alone decides that, and it releases an
//! output only after the Secondary freshly acknowledged the `Outputs` record
//! that covers it, whatever the throttle does. The throttle only bounds how far
//! the Secondary's replay falls behind, so a go-live does not first spend a
//! long replay (the failover pause grows with the lag).
//!
//! [`Throttle::step`] is a pure decision; `PrimaryLog::throttle` (below) is
//! its driver on the vCPU thread:
//! - lag at or under the limit: run, never sleep;
//! - over the limit ([`ThrottleMode::UntilAck`], the default): wait on the
//!   log's condition variable until an ack brings the backlog back to the limit
//!   (or the gate stops being `ByAcks`, or the VM stops). Every state change
//!   that can end the wait (`on_ack`, `set_gate`, `stop_waiting`) happens
//!   under the log's lock and notifies after it, and the condition is checked
//!   under the same lock before each wait, so no wake-up is lost; a re-check
//!   every [`RECHECK`] is only a safety net and is counted.
//! - [`ThrottleMode::FixedSleep`]: the earlier controller (sleep 1 ms per
//!   input call while the oldest unreplayed batch is older than the limit),
//!   kept so the benchmark can compare.
//!
//! No soft zone: pacing before the limit needs an estimate of the
//! Secondary's replay rate, and a fixed slice per input call is what made the
//! old controller stall a guest with many exits per millisecond. Waiting for
//! the ack costs at most one progress report of the Secondary
//! (`link::PROGRESS_EVERY`) per crossing.
//!
//! While the vCPU waits no batch is added, so the backlog changes only when an
//! ack arrives: a wait that no ack ends is a wait for a Secondary that stopped
//! replaying; the link's failure timeout then holds the gate, which ends the
//! wait.

use std::time::{Duration, Instant};

use super::{Gate, PrimaryLog, State};

/// A throttled vCPU re-checks this often even if nobody woke it (a safety
/// net: every event that can end the wait notifies).
pub const RECHECK: Duration = Duration::from_secs(1);
/// The slice of the fixed controller.
const FIXED_SLICE: Duration = Duration::from_millis(1);

/// Which controller slows the Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThrottleMode {
    /// Wait exactly until the ack that brings the lag back under the limit.
    #[default]
    UntilAck,
    /// Sleep 1 ms per input call while over the limit (the controller before
    /// issue 17; kept for the benchmark).
    FixedSleep,
}

/// What the vCPU does at an input call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Run,
    Sleep(Duration),
    WaitForAck,
}

/// The throttle's decision, a pure function of the log's state.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub limit_ms: u64,
    pub mode: ThrottleMode,
}

impl Throttle {
    /// What to do now, given the lag as this mode measures it. Only a paired
    /// log (gate `ByAcks`) that is not stopping is ever slowed, and never at
    /// or under the limit.
    pub fn step(&self, gate: Gate, stopping: bool, lag_ms: u64) -> Step {
        if gate != Gate::ByAcks || stopping || lag_ms <= self.limit_ms {
            return Step::Run;
        }
        match self.mode {
            ThrottleMode::UntilAck => Step::WaitForAck,
            ThrottleMode::FixedSleep => Step::Sleep(FIXED_SLICE),
        }
    }
}

/// Throttle counters reported in status (inside `PrimaryStats`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ThrottleStats {
    /// Input calls that found the lag over the limit.
    pub throttled: u64,
    /// Time the vCPU spent slowed, in microseconds.
    pub throttled_us: u64,
    /// Waits that ended by the safety re-check rather than a notification.
    pub rechecks: u64,
}

impl State {
    /// The age of the oldest batch not replayed (the lag's `ms`), cheaply.
    pub(super) fn lag_ms(&self) -> u64 {
        self.sent
            .front()
            .map(|s| s.at.elapsed().as_millis() as u64)
            .unwrap_or(0)
    }

    /// The Primary time the Secondary has yet to replay: from the oldest
    /// unreplayed batch's send time to the newest batch's.
    pub(super) fn backlog_ms(&self) -> u64 {
        match (self.sent.front(), self.sent.back()) {
            (Some(a), Some(b)) => b.at.saturating_duration_since(a.at).as_millis() as u64,
            _ => 0,
        }
    }

    fn throttle_step(&self) -> Step {
        let lag = match self.throttle.mode {
            ThrottleMode::UntilAck => self.backlog_ms(),
            ThrottleMode::FixedSleep => self.lag_ms(),
        };
        self.throttle.step(self.gate, self.stopping, lag)
    }
}

impl PrimaryLog {
    /// Slows the vCPU while the Secondary's replay lag exceeds the limit
    /// (module docs; vCPU thread, at every input call that may run on).
    pub(super) fn throttle(&self) {
        let mut st = self.lock();
        let first = st.throttle_step();
        if first == Step::Run {
            return;
        }
        let t0 = Instant::now();
        st.stats.throttle.throttled += 1;
        match first {
            Step::Sleep(d) => {
                drop(st);
                std::thread::sleep(d);
                st = self.lock();
            }
            Step::WaitForAck => {
                while st.throttle_step() == Step::WaitForAck {
                    let (g, res) = self
                        .cv
                        .wait_timeout(st, RECHECK)
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    if res.timed_out() {
                        st.stats.throttle.rechecks += 1;
                    }
                }
            }
            Step::Run => unreachable!("returned above"),
        }
        st.stats.throttle.throttled_us += t0.elapsed().as_micros() as u64;
    }

    /// Chooses the controller (the benchmark compares them).
    pub fn set_throttle_mode(&self, mode: ThrottleMode) {
        self.lock().throttle.mode = mode;
        self.cv.notify_all();
    }
}
