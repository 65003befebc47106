//! The vCPU threads of a checkpoint-mode VM and the pause gate between them
//! and whoever needs the machine still (the checkpoint epochs).
//!
//! One thread per vCPU. Each owns its `VcpuFd` behind a `Mutex` that it
//! holds only inside one `KVM_RUN` and the handling of its exit. Before every
//! `KVM_RUN` the thread passes [`Control::checkpoint`]: when a pause is on it
//! parks there (holding no lock), when the VM ended it leaves.
//!
//! Pausing: [`Control::pause`] raises the flag, then kicks every vCPU thread
//! ([`crate::kick`]: a signal whose handler sets `immediate_exit`, so a kick
//! that lands just before `KVM_RUN` is not lost), and waits until every
//! thread is parked or gone. A vCPU in HLT sleeps inside `KVM_RUN` (the
//! in-kernel LAPIC): the signal makes it return `EINTR` too.
//!
//! Invariants: `parked + exited <= n`; while a [`PauseGuard`] lives, no
//! vCPU is inside `KVM_RUN` and every parked vCPU's state is complete;
//! `end` is set once (the first reason wins).
//!
//! State capture: a pause takes each vCPU's state on the vCPU's own thread,
//! after it settled and as it parks ([`Control::pause`] hands the states to
//! the pauser), as QEMU does with `run_on_cpu`: KVM loads a vCPU on the CPU
//! of whichever thread issues its ioctl, and the vCPU's own thread is the
//! one place that never moves it. It also takes the n vCPUs' states in
//! parallel, which keeps the pause short. The devices' interrupt lines are
//! held for the whole pause (`Bus::hold_irqs`), so no device interrupt
//! lands between one vCPU's capture and another's or the IOAPIC's.
//!
//! One instant for the interrupts between vCPUs: a thread captures only
//! once every vCPU is parked (or gone), so no vCPU runs between one
//! capture and another. Captured as each parked, an IPI from a vCPU still
//! running to one already captured was in neither saved LAPIC while the
//! sender's state said it was sent, and a guest resumed from that epoch
//! could wait for it forever (a TLB shootdown): on this machine's KVM,
//! `linux::tests::every_pause_captures_an_ipi_in_flight_with_its_target`
//! caught it in 2 to 11 of 30,000 pauses of two vCPUs playing IPI
//! ping-pong, 4 runs of 4 (stop 46); none since. The cost is the wait for the
//! last vCPU to park before the captures start (they still run in
//! parallel). Stops 29 and 37 had tried this order and counted more guest
//! faults on the nested test bed (QEMU TCG emulating AMD SVM, which faults
//! this guest with no epochs at all too: 4 in 8 boots against 1 in 24), too
//! few to tell an emulator's noise from a cause; the gap itself is now
//! shown on real KVM, so correctness wins, and the bed's counts are
//! `qemu-tests linux_vm boot_loop_counts_guest_faults`' to watch. A
//! Primary whose guest triple-faults prints each vCPU's registers from the
//! last epoch (`checkpoint/brief.rs`), for the next such run.
//!
//! Complete state: a vCPU stopped right after an MMIO/PIO read exit has the
//! result in `kvm_run` but not yet in its registers (KVM finishes the
//! instruction on the next `KVM_RUN`); state saved there would lose the read.
//! So before parking, a thread *settles*: one `KVM_RUN` with
//! `immediate_exit` set, which completes any pending instruction and
//! returns `EINTR` without entering the guest (KVM's API doc; Cloud
//! Hypervisor and Firecracker do the same before a snapshot).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::bus::Bus;
use super::End;
use crate::checkpoint::state::{self, StateError, VcpuState};
use crate::kick::Kicker;

#[derive(Default)]
struct St {
    pause: bool,
    parked: usize,
    exited: usize,
    end: Option<End>,
    /// Where and when the end came ([`EndNote`]).
    note: Option<EndNote>,
    /// Pauses begun so far, and when the last one ended.
    pauses: u64,
    resumed_at: Option<Instant>,
    /// The vCPU states of the pause on (one slot per vCPU, filled by its
    /// thread once parked).
    states: Vec<Option<Result<VcpuState, StateError>>>,
}

