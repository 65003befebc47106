//! The benchmark workloads: `mode=cpu` (the reference guest's computation, `ftguest-cpuwork`)
//! and `mode=dirty` (memory written at a paced rate).
//!
//! Times are in 10 ms ticks of the monotonic clock, the unit the reference guest's PIT gives.
//! `cpu_yield` has no meaning here (the Linux timer interrupts the computation anyway); the
//! checksum is the reference guest's for the same `cpu_iters`. In dirty mode the printed
//! addresses are virtual addresses of this process, not guest-physical ones: a benchmark that
//! reads the counter from guest memory works only with the reference guest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ftguest_cpuwork::CpuWork;

const PAGE: usize = 4096;
const TICK: Duration = Duration::from_millis(10);

/// Pages written so far in dirty mode.
static WRITTEN: AtomicU64 = AtomicU64::new(0);

fn ticks_since(start: Instant) -> u64 {
    (start.elapsed().as_millis() / TICK.as_millis()) as u64
}

/// Runs `iters` rounds and prints `cpu: checksum=<16 hex> ticks=<n> iters=<N>`.
pub fn cpu(iters: u64) {
    let start = Instant::now();
    let mut work = CpuWork::new();
    work.step(iters);
    let checksum = work.finish();
    let elapsed = ticks_since(start);
    say!("cpu: checksum={checksum:016x} ticks={elapsed} iters={iters}");
}

/// Writes one byte per page of a `mib` MiB working set, `rate` pages per millisecond, forever.
pub fn dirty(mib: u64, rate: u64) -> Result<(), String> {
    let n = usize::try_from((mib << 20) / PAGE as u64).map_err(|_| "dirty_mib too large")?;
    let mut pages: Vec<u8> = Vec::new();
    pages
        .try_reserve_exact(n * PAGE)
        .map_err(|_| format!("dirty: a working set of {mib} MiB does not fit in memory"))?;
    pages.resize(n * PAGE, 0);
    say!(
        "dirty: working set {mib} MiB at {:#x}, {rate} pages/ms, counter at {:#x} (virtual addresses)",
        pages.as_ptr() as u64,
        std::ptr::addr_of!(WRITTEN) as u64
    );
    let per_tick = rate.saturating_mul(TICK.as_millis() as u64);
    let start = Instant::now();
    let (mut written, mut next, mut pass) = (0u64, 0usize, 1u8);
    loop {
        let due = per_tick.saturating_mul(ticks_since(start));
        if written >= due {
            std::thread::sleep(TICK);
            continue;
        }
        for _ in 0..(due - written).min(256) {
            pages[next * PAGE] = pass;
            next += 1;
            if next == n {
                next = 0;
                pass = pass.wrapping_add(1);
            }
            written += 1;
        }
        WRITTEN.store(written, Ordering::Relaxed);
    }
}
