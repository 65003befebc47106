//! The checkpoint Primary's [`Effects`]: its VM, the epoch loop over the
//! link and the ack thread (module doc of `driver`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// At most this long between two console summaries of the epochs.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

use super::{lock, Effects};
use crate::checkpoint::gated::GatedOutputs;
use crate::checkpoint::local::Summary;
use crate::checkpoint::primary::{self, EpochLoopError, EpochSink, LoopConfig};
use crate::linux::machine::Running;
use crate::lockstep::channel::{Channel, ChannelError, ChannelSender, Message};
use crate::lockstep::member::{Event, Gate};

/// The Primary's end of the link: the epoch sender, the ack thread's stop,
/// when the Secondary was last heard.
struct PrimaryLink {
    tx: Mutex<Option<ChannelSender>>,
    stop: AtomicBool,
    heard: Mutex<Instant>,
    events: Mutex<Sender<Event>>,
}

impl PrimaryLink {
    /// The link is gone (`why`): close it, tell the member once.
    fn lost(&self, why: String) {
        if let Some(tx) = lock(&self.tx).take() {
            tx.shutdown();
            let _ = lock(&self.events).send(Event::ChannelLost { why });
        }
    }

    fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = lock(&self.tx).take() {
            tx.shutdown();
        }
    }
}

/// Epochs into the link while there is one; without one (the member runs
/// alone, or races) an epoch is only closed, for the gate.
struct LinkSink(Arc<PrimaryLink>);

impl EpochSink for LinkSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        let mut tx = lock(&self.0.tx);
        let Some(t) = tx.as_mut() else {
            return Ok(());
        };
        if let Err(e) = t.send(&Message::EpochPiece { bytes: piece }) {
            let why = format!("sending an epoch to {}: {e}", t.peer());
            drop(tx);
            self.0.lost(why);
        }
        Ok(())
    }
}

