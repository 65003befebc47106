//! The transfer of `respawn_live.rs`: the real [`Sender`] and [`Receiver`] machines against each
//! other in this process, driven as `lockstep/respawn/source.rs` drives the sender on a
//! Primary. Pre-copy runs on the calling thread while the guest runs (dirty log started and
//! read on the vCPU thread through the [`PausePoint`], pages read from guest memory here); the
//! stop-and-copy runs on the vCPU thread (last dirty pages, `save_state`, `Switch`, the
//! receiver's restore, `Restored`), so the guest is paused exactly while it runs.
//!
//! Between the two machines there is no channel (`respawn_live_wire.rs`): every message is
//! encoded with the real codec, counted, decoded and handed to the other side at once; the
//! receiver writes into the memory of a second VM built like the first (`target.rs`'s
//! `VmMemory`) and restores it (`target.rs`'s `restore`). Left out against a real respawn: the socket and its encryption, the lockstep
//! log's restart at the Switch (`PrimaryLog::join_secondary`) and the pairing after `Restored`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvmm::lockstep::digest::memory_sha256;
use ftvmm::lockstep::pause::PausePoint;
use ftvmm::lockstep::respawn::source::{event_of, STOP_COPY_BYTES};
use ftvmm::lockstep::respawn::target::VmMemory;
use ftvmm::lockstep::respawn::{SwitchState, PAGE_SIZE};
use ftvmm::lockstep::transfer::message::Message;
use ftvmm::lockstep::transfer::receiver::{Expected, Receiver};
use ftvmm::lockstep::transfer::sender::{
    Action, Event, Sender, SenderConfig, SenderStats, PAUSE_TIMEOUT_MS,
};
use ftvmm::Vm;
use vm_memory::{Bytes, GuestAddress};

use crate::respawn_live_wire::{Io, RoundSent};

/// How long the vCPU may take to reach an exit for a short piece of work (as source.rs).
const VCPU_WAIT: Duration = Duration::from_secs(5);

