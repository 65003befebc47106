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

use super::link::{JoinNews, JoinedLink, PrimaryLink};
use super::{lock, Effects};
use crate::checkpoint::gate::Mode;
use crate::checkpoint::gated::GatedOutputs;
use crate::checkpoint::keepalive::{self, Progress};
use crate::checkpoint::local::Summary;
use crate::checkpoint::primary::{self, EpochLoopError, EpochSink, JoinStep, LoopConfig};
use crate::linux::machine::Running;
use crate::lockstep::channel::{Channel, Message};
use crate::lockstep::member::{Event, Gate};

/// The switch epoch comes once the new Secondary acknowledged the full
/// epoch and every epoch shipped to it but the last one — or the last two,
/// if together they are at most this many bytes (one piece; an ack may be
/// on its way): it is about one epoch behind, and the switch epoch and
/// those are all the outputs then wait for. A Secondary that never catches
/// up (a guest that dirties memory faster than the link carries) is
/// streamed to for as long as it is alive, the Primary alone meanwhile:
/// switching anyway would hold the outputs for the whole backlog.
const SWITCH_BACKLOG_BYTES: usize = 1 << 20;

/// A join the epoch loop took: its Secondary is streamed up to date while
/// the Primary runs alone, until the switch epoch (`respawn.rs`).
struct Stream {
    generation: u64,
    conn: u64,
    reply: Sender<JoinNews>,
    /// The full epoch, once shipped (the first on the link).
    full: Option<u64>,
    /// Epochs shipped on the link and their bytes, not acknowledged yet.
    unacked: std::collections::VecDeque<(u64, usize)>,
}

/// Epochs into the link while there is one; without one (the member runs
/// alone, or races) an epoch is only closed, for the gate. A join offered
/// meanwhile takes the link at once: the next epoch is full, the following
/// ones bring the new Secondary up to date while the gate still runs alone,
/// and once it caught up an epoch closes paired (the switch).
struct LinkSink {
    link: Arc<PrimaryLink>,
    outputs: Arc<GatedOutputs>,
    /// The join being streamed, if any.
    stream: Option<Stream>,
    /// Ack threads of joined links.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Stamped at every step of the epoch loop (`keepalive.rs`).
    progress: Arc<Progress>,
    /// Tests: each piece waits this many ms before it is sent (an epoch
    /// loop busy for that long, as a large harvest or encode is).
    #[cfg(test)]
    slow_ms: Arc<AtomicU64>,
}

impl LinkSink {
    /// Takes a join offered (the link is free): its channel becomes the
    /// link now, so keep-alives and acks flow from the first byte.
    fn take_join(&mut self) -> JoinStep {
        if self.link.connected() {
            return JoinStep::None;
        }
        let Some(j) = lock(&self.link.join).take() else {
            return JoinStep::None;
        };
        match self.link.adopt(j.ch, &self.outputs) {
            Ok((conn, t)) => {
                lock(&self.threads).push(t);
                let _ = j.reply.send(JoinNews::Streaming { conn });
                self.stream = Some(Stream {
                    generation: j.generation,
                    conn,
                    reply: j.reply,
                    full: None,
                    unacked: Default::default(),
                });
                JoinStep::Full
            }
            Err(e) => {
                let why = format!("cannot start the ack thread: {e}");
                let _ = j.reply.send(JoinNews::Switched(Err(why)));
                JoinStep::None
            }
        }
    }

    /// The join streams: an ordinary epoch (closed alone, shipped to the
    /// new Secondary), or the switch once it caught up; or the join ends
    /// (its link went, or the gate no longer runs alone in its generation).
    fn stream_step(&mut self) -> JoinStep {
        let s = self.stream.as_mut().expect("streaming");
        let g = s.generation;
        if !self.link.is_up(s.conn) {
            self.end_stream(
                "the link to the joining secondary ended while it was brought up to date".into(),
            );
            return JoinStep::None;
        }
        let mode = self.outputs.mode();
        if mode != (Mode::Solo { generation: g }) {
            self.end_stream(format!(
                "the gate left the lone run in generation {g} (it is {mode:?})"
            ));
            return JoinStep::None;
        }
        // A late ack of an earlier connection is of an epoch before the
        // full one: it never counts here. (Only the pace depends on these
        // acks; the Output Rule takes acks from the switch epoch on.)
        let acked = self.link.acked();
        s.unacked.retain(|&(n, _)| n > acked);
        if s.full.is_none_or(|f| acked < f) {
            return JoinStep::None;
        }
        let backlog: usize = s.unacked.iter().map(|&(_, b)| b).sum();
        let caught_up = match s.unacked.len() {
            0 | 1 => true,
            2 => backlog <= SWITCH_BACKLOG_BYTES,
            _ => false,
        };
        if caught_up {
            JoinStep::Switch { generation: g }
        } else {
            JoinStep::None
        }
    }

