//! The vCPU loop: `KVM_RUN`, one match on the exit, device dispatch, interrupt
//! injection, and input delivery at deterministic exits.
//!
//! Rules (docs/architecture.md §4):
//! - Every `KVM_RUN` return caused by the guest (port I/O, MMIO, HLT, interrupt
//!   window, debug, shutdown) advances the exit index `n` by one, *before* the
//!   exit is handled, so the exit is handled "at `n`". Host-caused returns
//!   (`EINTR` from a kick or signal, `KVM_EXIT_INTR`) do not.
//! - After handling exit `n`, the loop asks `Inputs::events_at(n)` and delivers
//!   those events. Nothing asynchronous reaches a device anywhere else.
//! - Before each entry that follows a deterministic exit, if the PIC's INTR is
//!   up and `kvm_run.ready_for_interrupt_injection` and `if_flag` say the vCPU
//!   can take it, the vector is injected with `KVM_INTERRUPT`. Otherwise the
//!   interrupt waits for the next deterministic exit at which it can: the loop
//!   never sets `request_interrupt_window`. Where the window-open exit lands
//!   depends on the host: the PVM-based `/dev/kvm` reports it only when the
//!   vCPU is next entered (a kick moves it), and kvm-amd under QEMU's TCG (the
//!   appliance test hosts) loses the STI interrupt shadow when a host exit
//!   lands between `sti` and `hlt` (QEMU's VMRUN does not restore
//!   `int_state`), so the window opens *before* the HLT on one member of a
//!   pair and after it on the other (issue 14). Never inject after a
//!   host-caused exit: the guest stopped at an arbitrary instruction there.
//! - HLT: the vCPU is idle until an interrupt is deliverable; the loop blocks in
//!   `Inputs::events_at_halt(n)` (still at the HLT's `n`) and delivers what it
//!   returns, until the PIC raises INTR. A HLT with interrupts disabled ends the
//!   run ([`RunOutcome::Halted`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::kvm_interrupt;
use kvm_ioctls::VcpuExit;
use serde::{Deserialize, Serialize};

use crate::io::{ExitIndex, InputEvent, Inputs, Outputs, TimeSource};
use crate::vm::{kvm_err, Vm, VmError};

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// `KVM_INTERRUPT`: queue external interrupt `vector` for the next entry (only
/// valid without an in-kernel irqchip; kvm-ioctls does not wrap it).
fn inject(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> Result<(), kvm_ioctls::Error> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` from the pointer, which is
    // valid for the duration of the call; the fd is a vCPU fd.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if rc == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

/// Access size of the current `KVM_EXIT_IO` (1, 2 or 4); the data slice holds
/// `count` such accesses (string I/O with `rep ins/outs`).
///
/// # Safety
/// `run` must point to the vCPU's mapped `kvm_run` and the last exit must be
/// `KVM_EXIT_IO`. Reading the `io` header is fine while the I/O data (a
/// disjoint part of the same mapping) is borrowed.
unsafe fn io_size(run: *const kvm_bindings::kvm_run) -> usize {
    // SAFETY: guaranteed by the caller; `io` is the active union member.
    let size = unsafe { (*run).__bindgen_anon_1.io.size };
    usize::from(size).max(1)
}

/// Why [`Vm::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    /// The guest wrote this byte to the debug-exit port 0x501.
    DebugExit(u8),
    /// Triple fault / shutdown.
    Shutdown,
    /// HLT with interrupts disabled: nothing can wake the vCPU.
    Halted,
    /// [`crate::vm::VmHandle::stop`] was called.
    Stopped,
    /// The exit index reached the `until` limit.
    ExitLimit,
}

/// Kinds of deterministic exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
    Hlt,
    IrqWindow,
    Debug,
    Shutdown,
}

/// One traced deterministic exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    pub n: ExitIndex,
    pub kind: ExitKind,
    /// Port or guest-physical address, 0 for others.
    pub addr: u64,
    pub rip: u64,
}

