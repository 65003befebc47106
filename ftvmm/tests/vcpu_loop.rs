//! The vCPU loop on the host's /dev/kvm with tiny guests: port I/O, MMIO, HLT
//! with timer-tick injection, interrupts pending while IF=0, determinism under
//! host exits, snapshot/restore and dirty-page tracking. These FAIL (never
//! skip) without /dev/kvm.

mod common;

use common::*;
use ftvmm::io::{InputEvent, OutputEvent, TimerProgram};
use ftvmm::{ExitKind, RunOutcome, Vm};

#[test]
fn port_io_reaches_the_serial_console_and_debug_exit_stops() {
    let mut vm = tiny_vm(guest_serial_exit(), 2, vec![]);
    let mut inputs = ScriptedInputs::default();
    let mut out = Collected::default();
    let outcome = vm.run(&mut inputs, &mut out, None).unwrap();
    assert_eq!(outcome, RunOutcome::DebugExit(7));
    assert_eq!(out.console(), b"AB");
    assert_eq!(vm.exit_index(), 3, "two serial writes and the exit port");
    assert_eq!(vm.stats().pio_out, 3);
    assert_eq!(vm.stats().deterministic(), vm.exit_index());
    // Each console byte is emitted at the exit that wrote it.
    let at: Vec<u64> = out.0.iter().map(|(n, _)| *n).collect();
    assert_eq!(at, vec![1, 2]);
}

#[test]
fn hlt_waits_for_timer_ticks_which_are_injected_through_the_pic() {
    let mut vm = tiny_vm(guest_ticks(), 2, vec![]);
    vm.enable_trace();
    let mut inputs = ScriptedInputs {
        tick_on_halt: true,
        ..Default::default()
    };
    let mut out = Collected::default();
    let outcome = vm.run(&mut inputs, &mut out, None).unwrap();
    assert_eq!(outcome, RunOutcome::DebugExit(5));
    assert_eq!(vm.stats().injected, 5);
    assert_eq!(vm.stats().hlt, 5);
    let period = 11932u64 * 1_000_000_000 / 1_193_182;
    assert_eq!(
        inputs.programs.last().map(|p| p.1),
        Some(TimerProgram::Periodic { period_ns: period })
    );
    let trace = vm.take_trace();
    assert_eq!(trace.len() as u64, vm.exit_index());
    assert!(trace.iter().filter(|t| t.kind == ExitKind::Hlt).count() == 5);
}

#[test]
fn an_interrupt_pending_while_if_is_clear_waits_for_the_next_exit_with_if_set() {
    let mut vm = tiny_vm(guest_window(), 2, vec![]);
    vm.enable_trace();
    // Setup takes 24 port writes; deliver one tick during the cli'd loop.
    let mut inputs = ScriptedInputs::default();
    inputs.at.insert(30, vec![InputEvent::TimerTick]);
    let mut out = Collected::default();
    let outcome = vm.run(&mut inputs, &mut out, None).unwrap();
    assert_eq!(
        outcome,
        RunOutcome::DebugExit(1),
        "exactly one interrupt taken"
    );
    assert_eq!(vm.stats().injected, 1);
    // No interrupt window is requested (vcpu.rs): the tick waits through the
    // exit-free loop after `sti` for the first port write after it, and the
    // handler (its EOI write to port 0x20) runs only after all 20 port writes
    // of the cli'd loop.
    assert_eq!(vm.stats().irq_window, 0);
    let trace = vm.take_trace();
    let eoi = trace
        .iter()
        .position(|t| t.addr == 0x20 && t.n > 30)
        .unwrap();
    let cli_loop_rip = trace.iter().find(|t| t.addr == 0x80).unwrap().rip;
    let before = trace[..eoi]
        .iter()
        .filter(|t| t.rip == cli_loop_rip)
        .count();
    assert_eq!(
        before, 20,
        "interrupt taken inside the cli'd loop: {trace:?}"
    );
}

fn traced_run(
    code: &[u8],
    inputs: &mut ScriptedInputs,
) -> (Vec<ftvmm::TraceEntry>, RunOutcome, u64) {
    let mut vm = tiny_vm(code, 2, vec![]);
    vm.enable_trace();
    let mut out = Collected::default();
    let outcome = vm.run(inputs, &mut out, None).unwrap();
    let regs = vm.vcpu().get_regs().unwrap();
    (vm.take_trace(), outcome, regs.r15)
}

#[test]
fn same_inputs_give_the_same_exit_and_rip_sequence() {
    let script = || {
        let mut i = ScriptedInputs {
            tick_on_halt: true,
            ..Default::default()
        };
        i.at.insert(26, vec![InputEvent::TimerTick]);
        i.at.insert(28, vec![InputEvent::ConsoleIn(b"x".to_vec())]);
        i
    };
    let a = traced_run(guest_ticks(), &mut script());
    let b = traced_run(guest_ticks(), &mut script());
    assert!(!a.0.is_empty());
    assert_eq!(a, b);
}

