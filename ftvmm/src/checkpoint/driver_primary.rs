//! The checkpoint Primary's [`Effects`]: its VM, the epoch loop over the
//! link, the ack thread and the keep-alive thread (module doc of `driver`;
//! `keepalive.rs`: the Secondary hears this process every `KEEPALIVE`
//! while it harvests, encodes, pre-copies or sends a large epoch).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// At most this long between two console summaries of the epochs.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

use super::{lock, Effects};
use crate::checkpoint::gated::GatedOutputs;
use crate::checkpoint::keepalive::{self, Progress, KEEPALIVE};
use crate::checkpoint::local::Summary;
use crate::checkpoint::primary::{self, EpochLoopError, EpochSink, LoopConfig};
use crate::linux::machine::Running;
use crate::lockstep::channel::{Channel, ChannelError, ChannelSender, Message};
use crate::lockstep::member::{Event, Gate};

/// One connection to a Secondary: its sender and its ack thread's stop.
struct Conn {
    /// Tells this connection from a later one (a respawned Secondary's).
    id: u64,
    tx: ChannelSender,
    /// When anything last went out on it (the keep-alive thread's clock).
    sent: Instant,
    stop: Arc<AtomicBool>,
}

/// A Secondary waiting to join (respawn): its channel, the generation it
/// joins in, and where the epoch loop says which epoch was its full one.
pub(crate) struct PendingJoin {
    pub ch: Channel,
    pub generation: u64,
    pub reply: Sender<Result<JoinedLink, String>>,
}

/// The join's full epoch closed and its link is the Primary's now.
pub(crate) struct JoinedLink {
    /// The full epoch.
    pub epoch: u64,
    /// The connection it goes over (`PrimaryLink::is_up`).
    pub conn: u64,
}

/// The Primary's end of the link: the epoch sender (while a Secondary is
/// connected), a join waiting for the next epoch, when the Secondary was
/// last heard.
pub(crate) struct PrimaryLink {
    conn: Mutex<Option<Conn>>,
    next_id: AtomicU64,
    join: Mutex<Option<PendingJoin>>,
    heard: Mutex<Instant>,
    events: Mutex<Sender<Event>>,
}

impl PrimaryLink {
    /// Connection `id` is gone (`why`): close it, tell the member once.
    /// A later connection is left alone.
    fn lost(&self, id: u64, why: String) {
        let mut c = lock(&self.conn);
        if c.as_ref().is_some_and(|c| c.id == id) {
            let c = c.take().expect("checked");
            c.stop.store(true, Ordering::SeqCst);
            c.tx.shutdown();
            let _ = lock(&self.events).send(Event::ChannelLost { why });
        }
    }

    /// Closes the connection there is, if any (no `Bye`).
    fn close(&self) {
        if let Some(c) = lock(&self.conn).take() {
            c.stop.store(true, Ordering::SeqCst);
            c.tx.shutdown();
        }
    }

    /// Whether connection `id` is still the Primary's.
    pub(crate) fn is_up(&self, id: u64) -> bool {
        lock(&self.conn).as_ref().is_some_and(|c| c.id == id)
    }

    /// Whether a Secondary is connected.
    fn connected(&self) -> bool {
        lock(&self.conn).is_some()
    }