/// Where and when the VM ended, for a fault's report: issue 11's boot-time
/// triple faults under nested KVM came whichever way the vCPUs were
/// captured, and this tells a fault in the first `KVM_RUN` after a pause
/// (the capture or the settle perturbed the vCPU) from one in the middle
/// of an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndNote {
    /// The vCPU whose exit ended the VM (`None`: its owner ended it).
    pub vcpu: Option<usize>,
    /// That exit came from the vCPU's first `KVM_RUN` after a pause.
    pub first_run_after_pause: bool,
    /// A pause was on (the exit came from a settle or a thread not yet
    /// parked).
    pub during_pause: bool,
    /// Pauses begun before the end.
    pub pauses: u64,
    /// From the end of the last pause to the end (`None`: none ended yet).
    pub since_resume: Option<Duration>,
}

impl fmt::Display for EndNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vcpu {
            Some(i) => write!(f, "vCPU {i}")?,
            None => write!(f, "the VMM")?,
        }
        if self.during_pause {
            write!(f, ", during pause {}", self.pauses)?;
        } else if let Some(d) = self.since_resume {
            write!(
                f,
                ", {:.3} ms after pause {} ended",
                d.as_secs_f64() * 1e3,
                self.pauses
            )?;
        } else {
            write!(f, ", before any pause")?;
        }
        if self.first_run_after_pause {
            write!(f, " (its first KVM_RUN after it)")?;
        }
        Ok(())
    }
}

/// What a vCPU thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Enter the guest; `pauses` begun so far.
    Run {
        pauses: u64,
    },
    /// Complete any pending exit, then ask again (a pause is on).
    Settle,
    Leave,
}

/// Shared by the vCPU threads, the pauser and the owner.
pub struct Control {
    n: usize,
    st: Mutex<St>,
    cv: Condvar,
    kickers: Vec<Arc<Kicker>>,
    /// One pause at a time.
    pausing: Mutex<()>,
    /// The MSRs a vCPU state holds (`state::readable_msrs`).
    msrs: Vec<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// While alive, every vCPU thread is parked or gone.
pub struct PauseGuard<'a> {
    ctl: &'a Control,
    _one: MutexGuard<'a, ()>,
    /// Each vCPU's state at this pause, in vCPU order; `None` for a vCPU
    /// whose thread had left its loop.
    pub states: Vec<Option<Result<VcpuState, StateError>>>,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.ctl.st);
        st.pause = false;
        st.resumed_at = Some(Instant::now());
        drop(st);
        self.ctl.cv.notify_all();
    }
}

impl Control {
    pub fn new(n: usize, msrs: Vec<u32>) -> Arc<Self> {
        Arc::new(Control {
            n,
            msrs,
            st: Mutex::new(St::default()),
            cv: Condvar::new(),
            kickers: (0..n).map(|_| Arc::new(Kicker::new())).collect(),
            pausing: Mutex::new(()),
        })
    }

    fn kick_all(&self) {
        for k in &self.kickers {
            k.kick();
        }
    }

    /// Ends the VM (the first reason stays) and makes every vCPU leave.
    pub fn end(&self, reason: End) {
        self.end_by(None, false, reason)
    }

    /// [`Control::end`] from vCPU `vcpu`'s exit (`first`: its first
    /// `KVM_RUN` after a pause), noting where and when ([`EndNote`]).
    fn end_by(&self, vcpu: Option<usize>, first: bool, reason: End) {
        {
            let mut st = lock(&self.st);
            if st.end.is_none() {
                tracing::debug!(%reason, ?vcpu, "linux VM: end");
                st.end = Some(reason);
                st.note = Some(EndNote {
                    vcpu,
                    first_run_after_pause: first,
                    during_pause: st.pause,
                    pauses: st.pauses,
                    since_resume: st.resumed_at.map(|t| t.elapsed()),
                });
            }
        }
        self.kick_all();
        self.cv.notify_all();
    }

