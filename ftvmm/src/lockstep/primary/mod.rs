//! The Primary's side of lockstep: record every input, hold every output.
//!
//! [`PrimaryInputs`] (`inputs.rs`) wraps the live input door: whatever
//! non-deterministic value it hands the vCPU loop it first appends to the log
//! as a [`Record`](super::log::Record) tagged with the exit index, plus
//! periodic register checks and, at every input call after outputs, the
//! `Outputs` digest of the outputs emitted since the last one.
//!
//! [`PrimaryLog`] is the log window (this file) and the output gate
//! (`gate.rs`) under one lock:
//!
//! - **Window.** A sender thread takes the pending records in batches of at
//!   most [`MAX_BATCH_BYTES`] ([`PrimaryLog::take_due_batch`]; `pending.rs`), so
//!   every batch fits one channel message, when they are due (`batching.rs`:
//!   at once if a held output waits on them, else coalesced), stamped with the Primary's
//!   `CLOCK_BOOTTIME` send time; the ack thread reports receipt and replay
//!   progress ([`PrimaryLog::on_ack`]), echoing the newest stamp the Secondary
//!   got. The vCPU thread stalls when unacknowledged bytes exceed
//!   [`MAX_UNACKED_BYTES`] (nothing is ever dropped) and is slowed while the
//!   replay lag exceeds the configured limit (`throttle.rs`: it waits for the
//!   ack that brings the lag back; liveness only, never part of the Output
//!   Rule).
//! - **Sizes.** A body larger than one record is appended as its pieces
//!   (`log` module docs), the window checked before each; a body the log
//!   cannot carry is an error for the caller ([`PrimaryLog::append`]), never
//!   a panic. The recording door never hands the vCPU more than one body of
//!   events per input call (`inputs.rs`).
//! - **Gate** ([`Gate`]): the Output Rule while paired, everything held while
//!   the member races or hands over, open while it runs alone — and, on top,
//!   nothing leaves without the host's output grant (`grant.rs`).
//!
//! # The Output Rule (paired)
//!
//! An output leaves only once the Secondary has *freshly* acknowledged every
//! record up to and including the `Outputs` digest record that covers it.
//! - The records before the output are not enough: the Secondary knows "no
//!   input at exit n" only from a later record, so one holding only those may
//!   stop (and go live) at an input call before the output's exit and never
//!   reproduce an output the world saw.
//! - The covering digest record, not just "some record after": a Secondary
//!   that goes live replays every record it holds, so it has checked the
//!   digest of every released output against its own execution; a divergence
//!   detected there makes it halt instead of going live with a state that
//!   differs from what the world saw (`tests/output_rule.rs`).
//! - Fresh: the ack must echo a batch sent less than the failure timeout ago
//!   on this host's `CLOCK_BOOTTIME`. An ack that sat in a socket buffer while
//!   this host was stalled or suspended releases nothing (docs/design.md §3).
//!
//! Outputs leave in the order they were produced.
//!
//! # Invariants (asserted)
//!
//! `replayed <= acked <= pending_first <= next_seq`; `acked` never decreases.

mod batching;
mod gate;
mod inputs;
mod pending;
mod throttle;
pub mod timeline;

#[cfg(test)]
mod batching_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod throttle_tests;
#[cfg(test)]
mod timeline_tests;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use config_schema::clock::BootInstant;

use super::channel::wire::{BATCH_OVERHEAD, MAX_MESSAGE};
use super::digest::OutputDigest;
use super::grant::HostGrant;
use super::log::{Body, Encoded, LogError, MAX_BODY_PIECES, MAX_RECORD_LEN};
pub use super::member::Gate;
use crate::io::{ExitIndex, InputEvent, OutputEvent, Outputs};
pub use batching::{Batching, COALESCE_BYTES, COALESCE_DELAY};
pub use inputs::{PrimaryInputs, PrimaryOutputs};
use pending::Pending;
use throttle::Throttle;
pub use throttle::{ThrottleMode, ThrottleStats, RECHECK as THROTTLE_RECHECK};
use timeline::{SegmentReport, Timeline};

/// The vCPU stalls when this many bytes are sent or pending but not acked.
pub const MAX_UNACKED_BYTES: usize = 64 << 20;
/// ...or when the Secondary has this many records it has not replayed yet.
pub const MAX_UNREPLAYED_RECORDS: u64 = 1 << 20;
/// Largest batch the sender takes (whole records): small enough to fit one
/// channel message, and a few of them pipeline a large backlog.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