#[test]
fn mmio_exits_reach_the_virtio_transport() {
    let vm_dev = ftvmm::virtio::new_block(0, 2048);
    let mut vm = tiny_vm(guest_mmio(), 2, vec![vm_dev]);
    vm.enable_trace();
    let mut out = Collected::default();
    let outcome = vm
        .run(&mut ScriptedInputs::default(), &mut out, None)
        .unwrap();
    assert_eq!(outcome, RunOutcome::DebugExit(0));
    assert_eq!(vm.stats().mmio_read, 3);
    assert_eq!(vm.stats().mmio_write, 1);
    let trace = vm.take_trace();
    assert_eq!(trace[0].kind, ExitKind::MmioRead);
    assert_eq!(trace[0].addr, 0xd000_0000);
    let regs = vm.vcpu().get_regs().unwrap();
    // The last dword written to port 0x80 was DeviceID (2 = block).
    assert_eq!(regs.rax & 0xff, 0, "exit code in al");
}

#[test]
fn snapshot_restore_continues_exactly() {
    // Reference: uninterrupted run.
    let mut vm = tiny_vm(guest_count(), 4, vec![]);
    vm.enable_trace();
    let mut out = Collected::default();
    assert_eq!(
        vm.run(&mut ScriptedInputs::default(), &mut out, None)
            .unwrap(),
        RunOutcome::DebugExit(0)
    );
    let full = vm.take_trace();
    let full_regs = vm.vcpu().get_regs().unwrap();

    // Run to exit 100, snapshot, restore in a new Vm, continue.
    let mut a = tiny_vm(guest_count(), 4, vec![]);
    a.enable_trace();
    assert_eq!(
        a.run(&mut ScriptedInputs::default(), &mut out, Some(100))
            .unwrap(),
        RunOutcome::ExitLimit
    );
    let mut first = a.take_trace();
    let mut bytes = Vec::new();
    a.save_snapshot(&mut bytes).unwrap();
    drop(a);
    let mut b = Vm::restore_snapshot(&bytes[..], vec![]).unwrap();
    assert_eq!(b.exit_index(), 100);
    b.enable_trace();
    assert_eq!(
        b.run(&mut ScriptedInputs::default(), &mut out, None)
            .unwrap(),
        RunOutcome::DebugExit(0)
    );
    first.extend(b.take_trace());
    assert_eq!(first, full);
    let regs = b.vcpu().get_regs().unwrap();
    assert_eq!(
        (regs.rip, regs.rcx, regs.r8, regs.r9),
        (full_regs.rip, full_regs.rcx, full_regs.r8, full_regs.r9)
    );
}

#[test]
fn snapshot_of_a_halted_guest_with_timer_resumes_ticking() {
    let mut a = tiny_vm(guest_ticks(), 2, vec![]);
    let mut inputs = ScriptedInputs {
        tick_on_halt: true,
        ..Default::default()
    };
    let mut out = Collected::default();
    // Run until the second HLT has been entered.
    while a.stats().hlt < 2 {
        let n = a.exit_index() + 1;
        a.run(&mut inputs, &mut out, Some(n)).unwrap();
    }
    let mut bytes = Vec::new();
    a.save_snapshot(&mut bytes).unwrap();
    let mut b = Vm::restore_snapshot(&bytes[..], vec![]).unwrap();
    assert!(b.is_halted());
    assert_eq!(b.devices().timer_program(), a.devices().timer_program());
    let outcome = b.run(&mut inputs, &mut out, None).unwrap();
    assert_eq!(outcome, RunOutcome::DebugExit(5));
}

#[test]
fn corrupt_or_foreign_snapshots_are_typed_errors() {
    use ftvmm::snapshot::SnapshotError;
    let mut a = tiny_vm(guest_serial_exit(), 2, vec![]);
    let mut bytes = Vec::new();
    a.save_snapshot(&mut bytes).unwrap();
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(matches!(
        Vm::restore_snapshot(&bad[..], vec![]),
        Err(SnapshotError::BadMagic)
    ));
    let mut bad = bytes.clone();
    bad[8] = 99;
    assert!(matches!(
        Vm::restore_snapshot(&bad[..], vec![]),
        Err(SnapshotError::Version { found: 99 })
    ));
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert!(matches!(
        Vm::restore_snapshot(&bad[..], vec![]),
        Err(SnapshotError::Checksum { .. })
    ));
    assert!(matches!(
        Vm::restore_snapshot(&bytes[..bytes.len() - 5], vec![]),
        Err(SnapshotError::Truncated)
    ));
    assert!(Vm::restore_snapshot(&b"garbage"[..], vec![]).is_err());
}

