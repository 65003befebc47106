//! `make bench`: issue 11's CPU-bound ratio (checkpoint on / off) on this
//! machine's own KVM, no nesting — what the nested test bed's `linux_vm`
//! bench cannot show (its L1 is QEMU TCG, where each exit costs far more).
//! A guest counts as fast as it can; its count per second with 20 ms epochs
//! to a Secondary in this process, against the same guest without epochs,
//! alternated in rounds (side by side in one run: the machine is shared).
//! The guest dirties one page, so this is the pause and the exits an epoch
//! costs (stop, harvest, capture, resume), not the copying of a large
//! dirty set (`make bench`'s dirty-memory table has that, nested).
//!
//! What it can and cannot say: this machine's KVM runs guest code through
//! an emulator (`../shared/NESTED-KVM.md`: about a million loop iterations a
//! second; here ~0.45 M counts/s), so the counts are no CPU's; the ratio is
//! the share of wall time the guest keeps running under epochs, whose work
//! (ioctls, copying, the in-process Secondary) runs natively. On hardware a
//! guest that writes many pages also pays a write-protection fault per page
//! per epoch, which this guest does not show.
//!
//! `cargo test --release -p ftvmm --lib checkpoint_cpu_bench -- --ignored --nocapture`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::dirty_log::DirtyLog;
use super::gated::GatedOutputs;
use super::primary::{self, LoopConfig};
use super::remote_tests::{gate, gated_vm};
use super::vm_tests::in_process_secondary;
use crate::linux::machine::Running;
use crate::virtio::GuestMemoryMmap;

/// 64-bit mode: vCPU 0 (at 0x1000) adds 1 to the count at 0x2000 forever.
const COUNT: &[u8] = &[
    0x48, 0xff, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, // inc qword [0x2000]
    0xeb, 0xf6, // jmp back to the inc
];
/// Real mode: vCPU 1 (at 0x1100) halts with interrupts off.
const HALT: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp hlt

const EPOCH: Duration = Duration::from_millis(20);
const RUN: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;

fn count(m: &GuestMemoryMmap) -> u64 {
    m.read_obj(GuestAddress(0x2000)).unwrap()
}

fn counting_vm(outputs: &std::sync::Arc<GatedOutputs>) -> (Running, GuestMemoryMmap) {
    let vm = gated_vm(outputs);
    vm.memory()
        .write_slice(COUNT, GuestAddress(0x1000))
        .unwrap();
    vm.memory().write_slice(HALT, GuestAddress(0x1100)).unwrap();
    vm.enter_long_mode(0x1000).unwrap();
    vm.enter_real_mode(1, 0x1100).unwrap();
    let mem = vm.memory().clone();
    (vm.start().unwrap(), mem)
}

/// Counts per second over [`RUN`] after a second's warm-up, with epochs or
/// without; and the epochs' pause median when with.
fn one_run(epochs: bool) -> (f64, Option<Duration>) {
    let outputs = GatedOutputs::new(gate(), None);
    let (running, mem) = counting_vm(&outputs);
    let (mut link, secondary) = in_process_secondary(&outputs);
    let stop = AtomicBool::new(false);
    let mut pauses = Vec::new();
    let rate = std::thread::scope(|s| {
        let h = epochs.then(|| {
            s.spawn(|| {
                let cfg = LoopConfig {
                    epoch: EPOCH,
                    first_full: true,
                    dirty: DirtyLog::GetClear,
                    delta_bytes: super::delta_base::DEFAULT_BYTES,
                };
                let mut p = Vec::new();
                primary::run_epochs(&running, &outputs, &mut link, cfg, &stop, |e| {
                    p.push(e.pause)
                })
                .expect("epochs ran without error");
                p
            })
        });
        std::thread::sleep(Duration::from_secs(1));
        let (c0, t0) = (count(&mem), Instant::now());
        std::thread::sleep(RUN);
        let rate = (count(&mem) - c0) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        if let Some(h) = h {
            pauses = h.join().unwrap();
        }
        rate
    });
    running.stop();
    running.wait();
    drop(link);
    secondary.join().unwrap();
    // Not the first (full) epoch.
    let mut p: Vec<Duration> = pauses.into_iter().skip(1).collect();
    p.sort_unstable();
    (rate, p.get(p.len() / 2).copied())
}

#[test]
#[ignore = "a benchmark (make bench): run with --ignored --nocapture"]
fn checkpoint_cpu_bench() {
    println!(
        "\nCPU-bound ratio on this machine's /dev/kvm (a counting vCPU, {} ms epochs to an in-process Secondary, {} s per run):",
        EPOCH.as_millis(),
        RUN.as_secs()
    );
    println!("round   off counts/s    on counts/s   on/off  pause median");
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let (off, _) = one_run(false);
        let (on, pause) = one_run(true);
        let r = on / off;
        ratios.push(r);
        println!(
            "{round:>5} {off:>15.0} {on:>14.0} {r:>8.3}  {:>9.3} ms",
            pause.map_or(f64::NAN, |p| p.as_secs_f64() * 1000.0)
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "CPU-bound ratio (checkpoint on vs off), median of {ROUNDS}: {:.3} (goal >= 0.90)",
        ratios[ROUNDS / 2]
    );
}
