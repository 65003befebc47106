//! Respawn's live state transfer on this host's KVM (issue 10): bytes sent against guest memory
//! size and pre-copy rounds, with the reference guest idle or busy writing memory.
//!
//! Per rate, the guest boots with [`MEM_MIB`] MiB in `mode=dirty` (`guest/src/dirty.rs`: one
//! byte per page of a [`WORKING_SET_MIB`] MiB working set, `dirty_rate` pages per ms, 0 =
//! idle) and runs on a vCPU thread of its own with the live backends (the 100 Hz PIT timer),
//! which serves a [`PausePoint`] between exits as `pair::run_with_digests` does. The rate the
//! guest reaches is read from its pages-written counter in guest memory, over [`WARMUP`]
//! before the transfer (dirty log off) and over the pre-copy (dirty log on). Then
//! `respawn_live_xfer.rs` transfers it into a second VM built the same way, with the real
//! sender and receiver machines, and both VMs' full memory SHA-256 are compared at the switch.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ftvmm::io::{ExitIndex, InputEvent, Inputs, TimeSource, TimerProgram};
use ftvmm::live::{self, LiveConfig};
use ftvmm::lockstep::pause::PausePoint;
use ftvmm::runner::{build_vm, VmSpec};
use ftvmm::{RunOutcome, VmHandle};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::console::{wait_for, LineSink};
use crate::respawn_live_xfer::{transfer, Outcome};

/// Guest memory of every run.
pub const MEM_MIB: u64 = 256;
/// The guest's working set (`dirty_mib`).
pub const WORKING_SET_MIB: u64 = 16;
/// Rates asked of the guest (`dirty_rate`, pages per ms; 0 = it idles).
pub const RATES: [u64; 4] = [0, 100, 1000, 10_000];
/// The guest runs this long, its rate measured, before the transfer starts.
pub const WARMUP: Duration = Duration::from_millis(500);

/// One transfer of a guest asked to write `rate` pages per ms.
pub struct LiveRun {
    pub rate: u64,
    /// Pages per ms the guest wrote over [`WARMUP`] (no dirty log) and from the transfer's
    /// start to the pause (dirty log on).
    pub reached_free: f64,
    pub reached_precopy: f64,
    pub memory_bytes: u64,
    pub out: Outcome,
}

/// Makes the run return at the next exit whenever the [`PausePoint`] has work (what
/// `PrimaryInputs::with_pause_point` does on a Primary); everything else is the live door.
struct Pausable<'a> {
    inner: &'a mut dyn Inputs,
    pause: Arc<PausePoint>,
}

impl Inputs for Pausable<'_> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at(n, out)
    }
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        self.inner.time_read(n, source)
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.inner.events_at_halt(n, out)
    }
    fn program_timer(&mut self, n: ExitIndex, program: TimerProgram) {
        self.inner.program_timer(n, program)
    }
    fn pause_at(&self) -> Option<ExitIndex> {
        self.pause.requested().then_some(0)
    }
}

fn spec(kernel: &Path, rate: u64) -> VmSpec {
    VmSpec {
        kernel: kernel.to_path_buf(),
        mem_mib: MEM_MIB,
        disk: None,
        tap: None,
        cmdline: format!("mode=dirty dirty_mib={WORKING_SET_MIB} dirty_rate={rate}"),
        restore: None,
        snapshot_on_exit: None,
        stdin: false,
        bridge: None,
        cpu: Default::default(),
    }
}

/// The guest on its vCPU thread.
struct Guest {
    handle: VmHandle,
    pause: Arc<PausePoint>,
    mem: GuestMemoryMmap,
    counter_gpa: u64,
    thread: JoinHandle<Result<RunOutcome>>,
}

impl Guest {
    /// Pages the guest has written so far, and when that was read.
    fn written(&self) -> Result<(u64, Instant)> {
        let n: u64 = self.mem.read_obj(GuestAddress(self.counter_gpa))?;
        Ok((n, Instant::now()))
    }

