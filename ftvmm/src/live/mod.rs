//! Live backends behind the [`Inputs`]/[`Outputs`] doors, without replication:
//! a timer thread at PIT channel 0's programmed rate, a TAP reader thread, a
//! disk I/O thread, optional console stdin, and the real sinks for frames,
//! block requests and console bytes.
//!
//! Producer threads push events into one [`EventQueue`] and kick the vCPU
//! thread; the vCPU loop takes them only at deterministic exits
//! (`events_at(n)`), so a kick merely makes `KVM_RUN` return early.
//!
//! The Outputs door is where the Output Rule lets an output go: frames and
//! console bytes leave at once; a block request is stamped there on
//! `CLOCK_BOOTTIME` ([`Released`]) and the disk thread judges its age by that
//! stamp (`late_write` rule 1). Once the VM's [`late_write::DiskGuard`]
//! stopped (this host must not act for the VM any more), the door drops every
//! output.

pub mod disk;
pub mod disk_queue;
mod disk_thread;
pub mod late_write;
pub mod tap;
#[cfg(test)]
mod tests_disk;
mod timer;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use config_schema::clock::BootInstant;

use crate::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource, TimerProgram};
use crate::kick::Kicker;

pub use disk::{DiskBackend, DiskError, DiskSpec};
pub use disk_queue::Released;
pub use late_write::DiskGuard;
pub use tap::{Tap, TapError};

/// How long a halted vCPU waits before re-checking for a stop request.
const HALT_POLL: Duration = Duration::from_millis(50);

/// Host monotonic clock in ns (`CLOCK_MONOTONIC`: one base for every process
/// on this host, so PIT load times survive a snapshot/restore on the host).
/// The guest's time source, not a safety timer: those run on
/// `CLOCK_BOOTTIME` ([`BootInstant`]).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Events produced by backend threads, waiting for the next deterministic exit.
pub struct EventQueue {
    q: Mutex<VecDeque<InputEvent>>,
    cv: Condvar,
    /// A tick is queued and not yet taken: further ticks coalesce into it (as
    /// a real PIC's IRR bit would).
    tick_pending: AtomicBool,
    kicker: Arc<Kicker>,
}

impl EventQueue {
    pub fn new(kicker: Arc<Kicker>) -> Arc<Self> {
        Arc::new(EventQueue {
            q: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            tick_pending: AtomicBool::new(false),
            kicker,
        })
    }

    /// Queues an event and wakes the vCPU thread.
    pub fn push(&self, ev: InputEvent) {
        if ev == InputEvent::TimerTick && self.tick_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        self.q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ev);
        self.cv.notify_all();
        self.kicker.kick();
    }

    fn drain(&self, q: &mut VecDeque<InputEvent>, out: &mut Vec<InputEvent>) {
        if q.is_empty() {
            return;
        }
        self.tick_pending.store(false, Ordering::Release);
        out.extend(q.drain(..));
    }

    fn take(&self, out: &mut Vec<InputEvent>) {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        self.drain(&mut q, out);
    }

    fn wait_take(&self, timeout: Duration, out: &mut Vec<InputEvent>) {
        let q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let (mut q, _) = self
            .cv
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        self.drain(&mut q, out);
    }

    /// Wakes a halted waiter without an event (stop requests).
    pub fn wake(&self) {
        self.cv.notify_all();
    }
}

/// The live input door.
pub struct LiveInputs {
    queue: Arc<EventQueue>,
    timer: timer::TimerHandle,
}

impl Inputs for LiveInputs {
    fn events_at(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.queue.take(out);
    }
    fn time_read(&mut self, _n: ExitIndex, source: TimeSource) -> u64 {
        match source {
            TimeSource::MonotonicNs => monotonic_ns(),
        }
    }
    fn events_at_halt(&mut self, _n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.queue.wait_take(HALT_POLL, out);
    }
    fn program_timer(&mut self, _n: ExitIndex, program: TimerProgram) {
        self.timer.program(program);
    }
}

/// Where console output goes.
pub type ConsoleSink = Box<dyn Write + Send>;

/// The live output door.
pub struct LiveOutputs {
    disk: Option<Sender<Released>>,
    guard: Arc<DiskGuard>,
    tap: Option<Arc<Tap>>,
    console: ConsoleSink,
    /// Frames that could not be written (TAP down, buffer full).
    pub tx_errors: u64,
    /// Outputs dropped because this host stopped acting for the VM.
    pub dropped: u64,
}

