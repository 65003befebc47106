//! The checkpoint Secondary's [`Effects`]: the link into staging memory
//! (with its keep-alive thread, `keepalive.rs`: the Primary hears this
//! process every `KEEPALIVE` while it applies a large epoch) and the
//! take-over when its member wins (module doc of `driver`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, Effects, JoinPort, PrimaryEffects};
use crate::checkpoint::epoch::DiskWrite;
use crate::checkpoint::gate::{EpochGate, GateConfig};
use crate::checkpoint::gated::{FrameOut, GatedOutputs};
use crate::checkpoint::keepalive::AliveLink;
use crate::checkpoint::late_fence::{LateWriteFence, LATE_WRITE_BOUND_MS};
use crate::checkpoint::primary::LoopConfig;
use crate::checkpoint::receiver::Receiver;
use crate::checkpoint::remote::{serve_heard, LinkError};
use crate::checkpoint::secondary::{self, Rebuild, Staging};
use crate::linux::machine::Running;
use crate::lockstep::channel::Channel;
use crate::lockstep::grant::HostGrant;
use crate::lockstep::member::{Event, Gate};

/// How a Secondary resumes the VM when it wins.
pub struct TakeOverPlan {
    pub grant: Arc<HostGrant>,
    pub gate: GateConfig,
    /// How often the lone Primary's gate closes an epoch (releases).
    pub epoch: Duration,
    /// The resumed Primary's delta cache, bytes (`delta_base.rs`).
    pub delta_bytes: usize,
    pub frame_out: Option<FrameOut>,
    /// The VM around the staging memory, its backend gated by the outputs
    /// (`Err`: its devices could not be opened; it stays stopped).
    pub rebuild: Box<dyn FnOnce(Arc<GatedOutputs>) -> Result<Rebuild, String> + Send>,
    /// Frames the resumed VM announces itself with (gratuitous ARPs), sent
    /// with the re-written writes' epoch.
    pub announce: Vec<Vec<u8>>,
    /// Whether fencing cut the old Primary's host off at the storage when
    /// it decided `generation` for this host (`Acquired::storage_cut`):
    /// then the take-over needs no late-write fence.
    pub storage_cut: StorageCut,
}

/// Fencing's `storage_cut` for a generation this host won.
pub type StorageCut = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// The VM a Secondary resumed.
pub struct Live {
    pub running: Arc<Running>,
    pub outputs: Arc<GatedOutputs>,
    /// The epoch it resumed from.
    pub epoch: u64,
}

type Served = (Receiver<Staging>, LinkError);

/// A checkpoint Secondary's link, staging memory and take-over.
pub struct SecondaryEffects {
    vm: String,
    serve: Option<JoinHandle<Served>>,
    stop: Arc<AtomicBool>,
    applied_at: Arc<Mutex<Instant>>,
    /// When the Primary last sent anything (its silence, for the member).
    heard: Arc<Mutex<Instant>>,
    /// Since when the serve loop is taking a message in (applying an
    /// epoch): it reads nothing meanwhile (`remote::serve_heard`).
    busy: Arc<Mutex<Option<Instant>>>,
    /// The link's authentic frames so far, and when that count last
    /// moved: a frame of a message still arriving (a 1 MiB piece takes a
    /// second on a slow FT network) is heard too.
    frames: Arc<AtomicU64>,
    frames_seen: Mutex<(u64, Instant)>,
    /// The last complete epoch applied (status).
    applied: Arc<AtomicU64>,
    receiver: Option<Receiver<Staging>>,
    plan: Option<TakeOverPlan>,
    live: Arc<Mutex<Option<Live>>>,
    /// The resumed VM's epoch loop, once it took over: it runs as a lone
    /// Primary, and a respawned Secondary joins through it.
    primary: Option<PrimaryEffects>,
    /// Where the respawn keeper finds that loop (`respawn.rs`).
    port: Arc<Mutex<Option<JoinPort>>>,
    events: Sender<Event>,
}

impl SecondaryEffects {
    /// Serves `ch` (read timeout set) into `r`'s staging memory: a fresh
    /// receiver at power-on, or one a join filled with its full epoch.
    pub fn start(
        vm: &str,
        ch: Channel,
        r: Receiver<Staging>,
        plan: TakeOverPlan,
        events: Sender<Event>,
    ) -> Result<Self, crate::linux::LinuxVmError> {
        Self::start_on(vm, AliveLink::start(ch, "ckpt-alive"), r, plan, events)
    }