/// What a finished transfer measured.
pub struct Outcome {
    pub stats: SenderStats,
    pub rounds: Vec<RoundSent>,
    /// Every encoded message from the sender to the receiver.
    pub bytes_sent: u64,
    /// The guest paused: the stop-and-copy closure on the vCPU thread, up to `Restored` and the
    /// dirty log's stop.
    pub pause: Duration,
    /// Where the pause went, in order.
    pub pause_parts: Vec<(&'static str, Duration)>,
    /// From the pause request to the vCPU thread taking it (the guest still runs).
    pub reach_pause: Duration,
    /// `Start` to the end of the pause.
    pub total: Duration,
    /// Pre-copy: from `Start` to the pause request.
    pub precopy: Duration,
    /// Full-memory SHA-256 of the sender (in the pause) and of the receiver (after it).
    pub sender_sha256: String,
    pub receiver_sha256: String,
    /// The guest's pages-written counter (a `u64` at the `counter_gpa` given) when the pause
    /// began, and when that was.
    pub counter_at_pause: u64,
    pub paused_at: Instant,
}

/// Transfers the guest behind `pause` (its vCPU thread serving it) into `dst`, a VM built the
/// same way and not running. Returns the measurements, or why the transfer failed.
pub fn transfer(pause: &Arc<PausePoint>, dst: Vm, counter_gpa: u64) -> Result<Outcome, String> {
    let (mem, memory_bytes) = pause
        .run(VCPU_WAIT, |vm: &mut Vm| {
            (vm.memory().clone(), vm.mem_size())
        })
        .map_err(|e| e.to_string())?;
    let mut cfg = SenderConfig::new(memory_bytes, PAGE_SIZE);
    cfg.stop_copy_bytes = STOP_COPY_BYTES;
    let mut sender = Sender::new(cfg);
    let expected = Expected {
        vm: "bench".into(),
        memory_bytes: dst.mem_size(),
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    let rx = Receiver::new(
        expected,
        VmMemory::new(dst.memory().clone(), dst.mem_size()),
    );
    let mut io = Io::new(rx, dst, memory_bytes);
    let started = Instant::now();
    let now = move || started.elapsed().as_millis() as u64;
    let mut queue = sender.on_event(Event::Start { now_ms: now() });
    let reason = loop {
        let Some(action) = (!queue.is_empty()).then(|| queue.remove(0)) else {
            let ev = match io.wire.recv() {
                Ok(m) => event_of(m),
                Err(detail) => Event::LinkLost { detail },
            };
            queue = sender.on_event(ev);
            queue.extend(sender.on_event(Event::Tick { now_ms: now() }));
            continue;
        };
        match action {
            Action::SendOffer => {
                let offer = Message::Offer {
                    vm: "bench".into(),
                    generation: 1,
                    memory_bytes,
                    page_size: PAGE_SIZE,
                    platform_sha256: [0; 32],
                };
                if let Err(detail) = io.wire.send(&offer) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
            }
            Action::StartDirtyLog => {
                match pause.run(VCPU_WAIT, |vm: &mut Vm| vm.start_dirty_tracking()) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => queue = cancel(&mut sender, format!("dirty log: {e}")),
                    Err(e) => queue = cancel(&mut sender, e.to_string()),
                }
            }
            Action::ReadDirtyLog => {
                match pause.run(VCPU_WAIT, |vm: &mut Vm| vm.dirty_pages_since_last_call()) {
                    Ok(Ok(gfns)) => queue.extend(sender.on_event(Event::DirtyPages(gfns))),
                    Ok(Err(e)) => queue = cancel(&mut sender, format!("dirty log: {e}")),
                    Err(e) => queue = cancel(&mut sender, e.to_string()),
                }
            }
            Action::SendPages { round, gfns } => {
                if let Err(detail) = io.send_pages(&mem, round, &gfns) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
            }
            Action::SendRoundEnd {
                round,
                pages_sent,
                dirty_left,
            } => {
                let m = Message::RoundEnd {
                    round,
                    pages_sent,
                    dirty_left,
                };
                if let Err(detail) = io.wire.send(&m) {
                    queue = sender.on_event(Event::LinkLost { detail });
                }
            }
            Action::PauseVcpus { .. } => {
                let job = StopAndCopy {
                    sender,
                    io,
                    queue: std::mem::take(&mut queue),
                    started,
                    parts: Vec::new(),
                };
                let precopy = started.elapsed();
                let asked = Instant::now();
                let timeout = Duration::from_millis(PAUSE_TIMEOUT_MS) + VCPU_WAIT;
                let done = pause
                    .run(timeout, move |vm: &mut Vm| job.run(vm, asked, counter_gpa))
                    .map_err(|e| format!("stop-and-copy did not run: {e}"));
                if done.is_err() {
                    stop_dirty_log(pause);
                }
                let mut out = done??;
                out.precopy = precopy;
                return Ok(out);
            }
            Action::SendAbort { reason } => {
                let _ = io.wire.send(&Message::Abort { reason });
            }
            Action::Failed { reason } => break reason,
            Action::SendSwitch { .. } | Action::ResumeVcpus | Action::Done => {
                break format!("sender asked for {action:?} before the pause");
            }
        }
    };
    stop_dirty_log(pause);
    Err(reason)
}

fn cancel(sender: &mut Sender, reason: String) -> Vec<Action> {
    sender.on_event(Event::Cancel { reason })
}

fn stop_dirty_log(pause: &PausePoint) {
    let _ = pause.run(VCPU_WAIT, |vm: &mut Vm| vm.stop_dirty_tracking());
}

/// The stop-and-copy, moved onto the vCPU thread (as source.rs's).
struct StopAndCopy {
    sender: Sender,
    io: Io,
    queue: Vec<Action>,
    started: Instant,
    parts: Vec<(&'static str, Duration)>,
}

impl StopAndCopy {
    /// Runs with the guest paused; `asked` is when the pause was requested.
    fn run(mut self, vm: &mut Vm, asked: Instant, counter_gpa: u64) -> Result<Outcome, String> {
        let t0 = Instant::now();
        let counter_at_pause = vm
            .memory()
            .read_obj(GuestAddress(counter_gpa))
            .map_err(|e| format!("cannot read the guest's counter: {e}"))?;
        let res = self.perform(vm, t0);
        let _ = vm.stop_dirty_tracking();
        let pause = t0.elapsed();
        let total = self.started.elapsed();
        res?;
        // Outside the measured pause, the guest still paused: the sender's whole memory as
        // it was switched, for the exactness check only.
        let sender_sha256 = memory_sha256(vm.memory());
        let receiver_sha256 = memory_sha256(self.io.wire.dst.memory());
        let mut last = Duration::ZERO;
        let parts = self
            .parts
            .iter()
            .map(|&(what, at)| {
                let d = at - last;
                last = at;
                (what, d)
            })
            .collect();
        Ok(Outcome {
            stats: self.sender.stats().clone(),
            rounds: self.io.rounds,
            bytes_sent: self.io.wire.bytes_sent,
            pause,
            pause_parts: parts,
            reach_pause: t0 - asked,
            total,
            precopy: Duration::ZERO,
            sender_sha256,
            receiver_sha256,
            counter_at_pause,
            paused_at: t0,
        })
    }