/// A checkpoint Primary's VM, epochs and link (module doc).
pub struct PrimaryEffects {
    running: Arc<Running>,
    outputs: Arc<GatedOutputs>,
    link: Arc<PrimaryLink>,
    epochs_stop: Arc<AtomicBool>,
    /// The epoch loop ended: no epoch closes any more.
    epochs_done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PrimaryEffects {
    /// Starts the epoch loop and the ack thread for `running`, whose
    /// backend is gated by `outputs`, over `ch` (read timeout set). The
    /// epochs are summed up on the console under `label` (e.g. `ftvmm: vm
    /// web: `) at epoch 1 and then every 10 s or 100 epochs.
    pub fn start(
        label: &str,
        running: Arc<Running>,
        outputs: Arc<GatedOutputs>,
        ch: Channel,
        cfg: LoopConfig,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        Self::start_with(label, running, outputs, Some(ch), cfg, events)
    }

    /// A Primary running alone (no Secondary could be paired at power-on,
    /// or the VM's rule allows one host): epochs only close, for the gate,
    /// which the member opens in the generation won (start the gate in the
    /// one before, as a take-over does).
    pub fn start_alone(
        label: &str,
        running: Arc<Running>,
        outputs: Arc<GatedOutputs>,
        cfg: LoopConfig,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        Self::start_with(label, running, outputs, None, cfg, events)
    }

    fn start_with(
        label: &str,
        running: Arc<Running>,
        outputs: Arc<GatedOutputs>,
        ch: Option<Channel>,
        cfg: LoopConfig,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = match ch.map(Channel::split) {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let link = Arc::new(PrimaryLink {
            tx: Mutex::new(tx),
            stop: AtomicBool::new(false),
            heard: Mutex::new(Instant::now()),
            events: Mutex::new(events),
        });
        let mut threads = Vec::new();
        if let Some(mut rx) = rx {
            let (link, outputs) = (Arc::clone(&link), Arc::clone(&outputs));
            threads.push(std::thread::Builder::new().name("ckpt-acks".into()).spawn(
                move || {
                    if let Some(why) = read_acks(&mut rx, &outputs, &link) {
                        link.lost(why);
                    }
                },
            )?);
        }
        let epochs_stop = Arc::new(AtomicBool::new(false));
        let epochs_done = Arc::new(AtomicBool::new(false));
        let epochs = {
            let (running, outputs) = (Arc::clone(&running), Arc::clone(&outputs));
            let (stop, mut sink) = (Arc::clone(&epochs_stop), LinkSink(Arc::clone(&link)));
            let (done, link) = (Arc::clone(&epochs_done), Arc::clone(&link));
            let mut summary = Summary::every(label.to_owned(), SUMMARY_EVERY);
            std::thread::Builder::new()
                .name("ckpt-epochs".into())
                .spawn(move || {
                    let end = primary::run_epochs(&running, &outputs, &mut sink, cfg, &stop, |e| {
                        summary.add(e)
                    });
                    done.store(true, Ordering::SeqCst);
                    on_epochs_end(end, &outputs, &link, &running);
                })?
        };
        Ok(PrimaryEffects {
            running,
            outputs,
            link,
            epochs_stop,
            epochs_done,
            threads: {
                threads.push(epochs);
                threads
            },
        })
    }
}

/// The epoch loop ended. The member stopped the VM (it halted the outputs
/// first) or told it to stop: nothing to do. The guest ended on its own: an
/// orderly end, `Bye` to the Secondary (which halts without racing), and the
/// member stops. The loop failed: the VM stops and the member with it; the
/// link closes without `Bye`, so the Secondary races and resumes from its
/// last complete epoch.
fn on_epochs_end(
    end: Result<(), EpochLoopError>,
    outputs: &GatedOutputs,
    link: &PrimaryLink,
    running: &Running,
) {
    if outputs.failed() {
        return;
    }
    match end {
        Ok(()) => return,
        Err(EpochLoopError::VmEnded) => {
            let reason = format!(
                "the Primary's guest ended: {}",
                running.ended().map_or("?".to_string(), |e| e.to_string())
            );
            link.stop.store(true, Ordering::SeqCst);
            if let Some(mut tx) = lock(&link.tx).take() {
                let _ = tx.send_last(&Message::Bye { reason });
                tx.shutdown();
            }
        }
        Err(e) => {
            println!("ftvmm: checkpoint epoch loop ended: {e}; the VM stops");
            outputs.halt();
            running.stop();
            link.close();
        }
    }
    let _ = lock(&link.events).send(Event::Stop);
}

/// Acks into the gate until the link ends (`Some(why)`) or is closed here.
fn read_acks(
    rx: &mut crate::lockstep::channel::ChannelReceiver,
    outputs: &GatedOutputs,
    link: &PrimaryLink,
) -> Option<String> {
    loop {
        if link.stop.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv() {
            Ok(Message::EpochAck { epoch }) => {
                *lock(&link.heard) = Instant::now();
                if let Err(e) = outputs.on_ack(epoch) {
                    return Some(format!("acknowledgement of epoch {epoch} refused: {e}"));
                }
            }
            Ok(Message::Bye { reason }) => {
                return Some(format!("the secondary said bye: {reason}"))
            }
            Ok(m) => {
                return Some(format!(
                "a {} message on a checkpoint link, where the Primary takes only EpochAck and Bye",
                m.kind()
            ))
            }
            Err(ChannelError::Timeout) => {}
            Err(e) => return Some(format!("channel: {e}")),
        }
    }
}

#[cfg(test)]
impl PrimaryEffects {
    /// Cuts the link as a partition would (both sides see it end).
    pub(crate) fn link_cutter(&self) -> impl Fn() + Send + 'static {
        let link = Arc::clone(&self.link);
        move || link.lost("cut by the test".into())
    }

    pub(crate) fn outputs(&self) -> Arc<GatedOutputs> {
        Arc::clone(&self.outputs)
    }

    pub(crate) fn vm_control(&self) -> Arc<crate::linux::vcpus::Control> {
        self.running.control()
    }
}

impl Effects for PrimaryEffects {
    fn set_gate(&mut self, gate: Gate, generation: u64) {
        if let Err(e) = self.outputs.set_member_gate(gate, generation) {
            // Refused transitions leave the gate holding (gated.rs).
            tracing::warn!("checkpoint: gate {gate:?} in generation {generation}: {e}");
        }
    }

    fn stop_vcpu(&mut self) {
        self.outputs.halt();
        self.running.stop();
    }

    fn close_link(&mut self, reason: &str) {
        tracing::info!("checkpoint: closing the link to the Secondary: {reason}");
        self.link.close();
    }

    /// Every closed epoch is acknowledged and the VM stopped: `Resign`,
    /// then close.
    fn resign(&mut self, reason: &str) {
        self.link.stop.store(true, Ordering::SeqCst);
        if let Some(mut tx) = lock(&self.link.tx).take() {
            let _ = tx.send_last(&Message::Resign {
                reason: reason.to_string(),
            });
            tx.shutdown();
        }
    }

    fn grant_back(&mut self) {
        self.outputs.kick();
    }

    fn go_live(&mut self, generation: u64, _at: u64) {
        tracing::error!("checkpoint: a Primary told to go live in generation {generation}");
    }

    fn silent_ms(&self) -> u64 {
        if lock(&self.link.tx).is_none() {
            return 0;
        }
        lock(&self.link.heard).elapsed().as_millis() as u64
    }

    fn drained(&mut self) -> Option<u64> {
        None
    }

    /// The VM stopped (no epoch closes any more) and every closed one is
    /// acknowledged.
    fn all_acked(&self) -> bool {
        self.epochs_done.load(Ordering::SeqCst) && self.outputs.all_closed_acked()
    }
}

impl Drop for PrimaryEffects {
    /// This host's side goes away: nothing more leaves, the VM stops.
    fn drop(&mut self) {
        self.outputs.halt();
        self.epochs_stop.store(true, Ordering::SeqCst);
        self.link.close();
        self.running.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.running.wait();
    }
}
