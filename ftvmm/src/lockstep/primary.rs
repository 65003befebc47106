//! The Primary's side of lockstep: record every input, hold every output.
//!
//! [`PrimaryInputs`] wraps the live input door. Whatever non-deterministic
//! value it hands the vCPU loop (events at an exit, a time read) it first
//! appends to the log as a [`Record`] tagged with the exit index, plus periodic
//! register checks and a digest of the outputs emitted since the last one.
//!
//! [`PrimaryOutputs`] implements the Output Rule: an output emitted when the
//! log holds records `0 .. s` is released to the real sink only once the
//! Secondary has acknowledged receipt of records `0 ..= s` (`acked > s`):
//! every record before the output *and the first one after it*. The records
//! before it are not enough: the Secondary knows "no input at exit n" only
//! from a later record, so one holding only records before the output stops
//! (and may go live) at the first input call after the last of them, which
//! can come before the output's exit; it would never reproduce an output the
//! world has already seen. Record `s` is at the output's exit or later (the
//! `Outputs` digest that `events_at` appends right after the exit that
//! produced it, at the latest), so a Secondary that has it replays past the
//! output. Outputs leave in the order they were produced.
//!
//! Flow control: a sender thread takes the pending bytes as one batch
//! ([`PrimaryLog::take_batch`]); the ack thread reports receipt and replay
//! progress ([`PrimaryLog::on_ack`]). The vCPU thread stalls when unacknowledged
//! bytes exceed [`MAX_UNACKED_BYTES`] (nothing is ever dropped) and is slowed
//! while the Secondary's replay lag exceeds the configured limit.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::digest::OutputDigest;
use super::log::{encode, Body, Record};
use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeRead, TimeSource};

/// The vCPU stalls when this many bytes are sent or pending but not acked.
pub const MAX_UNACKED_BYTES: usize = 64 << 20;
/// ...or when the Secondary has this many records it has not replayed yet.
pub const MAX_UNREPLAYED_RECORDS: u64 = 1 << 20;
/// A register check record every this many exits (both sides must agree: it
/// is part of the protocol version).
pub const CHECK_EVERY: u64 = 1024;

/// One batch the sender thread ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_seq: u64,
    pub count: u32,
    pub bytes: Vec<u8>,
}

/// A sent batch, kept until replayed (for lag accounting).
struct Sent {
    end_seq: u64,
    bytes: usize,
    at: Instant,
}

struct State {
    /// Sequence number of the next record.
    next_seq: u64,
    /// Encoded records not yet taken by the sender.
    pending: Vec<u8>,
    pending_first: u64,
    /// Every record `< acked` was received by the Secondary.
    acked: u64,
    /// Every record `< replayed` was executed by the Secondary.
    replayed: u64,
    replayed_exit: ExitIndex,
    /// Batches sent and not fully replayed.
    sent: VecDeque<Sent>,
    unacked_bytes: usize,
    /// Outputs waiting for the Output Rule: (records that must be acked, output).
    held: VecDeque<(u64, OutputEvent)>,
    sink: Box<dyn Outputs + Send>,
    /// Why the channel ended (outputs stay held from then on).
    lost: Option<String>,
    /// Hold everything regardless of acks (fencing could not renew the lease,
    /// or the Secondary is lost and the next generation is not won yet).
    hold_all: bool,
    /// Won the next generation alone: outputs no longer wait for acks.
    solo: bool,
    /// Fencing asked to hold all output (this host cannot renew its lease).
    fenced: bool,
    /// Fencing released its hold, but output stays held until this Primary
    /// has re-won the VM's next generation: while it could not reach storage
    /// another host may have taken the VM over.
    recheck: bool,
    out_digest: OutputDigest,
    stats: PrimaryStats,
}

/// Fencing's view of a Primary (see [`PrimaryLog::fence_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceState {
    /// Fencing holds all output.
    pub fenced: bool,
    /// Fencing released; the generation must be re-won before output flows.
    pub recheck: bool,
    /// A Secondary is connected (records are shipped and acked).
    pub paired: bool,
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
    pub throttled_ms: u64,
}