// Every record fits a batch, so a batch always takes at least one.
const _: () = assert!(MAX_RECORD_LEN <= MAX_BATCH_BYTES);
// Every batch fits one channel message, whatever its header fields hold.
const _: () = assert!(MAX_BATCH_BYTES + BATCH_OVERHEAD <= MAX_MESSAGE);
// A split body the Secondary cannot replay before its last piece arrives
// never fills the replay window by itself (else the Primary would wait for a
// replay that waits for the Primary).
const _: () = assert!(MAX_BODY_PIECES < MAX_UNREPLAYED_RECORDS);
/// A register check record every this many exits (both sides must agree: it
/// is part of the protocol version).
pub const CHECK_EVERY: u64 = 1024;
/// How fresh an ack must be when no failure timeout is given (tests, tools).
pub const DEFAULT_FRESH_ACK: Duration = Duration::from_secs(10);
/// How often a stalled vCPU looks again (besides being woken).
const STALL_POLL: Duration = Duration::from_millis(50);

/// One batch the sender thread ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_seq: u64,
    pub count: u32,
    pub bytes: Vec<u8>,
    /// `CLOCK_BOOTTIME` nanoseconds when it was taken for sending.
    pub sent_ns: u64,
}

/// A sent batch, kept until replayed (for lag accounting).
struct Sent {
    end_seq: u64,
    bytes: usize,
    at: Instant,
}

/// One output waiting for the gate.
struct Held {
    /// Records `< need` must be freshly acked; `None` until the `Outputs`
    /// record that covers it is appended.
    need: Option<u64>,
    ev: OutputEvent,
    /// Its timeline trace, if it is sampled (`timeline.rs`).
    trace: Option<u64>,
}

struct State {
    /// Sequence number of the next record.
    next_seq: u64,
    /// Encoded records not yet taken by the sender.
    pending: Pending,
    pending_first: u64,
    /// When the oldest pending record was appended (`Some` exactly while
    /// something is pending).
    pending_since: Option<Instant>,
    /// Every record `< wanted` is waited on by a held output (its covering
    /// `Outputs` record and everything before it): the sender ships it at
    /// once (`batching.rs`).
    wanted: u64,
    batching: Batching,
    /// Every record `< acked` was received by the Secondary.
    acked: u64,
    /// Every record `< fresh_acked` was received, as said by a fresh ack:
    /// what the Output Rule releases by (`<= acked`).
    fresh_acked: u64,
    /// Every record `< replayed` was executed by the Secondary.
    replayed: u64,
    replayed_exit: ExitIndex,
    /// Batches sent and not fully replayed.
    sent: VecDeque<Sent>,
    unacked_bytes: usize,
    held: VecDeque<Held>,
    sink: Box<dyn Outputs + Send>,
    gate: Gate,
    /// The VM is stopping: a stalled vCPU must not wait any longer.
    stopping: bool,
    out_digest: OutputDigest,
    /// The last clock value handed to the guest (a joining Secondary's
    /// clock continues from it if it ever goes live).
    last_time: Option<u64>,
    throttle: Throttle,
    timeline: Timeline,
    stats: PrimaryStats,
}

/// Counters reported in status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PrimaryStats {
    pub records: u64,
    pub log_bytes: u64,
    pub batches: u64,
    pub outputs_emitted: u64,
    pub outputs_released: u64,
    pub stalls: u64,
    /// The lag throttle (`throttle.rs`).
    pub throttle: ThrottleStats,
    /// Acks that echoed a batch older than the freshness limit.
    pub stale_acks: u64,
    /// Acks applied (fresh or stale).
    pub acks: u64,
    /// Per ack, from the send of the newest batch it echoes to its arrival
    /// here (the log channel's round trip, plus the Secondary's replay for
    /// an ack sent after a replay; what an output the Output Rule holds
    /// waits for once its batch is sent): acks timed, sum, last, longest.
    pub ack_round_trip_acks: u64,
    pub ack_round_trip_us_total: u64,
    pub ack_round_trip_us_last: u64,
    pub ack_round_trip_us_max: u64,
    /// Times the vCPU waited because output was held.
    pub held_stalls: u64,
}

/// The Primary's log, output gate and flow control, shared by the vCPU thread
/// (appends, emits), the sender thread, the ack thread and the member driver.
pub struct PrimaryLog {
    st: Mutex<State>,
    cv: Condvar,
    fresh_ack: Duration,
    grant: Arc<HostGrant>,
}

