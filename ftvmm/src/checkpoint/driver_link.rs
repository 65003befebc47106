//! The checkpoint Primary's end of the link (module doc of `driver`): the
//! connection to its Secondary, a join waiting for the next epoch, when the
//! Secondary was last heard and what it last acknowledged, the keep-alive's
//! turn (`keepalive.rs`) and the ack reader.
//!
//! A joining Secondary's connection becomes the link as soon as the epoch
//! loop takes the join (`respawn.rs`): from then on the keep-alive thread
//! speaks on it and the ack reader hears it, while the Primary still runs
//! alone and streams the Secondary up to date. The gate takes no acks while
//! it runs alone (`Mode::Solo`: every closed epoch counts as acknowledged at
//! its close), so the ack reader only records them ([`PrimaryLink::acked`])
//! for the join to see how far the new Secondary got.
//!
//! It also keeps the connection's epochs that wait for an ack
//! (`ack_wait.rs`, [`PrimaryLink::unacked`]): a paired member counts a
//! Secondary that is heard but acknowledges no epoch for the failure
//! timeout (past the waiting epoch's apply grace) as lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::lock;
use crate::checkpoint::ack_wait::AckWait;
use crate::checkpoint::gate::{GateError, Mode};
use crate::checkpoint::gated::GatedOutputs;
use crate::checkpoint::keepalive::KEEPALIVE;
use crate::lockstep::channel::{Channel, ChannelError, ChannelSender, Message};
use crate::lockstep::member::Event;

/// A send TCP cannot take within this fails and loses the connection (a
/// peer behind a partition must not hold the sender, and everyone waiting
/// for `PrimaryLink::conn` behind it, for ever), as lockstep's link does.
/// An epoch piece is 128 KiB: milliseconds on a real FT network, ~0.1 s on
/// the QEMU test hosts'.
pub(crate) const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One connection to a Secondary: its sender and its ack thread's stop.
pub(super) struct Conn {
    /// Tells this connection from a later one (a respawned Secondary's).
    pub(super) id: u64,
    pub(super) tx: ChannelSender,
    /// When anything last went out on it (the keep-alive thread's clock).
    pub(super) sent: Instant,
    pub(super) stop: Arc<AtomicBool>,
}

/// A Secondary waiting to join (respawn): its channel, the generation it
/// joins in, and where the epoch loop tells how the join goes.
pub(crate) struct PendingJoin {
    pub ch: Channel,
    pub generation: u64,
    pub reply: Sender<JoinNews>,
}

/// What the epoch loop tells a join (`respawn.rs`), in this order.
pub(crate) enum JoinNews {
    /// The loop took the join: its channel is connection `conn` now, and
    /// the next epoch, full, goes to it; the Primary still runs alone.
    Streaming { conn: u64 },
    /// The switch epoch closed paired (`Ok`), or the join ended (`Err`; its
    /// connection is closed and the gate runs alone).
    Switched(Result<JoinedLink, String>),
}

/// The join's switch epoch closed paired, on the Primary's link.
pub(crate) struct JoinedLink {
    /// The full epoch (the first the new Secondary got).
    pub full: u64,
    /// The switch epoch: the first closed paired.
    pub epoch: u64,
    /// The connection it goes over (`PrimaryLink::is_up`).
    pub conn: u64,
}

/// The Primary's end of the link: the epoch sender (while a Secondary is
/// connected), a join waiting for the next epoch, when the Secondary was
/// last heard.
pub(crate) struct PrimaryLink {
    /// Held by whoever sends on the connection, for as long as TCP takes
    /// the message (up to the channel's write timeout, [`SEND_TIMEOUT`]).
    pub(super) conn: Mutex<Option<Conn>>,
    /// The id of the connection in `conn` (0: none), set under its lock and
    /// read without it: the member's clock (`silent_ms`, `unacked`) must
    /// not wait behind a send blocked on a peer behind a partition (a
    /// checkpoint Primary so partitioned in a QEMU test never raced, nor
    /// halted when deposed: its driver thread waited on this lock).
    pub(super) conn_id: AtomicU64,
    pub(super) next_id: AtomicU64,
    pub(super) join: Mutex<Option<PendingJoin>>,
    pub(super) heard: Mutex<Instant>,
    /// The last epoch the connected Secondary acknowledged, in any mode of
    /// the gate (0: none yet on this connection).
    pub(super) acked: AtomicU64,
    /// The connection's id and its epochs that wait for an ack, timed on
    /// [`PrimaryLink::clock`].
    pub(super) ack_wait: Mutex<(u64, AckWait)>,
    /// The clock of `ack_wait` (made with the link).
    pub(super) clock: Instant,
    pub(super) events: Mutex<Sender<Event>>,
}

