//! The Output Rule's promise, checked by simulation (no KVM): every output the
//! Primary released, a Secondary holding only the records acknowledged at
//! the moment of release reproduces before its replay runs out. That is what
//! lets it go live without the world having seen an output it cannot know.
//!
//! A toy machine stands in for the vCPU loop and calls the input and output
//! doors in the same pattern (outputs and time reads while handling exit `n`,
//! then `events_at(n)`), with seeded random inputs, outputs and ack timing.
//! For a sample of release moments a fresh Secondary replays exactly the
//! acknowledged prefix of the log, with the queue closed behind it.
//!
//! It must also have *verified* each of them (its own digest matched the
//! Primary's `Outputs` record): a Secondary that goes live replays all it
//! holds, so a divergence behind a released output is found before it goes
//! live, and it halts instead of continuing a state the world never saw.
//! (With the older rule "the first record after the output", a time read
//! after the output released it before its digest was acknowledged.)
//!
//! The wire ships either whatever is pending (any cut of the log into
//! batches) or only what the Primary's coalescing sender would send
//! (`Batching::Coalesced`, issue 17: records nobody waits on stay behind
//! until an output waits on them or the delay passes).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use ftvmm::io::{ExitIndex, Inputs, OutputEvent, Outputs};
use ftvmm::lockstep::log::{decode_batch, Record};
use ftvmm::lockstep::primary::{Batching, PrimaryInputs, PrimaryLog, PrimaryOutputs};
use ftvmm::lockstep::secondary::{ReplayQueue, SecondaryInputs, SecondaryOutputs};
use ftvmm::vm::VmHandle;

mod toy;

use toy::{event_hash, exit_work, mix, Live, Rng, Sink};

/// The vCPU loop's calling pattern. `stop` is asked after every input call;
/// `after_exit` runs after each exit. Returns the exits run.
fn run<I: Inputs>(
    inputs: &mut I,
    outputs: &mut dyn Outputs,
    exits: u64,
    stop: impl Fn(&I) -> bool,
    mut after_exit: impl FnMut(ExitIndex),
) -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..exits {
        state = exit_work(state, n, inputs, outputs);
        // The exit's time read may have ended the replay.
        if stop(inputs) {
            return n;
        }
        let mut ev = Vec::new();
        inputs.events_at(n, &mut ev);
        if stop(inputs) {
            return n;
        }
        for e in &ev {
            state = mix(state, event_hash(e));
        }
        after_exit(n);
    }
    exits
}

/// The Secondary's output door, also keeping what it emitted.
struct Counting {
    inner: SecondaryOutputs,
    seen: Vec<OutputEvent>,
}

impl Outputs for Counting {
    fn emit(&mut self, n: ExitIndex, e: OutputEvent) {
        self.seen.push(e.clone());
        self.inner.emit(n, e);
    }
}

const EXITS: u64 = 1500;

/// Runs the Primary; returns the log, what it released, for each release
/// how many records were acknowledged when it happened, and the batches
/// shipped. `coalesced`: the wire ships only what a coalescing sender would.
fn primary(seed: u64, coalesced: bool) -> (Vec<Record>, Vec<OutputEvent>, Vec<u64>, u64) {
    let sink = Sink::default();
    let log = PrimaryLog::new(Box::new(sink.clone()), Duration::from_secs(3600));
    log.set_batching(if coalesced {
        Batching::Coalesced
    } else {
        Batching::Eager
    });
    let wire = RefCell::new(Wire {
        coalesced,
        batches: 0,
        log: Arc::clone(&log),
        sink: sink.clone(),
        acks: Rng(seed.rotate_left(32) | 1),
        records: Vec::new(),
        released_at: Vec::new(),
        acked: 0,
    });
    let mut pin = ShipsOnTimeReads {
        inner: PrimaryInputs::new(Live::new(seed, 9), Arc::clone(&log)),
        wire: &wire,
    };
    let mut outs = PrimaryOutputs(Arc::clone(&log));
    run(
        &mut pin,
        &mut outs,
        EXITS,
        |_| false,
        |_| wire.borrow_mut().ship(),
    );
    let mut w = wire.into_inner();
    w.note_releases();
    let released = sink.0.lock().unwrap().clone();
    assert_eq!(released.len(), w.released_at.len());
    (w.records, released, w.released_at, w.batches)
}

/// The link, simulated: ships what is pending and, now and then, acks
/// everything shipped — between exits, and also right after a time read in
/// the middle of an exit (acks arrive whenever they arrive).
struct Wire {
    coalesced: bool,
    batches: u64,
    log: Arc<PrimaryLog>,
    sink: Sink,
    acks: Rng,
    records: Vec<Record>,
    /// For each released output, the records acked when it was released.
    released_at: Vec<u64>,
    acked: u64,
}