    /// The join ends without a switch: its link closes (no `Bye`: the new
    /// Secondary was never told it is paired), the gate runs alone still.
    fn end_stream(&mut self, why: String) {
        if let Some(s) = self.stream.take() {
            self.link.give_up_join(Some(s.conn));
            let _ = s.reply.send(JoinNews::Switched(Err(why)));
        }
    }
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

    fn join(&mut self) -> JoinStep {
        match self.stream {
            Some(_) => self.stream_step(),
            None => self.take_join(),
        }
    }

    fn shipped(&mut self, number: u64, bytes: usize) {
        self.link.shipped(number, bytes);
        if let Some(s) = self.stream.as_mut() {
            s.full.get_or_insert(number);
            s.unacked.push_back((number, bytes));
        }
    }

    fn join_closed(&mut self, closed: Result<u64, String>) {
        let Some(s) = self.stream.take() else {
            return;
        };
        let full = s.full.unwrap_or(0);
        let joined = match closed {
            Ok(epoch) if self.link.is_up(s.conn) => Ok(JoinedLink {
                full,
                epoch,
                conn: s.conn,
            }),
            // The join was given up while the switch closed (its link
            // closed first): alone again, nobody will acknowledge it.
            Ok(epoch) => {
                if let Err(e) = self.outputs.abandon_join(s.generation) {
                    tracing::info!("checkpoint: giving a join up: {e}");
                }
                Err(format!(
                    "the link to the joining secondary ended as its switch epoch {epoch} closed"
                ))
            }
            Err(e) => {
                self.link.give_up_join(Some(s.conn));
                Err(format!("the gate refused the join: {e}"))
            }
        };
        let _ = s.reply.send(JoinNews::Switched(joined));
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
            conn_id: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            join: Mutex::new(None),
            heard: Mutex::new(Instant::now()),
            acked: AtomicU64::new(0),
            ack_wait: Mutex::default(),
            clock: Instant::now(),
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
                stream: None,
                threads: Arc::clone(&threads),
                progress,
                #[cfg(test)]
                slow_ms: Arc::clone(&slow_ms),
            };
            let (done, link) = (Arc::clone(&epochs_done), Arc::clone(&link));
            let mut summary =
                Summary::every(label.to_owned(), SUMMARY_EVERY).with_waits(Arc::clone(&outputs));
            let counted = Arc::clone(&outputs);
            let label = label.to_owned();
            std::thread::Builder::new()
                .name("ckpt-epochs".into())
                .spawn(move || {
                    let end = primary::run_epochs(&running, &outputs, &mut sink, cfg, &stop, |e| {
                        counted.stats.on_epoch(e);
                        summary.add(e)
                    });
                    done.store(true, Ordering::SeqCst);
                    on_epochs_end(&label, end, &outputs, &link, &running);
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
/// The guest's end is said on the console here (`label`, e.g. `ftvmm: vm
/// web: `): the member halts as `stopped` a moment later, and the daemon's
/// own line about an ended guest comes only if it sees the end first (a
/// resumed guest that ended at once was shown as a bare `stopped`).
fn on_epochs_end(
    label: &str,
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
            let ended = running.ended().map_or("?".to_string(), |e| e.to_string());
            println!("{label}the guest ended: {ended}; the member stops");
            let reason = format!("the Primary's guest ended: {ended}");
            if let Some(mut c) = link.take_conn() {
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
        if let Some(mut c) = self.link.take_conn() {
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

    fn unacked(&self) -> (u64, u64) {
        self.link.unacked()
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
