//! Running one VM as a member: a Primary with its Secondary, a Secondary,
//! or a Primary alone (a VM whose rule allows one host). Each run thread
//! boots the VM, starts the member's driver (`driver.rs`, which decides) and
//! the link, runs the vCPU loop, and reports to the driver how it ended.
//!
//! Both sides boot the same image with the same command line and devices, so
//! they start from identical state at exit index 0. The Secondary never
//! touches the VM's disk: block reads come back through the log, and only an
//! acting Primary writes the shared region.

mod alone;
mod hello;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use alone::run_alone;
pub use hello::{
    hello_mismatch, listen, primary_handshake, secondary_handshake, Allowed, Verify,
    HANDSHAKE_TIMEOUT,
};

use super::channel::Channel;
use super::digest::memory_sha256;
use super::driver::{Driver, Resources, Verdict};
use super::golive::{go_live, Replayed};
use super::link::{self, OnTraffic};
use super::log::Body;
use super::member::{Event, Member, State, HAND_OVER_MS};
use super::pause::PausePoint;
use super::primary::{Gate, PrimaryInputs, PrimaryLog, PrimaryOutputs};
use super::secondary::{ReplayEnd, ReplayQueue, SecondaryInputs, SecondaryOutputs};
use super::spec::{PairError, PairHandle, PairSpec};
use crate::io::{Inputs, Outputs};
use crate::live::{self, ConsoleSink, DiskBackend, IoWatch, LiveConfig, Tap};
use crate::runner::{devices_and_cmdline, open_backends, RunError, VmSpec};
use crate::vcpu::RunOutcome;
use crate::vm::{Progress, Vm, VmHandle};

/// How a pair member's run ended.
#[derive(Debug)]
pub struct PairReport {
    pub outcome: RunOutcome,
    pub exit_index: u64,
    pub replay_end: Option<ReplayEnd>,
    /// The member's last state.
    pub member: State,
}

pub(crate) fn boot(
    spec: &VmSpec,
    disk_sectors: Option<u64>,
    with_net: bool,
) -> Result<Vm, RunError> {
    let (devs, cmdline) = devices_and_cmdline(disk_sectors, with_net, &spec.cmdline)?;
    let mut vm = Vm::with_baseline(spec.mem_mib << 20, devs, &spec.cpu)?;
    vm.boot_elf(&spec.kernel, &cmdline)?;
    tracing::info!(kernel = %spec.kernel.display(), cmdline, "booting");
    Ok(vm)
}

/// Runs until the run ends for a reason other than a memory-digest pause or
/// work for the vCPU thread (`pause_point`), printing the digests.
pub(crate) fn run_with_digests<I: Inputs>(
    vm: &mut Vm,
    vm_name: &str,
    role: &str,
    inputs: &mut I,
    outputs: &mut dyn Outputs,
    pause_point: Option<&PausePoint>,
    take_pause: impl Fn(&mut I) -> Option<u64>,
) -> Result<RunOutcome, RunError> {
    if let Some(p) = pause_point {
        p.attach(vm.handle());
    }
    let res = loop {
        let outcome = match vm.run(inputs, outputs, None) {
            Ok(o) => o,
            Err(e) => break Err(e.into()),
        };
        if outcome == RunOutcome::ExitLimit {
            if pause_point.is_some_and(|p| p.serve(vm)) {
                continue;
            }
            // A return for work already served by an earlier stop: the
            // digest pause (if any) is still ahead.
            if inputs.pause_at().is_some_and(|at| at > vm.exit_index()) {
                continue;
            }
            if let Some(at) = take_pause(inputs) {
                let sha = memory_sha256(vm.memory());
                println!("ftvmm: vm {vm_name}: memory digest n={at} sha256={sha} role={role}");
                continue;
            }
            if pause_point.is_some() {
                // Work withdrawn before the vCPU got to it: nothing to do.
                continue;
            }
        }
        break Ok(outcome);
    };
    if let Some(p) = pause_point {
        p.detach();
    }
    res
}

