//! CPU-bound mode: the fixed computation of `ftguest-cpuwork`, timed in PIT ticks.

use crate::interrupts::ticks;
use crate::println;

/// Runs `iters` rounds, prints `cpu: checksum=<16 hex> ticks=<n> iters=<N>` and exits with 0.
pub fn run(iters: u64) -> ! {
    // Interrupts on so the tick counter runs during the computation.
    crate::port::sti();
    let start = ticks();
    let checksum = ftguest_cpuwork::run(iters);
    let elapsed = ticks() - start;
    println!("cpu: checksum={checksum:016x} ticks={elapsed} iters={iters}");
    crate::port::exit(0)
}
