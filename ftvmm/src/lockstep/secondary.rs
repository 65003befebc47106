//! The Secondary's side of lockstep: replay the log at the same exit indices.
//!
//! Batches arrive (receiver thread) into a [`ReplayQueue`], which decodes them
//! with a [`Reader`]: a body the Primary split into pieces is queued only once
//! whole, so the replay below only ever sees whole bodies (a split body whose
//! last piece never arrives is as if never sent). [`SecondaryInputs`] hands
//! them to the vCPU loop exactly where the Primary's loop took the original
//! values. At every call it checks the head of the queue:
//!
//! - a record for an earlier exit than the current one was skipped, and a
//!   record of another kind than the call expects at this exit was produced by
//!   a different execution: both are **divergence**;
//! - a call that must consume a record (a time read, a register check, the
//!   digest of the outputs emitted since the last one) and finds the next
//!   record at a later exit is **divergence** (missing record);
//! - `events_at(n)` with the next record at a later exit means "no events at
//!   `n`". To know that, the Secondary needs *some* later record, so it blocks
//!   while the queue is empty: it always runs behind the Primary.
//!
//! Divergence is logged with both sides' values, counted, and stops the VM.
//! When the channel has ended and every record has been replayed, the queue
//! is *exhausted*: the VM stops at that exit so the caller can decide (halt,
//! or go live — docs/architecture.md §6). Outputs are digested and dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::digest::OutputDigest;
use super::log::{Body, LogError, Reader, Record, Whole};
use super::primary::CHECK_EVERY;
use crate::io::{BlockRequest, ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};
use crate::vm::VmHandle;

/// How long one blocking wait lasts before re-checking for a stop request.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Why replay stopped the VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ReplayEnd {
    /// The Primary ended the VM in an orderly way at this exit.
    PrimaryEnded(ExitIndex),
    /// The channel ended and every received record was replayed; the
    /// Primary's execution beyond exit `at` is unknown.
    Exhausted { at: ExitIndex, why: String },
    /// The two executions differ.
    Diverged(String),
}

struct State {
    /// Whole bodies received and not replayed, each with the sequence number
    /// after its last record.
    records: VecDeque<Whole>,
    /// `sent_ns` of the newest batch received (echoed in acks).
    newest_sent_ns: u64,
    /// Block requests the replayed VM issued and the log has not completed
    /// yet, with the bytes the replay produced: what a go-live re-issues.
    in_flight: BTreeMap<(u8, u64), BlockRequest>,
    /// Every record `< received` arrived (pieces of an unfinished body
    /// included).
    received: u64,
    /// Every record `< replayed` was consumed by the vCPU loop.
    replayed: u64,
    replayed_exit: ExitIndex,
    /// The channel ended (no more records will come).
    closed: Option<String>,
    /// When it was closed (go-live reports the time since).
    closed_at: Option<std::time::Instant>,
    divergences: u64,
    out_digest: OutputDigest,
    outputs_dropped: u64,
    /// Outputs whose digest matched the Primary's `Outputs` record.
    outputs_verified: u64,
    /// Stop waiting (the VM is being stopped).
    abort: bool,
}

/// Records received and not yet replayed, shared by the receiver thread and
/// the vCPU thread.
pub struct ReplayQueue {
    st: Mutex<State>,
    cv: Condvar,
    /// The receiver thread's decoder (its own lock: decoding a batch does not
    /// hold up the vCPU thread).
    reader: Mutex<Reader>,
}