    /// Stops the vCPU; it must have been running until then.
    fn stop(self) -> Result<()> {
        self.handle.stop();
        match self.thread.join() {
            Ok(Ok(RunOutcome::Stopped)) => Ok(()),
            Ok(Ok(other)) => bail!("the dirty guest ended on its own: {other:?}"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the vCPU thread panicked"),
        }
    }
}

/// Boots the guest on a thread of its own that serves `pause` between exits.
fn start_guest(kernel: &Path, rate: u64, echo: bool) -> Result<Guest> {
    let pause = Arc::new(PausePoint::default());
    let (sink, lines) = LineSink::new(echo);
    let (tx, rx) = mpsc::channel();
    let (spec, p) = (spec(kernel, rate), Arc::clone(&pause));
    let thread = std::thread::Builder::new()
        .name("bench-dirty-vcpu".into())
        .spawn(move || -> Result<RunOutcome> {
            let mut vm = build_vm(&spec, None, false)?;
            let config = LiveConfig {
                disk: None,
                tap: None,
                console: Box::new(sink),
                stdin: false,
                io_watch: None,
            };
            let mut live = live::start(config, vm.handle().kicker())?;
            let mut inputs = Pausable {
                inner: &mut live.inputs,
                pause: Arc::clone(&p),
            };
            p.attach(vm.handle());
            let _ = tx.send((vm.handle(), vm.memory().clone()));
            let res = loop {
                match vm.run(&mut inputs, &mut live.outputs, None) {
                    // Served, or withdrawn before the vCPU got to it: run on.
                    Ok(RunOutcome::ExitLimit) => {
                        p.serve(&mut vm);
                    }
                    other => break other,
                }
            };
            p.detach();
            Ok(res?)
        })?;
    let Ok((handle, mem)) = rx.recv() else {
        return Err(match thread.join() {
            Ok(Err(e)) => e.context("the dirty guest's VM did not start"),
            _ => anyhow!("the dirty guest's VM did not start"),
        });
    };
    let started = wait_for(&lines, "dirty: working set", Duration::from_secs(60))
        .map_err(|e| anyhow!("dirty guest, rate {rate}: {e}"));
    let guest_line = started.and_then(|l| counter_address(&l.text));
    let counter_gpa = match guest_line {
        Ok(a) => a,
        Err(e) => {
            handle.stop();
            let _ = thread.join();
            return Err(e);
        }
    };
    Ok(Guest {
        handle,
        pause,
        mem,
        counter_gpa,
        thread,
    })
}

/// The counter's address in `dirty: working set .. counter at 0x..`.
pub fn counter_address(line: &str) -> Result<u64> {
    let hex = line
        .rsplit_once("counter at 0x")
        .map(|(_, h)| h.trim())
        .with_context(|| format!("no counter address in {line:?}"))?;
    u64::from_str_radix(hex, 16).with_context(|| format!("bad counter address in {line:?}"))
}

/// Pages per ms between two counter readings.
pub fn rate(a: (u64, Instant), b: (u64, Instant)) -> f64 {
    let ms = b.1.duration_since(a.1).as_secs_f64() * 1e3;
    if ms <= 0.0 {
        return f64::NAN;
    }
    b.0.saturating_sub(a.0) as f64 / ms
}

/// Every rate of `rates`, `runs` times each. Needs `/dev/kvm`: without it this fails.
pub fn run(kernel: &Path, rates: &[u64], runs: usize, echo: bool) -> Result<Vec<LiveRun>> {
    ensure!(
        Path::new("/dev/kvm").exists(),
        "respawn-live: /dev/kvm is missing; this section runs the guest on KVM \
         (--no-respawn-live skips it)"
    );
    let mut out = Vec::new();
    for &r in rates {
        for i in 0..runs {
            eprintln!(
                "ftvmm-bench: respawn live, dirty_rate={r} pages/ms, run {}/{runs}",
                i + 1
            );
            out.push(one_run(kernel, r, echo).with_context(|| format!("respawn live, rate {r}"))?);
        }
    }
    Ok(out)
}

fn one_run(kernel: &Path, rate: u64, echo: bool) -> Result<LiveRun> {
    // The receiver: a VM built the same way, never run (a new Secondary's before the Switch).
    let dst = build_vm(&spec(kernel, rate), None, false)?;
    let memory_bytes = dst.mem_size();
    let guest = start_guest(kernel, rate, echo)?;
    let res = (|| -> Result<LiveRun> {
        let a = guest.written()?;
        std::thread::sleep(WARMUP);
        let b = guest.written()?;
        let out = transfer(&guest.pause, dst, guest.counter_gpa)
            .map_err(|e| anyhow!("transfer failed: {e}"))?;
        // From the transfer's start (right after `b`) to the pause: the dirty log is on.
        let paused = (out.counter_at_pause, out.paused_at);
        Ok(LiveRun {
            rate,
            reached_free: self::rate(a, b),
            reached_precopy: self::rate(b, paused),
            memory_bytes,
            out,
        })
    })();
    let stopped = guest.stop();
    let run = res?;
    stopped?;
    ensure!(
        run.out.sender_sha256 == run.out.receiver_sha256,
        "rate {rate}: the receiver's memory differs from the sender's at the switch"
    );
    Ok(run)
}

#[cfg(test)]
#[path = "respawn_live_tests.rs"]
mod tests;
