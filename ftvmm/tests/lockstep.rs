//! Record/replay on the host's /dev/kvm, in one process: the reference guest
//! (KV mode, virtio-blk on a temp file, virtio-net fed with ARP requests at
//! random wall-clock times, the live timer) runs as Primary; its log goes
//! through the wire encoding to a Secondary that replays it concurrently. At a
//! memory-digest point both must have the same exit/RIP trace, registers and
//! guest memory; outputs leave the Primary only under the Output Rule.
//!
//! Needs /dev/kvm and the guest ELF (see tests/ftguest.rs); fails otherwise.

mod common;

use common::{arp_request, boot_kv_guest, live_kv_guest, LiveKv};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ftvmm::io::InputEvent;
use ftvmm::live;
use ftvmm::lockstep::digest::memory_sha256;
use ftvmm::lockstep::primary::{PrimaryInputs, PrimaryLog, PrimaryOutputs};
use ftvmm::lockstep::secondary::{ReplayQueue, SecondaryInputs, SecondaryOutputs};
use ftvmm::RunOutcome;

#[test]
fn secondary_replays_the_primary_exactly() {
    // --- Primary: live backends, recorded.
    let LiveKv {
        disk_file: _disk_file,
        vm: mut pvm,
        console,
        live: live::Live {
            inputs,
            outputs,
            backends,
        },
    } = live_kv_guest();
    let log = PrimaryLog::new(Box::new(outputs), Duration::from_millis(500));
    let mut pin = PrimaryInputs::new(inputs, Arc::clone(&log));
    pin.digest_request().store(50_000, Ordering::SeqCst);

    // Frames at random wall-clock times.
    let stop = Arc::new(AtomicBool::new(false));
    let queue = backends.queue();
    let s2 = Arc::clone(&stop);
    let injector = std::thread::spawn(move || {
        let mut k = 1u8;
        while !s2.load(Ordering::SeqCst) {
            queue.push(InputEvent::Frame {
                dev: 0,
                data: arp_request(k),
            });
            k = k.wrapping_add(1);
            std::thread::sleep(Duration::from_micros(2_000 + 997 * u64::from(k % 7)));
        }
    });

    // --- The wire: encoded batches, decoded all-or-nothing, acked on receipt.
    let q = ReplayQueue::new(0);
    let (l2, q2, s3) = (Arc::clone(&log), Arc::clone(&q), Arc::clone(&stop));
    let wire = std::thread::spawn(move || {
        let mut batches = 0u64;
        loop {
            if let Some(b) = l2.take_batch(Duration::from_millis(10)) {
                q2.receive_batch(b.first_seq, b.count, &b.bytes, b.sent_ns)
                    .expect("valid batch");
                batches += 1;
            } else if s3.load(Ordering::SeqCst) {
                return batches;
            }
            let (r, p, e) = q2.progress();
            l2.on_ack(r, p, e, q2.newest_sent_ns());
        }
    });

    // --- Secondary: replays concurrently.
    let q3 = Arc::clone(&q);
    let secondary = std::thread::spawn(move || {
        let mut vm = boot_kv_guest();
        let mut sin = SecondaryInputs::new(Arc::clone(&q3), vm.handle());
        let outcome = vm
            .run(&mut sin, &mut SecondaryOutputs(Arc::clone(&q3)), None)
            .unwrap();
        let end = sin.end().cloned();
        let at = sin.take_pause();
        (
            outcome,
            end,
            at,
            vm.exit_index(),
            vm.take_trace(),
            vm.vcpu().get_regs().unwrap(),
            memory_sha256(vm.memory()),
        )
    });

    let outcome = pvm
        .run(&mut pin, &mut PrimaryOutputs(Arc::clone(&log)), None)
        .unwrap();
    // Taking the pause tells the Secondary, waiting in the same input call,
    // how that call ended.
    let pause = pin.take_pause();
    assert!(pause.is_some(), "primary paused for the digest");
    stop.store(true, Ordering::SeqCst);
    injector.join().unwrap();
    let batches = wire.join().unwrap();
    let (s_outcome, s_end, s_pause, s_n, s_trace, s_regs, s_mem) = secondary.join().unwrap();

    assert_eq!(outcome, RunOutcome::ExitLimit);
    assert_eq!(
        s_outcome,
        RunOutcome::ExitLimit,
        "secondary ended: {s_end:?}"
    );
    assert_eq!(s_end, None);
    assert_eq!(pause, s_pause);
    assert_eq!(pvm.exit_index(), s_n);
    assert_eq!(Some(s_n), pause);
    let p_trace = pvm.take_trace();
    assert_eq!(p_trace.len(), s_trace.len());
    assert!(p_trace == s_trace, "exit/RIP traces differ");
    assert_eq!(pvm.vcpu().get_regs().unwrap(), s_regs);
    assert_eq!(memory_sha256(pvm.memory()), s_mem);
    assert_eq!(q.divergences(), 0);

    // Inputs of every kind went through the log, and outputs through the rule.
    let stats = log.stats();
    assert!(stats.records > 100, "{stats:?}");
    assert!(batches > 1);
    assert!(stats.outputs_emitted > 0);
    assert_eq!(
        stats.outputs_released + log.held() as u64,
        stats.outputs_emitted
    );
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).to_string();
    assert!(text.contains("kv"), "guest console: {text}");
    log.detach_sink();
    drop(backends);
}