impl ReplayQueue {
    pub fn new(first_seq: u64) -> Arc<Self> {
        Arc::new(ReplayQueue {
            st: Mutex::new(State {
                records: VecDeque::new(),
                newest_sent_ns: 0,
                in_flight: BTreeMap::new(),
                received: first_seq,
                replayed: first_seq,
                replayed_exit: 0,
                closed: None,
                closed_at: None,
                divergences: 0,
                out_digest: OutputDigest::default(),
                outputs_dropped: 0,
                outputs_verified: 0,
                abort: false,
            }),
            cv: Condvar::new(),
            reader: Mutex::new(Reader::new(first_seq)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch of `count` encoded records starting at `first_seq` that
    /// the Primary sent at `sent_ns` (receiver thread): it must continue the
    /// log exactly and decode whole; the bodies it completes are queued. All
    /// or nothing: on an error nothing of the batch is queued, and no later
    /// batch is taken (the log cannot continue past it).
    ///
    /// Returns whether the Primary may be waiting for this batch's ack: it is
    /// empty (a keepalive: the ack is the Primary's sign of life), or it
    /// completes an `Outputs` record (a held output waits on it) or the `End`
    /// (an ending Primary waits for everything to be acknowledged).
    pub fn receive_batch(
        &self,
        first_seq: u64,
        count: u32,
        bytes: &[u8],
        sent_ns: u64,
    ) -> Result<bool, LogError> {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let wholes = reader.read_batch(bytes, first_seq, count)?;
        let awaited = count == 0
            || wholes
                .iter()
                .any(|w| matches!(w.rec.body, Body::Outputs { .. } | Body::End));
        let mut st = self.lock();
        st.received = reader.next_seq();
        st.newest_sent_ns = st.newest_sent_ns.max(sent_ns);
        st.records.extend(wholes);
        drop(st);
        self.cv.notify_all();
        Ok(awaited)
    }

    /// Queues records already decoded whole, each one record long (bodies
    /// that were not split), as the Primary sent them at `sent_ns`
    /// (simulations that replay a prefix of a log). They must continue the
    /// log exactly.
    pub fn push_batch(&self, recs: Vec<Record>, sent_ns: u64) {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        assert_eq!(
            reader.unfinished(),
            None,
            "whole records pushed behind an unfinished split body"
        );
        for (i, rec) in recs.iter().enumerate() {
            assert_eq!(
                rec.seq,
                st.received + i as u64,
                "batch does not continue the log"
            );
        }
        st.received += recs.len() as u64;
        *reader = Reader::new(st.received);
        st.newest_sent_ns = st.newest_sent_ns.max(sent_ns);
        st.records.extend(recs.into_iter().map(|rec| Whole {
            end_seq: rec.seq + 1,
            rec,
        }));
        drop(st);
        self.cv.notify_all();
    }

    /// The `sent_ns` of the newest batch received (an ack echoes it).
    pub fn newest_sent_ns(&self) -> u64 {
        self.lock().newest_sent_ns
    }

    /// The block requests the replayed VM issued that the log never completed,
    /// in issue order, carrying the bytes the replay produced (a go-live
    /// re-issues exactly these: the deposed Primary may have had them in
    /// flight, and guest memory may have changed since they were issued).
    pub fn in_flight_block_requests(&self) -> Vec<BlockRequest> {
        self.lock().in_flight.values().cloned().collect()
    }

    /// A Secondary restored by live transfer: the block requests the
    /// restored device model has in flight (the Primary issued them before
    /// the switch; their completions come through the log, and a go-live
    /// before that re-issues them like any other).
    pub fn seed_in_flight(&self, reqs: Vec<BlockRequest>) {
        let mut st = self.lock();
        for r in reqs {
            st.in_flight.insert((r.dev, r.id), r);
        }
    }

    /// Sequence number the next batch must start with.
    pub fn received(&self) -> u64 {
        self.lock().received
    }

    /// `(received, replayed, replayed_exit)` for an ack.
    pub fn progress(&self) -> (u64, u64, ExitIndex) {
        let st = self.lock();
        (st.received, st.replayed, st.replayed_exit)
    }

    /// Waits up to `timeout` until the replay has consumed every whole body
    /// received with progress other than `last`, then returns the progress
    /// and whether that happened (the link's progress thread: a Primary whose
    /// lag throttle waits is waiting for exactly this report). A closed queue
    /// does not end the wait early, so a caller looping on it never spins.
    pub fn wait_progress(
        &self,
        last: (u64, u64, ExitIndex),
        timeout: Duration,
    ) -> ((u64, u64, ExitIndex), bool) {
        let st = self.lock();
        let (st, res) = self
            .cv
            .wait_timeout_while(st, timeout, |s| {
                let now = (s.received, s.replayed, s.replayed_exit);
                !(s.records.is_empty() && now != last)
            })
            .unwrap_or_else(|p| p.into_inner());
        (
            (st.received, st.replayed, st.replayed_exit),
            !res.timed_out(),
        )
    }

    /// No more records will come.
    pub fn close(&self, why: &str) {
        let mut st = self.lock();
        st.closed_at.get_or_insert_with(std::time::Instant::now);
        st.closed.get_or_insert_with(|| why.to_string());
        drop(st);
        self.cv.notify_all();
    }

    /// When the queue was closed, if it was.
    pub fn closed_at(&self) -> Option<std::time::Instant> {
        self.lock().closed_at
    }

    /// Stop waiting for records (the VM is being stopped).
    pub fn abort(&self) {
        self.lock().abort = true;
        self.cv.notify_all();
    }

    /// Outputs this replay produced and checked against the Primary's
    /// digests: a Secondary that goes live has verified at least every
    /// output the Primary released (the Output Rule's covering digest).
    pub fn outputs_verified(&self) -> u64 {
        self.lock().outputs_verified
    }

    pub fn divergences(&self) -> u64 {
        self.lock().divergences
    }

    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        serde_json::json!({
            "received": st.received,
            "replayed": st.replayed,
            "replayed_exit": st.replayed_exit,
            "queued_records": st.records.len(),
            "divergences": st.divergences,
            "outputs_dropped": st.outputs_dropped,
            "outputs_verified": st.outputs_verified,
            "channel_closed": st.closed,
        })
    }
}

/// What the head of the queue says for a call at exit `n`.
enum Head {
    /// A record for this exit.
    Here(Record),
    /// The next record is for a later exit.
    Later(ExitIndex),
    /// Nothing more will come.
    Exhausted(String),
    Aborted,
}

/// The Secondary's input door.
pub struct SecondaryInputs {
    q: Arc<ReplayQueue>,
    vm: VmHandle,
    end: Option<ReplayEnd>,
    pause: Option<ExitIndex>,
    /// The last time value replayed (a go-live continues the clock from it).
    last_time: Option<u64>,
    /// A call was answered without the log because the VM is being stopped:
    /// from then on the guest runs unguided until the vCPU loop sees its stop,
    /// so no later call may take a record (it would read the Primary's record
    /// for an exit already passed as a divergence).
    aborted: bool,
}

impl SecondaryInputs {
    pub fn new(q: Arc<ReplayQueue>, vm: VmHandle) -> Self {
        SecondaryInputs {
            q,
            vm,
            end: None,
            pause: None,
            last_time: None,
            aborted: false,
        }
    }

    /// A Secondary restored by live transfer: the clock the guest saw last.
    pub fn with_last_time(mut self, last_time: Option<u64>) -> Self {
        self.last_time = last_time;
        self
    }

    /// Why replay stopped the VM, if it did.
    pub fn end(&self) -> Option<&ReplayEnd> {
        self.end.as_ref()
    }

    pub fn take_pause(&mut self) -> Option<ExitIndex> {
        self.pause.take()
    }

    /// The last time value the Primary recorded, if any.
    pub fn last_time(&self) -> Option<u64> {
        self.last_time
    }

    /// Blocks until the head of the queue is known, then pops it if it is for
    /// exit `n` (`peek_only` leaves it).
    fn head(&mut self, n: ExitIndex) -> Head {
        if self.aborted {
            return Head::Aborted;
        }
        let mut st = self.q.lock();
        loop {
            if let Some(Whole { rec, .. }) = st.records.front() {
                if rec.n > n {
                    return Head::Later(rec.n);
                }
            }
            if let Some(Whole { rec, end_seq }) = st.records.pop_front() {
                st.replayed = end_seq;
                st.replayed_exit = n;
                if st.records.is_empty() {
                    // Caught up: the progress thread reports it at once.
                    self.q.cv.notify_all();
                }
                return Head::Here(rec);
            }
            if let Some(why) = &st.closed {
                return Head::Exhausted(why.clone());
            }
            if st.abort || self.vm.is_stopping() {
                self.aborted = true;
                return Head::Aborted;
            }
            st = self
                .q
                .cv
                .wait_timeout(st, WAIT_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn stop(&mut self, end: ReplayEnd) {
        if self.end.is_none() {
            match &end {
                ReplayEnd::Diverged(what) => {
                    self.q.lock().divergences += 1;
                    tracing::error!("lockstep: DIVERGENCE: {what}");
                    println!("ftvmm: lockstep divergence: {what}");
                }
                ReplayEnd::Exhausted { at, why } => {
                    tracing::warn!(at, "lockstep: log exhausted ({why})")
                }
                ReplayEnd::PrimaryEnded(at) => tracing::info!(at, "lockstep: primary ended"),
            }
            self.end = Some(end);
        }
        self.vm.stop();
    }

    fn diverge(&mut self, n: ExitIndex, expected: &str, rec: Option<&Record>) {
        if let Some(r) = rec.filter(|r| matches!(r.body, Body::End) && r.n < n) {
            // The Primary stopped after exit `r.n` while we, one input call
            // ahead (our call at `r.n` was answered by its events), already
            // ran into the next exit. Nothing of that exit was released.
            self.stop(ReplayEnd::PrimaryEnded(r.n));
            return;
        }
        let got = match rec {
            Some(r) => format!(
                "primary's record seq {} is {} at exit {}: {:?}",
                r.seq,
                r.body.name(),
                r.n,
                r.body
            ),
            None => "primary has no such record".to_string(),
        };
        let what = format!("at exit {n} the secondary expected {expected}; {got}");
        self.stop(ReplayEnd::Diverged(what));
    }

    /// Handles a record at exit `n` that is not the one the call wanted.
    /// Returns true if it was a control record (consumed, keep going).
    fn control(&mut self, n: ExitIndex, rec: &Record) -> bool {
        match &rec.body {
            Body::MemoryDigest { at } if rec.n == n => {
                self.pause = Some(*at);
                true
            }
            Body::End => {
                self.stop(ReplayEnd::PrimaryEnded(rec.n));
                false
            }
            _ => false,
        }
    }

    /// The digest of our outputs since the last check must match the
    /// Primary's `Outputs` record at this exit.
    fn check_outputs(&mut self, n: ExitIndex) -> bool {
        let mine = self.q.lock().out_digest.take();
        let Some((count, digest)) = mine else {
            return true;
        };
        let ours = format!("outputs count={count} digest={digest:#018x}");
        match self.head(n) {
            Head::Here(rec) => match rec.body {
                Body::Outputs {
                    count: c,
                    digest: d,
                } if rec.n == n && c == count && d == digest => {
                    self.q.lock().outputs_verified += u64::from(count);
                    true
                }
                _ => {
                    self.diverge(n, &ours, Some(&rec));
                    false
                }
            },
            Head::Later(_) => {
                self.diverge(n, &ours, None);
                false
            }
            Head::Exhausted(why) => {
                // The Primary never sent these outputs' digest: they were not
                // released either (their records were not acked). Fine.
                self.stop(ReplayEnd::Exhausted { at: n, why });
                false
            }
            Head::Aborted => false,
        }
    }

    fn replay_events(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.end.is_some() || !self.check_outputs(n) {
            return;
        }
        loop {
            match self.head(n) {
                Head::Later(_) | Head::Aborted => return,
                Head::Exhausted(why) => {
                    self.stop(ReplayEnd::Exhausted { at: n, why });
                    return;
                }
                Head::Here(rec) => {
                    let Some(rec) = deliver(&self.q, n, rec, out) else {
                        return;
                    };
                    if !self.control(n, &rec) {
                        if self.end.is_none() {
                            self.diverge(n, "events or nothing", Some(&rec));
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Hands `rec` to the vCPU loop if it answers the input call at exit `n`:
/// its events, or the Primary's mark that the call returned nothing. Any
/// other record is given back.
fn deliver(
    q: &ReplayQueue,
    n: ExitIndex,
    rec: Record,
    out: &mut Vec<InputEvent>,
) -> Option<Record> {
    if rec.n != n {
        return Some(rec);
    }
    match rec.body {
        Body::Events(evs) => {
            {
                let mut st = q.lock();
                for e in &evs {
                    if let InputEvent::BlockDone { dev, id, .. } = e {
                        st.in_flight.remove(&(*dev, *id));
                    }
                }
            }
            out.extend(evs);
            None
        }
        Body::Mark => None,
        body => Some(Record { body, ..rec }),
    }
}

impl Inputs for SecondaryInputs {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.replay_events(n, out)
    }

    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.end.is_some() {
            // Stopped: let the loop reach its stop check.
            return;
        }
        if !self.check_outputs(n) {
            return;
        }
        // The Primary stays halted at `n` until an event arrives, so the next
        // record must be for `n`.
        match self.head(n) {
            Head::Here(rec) => {
                let Some(rec) = deliver(&self.q, n, rec, out) else {
                    return;
                };
                if !self.control(n, &rec) && self.end.is_none() {
                    self.diverge(n, "events while halted", Some(&rec));
                }
            }
            Head::Later(at) => self.diverge(
                n,
                &format!("events while halted (primary's next record is at exit {at})"),
                None,
            ),
            Head::Exhausted(why) => self.stop(ReplayEnd::Exhausted { at: n, why }),
            Head::Aborted => {}
        }
    }

    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        if self.end.is_some() {
            return 0;
        }
        match self.head(n) {
            Head::Here(rec) => match rec.body {
                Body::Time(t) if rec.n == n && t.source == source => {
                    self.last_time = Some(t.value);
                    return t.value;
                }
                _ => self.diverge(n, &format!("a {source:?} time read"), Some(&rec)),
            },
            Head::Later(_) => self.diverge(n, &format!("a {source:?} time read"), None),
            Head::Exhausted(why) => {
                // The Primary's execution past its last record is unknown and
                // nothing it did from here was released: this read is the
                // first input of the new Primary. Continue its clock.
                self.stop(ReplayEnd::Exhausted { at: n, why });
                let v = self.last_time.unwrap_or(0) + 1;
                self.last_time = Some(v);
                return v;
            }
            Head::Aborted => {}
        }
        // The VM stops before this value can matter.
        self.last_time.unwrap_or(0)
    }

    fn check_interval(&self) -> u64 {
        CHECK_EVERY
    }

    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        if self.end.is_some() {
            return;
        }
        let ours = format!("check rip={rip:#x} gpr_hash={gpr_hash:#018x}");
        match self.head(n) {
            Head::Here(rec) => match rec.body {
                Body::Check {
                    rip: r,
                    gpr_hash: h,
                } if rec.n == n && r == rip && h == gpr_hash => {}
                _ => self.diverge(n, &ours, Some(&rec)),
            },
            Head::Later(_) => self.diverge(n, &ours, None),
            Head::Exhausted(why) => self.stop(ReplayEnd::Exhausted { at: n, why }),
            Head::Aborted => {}
        }
    }

    fn pause_at(&self) -> Option<ExitIndex> {
        self.pause
    }
}

/// The Secondary's output door: digest, then drop.
pub struct SecondaryOutputs(pub Arc<ReplayQueue>);

impl Outputs for SecondaryOutputs {
    fn emit(&mut self, _n: ExitIndex, event: OutputEvent) {
        let mut st = self.0.lock();
        st.out_digest.add(&event);
        st.outputs_dropped += 1;
        if let OutputEvent::Block(req) = event {
            st.in_flight.insert((req.dev, req.id), req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{BlockOp, BlockStatus};

    fn write(id: u64, data: &[u8]) -> OutputEvent {
        OutputEvent::Block(BlockRequest {
            dev: 0,
            id,
            op: BlockOp::Write {
                sector: 8,
                data: data.to_vec(),
            },
        })
    }

    /// What a go-live re-issues is what the replay issued, with the bytes the
    /// replay produced, minus what the log completed.
    #[test]
    fn in_flight_requests_carry_the_replayed_bytes_until_the_log_completes_them() {
        let q = ReplayQueue::new(0);
        let mut out = SecondaryOutputs(Arc::clone(&q));
        let mut digest = OutputDigest::default();
        for (id, data) in [(1, &b"old"[..]), (2, &b"new"[..])] {
            digest.add(&write(id, data));
            out.emit(1, write(id, data));
        }
        let (count, digest) = digest.take().unwrap();
        let outputs = Record {
            seq: 0,
            n: 1,
            body: Body::Outputs { count, digest },
        };
        let done = Record {
            seq: 1,
            n: 3,
            body: Body::Events(vec![InputEvent::BlockDone {
                dev: 0,
                id: 1,
                status: BlockStatus::Ok,
                data: Vec::new(),
            }]),
        };
        q.push_batch(vec![outputs, done], 0);
        let mut evs = Vec::new();
        let mut sin = SecondaryInputs::new(Arc::clone(&q), VmHandle::standalone());
        for n in 1..=3 {
            sin.events_at(n, &mut evs);
        }
        assert_eq!(sin.end(), None);
        assert_eq!(evs.len(), 1);
        assert_eq!(q.outputs_verified(), 2);
        let left = q.in_flight_block_requests();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, 2);
        assert_eq!(
            left[0].op,
            BlockOp::Write {
                sector: 8,
                data: b"new".to_vec()
            },
            "re-issued with the replay's bytes"
        );
    }

    /// A batch is awaited (acked at once by a coalescing link) exactly when
    /// the Primary may wait on it: it completes an `Outputs` or `End` record,
    /// or it is an empty keepalive.
    #[test]
    fn a_batch_is_awaited_only_if_it_completes_an_outputs_or_end_record_or_is_empty() {
        use crate::lockstep::log::Encoded;
        let q = ReplayQueue::new(0);
        let mut seq = 0;
        let mut batch = |bodies: &[Body]| {
            let mut bytes = Vec::new();
            for b in bodies {
                Encoded::new(1, b).unwrap().write_piece(0, seq, &mut bytes);
                seq += 1;
            }
            let first = seq - bodies.len() as u64;
            q.receive_batch(first, bodies.len() as u32, &bytes, 0)
                .unwrap()
        };
        let tick = Body::Events(vec![InputEvent::TimerTick]);
        let check = Body::Check {
            rip: 1,
            gpr_hash: 2,
        };
        let outputs = Body::Outputs {
            count: 1,
            digest: 7,
        };
        assert!(!batch(&[tick.clone(), check.clone()]));
        assert!(batch(&[tick.clone(), outputs, check]));
        assert!(batch(&[]));
        assert!(!batch(std::slice::from_ref(&tick)));
        assert!(batch(&[tick, Body::End]));
    }

    /// A stop that came while the replay waited for the record of exit 5
    /// answers that call with nothing; the guest may run a few exits more
    /// before the vCPU loop sees the stop (the stopping thread can be
    /// preempted between aborting the queue and stopping the VM). The record
    /// for exit 5 arriving then is not a divergence: `affinity_live` on CI
    /// reported one while affinity stopped a Secondary.
    #[test]
    fn a_replay_aborted_by_a_stop_takes_no_record_afterwards() {
        let q = ReplayQueue::new(0);
        let mut sin = SecondaryInputs::new(Arc::clone(&q), VmHandle::standalone());
        q.abort();
        let mut evs = Vec::new();
        sin.events_at(5, &mut evs);
        assert!(evs.is_empty());
        let tick = |seq, n| Record {
            seq,
            n,
            body: Body::Events(vec![InputEvent::TimerTick]),
        };
        q.push_batch(vec![tick(0, 5), tick(1, 8)], 0);
        sin.events_at(6, &mut evs);
        sin.events_at_halt(8, &mut evs);
        assert!(evs.is_empty(), "records taken after the abort: {evs:?}");
        assert_eq!(sin.end(), None);
        assert_eq!(q.divergences(), 0);
    }

    /// The progress thread hears at once when the replay caught up (a
    /// throttled Primary waits for that report), and not before.
    #[test]
    fn a_replay_that_caught_up_is_reported_at_once() {
        let q = ReplayQueue::new(0);
        let tick = |seq, n| Record {
            seq,
            n,
            body: Body::Events(vec![InputEvent::TimerTick]),
        };
        q.push_batch(vec![tick(0, 1), tick(1, 2)], 0);
        let last = q.progress();
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.wait_progress(last, Duration::from_secs(10)))
        };
        let mut sin = SecondaryInputs::new(Arc::clone(&q), VmHandle::standalone());
        let mut evs = Vec::new();
        sin.events_at(1, &mut evs);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "reported while a record was still queued"
        );
        let t0 = std::time::Instant::now();
        sin.events_at(2, &mut evs);
        let (now, caught_up) = waiter.join().unwrap();
        assert!(caught_up && t0.elapsed() < Duration::from_secs(5));
        assert_eq!(now, (2, 2, 2));
        // Nothing new: the wait runs to its timeout and says so.
        assert_eq!(
            q.wait_progress(now, Duration::from_millis(20)),
            ((2, 2, 2), false)
        );
    }
}
