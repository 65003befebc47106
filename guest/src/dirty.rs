//! Dirty mode: writes guest memory forever at a paced rate, for measuring live state transfer
//! (respawn's pre-copy over KVM's dirty log) against a guest that keeps changing its memory.
//!
//! A working set of `dirty_mib` MiB of page-aligned heap is written one byte per page, page
//! after page, wrapping around; `dirty_rate` pages per millisecond on the PIT tick (10 ms):
//! after tick `t` the guest has written `10 * rate * t` pages, then it sleeps (`sti; hlt`) to
//! the next tick. A guest that cannot keep up writes flat out. Every [`CHUNK_PAGES`] pages it
//! makes one VM exit (a read of COM1's LSR, as `cpu_yield`), so a VMM that injects interrupts
//! only at exits still delivers ticks, and its vCPU thread regularly gets a chance to read the
//! dirty log. `dirty_rate=0` only idles. The count of pages written so far is kept in a `u64`
//! whose address is printed, so a benchmark can read the rate the guest reached from guest
//! memory.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::YIELD_PORT;
use crate::interrupts::{self, ticks, TICK_HZ};
use crate::port::inb;
use crate::println;

const PAGE: usize = 4096;
/// Pages written between two deliberate VM exits.
pub const CHUNK_PAGES: u64 = 256;
const MS_PER_TICK: u64 = 1000 / TICK_HZ as u64;

/// Pages written since the mode started (read from outside through guest memory).
static WRITTEN: AtomicU64 = AtomicU64::new(0);

#[repr(C, align(4096))]
#[derive(Clone)]
struct Page([u8; PAGE]);

/// Runs dirty mode forever; exits with `exit_config` if the working set does not fit the heap.
pub fn run(mib: u64, rate: u64, exit_config: u8) -> ! {
    let n = usize::try_from((mib << 20) / PAGE as u64).unwrap_or(usize::MAX);
    let mut pages: Vec<Page> = Vec::new();
    if pages.try_reserve_exact(n).is_err() {
        println!("dirty: a working set of {mib} MiB does not fit in the heap");
        crate::port::exit(exit_config)
    }
    pages.resize(n, Page([0; PAGE]));
    println!(
        "dirty: working set {mib} MiB at {:#x}, {rate} pages/ms, counter at {:#x}",
        pages.as_ptr() as u64,
        core::ptr::addr_of!(WRITTEN) as u64
    );
    crate::port::sti();
    let per_tick = rate.saturating_mul(MS_PER_TICK);
    let start = ticks();
    let (mut written, mut next, mut pass) = (0u64, 0usize, 1u8);
    loop {
        let due = per_tick.saturating_mul(ticks() - start);
        if written >= due {
            // On pace (or idle): sleep to the next tick.
            let now = ticks();
            interrupts::wait_until(|| ticks() != now);
            continue;
        }
        for _ in 0..(due - written).min(CHUNK_PAGES) {
            let byte: *mut u8 = &mut pages[next].0[0];
            // SAFETY: `byte` points into a live, exclusively borrowed page of the working set;
            // volatile so the stores are not elided (nothing in the guest reads them).
            unsafe { byte.write_volatile(pass) };
            next += 1;
            if next == n {
                next = 0;
                pass = pass.wrapping_add(1);
            }
            written += 1;
        }
        WRITTEN.store(written, Ordering::Relaxed);
        let _ = inb(YIELD_PORT);
    }
}