impl PrimaryLink {
    /// Connection `id` is gone (`why`): close it, tell the member once.
    /// A later connection is left alone.
    pub(super) fn lost(&self, id: u64, why: String) {
        let mut c = lock(&self.conn);
        if c.as_ref().is_some_and(|c| c.id == id) {
            let c = c.take().expect("checked");
            self.conn_id.store(0, Ordering::SeqCst);
            c.stop.store(true, Ordering::SeqCst);
            c.tx.shutdown();
            let _ = lock(&self.events).send(Event::ChannelLost { why });
        }
    }

    /// Takes the connection there is, if any, out of the link.
    pub(super) fn take_conn(&self) -> Option<Conn> {
        let mut c = lock(&self.conn);
        self.conn_id.store(0, Ordering::SeqCst);
        c.take()
    }

    /// Closes the connection there is, if any (no `Bye`).
    pub(super) fn close(&self) {
        if let Some(c) = self.take_conn() {
            c.stop.store(true, Ordering::SeqCst);
            c.tx.shutdown();
        }
    }

    /// The connection's id, without waiting for a send (0: none).
    fn current(&self) -> Option<u64> {
        match self.conn_id.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether connection `id` is still the Primary's.
    pub(crate) fn is_up(&self, id: u64) -> bool {
        self.current() == Some(id)
    }

    /// How long since the connected Secondary was last heard.
    pub(crate) fn silent_for(&self) -> std::time::Duration {
        lock(&self.heard).elapsed()
    }

    /// The last epoch the connected Secondary acknowledged.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Whether a Secondary is connected.
    pub(crate) fn connected(&self) -> bool {
        self.current().is_some()
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Epoch `number`'s last piece (`bytes` in all) went out now: it waits
    /// for the connected Secondary's ack (nothing without a connection).
    pub(super) fn shipped(&self, number: u64, bytes: usize) {
        let id = self.current();
        let mut w = lock(&self.ack_wait);
        if id == Some(w.0) {
            let now = self.now_ms();
            w.1.shipped(number, bytes, now);
        }
    }

    /// How long the connected Secondary has acknowledged nothing while an
    /// epoch waits for it, and that epoch's apply grace, in ms
    /// (`ack_wait.rs`); `(0, 0)` without a connection or a waiting epoch.
    pub(crate) fn unacked(&self) -> (u64, u64) {
        let id = self.current();
        let w = lock(&self.ack_wait);
        match id {
            Some(id) if id == w.0 => w.1.unacked(self.now_ms()),
            _ => (0, 0),
        }
    }

    /// Takes `ch` as the connection (read timeout set) and starts its ack
    /// thread; returns its id.
    pub(super) fn adopt(
        self: &Arc<Self>,
        ch: Channel,
        outputs: &Arc<GatedOutputs>,
    ) -> std::io::Result<(u64, JoinHandle<()>)> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        ch.set_write_timeout(Some(SEND_TIMEOUT))?;
        let (tx, mut rx) = ch.split();
        let stop = Arc::new(AtomicBool::new(false));
        let (link, outputs, st) = (Arc::clone(self), Arc::clone(outputs), Arc::clone(&stop));
        *lock(&self.heard) = Instant::now();
        self.acked.store(0, Ordering::SeqCst);
        {
            let mut w = lock(&self.ack_wait);
            w.0 = id;
            w.1.reset(self.now_ms());
        }
        let mut c = lock(&self.conn);
        *c = Some(Conn {
            id,
            tx,
            sent: Instant::now(),
            stop,
        });
        self.conn_id.store(id, Ordering::SeqCst);
        drop(c);
        let acks = std::thread::Builder::new()
            .name("ckpt-acks".into())
            .spawn(move || {
                crate::priority::link_thread();
                if let Some(why) = read_acks(&mut rx, &outputs, (&link, id), &st) {
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
    pub(super) fn keep_alive(&self) {
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
                self.conn_id.store(0, Ordering::SeqCst);
                c.stop.store(true, Ordering::SeqCst);
                c.tx.shutdown();
            }
        }
    }
}

/// Acks of connection `id` into the gate until the link ends (`Some(why)`)
/// or is closed here.
fn read_acks(
    rx: &mut crate::lockstep::channel::ChannelReceiver,
    outputs: &GatedOutputs,
    (link, id): (&PrimaryLink, u64),
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
                link.acked.fetch_max(epoch, Ordering::SeqCst);
                {
                    // Any ack, a repeat too, ends the wait (`ack_wait.rs`);
                    // not one of a connection replaced meanwhile.
                    let mut w = lock(&link.ack_wait);
                    if w.0 == id {
                        let now = link.now_ms();
                        w.1.acked(epoch, now);
                    }
                }
                match outputs.on_ack(epoch) {
                    // Alone (a join streaming its Secondary up to date):
                    // every closed epoch counts as acknowledged already.
                    Ok(()) | Err(GateError::AckNotPaired { mode: Mode::Solo { .. } }) => {}
                    Err(e) => {
                        return Some(format!("acknowledgement of epoch {epoch} refused: {e}"))
                    }
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