/// Counts time reads on their way to the real `Inputs`.
struct CountingInputs<'a> {
    inner: &'a mut dyn Inputs,
    time_reads: u64,
}

impl Inputs for CountingInputs<'_> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        self.time_reads += 1;
        self.inner.time_read(n, source)
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at_halt(n, out)
    }
    fn program_timer(&mut self, n: ExitIndex, program: crate::io::TimerProgram) {
        self.inner.program_timer(n, program)
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

/// Hash of the general registers, RIP and RFLAGS (the lockstep check record).
pub fn gpr_hash(r: &kvm_bindings::kvm_regs) -> u64 {
    let mut h = crate::lockstep::log::Fnv::default();
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        h.write_u64(v);
    }
    h.finish()
}

impl Vm {
    /// Runs the vCPU until the guest stops, a stop is requested, or the exit
    /// index reaches `until`.
    pub fn run(
        &mut self,
        inputs: &mut dyn Inputs,
        out: &mut dyn Outputs,
        until: Option<ExitIndex>,
    ) -> Result<RunOutcome, VmError> {
        let kicker = Arc::clone(&self.kicker);
        let _guard = kicker.enter(&mut self.vcpu).map_err(VmError::Kick)?;
        let mut inputs = CountingInputs {
            inner: inputs,
            time_reads: 0,
        };
        let res = self.run_loop(&mut inputs, out, until);
        self.stats.time_reads += inputs.time_reads;
        res
    }