impl Wire {
    /// Outputs released since the last look were released under `acked`.
    fn note_releases(&mut self) {
        let now = self.sink.0.lock().unwrap().len();
        self.released_at.resize(now, self.acked);
    }

    fn ship(&mut self) {
        self.note_releases();
        let batch = if self.coalesced {
            self.log.take_due_batch(Duration::ZERO)
        } else {
            self.log.take_batch(Duration::ZERO)
        };
        if let Some(b) = batch {
            self.batches += 1;
            self.records
                .extend(decode_batch(&b.bytes, b.first_seq).unwrap());
        }
        if self.acks.next().is_multiple_of(3) {
            self.acked = self.records.len() as u64;
            let now = config_schema::clock::BootInstant::now().as_nanos();
            self.log.on_ack(self.acked, self.acked, 0, now);
            self.note_releases();
        }
    }
}

/// The Primary's input door, with the wire running after each time read.
struct ShipsOnTimeReads<'a, I: Inputs> {
    inner: I,
    wire: &'a RefCell<Wire>,
}

impl<I: Inputs> Inputs for ShipsOnTimeReads<'_, I> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<ftvmm::io::InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn time_read(&mut self, n: ExitIndex, source: ftvmm::io::TimeSource) -> u64 {
        let v = self.inner.time_read(n, source);
        self.wire.borrow_mut().ship();
        v
    }
}

/// What a Secondary holding `records` (and nothing after) emits before its
/// replay runs out, and how many of those it verified against the digests.
fn secondary(records: &[Record]) -> (Vec<OutputEvent>, u64) {
    let q = ReplayQueue::new(0);
    if !records.is_empty() {
        q.push_batch(records.to_vec(), 0);
    }
    q.close("simulated failure");
    let mut sin = SecondaryInputs::new(Arc::clone(&q), VmHandle::standalone());
    let mut out = Counting {
        inner: SecondaryOutputs(Arc::clone(&q)),
        seen: Vec::new(),
    };
    run(&mut sin, &mut out, EXITS, |s| s.end().is_some(), |_| {});
    match sin.end() {
        Some(ftvmm::lockstep::secondary::ReplayEnd::Exhausted { .. }) | None => {}
        Some(other) => panic!("replay of an acknowledged prefix ended with {other:?}"),
    }
    (out.seen, q.outputs_verified())
}

#[test]
fn every_released_output_is_reproduced_from_the_records_acknowledged_at_its_release() {
    check_releases(false);
}

/// The same under the coalescing sender, which must also have coalesced:
/// fewer batches than the same runs shipping whatever is pending.
#[test]
fn under_coalesced_batching_too() {
    let (records, batches) = check_releases(true);
    let eager: u64 = (1..=60u64)
        .map(|seed| primary(seed.wrapping_mul(0x9e37_79b9), false).3)
        .sum();
    assert!(
        batches * 4 < eager * 3,
        "{batches} batches for {records} records, {eager} shipping eagerly: too little coalesced"
    );
}

/// Checks sampled release moments; returns the records and batches shipped.
fn check_releases(coalesced: bool) -> (u64, u64) {
    let mut checked = 0;
    let (mut all_records, mut all_batches) = (0, 0);
    for seed in 1..=60u64 {
        let (records, released, released_at, batches) =
            primary(seed.wrapping_mul(0x9e37_79b9), coalesced);
        all_records += records.len() as u64;
        all_batches += batches;
        assert!(!released.is_empty(), "seed {seed}: nothing released");
        // Every distinct ack level at which something was released.
        let mut levels: Vec<(u64, usize)> = Vec::new();
        for (k, a) in released_at.iter().enumerate() {
            match levels.last_mut() {
                Some((l, upto)) if l == a => *upto = k + 1,
                _ => levels.push((*a, k + 1)),
            }
        }
        for (acked, count) in levels.iter().step_by(3) {
            let (got, verified) = secondary(&records[..*acked as usize]);
            assert!(
                got.len() >= *count && got[..*count] == released[..*count],
                "seed {seed}: with the {acked} records acknowledged when output #{} was released, \
                 the Secondary reproduced only {} outputs",
                count - 1,
                got.len()
            );
            assert!(
                verified >= *count as u64,
                "seed {seed}: output #{} was released with {acked} records acknowledged, \
                 but a Secondary holding them verified only {verified} outputs",
                count - 1
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} release points checked");
    (all_records, all_batches)
}