/// The Secondary's lag as the Primary sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lag {
    pub records: u64,
    pub bytes: u64,
    pub ms: u64,
}

impl PrimaryLog {
    /// A paired log (gate [`Gate::ByAcks`]) with a grant that never expires
    /// and [`DEFAULT_FRESH_ACK`] (tests, the benchmark).
    pub fn new(sink: Box<dyn Outputs + Send>, lag_limit: Duration) -> Arc<Self> {
        Self::with_safety(
            sink,
            lag_limit,
            Gate::ByAcks,
            HostGrant::always(),
            DEFAULT_FRESH_ACK,
        )
    }

    /// A log starting with `gate`, whose outputs also need `grant`, and whose
    /// acks release output only if they echo a batch younger than `fresh_ack`
    /// (the failure timeout).
    pub fn with_safety(
        sink: Box<dyn Outputs + Send>,
        lag_limit: Duration,
        gate: Gate,
        grant: Arc<HostGrant>,
        fresh_ack: Duration,
    ) -> Arc<Self> {
        Arc::new(PrimaryLog {
            st: Mutex::new(State {
                next_seq: 0,
                pending: Pending::default(),
                pending_first: 0,
                pending_since: None,
                wanted: 0,
                batching: Batching::default(),
                acked: 0,
                fresh_acked: 0,
                replayed: 0,
                replayed_exit: 0,
                sent: VecDeque::new(),
                unacked_bytes: 0,
                held: VecDeque::new(),
                sink,
                gate,
                stopping: false,
                out_digest: OutputDigest::default(),
                last_time: None,
                throttle: Throttle {
                    limit_ms: lag_limit.as_millis() as u64,
                    mode: ThrottleMode::default(),
                },
                timeline: Timeline::default(),
                stats: PrimaryStats::default(),
            }),
            cv: Condvar::new(),
            fresh_ack,
            grant,
        })
    }

