//! The toy machine of the simulation tests (no KVM): a seeded stand-in for
//! the guest behind the vCPU loop, calling the input and output doors in the
//! loop's pattern, and a live input source with a clock.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use ftvmm::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The toy guest's state after one more value.
pub fn mix(state: u64, v: u64) -> u64 {
    (state ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(17)
}

pub fn event_hash(e: &InputEvent) -> u64 {
    match e {
        InputEvent::ConsoleIn(b) => 0x100 + u64::from(b[0]),
        InputEvent::TimerTick => 7,
        _ => 9,
    }
}

/// The guest's work at exit `n`: maybe an output, maybe a time read.
pub fn exit_work(
    state: u64,
    n: ExitIndex,
    inputs: &mut dyn Inputs,
    outputs: &mut dyn Outputs,
) -> u64 {
    let mut state = mix(state, n);
    if state.is_multiple_of(4) {
        outputs.emit(n, OutputEvent::Console(vec![(state >> 8) as u8]));
    }
    if state.is_multiple_of(11) {
        let t = inputs.time_read(n, TimeSource::MonotonicNs);
        state = mix(state, t);
    }
    state
}

/// Live inputs: a console byte at one exit in `one_in`, a clock.
pub struct Live {
    pub rng: Rng,
    pub t: u64,
    pub one_in: u64,
}

impl Live {
    pub fn new(seed: u64, one_in: u64) -> Self {
        Live {
            rng: Rng(seed | 1),
            t: 0,
            one_in,
        }
    }
}

impl Inputs for Live {
    fn events_at(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.rng.next().is_multiple_of(self.one_in) {
            out.push(InputEvent::ConsoleIn(vec![self.rng.next() as u8]));
        }
    }
    fn time_read(&mut self, _n: ExitIndex, _s: TimeSource) -> u64 {
        self.t += self.rng.next() % 1000;
        self.t
    }
}

/// An output door that keeps what it is given.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<OutputEvent>>>);

impl Outputs for Sink {
    fn emit(&mut self, _n: ExitIndex, e: OutputEvent) {
        self.0.lock().unwrap().push(e);
    }
}