    fn run_loop(
        &mut self,
        inputs: &mut dyn Inputs,
        out: &mut dyn Outputs,
        until: Option<ExitIndex>,
    ) -> Result<RunOutcome, VmError> {
        let mut events = Vec::new();
        loop {
            if self.stop.swap(false, Ordering::SeqCst) {
                return Ok(RunOutcome::Stopped);
            }
            let limit = match (until, inputs.pause_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if limit.is_some_and(|limit| self.n >= limit) {
                return Ok(RunOutcome::ExitLimit);
            }
            if self.halted {
                if !self.devices.pic.intr() {
                    events.clear();
                    inputs.events_at_halt(self.n, &mut events);
                    self.deliver(&mut events, out);
                    continue;
                }
                self.halted = false;
            }
            self.prepare_injection()?;
            if let Some(outcome) = self.run_once(inputs, out)? {
                return Ok(outcome);
            }
        }
    }

    /// Injects the PIC's pending interrupt if the vCPU can take it now; else
    /// it waits for the next deterministic exit (module docs: no window
    /// requests).
    fn prepare_injection(&mut self) -> Result<(), VmError> {
        if !self.at_deterministic_point {
            // The last return was host-caused: the guest stopped at an arbitrary
            // instruction, and `if_flag`/`ready_for_interrupt_injection` describe
            // that arbitrary point. Injecting here would not be reproducible.
            return Ok(());
        }
        let intr = self.devices.pic.intr();
        let run = self.vcpu.get_kvm_run();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        // Never asked for; kept clear so KVM never reports a window exit.
        run.request_interrupt_window = 0;
        if intr && can_inject {
            let vector = self.devices.pic.acknowledge();
            inject(&self.vcpu, vector).map_err(kvm_err("KVM_INTERRUPT"))?;
            self.stats.injected += 1;
        }
        Ok(())
    }

    fn deliver(&mut self, events: &mut Vec<InputEvent>, out: &mut dyn Outputs) {
        for ev in events.drain(..) {
            self.stats.events += 1;
            self.devices.deliver(self.n, &self.mem, ev, out);
        }
    }

    /// One `KVM_RUN`. Returns `Some` when the run must end.
    fn run_once(
        &mut self,
        inputs: &mut dyn Inputs,
        out: &mut dyn Outputs,
    ) -> Result<Option<RunOutcome>, VmError> {
        let n = self.n + 1;
        let mut outcome = None;
        let run_ptr: *const kvm_bindings::kvm_run = self.vcpu.get_kvm_run();
        let (kind, addr) = match self.vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                // SAFETY: see `io_size`.
                let size = unsafe { io_size(run_ptr) };
                self.devices.pio_in(n, port, size, data, inputs);
                (ExitKind::PioIn, u64::from(port))
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                // SAFETY: see `io_size`.
                let size = unsafe { io_size(run_ptr) };
                if let Some(code) = self.devices.pio_out(n, port, size, data, inputs, out) {
                    outcome = Some(RunOutcome::DebugExit(code));
                }
                (ExitKind::PioOut, u64::from(port))
            }
            Ok(VcpuExit::MmioRead(a, data)) => {
                self.devices.mmio_read(n, a, data);
                (ExitKind::MmioRead, a)
            }
            Ok(VcpuExit::MmioWrite(a, data)) => {
                self.devices.mmio_write(n, &self.mem, a, data, out);
                (ExitKind::MmioWrite, a)
            }
            Ok(VcpuExit::Hlt) => {
                if self.vcpu.get_kvm_run().if_flag == 0 {
                    outcome = Some(RunOutcome::Halted);
                } else {
                    self.halted = true;
                }
                (ExitKind::Hlt, 0)
            }
            Ok(VcpuExit::IrqWindowOpen) => (ExitKind::IrqWindow, 0),
            Ok(VcpuExit::Debug(_)) => (ExitKind::Debug, 0),
            Ok(VcpuExit::Shutdown) => {
                outcome = Some(RunOutcome::Shutdown);
                (ExitKind::Shutdown, 0)
            }
            Ok(VcpuExit::Intr) => return Ok(self.host_exit()),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => {
                return Err(VmError::FailEntry { reason, n: self.n })
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active union member.
                let suberror =
                    unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                return Err(VmError::Internal {
                    suberror,
                    n: self.n,
                });
            }
            Ok(other) => {
                return Err(VmError::UnexpectedExit {
                    kind: format!("{other:?}"),
                    n: self.n,
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(self.host_exit())
            }
            Err(source) => {
                return Err(VmError::Kvm {
                    what: "KVM_RUN",
                    source,
                })
            }
        };
        self.n = n;
        self.at_deterministic_point = true;
        self.count(kind);
        self.publish();
        if let Some(trace) = self.trace.as_mut() {
            let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
            trace.push(TraceEntry { n, kind, addr, rip });
        }
        let every = inputs.check_interval();
        if every != 0 && n.is_multiple_of(every) {
            let regs = self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
            inputs.check(n, regs.rip, gpr_hash(&regs));
        }
        if outcome.is_none() {
            let mut events = Vec::new();
            inputs.events_at(n, &mut events);
            self.deliver(&mut events, out);
        }
        Ok(outcome)
    }

    fn publish(&self) {
        let p = &self.progress;
        p.exit_index.store(self.n, Ordering::Relaxed);
        p.injected.store(self.stats.injected, Ordering::Relaxed);
        p.hlt.store(self.stats.hlt, Ordering::Relaxed);
        p.host_exits.store(self.stats.host, Ordering::Relaxed);
    }

    fn host_exit(&mut self) -> Option<RunOutcome> {
        self.stats.host += 1;
        self.at_deterministic_point = false;
        self.vcpu.set_kvm_immediate_exit(0);
        None
    }

    fn count(&mut self, kind: ExitKind) {
        let s = &mut self.stats;
        match kind {
            ExitKind::PioIn => s.pio_in += 1,
            ExitKind::PioOut => s.pio_out += 1,
            ExitKind::MmioRead => s.mmio_read += 1,
            ExitKind::MmioWrite => s.mmio_write += 1,
            ExitKind::Hlt => s.hlt += 1,
            ExitKind::IrqWindow => s.irq_window += 1,
            ExitKind::Debug => s.debug += 1,
            ExitKind::Shutdown => s.shutdown += 1,
        }
    }
}