    /// [`SecondaryEffects::start`] on a link whose keep-alive thread runs
    /// already (a join's, `respawn.rs`: the Primary keeps hearing this
    /// host across the hand-over from the join to the Secondary).
    pub fn start_on(
        vm: &str,
        link: AliveLink,
        mut r: Receiver<Staging>,
        plan: TakeOverPlan,
        events: Sender<Event>,
    ) -> Result<Self, crate::linux::LinuxVmError> {
        let first = r.last();
        let frames = link.rx.frame_counter();
        let member_events = events.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let applied_at = Arc::new(Mutex::new(Instant::now()));
        let heard = Arc::new(Mutex::new(Instant::now()));
        let busy = Arc::new(Mutex::new(None));
        let applied = Arc::new(AtomicU64::new(first));
        let serve = {
            let (stop, at) = (Arc::clone(&stop), Arc::clone(&applied_at));
            let (h, b) = (Arc::clone(&heard), Arc::clone(&busy));
            let last = Arc::clone(&applied);
            std::thread::Builder::new()
                .name(format!("ckpt-serve-{vm}"))
                .spawn(move || {
                    let mut link = link;
                    let applied = |e| {
                        *lock(&at) = Instant::now();
                        last.store(e, Ordering::SeqCst);
                    };
                    let heard = || *lock(&h) = Instant::now();
                    let end = serve_heard(
                        &link.tx,
                        &mut link.rx,
                        &mut r,
                        (&stop, &link.progress),
                        applied,
                        (heard, &*b),
                    );
                    // Stops the keep-alive thread.
                    drop(link);
                    let ev = match &end {
                        LinkError::Bye { .. } => Some(Event::PrimaryEnded),
                        LinkError::Resigned { reason } => Some(Event::PeerResigned {
                            why: format!("the Primary resigned: {reason}"),
                        }),
                        LinkError::Stopped => None,
                        e => Some(Event::ChannelLost {
                            why: format!("epoch link: {e}"),
                        }),
                    };
                    if let Some(ev) = ev {
                        let _ = events.send(ev);
                    }
                    (r, end)
                })
                .map_err(crate::linux::LinuxVmError::Thread)?
        };
        Ok(SecondaryEffects {
            vm: vm.to_string(),
            serve: Some(serve),
            stop,
            applied_at,
            heard,
            busy,
            frames,
            frames_seen: Mutex::new((0, Instant::now())),
            applied,
            receiver: None,
            plan: Some(plan),
            live: Arc::default(),
            primary: None,
            port: Arc::default(),
            events: member_events,
        })
    }

    /// When the Primary was last heard (tests sample the silence the
    /// member sees).
    #[cfg(test)]
    pub(crate) fn heard(&self) -> Arc<Mutex<Instant>> {
        Arc::clone(&self.heard)
    }

    /// Where the respawn keeper finds the resumed VM's epoch loop.
    pub fn join_port(&self) -> Arc<Mutex<Option<JoinPort>>> {
        Arc::clone(&self.port)
    }

    /// The last complete epoch applied here (status).
    pub fn applied(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.applied)
    }

    /// Where the resumed VM appears (status, tests).
    pub fn live(&self) -> Arc<Mutex<Option<Live>>> {
        Arc::clone(&self.live)
    }

    fn take_over(&mut self, generation: u64) -> Result<Live, String> {
        let r = self.receiver.take().ok_or("no staging memory left")?;
        let plan = self.plan.take().ok_or("already taken over")?;
        // Held until the member opens it in `generation` (or later, if its
        // grant was away when it won).
        let outputs = GatedOutputs::with_grant(
            EpochGate::new(plan.gate, generation - 1),
            plan.frame_out,
            plan.grant,
            true,
        );
        let mut rebuild = (plan.rebuild)(Arc::clone(&outputs))?;
        rebuild.advance_ns = lock(&self.applied_at).elapsed().as_nanos() as u64;
        let storage_cut = (plan.storage_cut)(generation);
        let (o, vm) = (Arc::clone(&outputs), self.vm.clone());
        let announce = plan.announce;
        let reissue = |w: &[DiskWrite]| {
            reissue_with_fence(&vm, &o, w, &announce, storage_cut);
            Ok(())
        };
        let (running, epoch) =
            secondary::take_over(r.take_over(), rebuild, reissue).map_err(|e| e.to_string())?;
        let running = Arc::new(running);
        // The resumed VM runs the Primary's epoch loop, alone: its epochs
        // close for the gate, and a respawned Secondary joins through it.
        let cfg = LoopConfig {
            epoch: plan.epoch,
            first_full: false,
            dirty: Default::default(),
            delta_bytes: plan.delta_bytes,
        };
        let p = PrimaryEffects::start_alone(
            &format!("ftvmm: vm {}: ", self.vm),
            Arc::clone(&running),
            Arc::clone(&outputs),
            cfg,
            self.events.clone(),
        )
        .map_err(|e| format!("cannot start the epoch loop: {e}"))?;
        *lock(&self.port) = Some(p.join_port());
        self.primary = Some(p);
        Ok(Live {
            running,
            outputs,
            epoch,
        })
    }
}