impl Outputs for LiveOutputs {
    fn emit(&mut self, _n: ExitIndex, event: OutputEvent) {
        if self.guard.is_stopped() {
            if self.dropped == 0 {
                tracing::warn!(
                    reason = self.guard.stop_reason().unwrap_or_default(),
                    "this host stopped acting for the VM: its outputs are dropped"
                );
            }
            self.dropped += 1;
            return;
        }
        match event {
            OutputEvent::Console(bytes) => {
                if let Err(e) = self
                    .console
                    .write_all(&bytes)
                    .and_then(|_| self.console.flush())
                {
                    tracing::debug!("console write failed: {e}");
                }
            }
            OutputEvent::Frame { data, .. } => match &self.tap {
                Some(tap) => {
                    if let Err(e) = tap.send(&data) {
                        self.tx_errors += 1;
                        tracing::debug!("tap write failed: {e}");
                    }
                }
                None => self.tx_errors += 1,
            },
            OutputEvent::Block(req) => match &self.disk {
                Some(tx) => {
                    let at = BootInstant::now();
                    if tx.send(Released { at, req }).is_err() {
                        tracing::error!("disk thread is gone; block request dropped");
                    }
                }
                None => tracing::warn!(dev = req.dev, "block request for a VM without disk"),
            },
        }
    }
}

/// What the live backends are built from.
pub struct LiveConfig {
    pub disk: Option<DiskBackend>,
    pub tap: Option<Tap>,
    pub console: ConsoleSink,
    /// Forward the process's stdin to COM1.
    pub stdin: bool,
    /// Bound the age of disk requests (`late_write` rule 1): a write that
    /// waited too long is not submitted, a request in flight too long is
    /// watched; either makes ftvmm ask the fencing daemon at this socket to
    /// reset the host. `None`: no bound (tests, unprotected runs without
    /// fencing); a storage refusal still stops the disk and the outputs.
    pub io_watch: Option<IoWatch>,
}

/// Who to tell when a disk request is stuck.
#[derive(Debug, Clone)]
pub struct IoWatch {
    pub vm: String,
    pub fencing_socket: std::path::PathBuf,
}

/// The backend threads; dropping it stops them (except a stdin reader blocked
/// in `read`, which is left detached).
pub struct Backends {
    stop: Arc<AtomicBool>,
    queue: Arc<EventQueue>,
    threads: Vec<JoinHandle<()>>,
    /// The disk thread, joined only once it returned: one stuck on dead
    /// storage is left detached (the I/O watch bounds its age).
    disk: Option<JoinHandle<()>>,
    guard: Arc<DiskGuard>,
    timer: Option<timer::TimerHandle>,
}

impl Backends {
    /// Events queue shared with the threads (e.g. to inject from elsewhere).
    pub fn queue(&self) -> Arc<EventQueue> {
        Arc::clone(&self.queue)
    }

    /// The VM's disk guard (whether this host stopped acting for the VM).
    pub fn guard(&self) -> Arc<DiskGuard> {
        Arc::clone(&self.guard)
    }

    /// Runs `f` once when this host must stop acting for the VM (a write
    /// too old to submit, a request stuck in flight, the storage refusing
    /// this host): e.g. stop the vCPU. At once if that already happened.
    pub fn on_reset_requested(&self, f: impl FnOnce() + Send + 'static) {
        self.guard.on_reset(Box::new(f));
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.timer.take() {
            t.shutdown();
        }
        self.queue.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.disk.take() {
            // The doors went first: the thread serves what is queued and returns.
            let until = BootInstant::now() + DISK_DRAIN;
            while !t.is_finished() && BootInstant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(
                    in_flight = self.guard.in_flight(),
                    "disk requests still in flight; leaving the disk thread detached"
                );
            }
        }
    }
}

/// How long stopping the backends waits for in-flight disk requests.
const DISK_DRAIN: Duration = Duration::from_secs(2);

/// The two doors and their threads. Field order is drop order: the doors go
/// first (closing the disk request channel), then the threads are joined.
pub struct Live {
    pub inputs: LiveInputs,
    pub outputs: LiveOutputs,
    pub backends: Backends,
}