/// Forwards memory-digest requests from the handle to the recorder until
/// dropped (test hook).
pub(crate) struct DigestForward {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DigestForward {
    pub(crate) fn start(handle: &PairHandle, dst: Arc<std::sync::atomic::AtomicU64>) -> Self {
        let (src, stop) = (
            Arc::clone(&handle.digest_request),
            Arc::new(AtomicBool::new(false)),
        );
        let s2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let d = src.swap(0, Ordering::SeqCst);
                if d > 0 {
                    dst.store(d, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        DigestForward {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DigestForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mark_started(handle: &PairHandle, generation: u64) {
    *handle.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    handle.generation.store(generation, Ordering::SeqCst);
}

/// Runs the Primary: live backends, recorded; the Output Rule on every output.
pub fn run_primary(
    spec: &PairSpec,
    ch: Channel,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let vs = &spec.vm;
    let g = spec.hello.generation;
    let (disk, tap) = open_backends(vs)?;
    let mut vm = boot(vs, disk.as_ref().map(|d| d.sectors()), tap.is_some())?;
    let live::Live {
        inputs,
        outputs,
        backends,
    } = start_live(spec, disk, tap, console, &vm)?;
    let log = new_gate(spec, Box::new(outputs), Gate::ByAcks);
    stop_on_reset(&backends, &vm, &log);
    let mut pin = PrimaryInputs::new(inputs, Arc::clone(&log))
        .with_vm(vm.handle())
        .with_pause_point(Arc::clone(&handle.pause));
    let _digests = DigestForward::start(handle, pin.digest_request());
    *handle.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&log));
    mark_started(handle, g);
    let prepared = Driver::prepare();
    let (tx, rx) = ch.split();
    let link = link::start_primary(Arc::clone(&log), tx, rx, on_traffic, prepared.notify());
    let member = Member::primary(&spec.hello.vm, &spec.peer, g, true, timeout_ms(spec));
    let res = Resources {
        log: Some(Arc::clone(&log)),
        queue: None,
        link: Some(link),
        vm: vm.handle(),
    };
    let driver = Driver::start(prepared, member, spec, handle, res);
    on_start(vm.handle(), vm.progress());
    let res = run_with_digests(
        &mut vm,
        &spec.hello.vm,
        "primary",
        &mut pin,
        &mut PrimaryOutputs(Arc::clone(&log)),
        Some(&handle.pause),
        |p| p.take_pause(),
    );
    let n = vm.exit_index();
    match driver.state() {
        // A hand-over, or a host that must be reset: no orderly end.
        _ if hand_over_at_end(&driver, &backends) => {}
        // The guest ended, or an operator stopped it: an orderly end the
        // Secondary replays up to (it then halts instead of going live).
        State::Paired { .. } | State::Halted(super::member::Halt::Stopped) => {
            log.stop_waiting();
            if let Err(e) = log.append(n, Body::End) {
                tracing::error!("lockstep: cannot record the end at exit {n}: {e}");
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            while !log.all_acked() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        _ => {}
    }
    let member = driver.finish();
    log.detach_sink();
    drop(pin);
    drop(backends);
    Ok(PairReport {
        outcome: res?,
        exit_index: n,
        replay_end: None,
        member,
    })
}

/// Runs the Secondary: replay only; outputs are digested and dropped; when
/// the member wins the next generation, the same VM goes live.
/// `disk_sectors` is the size of the VM's disk region (the device model must
/// match the Primary's; the Secondary does not open the disk).
pub fn run_secondary(
    spec: &PairSpec,
    ch: Channel,
    disk_sectors: Option<u64>,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let vs = &spec.vm;
    let vm = boot(vs, disk_sectors, vs.tap.is_some())?;
    let q = ReplayQueue::new(0);
    let sin = SecondaryInputs::new(Arc::clone(&q), vm.handle());
    follow(spec, ch, vm, q, sin, console, handle, on_start, on_traffic)
}

/// Replays the log from the VM's current exit (booted at 0, or restored by
/// a live transfer) until the Primary ends; going live if the member wins
/// the next generation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn follow(
    spec: &PairSpec,
    ch: Channel,
    mut vm: Vm,
    q: Arc<ReplayQueue>,
    mut sin: SecondaryInputs,
    console: ConsoleSink,
    handle: &Arc<PairHandle>,
    on_start: impl FnOnce(VmHandle, Arc<Progress>),
    on_traffic: OnTraffic,
) -> Result<PairReport, PairError> {
    let g = spec.hello.generation;
    *handle.secondary.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&q));
    mark_started(handle, g);
    let prepared = Driver::prepare();
    let (tx, rx) = ch.split();
    let link = link::start_secondary(Arc::clone(&q), tx, rx, on_traffic, prepared.notify());
    let member = Member::secondary(&spec.hello.vm, &spec.peer, g, timeout_ms(spec));
    let res = Resources {
        log: None,
        queue: Some(Arc::clone(&q)),
        link: Some(link),
        vm: vm.handle(),
    };
    let driver = Driver::start(prepared, member, spec, handle, res);
    on_start(vm.handle(), vm.progress());
    let res = run_with_digests(
        &mut vm,
        &spec.hello.vm,
        "secondary",
        &mut sin,
        &mut SecondaryOutputs(Arc::clone(&q)),
        None,
        |s| s.take_pause(),
    );
    let end = sin.end().cloned();
    if let Some(end) = &end {
        println!("ftvmm: vm {}: replay ended: {end:?}", spec.hello.vm);
    }
    let mut outcome = res?;
    match &end {
        Some(ReplayEnd::PrimaryEnded(_)) => driver.post(Event::PrimaryEnded),
        Some(ReplayEnd::Diverged(what)) => driver.post(Event::Diverged { what: what.clone() }),
        Some(ReplayEnd::Exhausted { at, .. }) => {
            driver.post(Event::ReplayExhausted { at: *at });
            if let Verdict::GoLive {
                generation,
                at,
                storage_cut,
            } = driver.verdict()
            {
                let from = Replayed {
                    at,
                    generation,
                    storage_cut,
                    last_time: sin.last_time(),
                    lost_at: q.closed_at(),
                };
                outcome = go_live(spec, &mut vm, &from, &q, console, &driver, handle)?;
            }
        }
        None => driver.post(Event::Stop),
    }
    let member = driver.finish();
    Ok(PairReport {
        outcome,
        exit_index: vm.exit_index(),
        replay_end: end,
        member,
    })
}

fn timeout_ms(spec: &PairSpec) -> u64 {
    spec.failure_timeout.as_millis() as u64
}

/// When this host must stop acting for the VM (the disk path asked fencing
/// to reset the host: a stale or refused write, a request stuck in flight),
/// the vCPU stops at once and nothing it holds is released.
pub(crate) fn stop_on_reset(backends: &live::Backends, vm: &Vm, log: &Arc<PrimaryLog>) {
    let (h, l) = (vm.handle(), Arc::clone(log));
    backends.on_reset_requested(move || {
        l.set_gate(Gate::Held);
        l.stop_waiting();
        h.stop();
    });
}

/// The end of a Primary's run (this one, a Secondary gone live, a lone
/// Primary a Secondary joined). True when it is no orderly end:
///
/// - **This host must be reset** (`stop_on_reset` ran). If it is paired, it
///   hands the VM over first (`Event::LeaveHost`): the vCPU has stopped and
///   the gate holds, so nothing more executes or is released here, and once
///   the Secondary acknowledged the whole log it goes live at once on
///   `Resign`, instead of first finding the channel gone. That is exactly as
///   safe as its go-live after a crash: its Disk Paxos win decides the
///   generation, and its go-live holds later writes overlapping the requests
///   still in flight here for the late-write bound (`live::late_write` rule
///   2), which this host's reset falls within. It also settles a race: a cut
///   storage path withdraws the grant about a second after the cut and hands
///   over a failure timeout later, while the first request stuck on the path
///   reaches its age limit two seconds after its submission; whichever comes
///   first, the Secondary takes over by hand-over.
/// - **A hand-over is under way** (that one, a storage hold past the failure
///   timeout, a host the Primary must leave): it is carried to its end,
///   `Resign` once the log is fully acknowledged or a halt at its deadline.
pub(crate) fn hand_over_at_end(driver: &Driver, backends: &live::Backends) -> bool {
    let reset = backends.guard().stop_reason();
    let paired = |s: &State| matches!(s, State::Paired { .. } | State::StorageHeld { .. });
    if let Some(why) = &reset {
        if paired(&driver.state()) {
            driver.post(Event::LeaveHost {
                why: format!("this host must be reset ({why})"),
            });
            driver.wait_while(paired, Duration::from_secs(1));
        }
    }
    if matches!(driver.state(), State::HandingOver { .. }) {
        driver.wait_halted(Duration::from_millis(HAND_OVER_MS + 1_000));
        return true;
    }
    reset.is_some()
}

/// A Primary's output gate over `sink`: the host grant, fresh acks within
/// the failure timeout.
pub(crate) fn new_gate(
    spec: &PairSpec,
    sink: Box<dyn Outputs + Send>,
    gate: Gate,
) -> Arc<PrimaryLog> {
    PrimaryLog::with_safety(
        sink,
        spec.lag_limit,
        gate,
        Arc::clone(&spec.grant),
        spec.failure_timeout,
    )
}

/// Starts the live backends of a member that drives the real devices (a
/// Primary, or a Secondary gone live), with its disk requests' age bounded
/// (docs/architecture.md §7).
pub(crate) fn start_live(
    spec: &PairSpec,
    disk: Option<DiskBackend>,
    tap: Option<Tap>,
    console: ConsoleSink,
    vm: &Vm,
) -> Result<live::Live, PairError> {
    let cfg = LiveConfig {
        disk,
        tap,
        console,
        stdin: false,
        io_watch: Some(IoWatch {
            vm: spec.hello.vm.clone(),
            fencing_socket: spec.fencing_socket.clone(),
        }),
    };
    Ok(live::start(cfg, vm.handle().kicker()).map_err(RunError::Threads)?)
}
