//! The fuzz target's script: input bytes read as hostile guest I/O for a
//! [`Pair`]. One byte picks an operation, the next ones its arguments (missing
//! ones read as 0):
//!
//! | op | what                                                                  |
//! |---:|-----------------------------------------------------------------------|
//! | 0  | a burst of 1..=64 block completions of one size class: the device's   |
//! |    | largest read (16 MiB), 1 MiB, `512 * u16`, or a few sectors; any status|
//! | 1  | a burst of 1..=256 received frames of up to the largest frame size    |
//! | 2  | a tick, or up to 64 console bytes                                     |
//! | 3  | the input call of a new exit, up to 4 exits after the last one        |
//! | 4  | a halted input call at the same exit (after its input call, and only  |
//! |    | when something waits)                                                 |
//! | 5  | a time read (at a new exit if the current one made its input call)    |
//! | 6  | an output or a register check (likewise)                              |
//! | 7  | ship: everything pending crosses the wire and is acknowledged         |
//!
//! At most [`FUZZ_BUDGET`] bytes of event data are offered per input (more
//! would only measure memory), and at most 512 operations run.

use super::{Pair, Report, SimError};
use crate::io::{BlockStatus, InputEvent, OutputEvent};
use crate::virtio::{MAX_FRAME_LEN, MAX_REQUEST_BYTES};

/// The most event data one fuzz input offers: more than a body (32 MiB, so
/// bursts are handed over across calls), than a message (16 MiB) and than
/// two of the largest reads.
pub const FUZZ_BUDGET: usize = 40 << 20;
/// The most operations one fuzz input runs.
const MAX_OPS: usize = 512;

/// Reads a fuzz input as a script of hostile guest I/O (module docs of the
/// fuzz target) and runs it with at most `budget` bytes of event data.
pub fn run(data: &[u8], budget: usize) -> Result<Report, SimError> {
    let mut s = Script {
        b: data,
        budget,
        id: 0,
    };
    let mut pair = Pair::new();
    let (mut n, mut called) = (1u64, false);
    let mut ops = 0;
    while let Some(op) = s.u8() {
        ops += 1;
        if ops > MAX_OPS {
            break;
        }
        match op % 8 {
            0 => s.reads(&mut pair),
            1 => s.frames(&mut pair),
            2 => s.small(&mut pair),
            3 => {
                let gap = u64::from(s.u8().unwrap_or(1) % 5);
                next_exit(&mut n, &mut called, gap);
                pair.events_at(n)?;
                called = true;
            }
            4 if called && pair.waiting() > 0 => {
                pair.events_at_halt(n)?;
                called = true;
            }
            5 => {
                next_exit(&mut n, &mut called, 1);
                pair.time_read(n)?;
            }
            6 => {
                next_exit(&mut n, &mut called, 1);
                let x = s.u8().unwrap_or(0);
                if x.is_multiple_of(2) {
                    pair.emit(n, OutputEvent::Console(vec![x]));
                } else {
                    pair.check(n, u64::from(x), n.wrapping_mul(0x9e37))?;
                }
            }
            7 => pair.ship()?,
            _ => {}
        }
    }
    pair.finish(if called { n + 1 } else { n })
}

/// Work of a new exit comes after the previous exit's input call.
fn next_exit(n: &mut u64, called: &mut bool, gap: u64) {
    if *called {
        *n += gap.max(1);
        *called = false;
    }
}

/// The fuzz target's body: any input, no panic, every oracle holds.
pub fn fuzz(data: &[u8]) {
    if let Err(e) = run(data, FUZZ_BUDGET) {
        panic!("lockstep recording: {e}");
    }
}

struct Script<'a> {
    b: &'a [u8],
    budget: usize,
    id: u64,
}

impl Script<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&x, rest) = self.b.split_first()?;
        self.b = rest;
        Some(x)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8().unwrap_or(0)) << 8 | u16::from(self.u8().unwrap_or(0))
    }

    /// `len` bytes of data if the budget allows.
    fn data(&mut self, len: usize, fill: u8) -> Option<Vec<u8>> {
        self.budget = self.budget.checked_sub(len)?;
        let mut d = vec![fill; len];
        if let Some(last) = d.last_mut() {
            *last = fill ^ 0xff;
        }
        Some(d)
    }

    /// A burst of block completions of one size class, up to the device's
    /// largest request.
    fn reads(&mut self, pair: &mut Pair) {
        let class = self.u8().unwrap_or(0);
        let burst = 1 + usize::from(self.u8().unwrap_or(0) % 64);
        let max = MAX_REQUEST_BYTES as usize;
        let len = match class % 4 {
            0 => max,
            1 => 1 << 20,
            2 => (usize::from(self.u16()) * 512).min(max),
            _ => usize::from(class >> 2) * 512,
        };
        let status = match class >> 6 {
            0 | 1 => BlockStatus::Ok,
            2 => BlockStatus::IoError,
            _ => BlockStatus::Unsupported,
        };
        for _ in 0..burst {
            let Some(data) = self.data(len, self.id as u8) else {
                return;
            };
            self.id += 1;
            pair.offer(InputEvent::BlockDone {
                dev: class & 1,
                id: self.id,
                status,
                data,
            });
        }
    }

    /// A burst of received frames, up to the largest frame.
    fn frames(&mut self, pair: &mut Pair) {
        let len = usize::from(self.u16()) % (MAX_FRAME_LEN + 1);
        let burst = 1 + usize::from(self.u8().unwrap_or(0));
        for i in 0..burst {
            let Some(data) = self.data(len, i as u8) else {
                return;
            };
            pair.offer(InputEvent::Frame { dev: 1, data });
        }
    }

    fn small(&mut self, pair: &mut Pair) {
        let x = self.u8().unwrap_or(0);
        if x < 128 {
            pair.offer(InputEvent::TimerTick);
        } else if let Some(data) = self.data(usize::from(x % 65), x) {
            pair.offer(InputEvent::ConsoleIn(data));
        }
    }
}
