//! The checkpoint Secondary's [`Effects`]: the link into staging memory
//! and the take-over when its member wins (module doc of `driver`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, Effects};
use crate::checkpoint::epoch::DiskWrite;
use crate::checkpoint::gate::{EpochGate, GateConfig};
use crate::checkpoint::gated::{FrameOut, GatedOutputs};
use crate::checkpoint::receiver::Receiver;
use crate::checkpoint::remote::{serve, LinkError};
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
    pub frame_out: Option<FrameOut>,
    /// The VM around the staging memory, its backend gated by the outputs.
    pub rebuild: Box<dyn FnOnce(Arc<GatedOutputs>) -> Rebuild + Send>,
    /// The last epoch's unfinished writes, in order, durably.
    pub write_pending: WritePending,
}

/// Writes a take-over's unfinished epoch writes (`secondary::take_over`).
pub type WritePending = Box<dyn FnOnce(&[DiskWrite]) -> Result<(), String> + Send>;

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
    receiver: Option<Receiver<Staging>>,
    plan: Option<TakeOverPlan>,
    live: Arc<Mutex<Option<Live>>>,
    ticker: Option<JoinHandle<()>>,
}

impl SecondaryEffects {
    /// Serves `ch` (read timeout set) into staging memory of `mem_size`
    /// bytes for the pair in `generation`.
    pub fn start(
        vm: &str,
        ch: Channel,
        generation: u64,
        mem_size: u64,
        plan: TakeOverPlan,
        events: Sender<Event>,
    ) -> Result<Self, crate::linux::LinuxVmError> {
        let mut r = Receiver::new(generation, Staging::new(mem_size)?, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let applied_at = Arc::new(Mutex::new(Instant::now()));
        let serve = {
            let (stop, at) = (Arc::clone(&stop), Arc::clone(&applied_at));
            std::thread::Builder::new()
                .name(format!("ckpt-serve-{vm}"))
                .spawn(move || {
                    let (mut tx, mut rx) = ch.split();
                    let end = serve(&mut tx, &mut rx, &mut r, &stop, |_| {
                        *lock(&at) = Instant::now()
                    });
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
            receiver: None,
            plan: Some(plan),
            live: Arc::default(),
            ticker: None,
        })
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
        let mut rebuild = (plan.rebuild)(Arc::clone(&outputs));
        rebuild.advance_ns = lock(&self.applied_at).elapsed().as_nanos() as u64;
        let (running, epoch) = secondary::take_over(r.take_over(), rebuild, plan.write_pending)
            .map_err(|e| e.to_string())?;
        let running = Arc::new(running);
        let (o, rn, every) = (Arc::clone(&outputs), Arc::clone(&running), plan.epoch);
        self.ticker = Some(
            std::thread::Builder::new()
                .name(format!("ckpt-solo-{}", self.vm))
                .spawn(move || {
                    while rn.ended().is_none() && !o.failed() {
                        std::thread::sleep(every);
                        o.close_epoch();
                    }
                })
                .map_err(|e| e.to_string())?,
        );
        Ok(Live {
            running,
            outputs,
            epoch,
        })
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
        tracing::info!("checkpoint: closing the link to the Primary: {reason}");
        self.stop.store(true, Ordering::SeqCst);
    }

    fn resign(&mut self, _reason: &str) {}

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
        match &self.serve {
            Some(h) if !h.is_finished() => lock(&self.applied_at).elapsed().as_millis() as u64,
            _ => 0,
        }
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
        false
    }
}

impl Drop for SecondaryEffects {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.serve.take() {
            let _ = h.join();
        }
        if let Some(l) = lock(&self.live).take() {
            l.outputs.halt();
            l.running.stop();
            let _ = l.running.wait();
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