    /// Where and when the VM ended, once it did.
    pub fn end_note(&self) -> Option<EndNote> {
        lock(&self.st).note.clone()
    }

    pub fn ended(&self) -> Option<End> {
        lock(&self.st).end.clone()
    }

    /// vCPU side, before each `KVM_RUN`: parks while a pause is on, once
    /// the thread `settled` (module doc); [`Step::Settle`] asks it to first.
    /// Parked, it captures its vCPU's state for every pause that wants it
    /// (also a pause that began before it woke from the previous one).
    fn checkpoint(&self, index: usize, settled: bool, vcpu: &Mutex<VcpuFd>) -> Step {
        let mut st = lock(&self.st);
        if st.pause && st.end.is_none() {
            if !settled {
                return Step::Settle;
            }
            st.parked += 1;
            self.cv.notify_all();
            while st.pause && st.end.is_none() {
                // Only once no vCPU is inside KVM_RUN (module doc: one
                // still running could IPI this one after its LAPIC was
                // read). The last thread to park wakes the others.
                let all_out = st.parked + st.exited == self.n;
                if all_out && st.states.get(index).is_some_and(Option::is_none) {
                    // Not under `st`: the ioctls take time and the other
                    // vCPUs capture meanwhile. The pauser does not touch
                    // the vCPU fds until every state is in.
                    drop(st);
                    let got = state::capture_vcpu(&lock(vcpu), &self.msrs, index);
                    st = lock(&self.st);
                    if let Some(slot) = st.states.get_mut(index) {
                        *slot = Some(got);
                    }
                    self.cv.notify_all();
                    continue;
                }
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.parked -= 1;
        }
        if st.end.is_none() {
            Step::Run { pauses: st.pauses }
        } else {
            Step::Leave
        }
    }

    fn on_exit(&self) {
        lock(&self.st).exited += 1;
        self.cv.notify_all();
    }

    /// Stops every vCPU outside `KVM_RUN` until the guard is dropped; the
    /// guard holds each vCPU's state at the pause (module doc).
    pub fn pause(&self) -> PauseGuard<'_> {
        let one = lock(&self.pausing);
        {
            let mut st = lock(&self.st);
            st.pause = true;
            st.pauses += 1;
            st.states = (0..self.n).map(|_| None).collect();
        }
        self.kick_all();
        let mut st = lock(&self.st);
        // Every thread parked (or gone) and every parked one captured. A
        // thread between its check and KVM_RUN got the kick's
        // immediate_exit; one still about to check sees the flag. A thread
        // that leaves (the VM ended) counts as exited, with no state.
        while st.parked + st.exited < self.n
            || st.states.iter().filter(|s| s.is_some()).count() < st.parked
        {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let states = std::mem::take(&mut st.states);
        drop(st);
        PauseGuard {
            ctl: self,
            _one: one,
            states,
        }
    }

    /// Waits until the VM ended and every vCPU thread left its loop.
    pub fn wait_end(&self) -> End {
        let mut st = lock(&self.st);
        loop {
            if let Some(end) = &st.end {
                if st.exited == self.n {
                    return end.clone();
                }
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The body of vCPU thread `index`.
pub fn run_vcpu(index: usize, vcpu: Arc<Mutex<VcpuFd>>, ctl: Arc<Control>, bus: Arc<Mutex<Bus>>) {
    let guard = {
        let mut fd = lock(&vcpu);
        ctl.kickers[index].enter(&mut fd)
    };
    match guard {
        Ok(_guard) => {
            let mut settled = false;
            // Pauses begun before this thread's previous KVM_RUN.
            let mut seen = 0;
            loop {
                match ctl.checkpoint(index, settled, &vcpu) {
                    Step::Leave => break,
                    Step::Settle => {
                        if let Some(end) = settle(index, &mut lock(&vcpu), &bus) {
                            ctl.end_by(Some(index), false, end);
                            break;
                        }
                        settled = true;
                    }
                    Step::Run { pauses } => {
                        settled = false;
                        let first = pauses != seen;
                        seen = pauses;
                        let mut fd = lock(&vcpu);
                        if let Ran::Ended(end) = run_once(index, &mut fd, &bus) {
                            ctl.end_by(Some(index), first, end);
                            break;
                        }
                    }
                }
            }
        }
        Err(e) => ctl.end(End::Error(format!(
            "vCPU {index}: cannot set up kicks: {e}"
        ))),
    }
    ctl.on_exit();
}

/// Completes a pending MMIO/PIO exit without running the guest (module
/// doc): `KVM_RUN` with `immediate_exit` returns `EINTR` at once. Completing
/// one step of a string I/O instruction (`rep outsb`) can hand the next
/// step to userspace instead of returning `EINTR`: that exit is handled like
/// any other and the vCPU settled again, so no I/O is dropped. `Some` ends
/// the VM.
fn settle(index: usize, fd: &mut VcpuFd, bus: &Mutex<Bus>) -> Option<End> {
    for _ in 0..SETTLE_ROUNDS {
        fd.set_kvm_immediate_exit(1);
        match run_once(index, fd, bus) {
            Ran::Interrupted => return None,
            Ran::Ended(end) => return Some(end),
            Ran::Exited => {}
        }
    }
    fd.set_kvm_immediate_exit(0);
    Some(End::Error(format!(
        "vCPU {index}: still exiting to userspace after {SETTLE_ROUNDS} settling rounds"
    )))
}

/// Settling rounds before a vCPU that keeps exiting is an error: a string
/// I/O of at most a page per exit completes in far fewer.
const SETTLE_ROUNDS: usize = 10_000;

/// What one `KVM_RUN` did.
enum Ran {
    /// An exit, handled.
    Exited,
    /// Interrupted before or instead of entering the guest (a kick or
    /// `immediate_exit`): `immediate_exit` is cleared again.
    Interrupted,
    /// The VM ends.
    Ended(End),
}

/// One `KVM_RUN` and its exit.
fn run_once(index: usize, fd: &mut VcpuFd, bus: &Mutex<Bus>) -> Ran {
    let ended = |e: Option<End>| e.map_or(Ran::Exited, Ran::Ended);
    match fd.run() {
        Ok(VcpuExit::IoIn(port, data)) => lock(bus).pio_in(port, data),
        Ok(VcpuExit::IoOut(port, data)) => return ended(lock(bus).pio_out(port, data)),
        Ok(VcpuExit::MmioRead(addr, data)) => lock(bus).mmio_read(addr, data),
        Ok(VcpuExit::MmioWrite(addr, data)) => lock(bus).mmio_write(addr, data),
        Ok(VcpuExit::Hlt) => {}
        Ok(VcpuExit::Intr) => {
            fd.set_kvm_immediate_exit(0);
            return Ran::Interrupted;
        }
        Ok(VcpuExit::Shutdown) => return Ran::Ended(End::TripleFault),
        Ok(VcpuExit::SystemEvent(kind, _)) => return Ran::Ended(End::SystemEvent(kind)),
        Ok(VcpuExit::FailEntry(reason, _)) => {
            return Ran::Ended(End::Error(format!(
                "vCPU {index}: KVM_RUN entry failed (hardware reason {reason:#x})"
            )))
        }
        Ok(VcpuExit::InternalError) => {
            return Ran::Ended(End::Error(format!("vCPU {index}: KVM internal error")))
        }
        Ok(other) => {
            return Ran::Ended(End::Error(format!(
                "vCPU {index}: unexpected exit {other:?}"
            )))
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            fd.set_kvm_immediate_exit(0);
            return Ran::Interrupted;
        }
        Err(e) => return Ran::Ended(End::Error(format!("vCPU {index}: KVM_RUN: {e}"))),
    }
    Ran::Exited
}