#[test]
fn dirty_log_reports_the_pages_the_guest_wrote() {
    let mut vm = tiny_vm(guest_count(), 4, vec![]);
    vm.start_dirty_tracking().unwrap();
    assert!(vm.dirty_pages_since_last_call().unwrap().len() < 16);
    let mut out = Collected::default();
    vm.run(&mut ScriptedInputs::default(), &mut out, None)
        .unwrap();
    let dirty = vm.dirty_pages_since_last_call().unwrap();
    for p in 0..8u64 {
        assert!(
            dirty.contains(&(0x300 + p)),
            "page {:#x} missing from {dirty:x?}",
            0x300 + p
        );
    }
    assert!(!dirty.contains(&0x308), "an untouched page is not reported");
    assert!(
        vm.dirty_pages_since_last_call().unwrap().is_empty(),
        "nothing since the last call"
    );
}

#[test]
fn outputs_are_console_only_for_port_guests() {
    let mut vm = tiny_vm(guest_serial_exit(), 2, vec![]);
    let mut out = Collected::default();
    vm.run(&mut ScriptedInputs::default(), &mut out, None)
        .unwrap();
    assert!(out
        .0
        .iter()
        .all(|(_, e)| matches!(e, OutputEvent::Console(_))));
}

#[test]
fn host_exits_from_kicks_do_not_move_the_injection_point() {
    let script = || {
        let mut i = ScriptedInputs::default();
        i.at.insert(30, vec![InputEvent::TimerTick]);
        i
    };
    let quiet = traced_run(guest_window(), &mut script());

    let mut vm = tiny_vm(guest_window(), 2, vec![]);
    vm.enable_trace();
    let handle = vm.handle();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = std::sync::Arc::clone(&done);
    let kicker = std::thread::spawn(move || {
        while !d.load(std::sync::atomic::Ordering::Relaxed) {
            handle.kick();
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    });
    let mut out = Collected::default();
    let outcome = vm.run(&mut script(), &mut out, None).unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    kicker.join().unwrap();
    let regs = vm.vcpu().get_regs().unwrap();
    assert!(vm.stats().host > 0, "the kicks caused host exits");
    assert_eq!((vm.take_trace(), outcome, regs.r15), quiet);
}

/// Runs [`guest_sti_hlt`] with a tick at every exit, kicking the vCPU every
/// 1..=`kick_us` µs if given; returns the trace, the outcome, the number of
/// interrupts the guest took and the host exits.
fn sti_hlt_run(kick_us: Option<u64>) -> (Vec<ftvmm::TraceEntry>, RunOutcome, u64, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut vm = tiny_vm(guest_sti_hlt(), 2, vec![]);
    vm.enable_trace();
    let handle = vm.handle();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let d = std::sync::Arc::clone(&done);
    let kicker = std::thread::spawn(move || {
        let Some(us) = kick_us else { return };
        let mut i = 0u64;
        while !d.load(Ordering::Relaxed) {
            handle.kick();
            i += 1;
            std::thread::sleep(std::time::Duration::from_micros(1 + (i * 7919) % us));
        }
    });
    let mut out = Collected::default();
    let outcome = vm.run(&mut TickEveryExit, &mut out, None).unwrap();
    done.store(true, Ordering::Relaxed);
    kicker.join().unwrap();
    let taken = vm.vcpu().get_regs().unwrap().r15;
    let host = vm.stats().host;
    (vm.take_trace(), outcome, taken, host)
}

#[test]
fn host_exits_inside_the_sti_shadow_of_a_hlt_do_not_change_the_exit_sequence() {
    // Each round: a port write with IF=0 while a tick is pending, then
    // `sti; hlt`. The HLT is in the STI shadow, so it exits as a HLT and the
    // tick is injected there. On kvm-amd under QEMU's TCG (the appliance test
    // hosts) VMRUN does not restore the interrupt shadow: a host exit between
    // `sti` and `hlt` (a timer interrupt of the host, a kick) loses it, and a
    // requested interrupt window then opened *before* the HLT — an exit at
    // the `hlt` instead of after it, on one member of a pair only (the
    // divergence of issue 14). No window may be requested, on any host.
    let (quiet, outcome, taken, _) = sti_hlt_run(None);
    assert_eq!(outcome, RunOutcome::DebugExit((3000 % 256) as u8));
    assert_eq!(taken, 3000, "one interrupt per round");
    let hlts = quiet.iter().filter(|t| t.kind == ExitKind::Hlt).count();
    let windows = quiet
        .iter()
        .filter(|t| t.kind == ExitKind::IrqWindow)
        .count();
    assert_eq!(
        (hlts, windows),
        (3000, 0),
        "every `sti; hlt` exits as a HLT, never as an interrupt window"
    );
    for round in 0..3 {
        let (kicked, outcome, taken, host) = sti_hlt_run(Some(50));
        assert!(host > 0, "round {round}: the kicks caused no host exit");
        if let Some(i) = (0..quiet.len()).find(|&i| kicked.get(i) != quiet.get(i)) {
            panic!(
                "round {round}: with {host} host exits the exit sequence differs first at \
                 entry {i}: quiet {:?}, kicked {:?}",
                quiet.get(i),
                kicked.get(i)
            );
        }
        assert_eq!(
            (kicked.len(), outcome, taken),
            (quiet.len(), RunOutcome::DebugExit(184), 3000)
        );
    }
}