/// The unfinished writes go out first, through the new gate, and later
/// overlapping writes wait for the old Primary's (`late_fence.rs`), as
/// lockstep's go-live does with its re-issued requests.
fn reissue_with_fence(
    vm: &str,
    outputs: &GatedOutputs,
    writes: &[DiskWrite],
    announce: &[Vec<u8>],
    storage_cut: bool,
) {
    let epoch = outputs.reissue(writes, announce);
    match LateWriteFence::after_take_over(writes, epoch, storage_cut) {
        Some(f) => {
            println!(
                "ftvmm: vm {vm}: {} re-written write(s); later writes to their sectors wait {LATE_WRITE_BOUND_MS} ms",
                f.ranges().len()
            );
            outputs.set_fence(f);
        }
        None if !writes.is_empty() => println!(
            "ftvmm: vm {vm}: {} re-written write(s) need no wait: the old Primary's host is cut off at the storage",
            writes.len()
        ),
        None => {}
    }
}

impl Effects for SecondaryEffects {
    fn set_gate(&mut self, gate: Gate, generation: u64) {
        if let Some(l) = lock(&self.live).as_ref() {
            if let Err(e) = l.outputs.set_member_gate(gate, generation) {
                tracing::warn!("checkpoint: gate {gate:?} in generation {generation}: {e}");
            }
        }
    }

    fn stop_vcpu(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(l) = lock(&self.live).as_ref() {
            l.outputs.halt();
            l.running.stop();
        }
    }

    fn close_link(&mut self, reason: &str) {
        if let Some(p) = &mut self.primary {
            return p.close_link(reason);
        }
        tracing::info!("checkpoint: closing the link to the Primary: {reason}");
        self.stop.store(true, Ordering::SeqCst);
    }

    fn resign(&mut self, reason: &str) {
        if let Some(p) = &mut self.primary {
            p.resign(reason);
        }
    }

    fn grant_back(&mut self) {
        if let Some(l) = lock(&self.live).as_ref() {
            l.outputs.kick();
        }
    }

    fn go_live(&mut self, generation: u64, at: u64) {
        let t = Instant::now();
        match self.take_over(generation) {
            Ok(live) => {
                println!(
                    "ftvmm: vm {}: resumed from epoch {} (member at {at}) in generation {generation} in {} ms",
                    self.vm,
                    live.epoch,
                    t.elapsed().as_millis()
                );
                *lock(&self.live) = Some(live);
            }
            Err(e) => println!(
                "ftvmm: vm {}: won generation {generation} but could not resume from epoch {at}: {e}; it stays stopped",
                self.vm
            ),
        }
    }

    fn silent_ms(&self) -> u64 {
        if let Some(p) = &self.primary {
            // A respawned Secondary's silence, once one joined.
            return p.silent_ms();
        }
        match &self.serve {
            // Any message, not only a whole epoch: the first one is all of
            // guest memory and may take longer than the failure timeout;
            // and any authentic frame, also inside a message.
            Some(h) if !h.is_finished() => {
                let by_message = lock(&self.heard).elapsed();
                let frames = self.frames.load(Ordering::Relaxed);
                let mut seen = lock(&self.frames_seen);
                if seen.0 != frames {
                    *seen = (frames, Instant::now());
                }
                let silent = by_message.min(seen.1.elapsed());
                // While this side applies an epoch it reads nothing: what
                // the Primary sends meanwhile waits in the socket. Its
                // silence stands still until this side listens again (a
                // 32 MiB boot-time epoch took over a second to apply on a
                // QEMU host, and its Secondary took a live Primary for
                // silent under a 1 s failure timeout).
                let deaf = lock(&self.busy).map_or(Duration::ZERO, |t| t.elapsed());
                silent.saturating_sub(deaf).as_millis() as u64
            }
            _ => 0,
        }
    }

    fn unacked(&self) -> (u64, u64) {
        // A respawned Secondary's acks, once one joined the resumed VM.
        self.primary.as_ref().map_or((0, 0), |p| p.unacked())
    }

    fn drained(&mut self) -> Option<u64> {
        if self.serve.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.serve.take()?;
            match h.join() {
                Ok((r, _)) => self.receiver = Some(r),
                Err(_) => tracing::error!("checkpoint: the epoch link thread panicked"),
            }
        }
        self.receiver.as_ref().map(Receiver::last)
    }

    fn all_acked(&self) -> bool {
        self.primary.as_ref().is_some_and(|p| p.all_acked())
    }
}

impl Drop for SecondaryEffects {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.serve.take() {
            let _ = h.join();
        }
        lock(&self.port).take();
        // Stops the VM and its epoch loop and link first.
        drop(self.primary.take());
        if let Some(l) = lock(&self.live).take() {
            l.outputs.halt();
            l.running.stop();
            let _ = l.running.wait();
        }
    }
}
