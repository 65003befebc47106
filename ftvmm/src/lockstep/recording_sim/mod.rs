//! A Primary and a Secondary joined by the real log and wire, driven input
//! call by input call without KVM: the body of the `lockstep_record` fuzz
//! target (ftvmm/fuzz) and of the large-input tests.
//!
//! The Primary's side is the real recording path: a [`PrimaryInputs`] over a
//! scripted live door (what the backends produce: [`Pair::offer`]) appending
//! to a [`PrimaryLog`]. [`Pair::ship`] does what the link does: it takes every
//! batch, encodes it as a channel message, seals it under a real Noise
//! session, decodes it with the receiver's [`Decoder`], hands it to a
//! [`ReplayQueue`] and acknowledges receipt. Every call the Primary's vCPU
//! made is kept with what it returned; [`Pair::finish`] ends the log as
//! `run_primary` does and makes the same calls on a [`SecondaryInputs`].
//!
//! Calls must come in the vCPU loop's order: an exit's time reads, checks and
//! outputs, then its input call; more input calls at the same exit only while
//! halted ([`Pair::events_at_halt`], right after the exit's input call, and
//! only when something waits: a halted vCPU calls until it gets something).
//!
//! The Secondary mirrors the loop, not the Primary's calls one by one: a
//! record names only its exit, so the Secondary's input call at exit `n`
//! takes the first events the Primary handed over at `n`, by whichever call
//! (an empty call followed by a halted one with events gives the events to
//! the first call); each further delivery at `n` is one halted call. The
//! vCPU loop does the same, since the same events leave the same interrupt
//! state.
//!
//! Oracles, each a [`SimError`]: every batch fits one message and crosses
//! the wire; the Secondary's calls return exactly what the Primary's did,
//! with no divergence, and its replay ends at the Primary's end; the
//! Primary's vCPU got every event the backends offered, in order; nothing
//! fails to record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::channel::fuzzing::session_pair;
use super::channel::wire::{encode_message, seal_message, Decoder};
use super::channel::Message;
use super::log::{decode_piece, Body, MAX_BODY, MAX_RECORD_LEN};
use super::primary::{PrimaryInputs, PrimaryLog, PrimaryOutputs, MAX_UNACKED_BYTES};
use super::secondary::{ReplayEnd, ReplayQueue, SecondaryInputs, SecondaryOutputs};
use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};
use crate::vm::VmHandle;

mod script;
pub use script::{fuzz, run, FUZZ_BUDGET};

/// An oracle failed (or the harness was misused): what and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

fn fail<T>(what: String) -> Result<T, SimError> {
    Err(SimError(what))
}

/// What a run did (for tests that must not pass vacuously).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub batches: u64,
    pub largest_message: usize,
    /// Bodies written as more than one record.
    pub split_bodies: u64,
    pub records: u64,
    pub input_calls: u64,
    pub events: u64,
    pub event_bytes: u64,
    /// Input calls that left events waiting for the next one.
    pub deferred: u64,
}

/// The live door behind the Primary's recorder: the backends' events.
struct Door {
    q: Arc<Mutex<VecDeque<InputEvent>>>,
    t: u64,
}

impl Inputs for Door {
    fn events_at(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        out.extend(self.q.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
    }
    fn time_read(&mut self, _n: ExitIndex, _s: TimeSource) -> u64 {
        self.t += 1_000;
        self.t
    }
}

struct Discard;
impl Outputs for Discard {
    fn emit(&mut self, _n: ExitIndex, _e: OutputEvent) {}
}

/// One call the Primary's vCPU made, with what it got.
enum Call {
    Events {
        n: ExitIndex,
        halt: bool,
        got: Vec<InputEvent>,
    },
    Time {
        n: ExitIndex,
        value: u64,
    },
    Check {
        n: ExitIndex,
        rip: u64,
        gpr_hash: u64,
    },
    Emit {
        n: ExitIndex,
        ev: OutputEvent,
    },
}

/// A Primary and its Secondary (module docs).
pub struct Pair {
    door: Arc<Mutex<VecDeque<InputEvent>>>,
    pin: PrimaryInputs<Door>,
    log: Arc<PrimaryLog>,
    q: Arc<ReplayQueue>,
    nonce: u64,
    decoder: Decoder,
    calls: Vec<Call>,
    offered: Vec<InputEvent>,
    /// The exit of the last input call.
    last_input: Option<ExitIndex>,
    report: Report,
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pair {
    pub fn new() -> Self {
        let log = PrimaryLog::new(Box::new(Discard), Duration::from_secs(3600));
        let door = Arc::new(Mutex::new(VecDeque::new()));
        let live = Door {
            q: Arc::clone(&door),
            t: 0,
        };
        let (_, responder) = session_pair();
        Pair {
            door,
            pin: PrimaryInputs::new(live, Arc::clone(&log)),
            log,
            q: ReplayQueue::new(0),
            nonce: 0,
            decoder: Decoder::new(Arc::clone(responder)),
            calls: Vec::new(),
            offered: Vec::new(),
            last_input: None,
            report: Report::default(),
        }
    }

    /// A backend produced `ev` (it reaches the vCPU at a later input call).
    pub fn offer(&mut self, ev: InputEvent) {
        self.offered.push(ev.clone());
        self.door
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ev);
    }