    /// A lag limit changed live (`ftctl apply`): the throttle uses it from
    /// the next input on.
    pub fn set_lag_limit(&self, limit: Duration) {
        let ms = limit.as_millis() as u64;
        let mut st = self.lock();
        if st.throttle.limit_ms != ms {
            st.throttle.limit_ms = ms;
            drop(st);
            self.cv.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv
            .wait_timeout(st, STALL_POLL)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Appends `body` at exit `n` (vCPU thread): one record, or its pieces
    /// if it is larger. Stalls while the unacknowledged window is full and
    /// while everything is held; never drops. Running alone there is nobody
    /// to replay it: nothing is recorded. A body the log cannot carry is
    /// refused with an error and nothing of it is appended.
    pub fn append(&self, n: ExitIndex, body: Body) -> Result<(), LogError> {
        let enc = Encoded::new(n, &body)?;
        drop(body);
        self.append_encoded(&enc, |_| {});
        Ok(())
    }

    /// [`PrimaryLog::append`] of an `Events` body of `evs`, without copying
    /// them into a [`Body`].
    pub fn append_events(&self, n: ExitIndex, evs: &[InputEvent]) -> Result<(), LogError> {
        self.append_encoded(&Encoded::events(n, evs)?, |st| {
            let end = (st.gate != Gate::Open).then_some(st.next_seq);
            st.timeline.on_inputs(evs, end, Instant::now());
        });
        Ok(())
    }

    /// Appends `enc`'s pieces, then runs `after` under the same lock (so the
    /// sender cannot take the last piece before `after` has seen it).
    fn append_encoded(&self, enc: &Encoded, after: impl FnOnce(&mut State)) {
        let mut st = self.lock();
        if st.gate == Gate::Open {
            // Alone: nothing is recorded, and so nothing waits here (the
            // outputs wait for the grant in `emit`).
            return after(&mut st);
        }
        st = self.stall_while_held(st);
        for i in 0..enc.pieces() {
            // Gone solo meanwhile: what was appended counts as acknowledged
            // (`set_gate`) and the rest is not recorded.
            st = self.wait_for_room(st);
            if st.gate == Gate::Open {
                break;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let first = st.pending_since.is_none();
            let len = st.pending.push(enc, i, seq);
            st.pending_since.get_or_insert_with(Instant::now);
            st.unacked_bytes += len;
            st.stats.records += 1;
            st.stats.log_bytes += len as u64;
            // Let the sender ship this piece (or learn when it is due) while
            // we wait for room; a coalescing sender is not woken per record.
            if first || st.send_due_now() {
                self.cv.notify_all();
            }
        }
        after(&mut st);
        // `after` may have made the pending records wanted by a held output.
        if st.send_due_now() {
            self.cv.notify_all();
        }
    }

    /// Waits (vCPU thread) while the window is full.
    fn wait_for_room<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let mut stalled = false;
        while !st.stopping
            && (st.unacked_bytes >= MAX_UNACKED_BYTES
                || st.next_seq - st.replayed >= MAX_UNREPLAYED_RECORDS)
        {
            if !stalled {
                st.stats.stalls += 1;
                stalled = true;
                tracing::warn!(
                    unacked_bytes = st.unacked_bytes,
                    "lockstep: log window full, primary stalls until the secondary catches up"
                );
            }
            st = self.wait(st);
        }
        st
    }

    /// Takes the oldest pending records, at most [`MAX_BATCH_BYTES`] of them,
    /// as one batch (sender thread); waits up to `wait` for something to
    /// send. `None` when there was nothing.
    ///
    /// Whatever the log's [`Batching`]: the sender thread uses
    /// [`PrimaryLog::take_due_batch`]; simulations cut batches where they like.
    pub fn take_batch(&self, wait: Duration) -> Option<Batch> {
        let mut st = self.lock();
        if st.pending.is_empty() {
            st = self
                .cv
                .wait_timeout_while(st, wait, |s| s.pending.is_empty())
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.pending.is_empty() {
            return None;
        }
        Some(Self::take_locked(&mut st))
    }

    /// Takes the oldest pending segment as a batch; something is pending.
    fn take_locked(st: &mut State) -> Batch {
        let seg = st.pending.take().expect("take_locked with nothing pending");
        if st.pending.is_empty() {
            st.pending_since = None;
        }
        let first_seq = st.pending_first;
        let end_seq = first_seq + u64::from(seg.records);
        st.pending_first = end_seq;
        let now = Instant::now();
        st.sent.push_back(Sent {
            end_seq,
            bytes: seg.bytes.len(),
            at: now,
        });
        st.timeline.on_batch(end_seq, now);
        st.stats.batches += 1;
        Batch {
            first_seq,
            count: seg.records,
            bytes: seg.bytes,
            sent_ns: BootInstant::now().as_nanos(),
        }
    }

    /// The Secondary received every record `< received` and replayed every
    /// record `< replayed`, and the newest batch it got was sent at `echo_ns`
    /// (ack thread). A fresh ack releases what the Output Rule allows; a
    /// stale one only moves the window.
    pub fn on_ack(&self, received: u64, replayed: u64, replayed_exit: ExitIndex, echo_ns: u64) {
        let mut st = self.lock();
        // An ack for records never sent would release outputs the Secondary
        // cannot reproduce: refuse it loudly (the channel authenticates the
        // peer, so this is a bug, not an attack).
        let sent_end = st.pending_first;
        if received > sent_end || replayed > received {
            tracing::error!(
                received,
                replayed,
                sent_end,
                "lockstep: ack beyond what was sent; ignored"
            );
            return;
        }
        st.stats.acks += 1;
        if received > st.acked {
            // Batches are the unit of accounting: a batch leaves the window
            // once all of it is acked.
            let old = st.acked;
            let acked_bytes: usize = st
                .sent
                .iter()
                .filter(|s| s.end_seq <= received && s.end_seq > old)
                .map(|s| s.bytes)
                .sum();
            st.unacked_bytes = st.unacked_bytes.saturating_sub(acked_bytes);
            st.acked = received;
        }
        let age = BootInstant::now().saturating_duration_since(BootInstant::from_nanos(echo_ns));
        let us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        st.stats.ack_round_trip_acks += 1;
        st.stats.ack_round_trip_us_total = st.stats.ack_round_trip_us_total.saturating_add(us);
        st.stats.ack_round_trip_us_last = us;
        st.stats.ack_round_trip_us_max = st.stats.ack_round_trip_us_max.max(us);
        if age < self.fresh_ack {
            st.fresh_acked = st.fresh_acked.max(received);
            let fresh = st.fresh_acked;
            st.timeline.on_fresh_ack(fresh, Instant::now());
        } else {
            st.stats.stale_acks += 1;
            tracing::warn!(
                age_ms = age.as_millis() as u64,
                "lockstep: stale ack (echoes a batch older than the freshness limit); releases nothing"
            );
        }
        if replayed > st.replayed {
            st.replayed = replayed;
            st.replayed_exit = replayed_exit;
            while st.sent.front().is_some_and(|s| s.end_seq <= replayed) {
                st.sent.pop_front();
            }
        }
        assert!(
            st.replayed <= st.acked
                && st.fresh_acked <= st.acked
                && st.acked <= st.pending_first
                && st.pending_first <= st.next_seq,
            "primary log counters out of order"
        );
        self.release(&mut st);
        drop(st);
        self.cv.notify_all();
    }

    /// How long the oldest sent batch the Secondary has not acknowledged
    /// (received) has waited since it was taken for sending; zero when
    /// every sent batch is acknowledged, and zero before the first ack of
    /// this log (a Secondary still building its VM reports late; until it
    /// acks once, only the channel's silence counts). Receipt acks ride on
    /// the Secondary's progress reports (`link.rs`): a receiving Secondary
    /// acknowledges within a round trip plus its progress period.
    pub fn unacked_for(&self) -> Duration {
        let st = self.lock();
        if st.stats.acks == 0 {
            // Not one ack yet: the Secondary is still starting its side
            // (building its VM); silence is what counts until it acks.
            return Duration::ZERO;
        }
        (st.sent.iter())
            .find(|s| s.end_seq > st.acked)
            .map_or(Duration::ZERO, |s| s.at.elapsed())
    }

    /// Every record so far was received by the Secondary.
    pub fn all_acked(&self) -> bool {
        let st = self.lock();
        st.acked == st.next_seq
    }

    pub fn lag(&self) -> Lag {
        Self::lag_of(&self.lock())
    }

    fn lag_of(st: &State) -> Lag {
        Lag {
            records: st.next_seq - st.replayed,
            bytes: st.sent.iter().map(|s| s.bytes as u64).sum::<u64>() + st.pending.len() as u64,
            ms: st.lag_ms(),
        }
    }

    /// Status for `ftctl status`.
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        serde_json::json!({
            "records": st.stats.records,
            "acked": st.acked,
            "fresh_acked": st.fresh_acked,
            "replayed": st.replayed,
            "replayed_exit": st.replayed_exit,
            "lag": Self::lag_of(&st),
            "outputs_held": st.held.len(),
            "gate": format!("{:?}", st.gate),
            "grant_valid": self.grant.valid(),
            "stats": st.stats,
            "timeline": st.timeline.report(),
            "timeline_every": st.timeline.every(),
        })
    }

    /// The per-request timeline's figures (`timeline.rs`).
    pub fn timeline(&self) -> Vec<SegmentReport> {
        self.lock().timeline.report()
    }

    /// Traces one in `every` requests of each kind from now on (`0`: none).
    pub fn set_timeline_every(&self, every: u64) {
        self.lock().timeline.set_every(every);
    }

    pub fn stats(&self) -> PrimaryStats {
        self.lock().stats.clone()
    }

    /// Number of outputs currently held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Bytes sent or pending and not acknowledged (the window's fill).
    pub fn unacked_bytes(&self) -> usize {
        self.lock().unacked_bytes
    }

    /// The clock value the guest was handed last (vCPU thread).
    pub fn note_time(&self, value: u64) {
        self.lock().last_time = Some(value);
    }

    pub fn last_time(&self) -> Option<u64> {
        self.lock().last_time
    }

    /// A new Secondary takes this lone Primary's state at the current exit
    /// (respawn; vCPU thread, between exits, the guest paused): the log
    /// restarts there. Outputs emitted since the last `Outputs` record
    /// were released alone and are not the new Secondary's to check: their
    /// digest is dropped. Returns the sequence number of the first record
    /// the new Secondary gets. Refused unless the gate is open and nothing
    /// is held (a held output would be released by acks of a Secondary that
    /// never produced it).
    pub fn join_secondary(&self) -> Result<u64, String> {
        let mut st = self.lock();
        if st.gate != Gate::Open {
            return Err(format!("the output gate is {:?}, not open", st.gate));
        }
        if !st.held.is_empty() {
            return Err(format!("{} outputs are held", st.held.len()));
        }
        let _ = st.out_digest.take();
        debug_assert!(st.pending.is_empty() && st.acked == st.next_seq);
        Ok(st.next_seq)
    }

    /// Sequence number of the next record.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Sequence number of the first record not yet taken by the sender (what
    /// an empty keepalive batch must carry: records after it may be pending).
    pub fn unsent_from(&self) -> u64 {
        self.lock().pending_first
    }
}
