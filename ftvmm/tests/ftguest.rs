//! The reference guest (guest/, CPU mode) under ftvmm with scripted inputs:
//! twice the same checksum and the same exit count; and a snapshot taken
//! mid-run restores into a fresh VM that finishes identically. And the KV
//! mode's idle tick on the live timer: 20 Hz once idle, 100 Hz again when a
//! frame arrives.
//!
//! Needs /dev/kvm and the guest ELF: `FTGUEST_ELF`, or
//! `guest/target/x86_64-unknown-none/release/ftguest` (build it with
//! `cd guest && cargo build --release`). Fails with a clear message otherwise.

mod common;

use common::{guest_elf, Collected, ScriptedInputs};
use ftvmm::io::{ExitIndex, InputEvent, Inputs, TimeSource, TimerProgram};
use ftvmm::{RunOutcome, Vm};

/// A timer tick every 40 exits and whenever the guest halts: deterministic.
struct EveryK(ScriptedInputs);

impl Inputs for EveryK {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if n.is_multiple_of(40) {
            out.push(InputEvent::TimerTick);
        }
    }
    fn time_read(&mut self, n: ExitIndex, s: TimeSource) -> u64 {
        self.0.time_read(n, s)
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.0.events_at_halt(n, out)
    }
    fn program_timer(&mut self, n: ExitIndex, p: TimerProgram) {
        self.0.program_timer(n, p)
    }
}

fn inputs() -> EveryK {
    EveryK(ScriptedInputs {
        tick_on_halt: true,
        ..Default::default()
    })
}

const CMDLINE: &str = "mode=cpu cpu_iters=20000";

fn boot() -> Vm {
    let mut vm = Vm::new(32 << 20, vec![])
        .unwrap_or_else(|e| panic!("this test needs a working /dev/kvm: {e}"));
    vm.boot_elf(&guest_elf(), CMDLINE)
        .expect("boot the reference guest");
    vm
}

fn checksum_line(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    text.lines()
        .find(|l| l.starts_with("cpu: checksum="))
        .unwrap_or_else(|| panic!("no checksum line in console output:\n{text}"))
        .to_string()
}

#[test]
fn cpu_mode_twice_gives_the_same_checksum_and_exit_count() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut vm = boot();
        let mut out = Collected::default();
        let outcome = vm.run(&mut inputs(), &mut out, None).unwrap();
        assert_eq!(
            outcome,
            RunOutcome::DebugExit(0),
            "console: {}",
            String::from_utf8_lossy(&out.console())
        );
        let console = out.console();
        let text = String::from_utf8_lossy(&console).to_string();
        assert_eq!(
            text.lines().next().map(|l| l.trim()),
            Some("guest: boot"),
            "{text:?}"
        );
        runs.push((
            checksum_line(&console),
            vm.exit_index(),
            vm.stats().clone(),
            console,
        ));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1, "exit count differs");
    assert_eq!(runs[0].2, runs[1].2);
    assert_eq!(runs[0].3, runs[1].3);
    eprintln!("{} after {} exits", runs[0].0, runs[0].1);
}

#[test]
fn cpu_mode_snapshot_mid_run_restores_and_finishes_identically() {
    let mut vm = boot();
    let mut out = Collected::default();
    assert_eq!(
        vm.run(&mut inputs(), &mut out, None).unwrap(),
        RunOutcome::DebugExit(0)
    );
    let (full_console, full_n) = (out.console(), vm.exit_index());

    let mut a = boot();
    let mut out_a = Collected::default();
    let mut ins = inputs();
    let k = full_n / 2;
    assert_eq!(
        a.run(&mut ins, &mut out_a, Some(k)).unwrap(),
        RunOutcome::ExitLimit
    );
    let mut bytes = Vec::new();
    a.save_snapshot(&mut bytes).unwrap();
    drop(a);
    let mut b = Vm::restore_snapshot(&bytes[..], vec![]).unwrap();
    assert_eq!(
        b.run(&mut ins, &mut out_a, None).unwrap(),
        RunOutcome::DebugExit(0)
    );
    assert_eq!(b.exit_index(), full_n);
    assert_eq!(out_a.console(), full_console);
}

/// The live inputs, recording every timer program the guest makes.
struct RecordPrograms<I> {
    inner: I,
    periods_ms: Vec<u64>,
}

impl<I: Inputs> Inputs for RecordPrograms<I> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn time_read(&mut self, n: ExitIndex, s: TimeSource) -> u64 {
        self.inner.time_read(n, s)
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at_halt(n, out)
    }
    fn program_timer(&mut self, n: ExitIndex, p: TimerProgram) {
        if let TimerProgram::Periodic { period_ns } = p {
            self.periods_ms.push((period_ns + 500_000) / 1_000_000);
        }
        self.inner.program_timer(n, p)
    }
    fn check_interval(&self) -> u64 {
        self.inner.check_interval()
    }
    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        self.inner.check(n, rip, gpr_hash)
    }
    fn pause_at(&self) -> Option<ExitIndex> {
        self.inner.pause_at()
    }
}

/// Runs `vm` a few exits at a time until the guest's last timer program is
/// `period_ms`, at most `timeout` of wall-clock time.
fn run_until_period<I: Inputs>(
    vm: &mut Vm,
    inputs: &mut RecordPrograms<I>,
    out: &mut dyn ftvmm::io::Outputs,
    period_ms: u64,
    timeout: std::time::Duration,
    what: &str,
) {
    let deadline = std::time::Instant::now() + timeout;
    while inputs.periods_ms.last() != Some(&period_ms) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the guest's timer periods were {:?} ms after {timeout:?}, never ending at {period_ms} ms",
            inputs.periods_ms
        );
        let until = vm.exit_index() + 4;
        let outcome = vm.run(inputs, out, Some(until)).expect("guest runs");
        assert_eq!(outcome, RunOutcome::ExitLimit, "{what}: the guest stopped");
    }
}

/// Issue 17: an idle protected VM costs its ticks, so the KV guest slows its
/// PIT from 100 to 20 Hz once nothing but the tick has woken it for 200 ms of
/// its clock, and a received frame brings 100 Hz back at once (then, idle
/// again, 20 Hz). On the live timer, so it takes about a second.
#[test]
fn an_idle_kv_guest_ticks_at_20_hz_and_a_frame_brings_100_hz_back() {
    let common::LiveKv {
        disk_file: _disk_file,
        mut vm,
        console: _console,
        live:
            ftvmm::live::Live {
                inputs,
                mut outputs,
                backends,
            },
    } = common::live_kv_guest();
    let mut inputs = RecordPrograms {
        inner: inputs,
        periods_ms: Vec::new(),
    };
    let t = std::time::Duration::from_secs(30);
    run_until_period(&mut vm, &mut inputs, &mut outputs, 50, t, "idle after boot");
    assert_eq!(
        inputs.periods_ms,
        [10, 50],
        "100 Hz from boot, 20 Hz once idle, nothing in between"
    );
    backends.queue().push(InputEvent::Frame {
        dev: 0,
        data: common::arp_request(7),
    });
    run_until_period(&mut vm, &mut inputs, &mut outputs, 10, t, "a frame arrived");
    run_until_period(&mut vm, &mut inputs, &mut outputs, 50, t, "idle again");
    assert_eq!(inputs.periods_ms, [10, 50, 10, 50]);
}
