//! CPU-bound mode: the fixed computation of `ftguest-cpuwork`, timed in PIT ticks.
//!
//! With `cpu_yield=N` the work runs in chunks of N rounds separated by one port read (a VM exit):
//! a VMM that delivers interrupts only at exits (ftvmm's lockstep rule) can then inject timer
//! ticks during the computation. The checksum does not depend on the chunking.

use crate::interrupts::ticks;
use crate::port::inb;
use crate::println;
use ftguest_cpuwork::CpuWork;

/// COM1 line status register: always emulated, reading it has no side effects.
pub const YIELD_PORT: u16 = 0x3fd;

/// Runs `iters` rounds, prints `cpu: checksum=<16 hex> ticks=<n> iters=<N>` and exits with 0.
pub fn run(iters: u64, yield_every: u64) -> ! {
    // Interrupts on so the tick counter runs during the computation.
    crate::port::sti();
    let start = ticks();
    let mut work = CpuWork::new();
    if yield_every == 0 {
        work.step(iters);
    } else {
        let mut left = iters;
        while left > 0 {
            let n = left.min(yield_every);
            work.step(n);
            left -= n;
            let _ = inb(YIELD_PORT);
        }
    }
    let checksum = work.finish();
    let elapsed = ticks() - start;
    println!("cpu: checksum={checksum:016x} ticks={elapsed} iters={iters}");
    crate::port::exit(0)
}