    /// Events offered and not handed to the vCPU yet.
    pub fn waiting(&self) -> usize {
        self.pin.waiting() + self.door.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The Primary's input call at exit `n`; returns what its vCPU got.
    pub fn events_at(&mut self, n: ExitIndex) -> Result<Vec<InputEvent>, SimError> {
        self.input_call(n, false)
    }

    /// The Primary's input call at exit `n` while halted: after the input
    /// call of `n`, with something waiting.
    pub fn events_at_halt(&mut self, n: ExitIndex) -> Result<Vec<InputEvent>, SimError> {
        if self.waiting() == 0 || self.last_input != Some(n) {
            return fail(format!(
                "halt call at exit {n} after the input call of {:?} with {} events waiting",
                self.last_input,
                self.waiting()
            ));
        }
        self.input_call(n, true)
    }

    fn input_call(&mut self, n: ExitIndex, halt: bool) -> Result<Vec<InputEvent>, SimError> {
        self.keep_room()?;
        let mut got = Vec::new();
        if halt {
            self.pin.events_at_halt(n, &mut got);
        } else {
            self.pin.events_at(n, &mut got);
        }
        self.recorded()?;
        self.last_input = Some(n);
        self.report.input_calls += 1;
        if self.pin.waiting() > 0 {
            self.report.deferred += 1;
        }
        self.calls.push(Call::Events {
            n,
            halt,
            got: got.clone(),
        });
        Ok(got)
    }

    pub fn time_read(&mut self, n: ExitIndex) -> Result<u64, SimError> {
        let value = self.pin.time_read(n, TimeSource::MonotonicNs);
        self.recorded()?;
        self.calls.push(Call::Time { n, value });
        Ok(value)
    }

    pub fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) -> Result<(), SimError> {
        self.pin.check(n, rip, gpr_hash);
        self.recorded()?;
        self.calls.push(Call::Check { n, rip, gpr_hash });
        Ok(())
    }

    /// The Primary's vCPU emits `ev` at exit `n`.
    pub fn emit(&mut self, n: ExitIndex, ev: OutputEvent) {
        PrimaryOutputs(Arc::clone(&self.log)).emit(n, ev.clone());
        self.calls.push(Call::Emit { n, ev });
    }

    fn recorded(&self) -> Result<(), SimError> {
        match self.pin.fault() {
            Some(e) => fail(format!("the primary could not record an input: {e}")),
            None => Ok(()),
        }
    }

    /// This harness has one thread: ship before the Primary's window could
    /// fill inside one input call (it would wait for acks forever).
    fn keep_room(&mut self) -> Result<(), SimError> {
        if self.log.unacked_bytes() + MAX_BODY + 4 * MAX_RECORD_LEN > MAX_UNACKED_BYTES {
            self.ship()?;
        }
        Ok(())
    }

    /// Does what the link does with everything pending: batch, encode, seal,
    /// decode, queue, acknowledge.
    pub fn ship(&mut self) -> Result<(), SimError> {
        while let Some(b) = self.log.take_batch(Duration::ZERO) {
            self.report.batches += 1;
            self.report.split_bodies += split_heads(&b.bytes)?;
            let m = Message::Batch {
                first_seq: b.first_seq,
                count: b.count,
                bytes: b.bytes,
                sent_ns: b.sent_ns,
            };
            let bytes = encode_message(&m).or_else(|e| {
                fail(format!(
                    "batch of {} records from {}: {e}",
                    b.count, b.first_seq
                ))
            })?;
            self.report.largest_message = self.report.largest_message.max(bytes.len());
            let (initiator, _) = session_pair();
            let mut frames = Vec::new();
            seal_message(initiator, &mut self.nonce, &bytes, &mut frames)
                .or_else(|e| fail(format!("seal: {e}")))?;
            self.decoder.feed(&frames);
            let Ok(Some(Message::Batch {
                first_seq,
                count,
                bytes,
                sent_ns,
            })) = self.decoder.poll()
            else {
                return fail("the batch did not come out of the wire whole".into());
            };
            self.q
                .receive_batch(first_seq, count, &bytes, sent_ns)
                .map(|_| ())
                .or_else(|e| fail(format!("the secondary refused a batch: {e}")))?;
            let (received, replayed, exit) = self.q.progress();
            self.log
                .on_ack(received, replayed, exit, self.q.newest_sent_ns());
        }
        Ok(())
    }