    fn mark(&mut self, what: &'static str, t0: Instant) {
        self.parts.push((what, t0.elapsed()));
    }

    fn perform(&mut self, vm: &mut Vm, t0: Instant) -> Result<(), String> {
        loop {
            let Some(action) = (!self.queue.is_empty()).then(|| self.queue.remove(0)) else {
                let ev = match self.io.wire.recv() {
                    Ok(m) => event_of(m),
                    Err(detail) => Event::LinkLost { detail },
                };
                self.queue = self.sender.on_event(ev);
                let now_ms = self.started.elapsed().as_millis() as u64;
                self.queue
                    .extend(self.sender.on_event(Event::Tick { now_ms }));
                continue;
            };
            match action {
                Action::ReadDirtyLog => match vm.dirty_pages_since_last_call() {
                    Ok(gfns) => {
                        let next = self.sender.on_event(Event::DirtyPages(gfns));
                        self.queue.extend(next);
                    }
                    Err(e) => self.fail(format!("dirty log: {e}")),
                },
                Action::SendPages { round, gfns } => {
                    if let Err(detail) = self.io.send_pages(vm.memory(), round, &gfns) {
                        self.queue = self.sender.on_event(Event::LinkLost { detail });
                    }
                }
                Action::SendSwitch { round } => match self.switch(vm, round, t0) {
                    Ok(memory_sha256) => {
                        let next = self.sender.on_event(Event::SwitchSent { memory_sha256 });
                        self.queue.extend(next);
                    }
                    Err(reason) => self.fail(reason),
                },
                Action::SendAbort { reason } => {
                    let _ = self.io.wire.send(&Message::Abort { reason });
                }
                Action::Done => {
                    self.mark("Switch to Restored (receiver digest check, restore)", t0);
                    return Ok(());
                }
                Action::Failed { reason } => return Err(reason),
                Action::ResumeVcpus | Action::PauseVcpus { .. } => {}
                other => return Err(format!("sender asked for {other:?} while paused")),
            }
        }
    }

    fn fail(&mut self, reason: String) {
        self.queue = self.sender.on_event(Event::Cancel { reason });
    }

    /// The state and the digest of what was sent go out in `Switch`; the receiver restores
    /// its VM from it before it answers.
    fn switch(&mut self, vm: &mut Vm, round: u32, t0: Instant) -> Result<[u8; 32], String> {
        self.mark("final pages", t0);
        let state = vm
            .save_state()
            .map_err(|e| format!("cannot save the VM state: {e}"))?;
        let sw = SwitchState {
            vm: state,
            first_seq: 0,
            last_time: None,
        };
        let state = postcard::to_allocvec(&sw).map_err(|e| format!("cannot encode state: {e}"))?;
        self.mark("save_state + encode", t0);
        let digest = self.io.sent.digest();
        self.mark("page-hash digest", t0);
        self.io.wire.send(&Message::Switch {
            round,
            state,
            memory_sha256: digest,
            log_start_exit: vm.exit_index(),
        })?;
        Ok(digest)
    }
}
