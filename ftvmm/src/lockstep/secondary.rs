//! The Secondary's side of lockstep: replay the log at the same exit indices.
//!
//! Records arrive (receiver thread) into a [`ReplayQueue`]; [`SecondaryInputs`]
//! hands them to the vCPU loop exactly where the Primary's loop took the
//! original values. At every call it checks the head of the queue:
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
//! or go live — DESIGN §4). Outputs are digested and dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::digest::OutputDigest;
use super::log::{Body, Record};
use super::primary::CHECK_EVERY;
use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};
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
    records: VecDeque<Record>,
    /// Every record `< received` arrived.
    received: u64,
    /// Every record `< replayed` was consumed by the vCPU loop.
    replayed: u64,
    replayed_exit: ExitIndex,
    /// The channel ended (no more records will come).
    closed: Option<String>,
    divergences: u64,
    out_digest: OutputDigest,
    outputs_dropped: u64,
    /// Stop waiting (the VM is being stopped).
    abort: bool,
}

/// Records received and not yet replayed, shared by the receiver thread and
/// the vCPU thread.
pub struct ReplayQueue {
    st: Mutex<State>,
    cv: Condvar,
}

impl ReplayQueue {
    pub fn new(first_seq: u64) -> Arc<Self> {
        Arc::new(ReplayQueue {
            st: Mutex::new(State {
                records: VecDeque::new(),
                received: first_seq,
                replayed: first_seq,
                replayed_exit: 0,
                closed: None,
                divergences: 0,
                out_digest: OutputDigest::default(),
                outputs_dropped: 0,
                abort: false,
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a decoded batch. The caller checked that it starts at
    /// [`ReplayQueue::received`] and is gapless (`log::decode_batch`).
    pub fn push_batch(&self, recs: Vec<Record>) {
        let mut st = self.lock();
        if let Some(first) = recs.first() {
            assert_eq!(first.seq, st.received, "batch does not continue the log");
        }
        st.received += recs.len() as u64;
        st.records.extend(recs);
        drop(st);
        self.cv.notify_all();
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

    /// No more records will come.
    pub fn close(&self, why: &str) {
        let mut st = self.lock();
        st.closed.get_or_insert_with(|| why.to_string());
        drop(st);
        self.cv.notify_all();
    }

    /// Stop waiting for records (the VM is being stopped).
    pub fn abort(&self) {
        self.lock().abort = true;
        self.cv.notify_all();
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
}

impl SecondaryInputs {
    pub fn new(q: Arc<ReplayQueue>, vm: VmHandle) -> Self {
        SecondaryInputs {
            q,
            vm,
            end: None,
            pause: None,
            last_time: None,
        }
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
        let mut st = self.q.lock();
        loop {
            if let Some(front) = st.records.front() {
                if front.n > n {
                    return Head::Later(front.n);
                }
                let rec = st.records.pop_front().expect("front exists");
                st.replayed = rec.seq + 1;
                st.replayed_exit = n;
                return Head::Here(rec);
            }
            if let Some(why) = &st.closed {
                return Head::Exhausted(why.clone());
            }
            if st.abort || self.vm.is_stopping() {
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
                } if rec.n == n && c == count && d == digest => true,
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
                    let Some(rec) = deliver(n, rec, out) else {
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
fn deliver(n: ExitIndex, rec: Record, out: &mut Vec<InputEvent>) -> Option<Record> {
    if rec.n != n {
        return Some(rec);
    }
    match rec.body {
        Body::Events(evs) => {
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
                let Some(rec) = deliver(n, rec, out) else {
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
    }
}
