//! The epoch pause with either dirty-log harvest (`dirty_log.rs`), side by
//! side, on /dev/kvm: two vCPUs sweep 576 KiB of real-mode memory (144
//! pages, every one dirty in every epoch) in a VM of 64 MiB and of 1 GiB.
//! `--ignored` (a measurement; it prints a table):
//!
//! ```text
//! cargo test -p ftvmm --lib -- --ignored --nocapture dirty_log_pause_both_ways
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::dirty_log::{enable_manual_protect, harvest_bitmap, DirtyLog};
use super::gate::{EpochGate, GateConfig};
use super::gated::{GatedBackend, GatedOutputs};
use super::primary::{self, EpochSink, EpochStats, LoopConfig};
use crate::linux::machine::LinuxVm;
use crate::linux::tests::{wait_until, Sink};

/// Real mode at 0x3000: for ES in 0x1000..0xA000, `inc word [es:di]` every
/// 512 bytes of the 64 KiB segment; for ever.
const SWEEP: &[u8] = &[
    0xb8, 0x00, 0x10, // 0: mov ax, 0x1000
    0x8e, 0xc0, // 3: mov es, ax
    0x31, 0xff, // 5: xor di, di
    0x26, 0xff, 0x05, // 7: inc word [es:di]
    0x81, 0xc7, 0x00, 0x02, // 10: add di, 0x200
    0x75, 0xf7, // 14: jnz 7
    0x8c, 0xc0, // 16: mov ax, es
    0x05, 0x00, 0x10, // 18: add ax, 0x1000
    0x3d, 0x00, 0xa0, // 21: cmp ax, 0xa000
    0x72, 0xe9, // 24: jb 3
    0xeb, 0xe4, // 26: jmp 0
];

struct Discard;

impl EpochSink for Discard {
    fn send(&mut self, _: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

struct Row {
    mode: DirtyLog,
    mem_mib: u64,
    epochs: usize,
    pages: usize,
    pause_us: Vec<u64>,
    harvest_us: Vec<u64>,
}

fn pct(v: &[u64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[(v.len() - 1) * p / 100] as f64 / 1000.0
}

fn measure(mode: DirtyLog, mem_mib: u64, epochs: usize) -> Row {
    let outputs = GatedOutputs::new(
        EpochGate::new(
            GateConfig {
                max_dirty_pages: u64::MAX,
                max_write_bytes: u64::MAX,
            },
            1,
        ),
        None,
    );
    let backend = GatedBackend::new(Arc::clone(&outputs), None, None, 0, Box::new(|_| {}));
    let vm = LinuxVm::create(
        2,
        mem_mib << 20,
        vec![],
        Box::new(Sink::default()),
        Box::new(backend),
    )
    .expect("a VM (is /dev/kvm there?)");
    vm.memory()
        .write_slice(SWEEP, GuestAddress(0x3000))
        .unwrap();
    vm.enter_real_mode(0, 0x3000).unwrap();
    vm.enter_real_mode(1, 0x3000).unwrap();
    let mem = vm.memory().clone();
    let running = vm.start().unwrap();
    wait_until("the sweep runs", || {
        mem.read_obj::<u16>(GuestAddress(0x10000)).unwrap() > 10
    });

    // The whole epoch's pause, as the loop takes it.
    let stats = Mutex::new(Vec::<EpochStats>::new());
    let stop = AtomicBool::new(false);
    let cfg = LoopConfig {
        epoch: Duration::from_millis(10),
        first_full: true,
        dirty: mode,
        delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
    };
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            primary::run_epochs(&running, &outputs, &mut Discard, cfg, &stop, |e| {
                stats.lock().unwrap().push(e.clone())
            })
        });
        wait_until("epochs", || stats.lock().unwrap().len() > epochs);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap().expect("the epoch loop");
    });
    let stats = stats.into_inner().unwrap();
    let later = &stats[1..]; // the first carries every touched page
                             // The dirty-log harvest alone, in its own pause.
    if mode == DirtyLog::GetClear {
        // (already enabled by the loop; enabling again is harmless)
        running
            .with_paused(|p| enable_manual_protect(p.vm))
            .unwrap();
    }
    let mut harvest_us = Vec::new();
    let mut idle = 0;
    while harvest_us.len() < epochs {
        std::thread::sleep(Duration::from_millis(10));
        let (us, n) = running.with_paused(|p| {
            let t = Instant::now();
            let b = harvest_bitmap(p.vm, 0, p.mem_size, mode).unwrap();
            let us = t.elapsed().as_micros() as u64;
            let _ = p.bus.take_dirty_pages();
            (us, b.iter().map(|w| w.count_ones()).sum::<u32>())
        });
        // On the loaded dev machine the vCPUs sometimes do not run in 10 ms:
        // such a sample harvests nothing and is not counted.
        if n == 0 {
            idle += 1;
            assert!(
                idle < 10 * epochs,
                "{mode:?}: the sweep stopped dirtying pages"
            );
        } else {
            harvest_us.push(us);
        }
    }
    running.stop();
    running.wait();
    Row {
        mode,
        mem_mib,
        epochs: later.len(),
        pages: later.iter().map(|e| e.pages).sum::<usize>() / later.len(),
        pause_us: later.iter().map(|e| e.pause.as_micros() as u64).collect(),
        harvest_us,
    }
}

#[test]
#[ignore = "a measurement: prints the epoch pause with either harvest"]
fn dirty_log_pause_both_ways() {
    let mut rows = Vec::new();
    for mem_mib in [64, 1024] {
        for mode in [
            DirtyLog::Get,
            DirtyLog::GetClear,
            DirtyLog::Get,
            DirtyLog::GetClear,
        ] {
            rows.push(measure(mode, mem_mib, 200));
        }
    }
    println!(
        "{:<9} {:>7} {:>6} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "harvest",
        "mem MiB",
        "epochs",
        "pages",
        "pause50",
        "pause90",
        "pauseMax",
        "dirtylog50",
        "dirtylog90"
    );
    for r in &rows {
        println!(
            "{:<9} {:>7} {:>6} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>10.3} {:>10.3}",
            format!("{:?}", r.mode),
            r.mem_mib,
            r.epochs,
            r.pages,
            pct(&r.pause_us, 50),
            pct(&r.pause_us, 90),
            pct(&r.pause_us, 100),
            pct(&r.harvest_us, 50),
            pct(&r.harvest_us, 90),
        );
    }
    println!("(times in ms; pause = the whole epoch pause; dirtylog = the harvest ioctls alone)");
    assert!(
        rows.iter().all(|r| r.pages > 100),
        "the swept pages in the epochs"
    );
}