/// Starts the backend threads for one VM whose vCPU is kicked through `kicker`.
pub fn start(cfg: LiveConfig, kicker: Arc<Kicker>) -> std::io::Result<Live> {
    let stop = Arc::new(AtomicBool::new(false));
    let queue = EventQueue::new(kicker);
    let mut threads = Vec::new();

    let (timer, timer_thread) = timer::spawn(Arc::clone(&queue))?;
    threads.push(timer_thread);

    let guard = match &cfg.io_watch {
        Some(w) => DiskGuard::new(Some(&w.vm), Some(w.fencing_socket.clone())),
        None => DiskGuard::new(None, None),
    };
    let mut disk_thread = None;
    let disk_tx = match cfg.disk {
        Some(disk) => {
            let (tx, rx) = mpsc::channel::<Released>();
            let (q, g) = (Arc::clone(&queue), Arc::clone(&guard));
            disk_thread = Some(
                std::thread::Builder::new()
                    .name("ftvmm-disk".into())
                    .spawn(move || disk_thread::serve(disk, rx, g, |ev| q.push(ev)))?,
            );
            if cfg.io_watch.is_some() {
                // Detached: it returns once the disk thread did with nothing
                // in flight, or after asking for the reset.
                late_write::spawn_io_watch(Arc::clone(&guard))?;
            }
            Some(tx)
        }
        None => None,
    };

    let tap = match cfg.tap {
        Some(tap) => {
            let tap = Arc::new(tap);
            let (t, q, s) = (Arc::clone(&tap), Arc::clone(&queue), Arc::clone(&stop));
            threads.push(std::thread::Builder::new().name("ftvmm-tap".into()).spawn(
                move || t.receive_loop(&s, |data| q.push(InputEvent::Frame { dev: 0, data })),
            )?);
            Some(tap)
        }
        None => None,
    };

    if cfg.stdin {
        let q = Arc::clone(&queue);
        let s = Arc::clone(&stop);
        // Detached: a blocking stdin read cannot be interrupted portably.
        std::thread::Builder::new()
            .name("ftvmm-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                while !s.load(Ordering::Relaxed) {
                    match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => q.push(InputEvent::ConsoleIn(buf[..k].to_vec())),
                    }
                }
            })?;
    }

    let inputs = LiveInputs {
        queue: Arc::clone(&queue),
        timer: timer.clone(),
    };
    let outputs = LiveOutputs {
        disk: disk_tx,
        guard: Arc::clone(&guard),
        tap,
        console: cfg.console,
        tx_errors: 0,
        dropped: 0,
    };
    let backends = Backends {
        stop,
        queue,
        threads,
        disk: disk_thread,
        guard,
        timer: Some(timer),
    };
    Ok(Live {
        inputs,
        outputs,
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_coalesce_until_taken_and_other_events_keep_order() {
        let q = EventQueue::new(Arc::new(Kicker::new()));
        q.push(InputEvent::TimerTick);
        q.push(InputEvent::ConsoleIn(b"a".to_vec()));
        q.push(InputEvent::TimerTick);
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(
            out,
            vec![InputEvent::TimerTick, InputEvent::ConsoleIn(b"a".to_vec())]
        );
        q.push(InputEvent::TimerTick);
        out.clear();
        q.take(&mut out);
        assert_eq!(
            out,
            vec![InputEvent::TimerTick],
            "a new tick after the last was taken"
        );
    }

    #[test]
    fn programmed_timer_produces_ticks_and_off_stops_them() {
        let q = EventQueue::new(Arc::new(Kicker::new()));
        let (t, thread) = timer::spawn(Arc::clone(&q)).unwrap();
        t.program(TimerProgram::Periodic {
            period_ns: 1_000_000,
        });
        let mut out = Vec::new();
        // Generous bound: this only checks that ticks come at all.
        for _ in 0..200 {
            q.wait_take(Duration::from_millis(50), &mut out);
            if !out.is_empty() {
                break;
            }
        }
        assert_eq!(out.first(), Some(&InputEvent::TimerTick));
        t.shutdown();
        thread.join().unwrap();
    }

    #[test]
    fn halted_wait_returns_empty_after_its_bound() {
        let q = EventQueue::new(Arc::new(Kicker::new()));
        let mut out = Vec::new();
        q.wait_take(Duration::from_millis(1), &mut out);
        assert!(out.is_empty());
    }
}
