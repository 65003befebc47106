//! `make bench`: how many dirty pages the Primary's delta cache ships as
//! deltas, plain CLOCK against CLOCK with TinyLFU admission
//! (`delta_base.rs`), side by side on the same page streams, and the time
//! per page. The streams model the dirty-memory table of the QEMU bench
//! (a guest sweeping a working set at R pages per ms, 20 ms epochs, beside
//! the kernel's ~70 pages an epoch) at full size: a 64 MiB cache.
//!
//! `cargo test --release -p ftvmm --lib delta_cache_bench -- --ignored --nocapture`

use std::time::Instant;

use super::delta_base::tests::{delta_share, sweep};
use super::delta_base::{Admission, DeltaBase, DEFAULT_BYTES};
use super::epoch::PAGE_SIZE;
use super::sim_world::Rng;

const CACHE_PAGES: u64 = (DEFAULT_BYTES / PAGE_SIZE) as u64;
const KERNEL: u64 = 70;

/// A uniformly random `per` pages an epoch of a set of `n`, beside the
/// kernel's pages.
fn random(n: u64, per: u64, seed: u64) -> impl Fn(u64) -> Vec<u64> {
    move |e| {
        // A mixed seed per epoch (successive SplitMix seeds would share
        // most of their streams).
        let mut rng = Rng(Rng(seed ^ (e << 20)).next());
        let mut v: Vec<u64> = (0..per).map(|_| rng.below(n)).collect();
        v.sort();
        v.dedup();
        v.extend((0..KERNEL).map(|h| 1_000_000 + h));
        v
    }
}

#[test]
#[ignore = "benchmark: make bench"]
fn delta_cache_bench() {
    let mib = |pages: u64| (pages * PAGE_SIZE as u64) >> 20;
    type Stream = Box<dyn Fn(u64) -> Vec<u64>>;
    let rows: Vec<(String, u64, Stream)> = vec![
        (
            format!("kernel only ({KERNEL} pages/epoch)"),
            200,
            Box::new(sweep(1, 0, KERNEL)),
        ),
        (
            format!("sweep {} MiB at 4 pages/ms + kernel", mib(CACHE_PAGES)),
            1500,
            Box::new(sweep(CACHE_PAGES, 80, KERNEL)),
        ),
        (
            format!("sweep {} MiB at 16 pages/ms + kernel", mib(CACHE_PAGES)),
            600,
            Box::new(sweep(CACHE_PAGES, 320, KERNEL)),
        ),
        (
            format!("sweep {} MiB at 16 pages/ms + kernel", mib(2 * CACHE_PAGES)),
            1200,
            Box::new(sweep(2 * CACHE_PAGES, 320, KERNEL)),
        ),
        (
            format!(
                "random in {} MiB, 320 pages/epoch + kernel",
                mib(2 * CACHE_PAGES)
            ),
            600,
            Box::new(random(2 * CACHE_PAGES, 320, 7)),
        ),
        (
            format!(
                "random in {} MiB, 320 pages/epoch + kernel",
                mib(CACHE_PAGES / 2)
            ),
            600,
            Box::new(random(CACHE_PAGES / 2, 320, 7)),
        ),
    ];
    println!(
        "\nDelta cache of {} MiB: pages shipped as deltas (last third of the epochs), CLOCK vs CLOCK + admission",
        mib(CACHE_PAGES)
    );
    println!(
        "{:<48} {:>7} {:>10} {:>12} {:>10} {:>12}",
        "stream", "epochs", "CLOCK %", "admission %", "CLOCK ns", "admission ns"
    );
    for (name, epochs, stream) in &rows {
        let mut out = Vec::new();
        for admission in [Admission::Always, Admission::Frequency] {
            let mut b = DeltaBase::with_admission(DEFAULT_BYTES, admission);
            let start = Instant::now();
            let share = delta_share(&mut b, *epochs, epochs / 3, stream);
            let ships = b.stats.deltas + b.stats.raw_hits + b.stats.misses;
            let ns = start.elapsed().as_nanos() as f64 / ships.max(1) as f64;
            out.push((share, ns));
        }
        println!(
            "{:<48} {:>7} {:>9.1}% {:>11.1}% {:>10.0} {:>12.0}",
            name, epochs, out[0].0, out[1].0, out[0].1, out[1].1
        );
    }
}
