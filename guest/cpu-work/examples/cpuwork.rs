//! Runs the CPU-mode computation natively: `cpuwork [ITERS]` prints the guest's `cpu:` line
//! format with elapsed wall time instead of ticks, for comparing against a run under ftvmm.

use std::time::Instant;

fn main() {
    let iters = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ITERS must be an integer"))
        .unwrap_or(1_000_000u64);
    let start = Instant::now();
    let checksum = ftguest_cpuwork::run(iters);
    let elapsed = start.elapsed();
    println!(
        "cpu: checksum={checksum:016x} micros={} iters={iters}",
        elapsed.as_micros()
    );
}