    /// Takes `ch` as the connection (read timeout set) and starts its ack
    /// thread; returns its id.
    fn adopt(
        self: &Arc<Self>,
        ch: Channel,
        outputs: &Arc<GatedOutputs>,
    ) -> std::io::Result<(u64, JoinHandle<()>)> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, mut rx) = ch.split();
        let stop = Arc::new(AtomicBool::new(false));
        let (link, outputs, st) = (Arc::clone(self), Arc::clone(outputs), Arc::clone(&stop));
        *lock(&self.heard) = Instant::now();
        *lock(&self.conn) = Some(Conn {
            id,
            tx,
            sent: Instant::now(),
            stop,
        });
        let acks = std::thread::Builder::new()
            .name("ckpt-acks".into())
            .spawn(move || {
                if let Some(why) = read_acks(&mut rx, &outputs, &link, &st) {
                    link.lost(id, why);
                }
            });
        match acks {
            Ok(t) => Ok((id, t)),
            Err(e) => {
                self.close();
                Err(e)
            }
        }
    }

    /// Sends `m` on connection `id`.
    pub(crate) fn send_on(&self, id: u64, m: &Message) -> Result<(), String> {
        let mut c = lock(&self.conn);
        match c.as_mut() {
            Some(c) if c.id == id => {
                c.sent = Instant::now();
                c.tx.send(m).map_err(|e| e.to_string())
            }
            _ => Err("the link to the joining secondary is gone".into()),
        }
    }

    /// The keep-alive thread's turn: `Alive` on the connection there is,
    /// if nothing went out on it for [`KEEPALIVE`]; a failed send loses it.
    fn keep_alive(&self) {
        let mut c = lock(&self.conn);
        let Some(conn) = c.as_mut() else {
            return;
        };
        if conn.sent.elapsed() < KEEPALIVE {
            return;
        }
        conn.sent = Instant::now();
        if let Err(e) = conn.tx.send(&Message::Alive) {
            let why = format!("sending a keep-alive to {}: {e}", conn.tx.peer());
            let id = conn.id;
            drop(c);
            self.lost(id, why);
        }
    }

    /// Offers a joining Secondary to the epoch loop (respawn).
    pub(crate) fn offer_join(&self, join: PendingJoin) -> Result<(), String> {
        if self.connected() {
            return Err("a secondary is connected".into());
        }
        let mut j = lock(&self.join);
        if j.is_some() {
            return Err("another join is under way".into());
        }
        *j = Some(join);
        Ok(())
    }

    /// Takes a pending offer back; false if the epoch loop took it already
    /// (its answer comes when the join's epoch closes).
    pub(crate) fn withdraw_join(&self) -> bool {
        lock(&self.join).take().is_some()
    }

    /// Gives a join up: a pending offer is dropped; connection `conn`, if
    /// it is still the Primary's, is closed (no `Bye`: the new Secondary
    /// was never told it is paired, so it never races).
    pub(crate) fn give_up_join(&self, conn: Option<u64>) {
        lock(&self.join).take();
        if let Some(id) = conn {
            let mut c = lock(&self.conn);
            if c.as_ref().is_some_and(|c| c.id == id) {
                let c = c.take().expect("checked");
                c.stop.store(true, Ordering::SeqCst);
                c.tx.shutdown();
            }
        }
    }
}

/// Epochs into the link while there is one; without one (the member runs
/// alone, or races) an epoch is only closed, for the gate. A join offered
/// meanwhile makes the next epoch full and takes its link when it closes.
struct LinkSink {
    link: Arc<PrimaryLink>,
    outputs: Arc<GatedOutputs>,
    /// The join whose epoch is being taken.
    joining: Option<PendingJoin>,
    /// Ack threads of joined links.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Stamped at every step of the epoch loop (`keepalive.rs`).
    progress: Arc<Progress>,
    /// Tests: each piece waits this many ms before it is sent (an epoch
    /// loop busy for that long, as a large harvest or encode is).
    #[cfg(test)]
    slow_ms: Arc<AtomicU64>,
}