/// The Primary's log, output gate and flow control, shared by the vCPU thread
/// (appends, emits), the sender thread and the ack thread.
pub struct PrimaryLog {
    st: Mutex<State>,
    cv: Condvar,
    lag_limit: Duration,
}

/// The Secondary's lag as the Primary sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lag {
    pub records: u64,
    pub bytes: u64,
    pub ms: u64,
}

impl PrimaryLog {
    pub fn new(sink: Box<dyn Outputs + Send>, lag_limit: Duration) -> Arc<Self> {
        Arc::new(PrimaryLog {
            st: Mutex::new(State {
                next_seq: 0,
                pending: Vec::new(),
                pending_first: 0,
                acked: 0,
                replayed: 0,
                replayed_exit: 0,
                sent: VecDeque::new(),
                unacked_bytes: 0,
                held: VecDeque::new(),
                sink,
                lost: None,
                hold_all: false,
                solo: false,
                fenced: false,
                recheck: false,
                out_digest: OutputDigest::default(),
                stats: PrimaryStats::default(),
            }),
            cv: Condvar::new(),
            lag_limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record (vCPU thread). Stalls while the unacknowledged
    /// window is full; never drops.
    pub fn append(&self, n: ExitIndex, body: Body) {
        let mut st = self.lock();
        if st.solo {
            // No Secondary to replay it; a respawned one starts from a copy.
            return;
        }
        let mut stalled = false;
        while st.lost.is_none()
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
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let rec = Record { seq, n, body };
        let len = encode(&rec, &mut st.pending);
        st.unacked_bytes += len;
        st.stats.records += 1;
        st.stats.log_bytes += len as u64;
        drop(st);
        self.cv.notify_all();
    }

    /// Takes everything pending as one batch (sender thread); waits up to
    /// `wait` for something to send. `None` when there was nothing.
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
        let bytes = std::mem::take(&mut st.pending);
        let first_seq = st.pending_first;
        let count = (st.next_seq - first_seq) as u32;
        let end_seq = st.next_seq;
        st.pending_first = end_seq;
        st.sent.push_back(Sent {
            end_seq,
            bytes: bytes.len(),
            at: Instant::now(),
        });
        st.stats.batches += 1;
        Some(Batch {
            first_seq,
            count,
            bytes,
        })
    }

    /// The Secondary received every record `< received` and replayed every
    /// record `< replayed` (ack thread). Releases what the Output Rule allows.
    pub fn on_ack(&self, received: u64, replayed: u64, replayed_exit: ExitIndex) {
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
        if received > st.acked {
            // Bytes of records now acked leave the window. Batches are the
            // unit of accounting: count a batch as acked once all of it is.
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
        if replayed > st.replayed {
            st.replayed = replayed;
            st.replayed_exit = replayed_exit;
            while st.sent.front().is_some_and(|s| s.end_seq <= replayed) {
                st.sent.pop_front();
            }
        }
        Self::release(&mut st);
        drop(st);
        self.cv.notify_all();
    }

    fn release(st: &mut State) {
        if st.hold_all {
            return;
        }
        // Solo: nobody acks any more, the Output Rule no longer applies.
        while st
            .held
            .front()
            .is_some_and(|(need, _)| st.solo || *need <= st.acked)
        {
            let (_, ev) = st.held.pop_front().expect("front exists");
            st.sink.emit(0, ev);
            st.stats.outputs_released += 1;
        }
    }

    /// An output produced now (vCPU thread): released at once if every record
    /// before it is acked and nothing is held before it, else held.
    pub fn emit(&self, n: ExitIndex, ev: OutputEvent) {
        let mut st = self.lock();
        st.out_digest.add(&ev);
        st.stats.outputs_emitted += 1;
        // The record after this output must be acked too (module docs).
        let need = st.next_seq + 1;
        if st.held.is_empty() && !st.hold_all && (st.solo || need <= st.acked) {
            st.sink.emit(n, ev);
            st.stats.outputs_released += 1;
        } else {
            st.held.push_back((need, ev));
        }
    }

    /// The outputs digest since the last call, if there were outputs.
    fn take_output_digest(&self) -> Option<(u32, u64)> {
        self.lock().out_digest.take()
    }

    /// The channel to the Secondary ended: from now on nothing is released
    /// by acks (a new generation must be won first, DESIGN §4).
    pub fn lose_secondary(&self, why: &str) {
        let mut st = self.lock();
        if st.lost.is_none() {
            tracing::warn!("lockstep: secondary lost ({why}); holding all output");
            st.lost = Some(why.to_string());
            st.hold_all = true;
        }
        drop(st);
        self.cv.notify_all();
    }

    /// Whether everything is held: fencing holds, a release waits for the
    /// generation re-check, or the Secondary is lost and g+1 not won yet.
    fn recompute_hold(st: &mut State) {
        st.hold_all = st.fenced || st.recheck || (st.lost.is_some() && !st.solo);
    }

    /// Fencing's `HoldOutput`: holds every output regardless of acks, or ends
    /// fencing's hold. A Primary running without Secondary does not resume on
    /// release: it must re-win its generation first ([`FenceState::recheck`],
    /// [`PrimaryLog::rechecked`]). Releasing the fencing hold never releases
    /// what a lost Secondary holds.
    pub fn set_hold(&self, hold: bool) {
        let mut st = self.lock();
        if hold {
            st.fenced = true;
        } else if st.fenced {
            st.fenced = false;
            st.recheck = st.solo;
        }
        Self::recompute_hold(&mut st);
        Self::release(&mut st);
    }

    /// Where this Primary stands with fencing and its Secondary.
    pub fn fence_state(&self) -> FenceState {
        let st = self.lock();
        FenceState {
            fenced: st.fenced,
            recheck: st.recheck,
            paired: st.lost.is_none(),
        }
    }

    /// The generation was re-won after fencing's hold: output flows again
    /// (unless fencing holds again).
    pub fn rechecked(&self) {
        let mut st = self.lock();
        st.recheck = false;
        Self::recompute_hold(&mut st);
        Self::release(&mut st);
    }

    /// Runs unprotected after winning the next generation alone: everything
    /// held is released and later outputs pass at once (unless fencing holds).
    pub fn go_solo(&self) {
        let mut st = self.lock();
        st.solo = true;
        st.recheck = false;
        let upto = st.next_seq;
        st.acked = upto;
        st.replayed = upto;
        st.lost
            .get_or_insert_with(|| "running without secondary".into());
        Self::recompute_hold(&mut st);
        // Fencing may hold: then what is held waits for the re-check.
        Self::release(&mut st);
        drop(st);
        self.cv.notify_all();
    }

    /// Every record so far was received by the Secondary.
    pub fn all_acked(&self) -> bool {
        let st = self.lock();
        st.acked == st.next_seq
    }

    /// Drops the real output sink (its backends are being shut down); outputs
    /// from now on are counted and discarded.
    pub fn detach_sink(&self) {
        struct Discard;
        impl Outputs for Discard {
            fn emit(&mut self, _n: ExitIndex, _e: OutputEvent) {}
        }
        let old = std::mem::replace(&mut self.lock().sink, Box::new(Discard));
        drop(old);
    }

    /// Whether records are still being shipped to a Secondary.
    pub fn is_solo(&self) -> bool {
        self.lock().lost.is_some()
    }

    pub fn lag(&self) -> Lag {
        let st = self.lock();
        Self::lag_of(&st)
    }

    fn lag_of(st: &State) -> Lag {
        Lag {
            records: st.next_seq - st.replayed,
            bytes: st.sent.iter().map(|s| s.bytes as u64).sum::<u64>() + st.pending.len() as u64,
            ms: st
                .sent
                .front()
                .map(|s| s.at.elapsed().as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// Slows the vCPU while the Secondary's replay lag exceeds the limit.
    fn throttle(&self) {
        let over = {
            let st = self.lock();
            st.lost.is_none() && Self::lag_of(&st).ms > self.lag_limit.as_millis() as u64
        };
        if over {
            std::thread::sleep(Duration::from_millis(1));
            self.lock().stats.throttled_ms += 1;
        }
    }

    /// Status for `ftctl status`.
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        serde_json::json!({
            "records": st.stats.records,
            "acked": st.acked,
            "replayed": st.replayed,
            "replayed_exit": st.replayed_exit,
            "lag": Self::lag_of(&st),
            "outputs_held": st.held.len(),
            "hold_all": st.hold_all,
            "fencing_hold": st.fenced,
            "generation_recheck": st.recheck,
            "secondary_lost": st.lost,
            "stats": st.stats,
        })
    }

    pub fn stats(&self) -> PrimaryStats {
        self.lock().stats.clone()
    }

    /// Number of outputs currently held.
    pub fn held(&self) -> usize {
        self.lock().held.len()
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

/// The Primary's input door: live values, recorded.
pub struct PrimaryInputs<I: Inputs> {
    inner: I,
    log: Arc<PrimaryLog>,
    /// A memory digest requested at this exit (see [`Body::MemoryDigest`]).
    pause: Option<ExitIndex>,
    digest_request: Arc<std::sync::atomic::AtomicU64>,
    buf: Vec<InputEvent>,
    /// The exit of the last `Events` record: whether the input call at the
    /// pause returned something decides if the pause needs a `Mark`.
    last_events: Option<ExitIndex>,
}

impl<I: Inputs> PrimaryInputs<I> {
    pub fn new(inner: I, log: Arc<PrimaryLog>) -> Self {
        PrimaryInputs {
            inner,
            log,
            pause: None,
            digest_request: Arc::default(),
            buf: Vec::new(),
            last_events: None,
        }
    }

    /// Set to `d > 0` to have both sides hash guest memory `d` exits from the
    /// next exit (taken once).
    pub fn digest_request(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.digest_request)
    }

    /// Called when the vCPU loop returned at the memory-digest pause: takes
    /// the pause point (so the run can continue after it) and tells the
    /// Secondary how the input call at that exit ended.
    ///
    /// The Secondary stops at the same exit only after its own input call
    /// there returned, and it can only return once it sees a record that
    /// answers it. If our call returned events, their `Events` record is that
    /// answer and nothing more is needed. If it returned nothing, no record
    /// says so until the next input after the pause, which the pause itself
    /// delays: append a `Mark` for that exit. Appending a mark after events
    /// would leave a record for an exit the Secondary has already left, and
    /// it would (rightly) call the next exit a divergence.
    pub fn take_pause(&mut self) -> Option<ExitIndex> {
        let at = self.pause.take()?;
        if self.last_events != Some(at) {
            self.log.append(at, Body::Mark);
        }
        Some(at)
    }

    pub fn into_inner(self) -> I {
        self.inner
    }

    fn before_events(&mut self, n: ExitIndex) {
        if let Some((count, digest)) = self.log.take_output_digest() {
            self.log.append(n, Body::Outputs { count, digest });
        }
        let d = self
            .digest_request
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        if d > 0 {
            let at = n + d;
            self.pause = Some(at);
            self.log.append(n, Body::MemoryDigest { at });
        }
    }

    fn record(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if !self.buf.is_empty() {
            self.log.append(n, Body::Events(self.buf.clone()));
            self.last_events = Some(n);
            out.append(&mut self.buf);
        }
    }
}

impl<I: Inputs> Inputs for PrimaryInputs<I> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.before_events(n);
        self.inner.events_at(n, &mut self.buf);
        self.record(n, out);
        self.log.throttle();
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.before_events(n);
        self.inner.events_at_halt(n, &mut self.buf);
        self.record(n, out);
    }
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        let value = self.inner.time_read(n, source);
        self.log.append(n, Body::Time(TimeRead { source, value }));
        value
    }
    fn program_timer(&mut self, n: ExitIndex, program: crate::io::TimerProgram) {
        self.inner.program_timer(n, program)
    }
    fn check_interval(&self) -> u64 {
        CHECK_EVERY
    }
    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        self.log.append(n, Body::Check { rip, gpr_hash });
    }
    fn pause_at(&self) -> Option<ExitIndex> {
        self.pause
    }
}

/// The Primary's output door: the Output Rule.
pub struct PrimaryOutputs(pub Arc<PrimaryLog>);

impl Outputs for PrimaryOutputs {
    fn emit(&mut self, n: ExitIndex, event: OutputEvent) {
        self.0.emit(n, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Sink(Arc<Mutex<Vec<OutputEvent>>>);
    impl Outputs for Sink {
        fn emit(&mut self, _n: ExitIndex, e: OutputEvent) {
            self.0.lock().unwrap().push(e);
        }
    }

    fn log() -> (Arc<PrimaryLog>, Arc<Mutex<Vec<OutputEvent>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        (
            PrimaryLog::new(Box::new(Sink(Arc::clone(&out))), Duration::from_secs(1)),
            out,
        )
    }

    fn console(b: u8) -> OutputEvent {
        OutputEvent::Console(vec![b])
    }

    #[test]
    fn output_rule_holds_until_the_records_before_and_the_first_after_are_acked() {
        let (log, out) = log();
        log.append(1, Body::Events(vec![InputEvent::TimerTick])); // record 0
        log.emit(3, console(b'a')); // needs records 0 and 1
        log.append(
            3,
            Body::Outputs {
                count: 1,
                digest: 0,
            },
        ); // record 1
        log.emit(4, console(b'b')); // needs records 0, 1, 2
        assert!(out.lock().unwrap().is_empty());
        let b = log.take_batch(Duration::ZERO).unwrap();
        assert_eq!((b.first_seq, b.count), (0, 2));
        log.on_ack(1, 0, 0);
        assert!(
            out.lock().unwrap().is_empty(),
            "released with only the records before it acked: a Secondary holding \
             them may stop before exit 3 and never reproduce it"
        );
        log.on_ack(2, 0, 0);
        assert_eq!(*out.lock().unwrap(), vec![console(b'a')]);
        log.append(
            5,
            Body::Outputs {
                count: 1,
                digest: 0,
            },
        ); // record 2
        let _ = log.take_batch(Duration::ZERO).unwrap();
        log.on_ack(3, 0, 0);
        assert_eq!(*out.lock().unwrap(), vec![console(b'a'), console(b'b')]);
        assert_eq!(log.held(), 0);
    }

    #[test]
    fn a_keepalive_starts_at_the_first_unsent_record_not_the_next_one() {
        let (log, _) = log();
        log.append(1, Body::End);
        let b = log.take_batch(Duration::ZERO).unwrap();
        assert_eq!((b.first_seq, b.count), (0, 1));
        log.append(2, Body::End); // pending, not yet taken by the sender
        assert_eq!(log.next_seq(), 2);
        assert_eq!(
            log.unsent_from(),
            1,
            "an empty batch must not skip record 1"
        );
    }

    #[test]
    fn an_ack_for_unsent_records_releases_nothing() {
        let (log, out) = log();
        log.append(1, Body::End);
        log.emit(1, console(b'x'));
        log.on_ack(1, 0, 0); // record 0 is pending, never sent
        assert!(out.lock().unwrap().is_empty());
        assert_eq!(log.held(), 1);
    }

    #[test]
    fn outputs_keep_their_order_behind_a_held_one() {
        let (log, out) = log();
        log.append(1, Body::End);
        log.emit(1, console(b'1'));
        log.append(1, Body::Mark);
        let _ = log.take_batch(Duration::ZERO);
        log.on_ack(2, 2, 1);
        log.emit(2, console(b'2'));
        log.emit(2, console(b'3'));
        assert_eq!(out.lock().unwrap().len(), 1);
        log.append(2, Body::Mark);
        let _ = log.take_batch(Duration::ZERO);
        log.on_ack(3, 3, 2);
        let got: Vec<_> = out.lock().unwrap().clone();
        assert_eq!(got, vec![console(b'1'), console(b'2'), console(b'3')]);
    }

    #[test]
    fn losing_the_secondary_holds_everything_until_solo() {
        let (log, out) = log();
        log.append(1, Body::End);
        let _ = log.take_batch(Duration::ZERO);
        log.lose_secondary("test");
        log.emit(1, console(b'z'));
        log.on_ack(1, 1, 1);
        assert!(
            out.lock().unwrap().is_empty(),
            "released while secondary lost"
        );
        log.go_solo();
        assert_eq!(*out.lock().unwrap(), vec![console(b'z')]);
        log.emit(2, console(b'y'));
        assert_eq!(out.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_fencing_hold_holds_acked_outputs_and_a_paired_primary_is_told_to_hand_over() {
        let (log, out) = log();
        log.append(1, Body::End);
        log.set_hold(true);
        log.emit(1, console(b'h'));
        log.append(1, Body::Mark);
        let _ = log.take_batch(Duration::ZERO);
        log.on_ack(2, 2, 1);
        assert!(
            out.lock().unwrap().is_empty(),
            "released under a fencing hold"
        );
        let f = log.fence_state();
        assert!(f.fenced && f.paired && !f.recheck);
        assert!(log.all_acked());
        // A paired Primary's release (no hand-over happened) lets it flow.
        log.set_hold(false);
        assert_eq!(*out.lock().unwrap(), vec![console(b'h')]);
        assert!(!log.fence_state().recheck);
    }

    #[test]
    fn a_solo_primary_released_by_fencing_waits_for_the_generation_recheck() {
        let (log, out) = log();
        log.lose_secondary("test");
        log.go_solo();
        log.set_hold(true);
        log.append(1, Body::End);
        log.emit(1, console(b'1'));
        log.emit(1, console(b'2'));
        log.set_hold(false);
        assert!(out.lock().unwrap().is_empty(), "released before re-check");
        let f = log.fence_state();
        assert!(f.recheck && !f.fenced && !f.paired);
        log.rechecked();
        assert_eq!(*out.lock().unwrap(), vec![console(b'1'), console(b'2')]);
        log.emit(2, console(b'3'));
        assert_eq!(out.lock().unwrap().len(), 3);
    }

    #[test]
    fn winning_alone_under_a_fencing_hold_keeps_holding() {
        let (log, out) = log();
        log.append(1, Body::End);
        let _ = log.take_batch(Duration::ZERO);
        log.emit(1, console(b'x'));
        log.lose_secondary("test");
        log.set_hold(true);
        log.go_solo();
        assert!(out.lock().unwrap().is_empty(), "go_solo overrode fencing");
        log.set_hold(false);
        assert!(out.lock().unwrap().is_empty(), "released before re-check");
        log.rechecked();
        assert_eq!(*out.lock().unwrap(), vec![console(b'x')]);
    }

    #[test]
    fn a_full_window_stalls_the_appender_until_acked() {
        let (log, _) = log();
        let big = vec![0u8; 1 << 20];
        for i in 0..(MAX_UNACKED_BYTES >> 20) {
            log.append(
                i as u64,
                Body::Events(vec![InputEvent::ConsoleIn(big.clone())]),
            );
        }
        let done = Arc::new(AtomicUsize::new(0));
        let (l2, d2) = (Arc::clone(&log), Arc::clone(&done));
        let t = std::thread::spawn(move || {
            l2.append(999, Body::End);
            d2.store(1, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(done.load(Ordering::SeqCst), 0, "append did not stall");
        let b = log.take_batch(Duration::ZERO).unwrap();
        log.on_ack(b.first_seq + u64::from(b.count), 0, 0);
        t.join().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(log.stats().stalls, 1);
    }
}