    /// Hands over what still waits (input calls from exit `n` on), ends the
    /// log, ships it, and replays every call on a Secondary.
    pub fn finish(self, n: ExitIndex) -> Result<Report, SimError> {
        self.finish_with(n, |_, _| {})
    }

    /// [`Pair::finish`], showing `replayed` what each of the Secondary's
    /// input calls got.
    pub fn finish_with(
        mut self,
        mut n: ExitIndex,
        mut replayed: impl FnMut(ExitIndex, &[InputEvent]),
    ) -> Result<Report, SimError> {
        loop {
            self.events_at(n)?;
            n += 1;
            if self.waiting() == 0 {
                break;
            }
        }
        let delivered = self.calls.iter().flat_map(|c| match c {
            Call::Events { got, .. } => got.as_slice(),
            _ => &[],
        });
        if !delivered.eq(self.offered.iter()) {
            return fail("the primary's vCPU did not get what was offered, in order".into());
        }
        self.log
            .append(n, Body::End)
            .or_else(|e| fail(format!("end: {e}")))?;
        self.ship()?;
        self.q.close("the primary ended");
        self.report.records = self.log.next_seq();
        self.replay(n, &mut replayed)?;
        Ok(self.report)
    }

    fn replay(
        &mut self,
        end: ExitIndex,
        replayed: &mut dyn FnMut(ExitIndex, &[InputEvent]),
    ) -> Result<(), SimError> {
        let mut sin = SecondaryInputs::new(Arc::clone(&self.q), VmHandle::standalone());
        let mut sout = SecondaryOutputs(Arc::clone(&self.q));
        let mut calls = std::mem::take(&mut self.calls).into_iter().peekable();
        let mut i = 0;
        while let Some(call) = calls.next() {
            match call {
                Call::Events { n, got, .. } => {
                    // This exit's deliveries, by the input call and the
                    // halted calls after it (module docs).
                    let mut given = vec![got];
                    while let Some(Call::Events {
                        n: m, halt: true, ..
                    }) = calls.peek()
                    {
                        if *m != n {
                            break;
                        }
                        if let Some(Call::Events { got, .. }) = calls.next() {
                            given.push(got);
                        }
                    }
                    given.retain(|g| !g.is_empty());
                    if given.is_empty() {
                        given.push(Vec::new());
                    }
                    for (k, want) in given.into_iter().enumerate() {
                        let mut v = Vec::new();
                        if k == 0 {
                            sin.events_at(n, &mut v);
                        } else {
                            sin.events_at_halt(n, &mut v);
                        }
                        self.compare(i, n, &v, &want)?;
                        replayed(n, &v);
                    }
                }
                Call::Time { n, value } => {
                    let v = sin.time_read(n, TimeSource::MonotonicNs);
                    if v != value {
                        return fail(format!("call {i}: time {v} at exit {n}, primary {value}"));
                    }
                }
                Call::Check { n, rip, gpr_hash } => sin.check(n, rip, gpr_hash),
                Call::Emit { n, ev } => sout.emit(n, ev),
            }
            if let Some(e) = sin.end() {
                return fail(format!("call {i}: the replay ended early: {e:?}"));
            }
            i += 1;
        }
        sin.events_at(end, &mut Vec::new());
        match sin.end() {
            Some(ReplayEnd::PrimaryEnded(at)) if *at == end => Ok(()),
            other => fail(format!(
                "the replay ended with {other:?}, not the primary's end at {end}"
            )),
        }
    }

    fn compare(
        &mut self,
        i: usize,
        n: ExitIndex,
        got: &[InputEvent],
        want: &[InputEvent],
    ) -> Result<(), SimError> {
        if got != want {
            return fail(format!(
                "replay step {i}: at exit {n} the secondary got {} events of {} bytes, \
                 the primary handed over {} of {} bytes",
                got.len(),
                data_bytes(got),
                want.len(),
                data_bytes(want)
            ));
        }
        self.report.events += want.len() as u64;
        self.report.event_bytes += data_bytes(want);
        Ok(())
    }
}

/// How many split bodies start in a batch.
fn split_heads(bytes: &[u8]) -> Result<u64, SimError> {
    let (mut off, mut heads) = (0, 0);
    while off < bytes.len() {
        let (p, len) =
            decode_piece(&bytes[off..], off).or_else(|e| fail(format!("own batch: {e}")))?;
        heads += u64::from(p.more && p.kind != 8);
        off += len;
    }
    Ok(heads)
}

fn data_bytes(evs: &[InputEvent]) -> u64 {
    evs.iter()
        .map(|e| match e {
            InputEvent::BlockDone { data, .. } | InputEvent::Frame { data, .. } => data.len(),
            InputEvent::ConsoleIn(b) => b.len(),
            InputEvent::TimerTick => 0,
        } as u64)
        .sum()
}