impl EpochSink for LinkSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        #[cfg(test)]
        std::thread::sleep(Duration::from_millis(self.slow_ms.load(Ordering::SeqCst)));
        self.progress.stamp();
        let mut c = lock(&self.link.conn);
        let Some(conn) = c.as_mut() else {
            return Ok(());
        };
        conn.sent = Instant::now();
        if let Err(e) = conn.tx.send(&Message::EpochPiece { bytes: piece }) {
            let why = format!("sending an epoch to {}: {e}", conn.tx.peer());
            let id = conn.id;
            drop(c);
            self.link.lost(id, why);
        }
        Ok(())
    }

    fn progress(&mut self) {
        self.progress.stamp();
    }

    fn join(&mut self) -> Option<u64> {
        if self.link.connected() {
            return None;
        }
        self.joining = lock(&self.link.join).take();
        self.joining.as_ref().map(|j| j.generation)
    }

    fn join_closed(&mut self, closed: Result<u64, String>) {
        let Some(j) = self.joining.take() else {
            return;
        };
        let joined = closed.and_then(|epoch| {
            let (conn, t) = self
                .link
                .adopt(j.ch, &self.outputs)
                .map_err(|e| format!("cannot start the ack thread: {e}"))?;
            lock(&self.threads).push(t);
            Ok(JoinedLink { epoch, conn })
        });
        let _ = j.reply.send(joined);
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
    /// Ends the keep-alive thread.
    alive_stop: Arc<AtomicBool>,
    #[cfg(test)]
    slow_ms: Arc<AtomicU64>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
        let link = Arc::new(PrimaryLink {
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            join: Mutex::new(None),
            heard: Mutex::new(Instant::now()),
            events: Mutex::new(events),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        if let Some(ch) = ch {
            let (_, t) = link.adopt(ch, &outputs)?;
            lock(&threads).push(t);
        }
        let epochs_stop = Arc::new(AtomicBool::new(false));
        let epochs_done = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        #[cfg(test)]
        let slow_ms = Arc::new(AtomicU64::new(0));
        let alive_stop = Arc::new(AtomicBool::new(false));
        let alive = {
            let l = Arc::clone(&link);
            keepalive::spawn(
                "ckpt-alive".into(),
                (Arc::clone(&alive_stop), keepalive::STALL_LIMIT),
                Arc::clone(&progress),
                move || {
                    l.keep_alive();
                    Ok(())
                },
            )
        };
        match alive {
            Ok(t) => lock(&threads).push(t),
            Err(e) => {
                link.close();
                return Err(e);
            }
        }
        let epochs = {
            let (running, outputs) = (Arc::clone(&running), Arc::clone(&outputs));
            let stop = Arc::clone(&epochs_stop);
            let mut sink = LinkSink {
                link: Arc::clone(&link),
                outputs: Arc::clone(&outputs),
                joining: None,
                threads: Arc::clone(&threads),
                progress,
                #[cfg(test)]
                slow_ms: Arc::clone(&slow_ms),
            };
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
        lock(&threads).push(epochs);
        Ok(PrimaryEffects {
            running,
            outputs,
            link,
            epochs_stop,
            epochs_done,
            alive_stop,
            #[cfg(test)]
            slow_ms,
            threads,
        })
    }

    /// Where a respawn brings a new Secondary in (`respawn.rs`).
    pub fn join_port(&self) -> JoinPort {
        JoinPort {
            link: Arc::clone(&self.link),
            outputs: Arc::clone(&self.outputs),
            epochs_done: Arc::clone(&self.epochs_done),
        }
    }
}

/// A running Primary's door for a joining Secondary (respawn): the link
/// the epoch loop ships to and the gate it closes epochs in.
#[derive(Clone)]
pub struct JoinPort {
    pub(crate) link: Arc<PrimaryLink>,
    pub(crate) outputs: Arc<GatedOutputs>,
    epochs_done: Arc<AtomicBool>,
}

impl JoinPort {
    /// Whether the epoch loop still runs (a join can be taken).
    pub fn running(&self) -> bool {
        !self.epochs_done.load(Ordering::SeqCst) && !self.outputs.failed()
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
            if let Some(mut c) = lock(&link.conn).take() {
                c.stop.store(true, Ordering::SeqCst);
                let _ = c.tx.send_last(&Message::Bye { reason });
                c.tx.shutdown();
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
    stop: &AtomicBool,
) -> Option<String> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match rx.recv() {
            // Heard, and nothing more (`keepalive.rs`).
            Ok(Message::Alive) => *lock(&link.heard) = Instant::now(),
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
                "a {} message on a checkpoint link, where the Primary takes only EpochAck, Alive and Bye",
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
        move || {
            let id = lock(&link.conn).as_ref().map(|c| c.id);
            if let Some(id) = id {
                link.lost(id, "cut by the test".into());
            }
        }
    }

    /// How long the Secondary has been silent, as the member sees it.
    pub(crate) fn silence(&self) -> impl Fn() -> u64 + Send + 'static {
        let link = Arc::clone(&self.link);
        move || lock(&link.heard).elapsed().as_millis() as u64
    }

    /// Makes every epoch piece wait this many ms before it is sent.
    pub(crate) fn slow_sends(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.slow_ms)
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
        if let Some(mut c) = lock(&self.link.conn).take() {
            c.stop.store(true, Ordering::SeqCst);
            let _ = c.tx.send_last(&Message::Resign {
                reason: reason.to_string(),
            });
            c.tx.shutdown();
        }
    }

    fn grant_back(&mut self) {
        self.outputs.kick();
    }

    fn go_live(&mut self, generation: u64, _at: u64) {
        tracing::error!("checkpoint: a Primary told to go live in generation {generation}");
    }

    fn silent_ms(&self) -> u64 {
        if !self.link.connected() {
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
        self.alive_stop.store(true, Ordering::SeqCst);
        self.link.give_up_join(None);
        self.link.close();
        self.running.stop();
        // Twice: a join the epoch loop took while stopping adds a link
        // and its ack thread once more.
        for _ in 0..2 {
            let threads: Vec<_> = lock(&self.threads).drain(..).collect();
            for t in threads {
                let _ = t.join();
            }
            self.link.close();
        }
        let _ = self.running.wait();
    }
}
