//! [`PrimaryInputs`] and [`PrimaryOutputs`]: the Primary's doors, recording
//! every input into its [`PrimaryLog`] and sending every output through its
//! gate (module docs of `primary`).
//!
//! Rules of the input door:
//! - What the vCPU gets is what was recorded, at the same exit: events are
//!   recorded before they are handed over.
//! - One input call hands over at most one log body of events
//!   ([`log::events_that_fit`]); the rest wait here, in order, for the next
//!   call (events are asynchronous: one taken an exit later is one that
//!   arrived later). A burst of completions therefore never makes a body the
//!   log cannot carry, and a halted vCPU with events waiting here is not made
//!   to wait for new ones.
//! - An input the log refuses (only a single event larger than a whole body
//!   could be: the devices' limits keep them far below) is a fault: one
//!   line, the input is not handed over, nothing more is, and the VM stops.

use std::sync::Arc;

use super::{PrimaryLog, CHECK_EVERY};
use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeRead, TimeSource};
use crate::lockstep::log::{self, Body, LogError};
use crate::lockstep::pause::PausePoint;
use crate::vm::VmHandle;

/// The Primary's input door: live values, recorded.
pub struct PrimaryInputs<I: Inputs> {
    inner: I,
    log: Arc<PrimaryLog>,
    /// A memory digest requested at this exit (see [`Body::MemoryDigest`]).
    pause: Option<ExitIndex>,
    digest_request: Arc<std::sync::atomic::AtomicU64>,
    buf: Vec<InputEvent>,
    /// The exit of the last `Events` record: whether the input call at the
    /// pause returned something decides if the pause needs a `Mark`.
    last_events: Option<ExitIndex>,
    /// Stopped when an input cannot be recorded.
    vm: Option<VmHandle>,
    /// The input that could not be recorded: nothing more is handed over.
    fault: Option<LogError>,
    /// Work another thread wants done on the vCPU thread (respawn).
    pause_point: Option<Arc<PausePoint>>,
}

impl<I: Inputs> PrimaryInputs<I> {
    pub fn new(inner: I, log: Arc<PrimaryLog>) -> Self {
        PrimaryInputs {
            inner,
            log,
            pause: None,
            digest_request: Arc::default(),
            buf: Vec::new(),
            last_events: None,
            vm: None,
            fault: None,
            pause_point: None,
        }
    }

    /// Makes the run return at the next exit whenever `p` has work.
    pub fn with_pause_point(mut self, p: Arc<PausePoint>) -> Self {
        self.pause_point = Some(p);
        self
    }

    /// The VM to stop if an input cannot be recorded.
    pub fn with_vm(mut self, vm: VmHandle) -> Self {
        self.vm = Some(vm);
        self
    }

    /// Why recording failed, if it did (the VM given to [`Self::with_vm`] was
    /// stopped then).
    pub fn fault(&self) -> Option<&LogError> {
        self.fault.as_ref()
    }

    /// Events taken from the live door and not handed over yet.
    pub fn waiting(&self) -> usize {
        self.buf.len()
    }

    /// Set to `d > 0` to have both sides hash guest memory `d` exits from the
    /// next exit (taken once).
    pub fn digest_request(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.digest_request)
    }

    /// Called when the vCPU loop returned at the memory-digest pause: takes
    /// the pause point (so the run can continue after it) and tells the
    /// Secondary how the input call at that exit ended.
    ///
    /// The Secondary stops at the same exit only after its own input call
    /// there returned, and it can only return once it sees a record that
    /// answers it. If our call returned events, their `Events` record is that
    /// answer and nothing more is needed. If it returned nothing, no record
    /// says so until the next input after the pause, which the pause itself
    /// delays: append a `Mark` for that exit. Appending a mark after events
    /// would leave a record for an exit the Secondary has already left, and
    /// it would (rightly) call the next exit a divergence.
    pub fn take_pause(&mut self) -> Option<ExitIndex> {
        let at = self.pause.take()?;
        if self.last_events != Some(at) {
            self.append(at, Body::Mark);
        }
        Some(at)
    }

    pub fn into_inner(self) -> I {
        self.inner
    }

    fn append(&mut self, n: ExitIndex, body: Body) {
        if let Err(e) = self.log.append(n, body) {
            self.failed(n, e);
        }
    }

    /// Recording failed: say so, hand nothing more over, stop the VM.
    fn failed(&mut self, n: ExitIndex, e: LogError) {
        tracing::error!(n, "lockstep: cannot record an input: {e}");
        println!(
            "ftvmm: lockstep: cannot record the input at exit {n}: {e}; \
             stopping the VM (its secondary could not replay it)"
        );
        self.buf.clear();
        self.fault.get_or_insert(e);
        if let Some(vm) = &self.vm {
            vm.stop();
        }
    }

    fn before_events(&mut self, n: ExitIndex) {
        if let Err(e) = self.log.append_output_digest(n) {
            self.failed(n, e);
        }
        let d = self
            .digest_request
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        if d > 0 {
            let at = n + d;
            self.pause = Some(at);
            self.append(n, Body::MemoryDigest { at });
        }
    }

    /// Records and hands over as many waiting events as one body carries.
    fn record(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.buf.is_empty() || self.fault.is_some() {
            return;
        }
        let k = log::events_that_fit(&self.buf);
        match self.log.append_events(n, &self.buf[..k]) {
            Ok(()) => {
                self.last_events = Some(n);
                out.extend(self.buf.drain(..k));
            }
            Err(e) => self.failed(n, e),
        }
    }
}

impl<I: Inputs> Inputs for PrimaryInputs<I> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.fault.is_some() {
            return;
        }
        self.before_events(n);
        self.inner.events_at(n, &mut self.buf);
        self.record(n, out);
        self.log.throttle();
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        if self.fault.is_some() {
            return;
        }
        self.before_events(n);
        if self.buf.is_empty() {
            self.inner.events_at_halt(n, &mut self.buf);
        } else {
            // Events are waiting already: do not wait for more.
            self.inner.events_at(n, &mut self.buf);
        }
        self.record(n, out);
    }
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        let value = self.inner.time_read(n, source);
        self.log.note_time(value);
        self.append(n, Body::Time(TimeRead { source, value }));
        value
    }
    fn program_timer(&mut self, n: ExitIndex, program: crate::io::TimerProgram) {
        self.inner.program_timer(n, program)
    }
    fn check_interval(&self) -> u64 {
        CHECK_EVERY
    }
    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        self.append(n, Body::Check { rip, gpr_hash });
    }
    fn pause_at(&self) -> Option<ExitIndex> {
        if self.pause_point.as_ref().is_some_and(|p| p.requested()) {
            return Some(0);
        }
        self.pause
    }
}

/// The Primary's output door: the Output Rule.
pub struct PrimaryOutputs(pub Arc<PrimaryLog>);

impl Outputs for PrimaryOutputs {
    fn emit(&mut self, n: ExitIndex, event: OutputEvent) {
        self.0.emit(n, event)
    }
}
