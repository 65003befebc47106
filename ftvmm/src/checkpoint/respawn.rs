//! Respawn for checkpoint VMs (issue 11; lockstep's is `lockstep/respawn/`):
//! a Primary running alone — after a take-over, after its Secondary was
//! lost, or alone at power-on — gets a new Secondary on a host chosen by
//! lockstep's keeper (`respawn/keeper.rs`: placement, Hello, back-off and
//! the protection line are the same), and the first full checkpoint is the
//! state transfer: a join is exactly a first epoch, to a new link.
//!
//! - Primary ([`CheckpointJoin`], the keeper's [`JoinSource`]): the keeper
//!   connected with a Hello that says "join" (`JOIN_BY_TRANSFER`) and
//!   carries the pair's mode, vCPUs, epoch and image digest; the channel is
//!   offered to the epoch loop ([`JoinPort`]), which takes it as its link
//!   at once (keep-alives and acks flow from then on) and streams the new
//!   Secondary up to date **while the Primary still runs alone**: its next
//!   epoch `F` is full (every resident page, copied while the guest runs
//!   and completed in the pause, plus the whole machine state), the epochs
//!   after it are ordinary ones (what the guest dirtied meanwhile), all
//!   closed in `Solo{g}`, their outputs released as alone. Once the new
//!   Secondary acknowledged `F` and is about one epoch behind (the bytes
//!   it was sent and has not acknowledged are few), the next epoch `J`,
//!   small, closes paired (the switch, `close_epoch_joining`). Once the new
//!   Secondary acknowledged `J`, the member pairs (`SecondaryJoined`:
//!   `Solo{g}` -> `Paired{g}`, gate `ByAcks`) and only then is the
//!   Secondary told `Paired`; epochs follow on the same link.
//! - Secondary ([`receive_join`]): accepts a join only for a VM the config
//!   allows on this host and only from the owner of the generation on disk
//!   (`check_join_offer`); builds staging memory, applies `F` (the receiver
//!   starts at `F - 1`) and every epoch after it, acknowledging each, and
//!   waits for `Paired`. From then on it is a normal checkpoint Secondary
//!   (it races for `g + 1` through fencing when its Primary dies). Before
//!   `Paired`, any end of the link discards the copy: a Secondary the
//!   Primary never counted on never races.
//!
//! # Liveness during a join
//!
//! A full epoch is all of guest memory: tens of MiB, which on a slow FT
//! network (QEMU hosts) take tens of seconds to arrive and a second or more
//! to apply — many failure timeouts. So neither side measures the join by
//! how long it takes, only by whether the other is there:
//! - the new Secondary's keep-alive thread (`keepalive::AliveLink`) starts
//!   at the join's first message and runs on into the Secondary it becomes,
//!   so the Primary hears it every `KEEPALIVE` while pieces arrive, while
//!   an epoch is applied, and across the hand-over; the Primary's keep-alive
//!   thread speaks on the join's link from the moment the epoch loop took it;
//! - the Primary's join gives up when the new Secondary was silent for the
//!   failure timeout (or the link ended, or a send could not go out for
//!   `SEND_TIMEOUT`), not after a fixed time; only the switch epoch's
//!   acknowledgement, which the outputs wait for, has a deadline;
//! - the new Secondary gives up on a Primary silent (no message and no
//!   authentic frame) for the join timeout.
//!
//! A frozen or dead process sends no keep-alives and a wedged link loop
//! stops them (`keepalive::STALL_LIMIT`), so either still gives the join up.
//!
//! # The Output Rule across a join
//!
//! While alone in generation `g` the gate releases an epoch's outputs as
//! soon as it closes and its writes are durable (`Solo{g}`): nobody else
//! can resume the VM, so nobody can contradict them. That holds while the
//! new Secondary is streamed up to date (`F` up to `J - 1`): it acknowledges
//! those epochs, but the gate takes no acks alone (the ack reader only
//! records them, to pace the switch), and the new Secondary may not race
//! (it was not told `Paired`), so for the Output Rule it does not exist
//! yet. The switch epoch `J` is closed in the pause by
//! `EpochGate::close_epoch_joining`, which, under the gate's lock and with
//! the vCPUs stopped, switches the gate to `Paired{g}` and closes `J` in it:
//!
//! - Epochs `< J` were closed alone and count as acknowledged since their
//!   close; their writes go on being submitted in order and their frames
//!   released as those writes become durable, without waiting for the new
//!   Secondary. Everything they released happened before `J`'s boundary,
//!   and the new Secondary can only ever resume from `J` or later (it is
//!   told `Paired` only once `J` is acknowledged, i.e. applied whole on top
//!   of `F .. J - 1`: the receiver applies epochs in order and only whole),
//!   a state that follows every output released alone. The writes of
//!   epochs `< J` not yet durable at `J`'s close travel inside `J`, ahead
//!   of `J`'s own, so should the new Secondary take over before they reach
//!   the device it writes them again (in order, under the late-write
//!   fence, as for any unfinished epoch); epochs `F .. J - 1` carried their
//!   own writes too, and a take-over writing one of those twice is
//!   harmless: its second copy, in `J`'s list, is followed by every write
//!   that came after it.
//! - `J` and every later epoch wait for the new Secondary's acks: nothing
//!   of epoch `e >= J` leaves before `e` is acknowledged and `e`'s writes
//!   (and every earlier epoch's) are durable. Every frame the guest sent in
//!   `J` is held until the Secondary holds the state after it. `J` is
//!   small (what the guest dirtied in about one epoch), so the outputs wait
//!   about one round trip at the switch, not for all of memory to cross.
//! - If the join fails while streaming, nothing changes for the gate (it
//!   ran alone throughout); the link closes.
//! - If the join fails after the switch, before the member paired (the
//!   link ends, no ack of `J` in time, the member no longer `Solo{g}`),
//!   `EpochGate::abandon_join` puts the gate back to `Solo{g}`: every
//!   closed epoch counts as acknowledged again. That is safe because the
//!   would-be Secondary was never told `Paired` and so never races; the
//!   Primary never left `g`. The keeper retries with back-off.
//! - Once paired, losing the new Secondary is a loss like any other: the
//!   gate holds, the member races for `g + 1`.
//!
//! While a join's `J` is unacknowledged the member stays `Solo{g}`; its gate
//! `Open` in `g` then leaves the stricter `Paired{g}` in place (`gated.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::driver::{JoinNews, JoinPort, JoinedLink, PendingJoin};
use super::epoch::decode_piece;
use super::gate::Mode;
use super::keepalive::AliveLink;
use super::receiver::{Piece, Receiver};
use super::remote::{on_message, KEEPALIVE};
use super::secondary::Staging;
use crate::lockstep::channel::{Channel, ChannelError, Message};
use crate::lockstep::member::{Event, State};
use crate::lockstep::respawn::keeper::{
    await_paired, JoinProgress, JoinReport, JoinSource, SEND_TIMEOUT,
};
use crate::lockstep::respawn::{from_channel, to_channel};
use crate::lockstep::spec::PairHandle;
use crate::lockstep::start::check_offered_generation;
use crate::lockstep::transfer::message::Message as TransferMessage;

/// How long the member may take to pair once the switch epoch is acked.
const PAIR_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the join looks at its link and the gate.
const POLL: Duration = Duration::from_millis(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Primary's side of a checkpoint join (module doc).
pub struct CheckpointJoin {
    pub handle: Arc<PairHandle>,
    /// The running Primary's port (its epoch loop's), once there is one.
    pub port: Arc<Mutex<Option<JoinPort>>>,
    /// How long the epoch loop may take to take the join, and the switch
    /// epoch to be acknowledged.
    pub timeout: Duration,
    /// The failure timeout: a joining Secondary silent this long is given
    /// up (module doc, liveness).
    pub silence: Duration,
}

impl CheckpointJoin {
    fn port(&self) -> Option<JoinPort> {
        lock(&self.port).clone()
    }
}

impl JoinSource for CheckpointJoin {
    fn ready(&self) -> bool {
        self.port().is_some_and(|p| {
            p.running() && matches!(p.outputs.mode(), Mode::Solo { .. }) && p.outputs.may_release()
        })
    }

    fn join(
        &self,
        ch: Channel,
        target: &str,
        g: u64,
        progress: JoinProgress,
    ) -> Result<JoinReport, String> {
        let t0 = Instant::now();
        let port = self.port().ok_or("the VM runs no epoch loop")?;
        ch.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| format!("channel: {e}"))?;
        ch.set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| format!("channel: {e}"))?;
        let (reply, news) = mpsc::channel();
        port.link.offer_join(PendingJoin {
            ch,
            generation: g,
            reply,
        })?;
        let conn = self.taken(&port, &news)?;
        progress(10);
        let joined = match self.streamed(&port, &news, conn, g) {
            Ok(j) => j,
            Err(e) => {
                abandon(&port, g, Some(conn));
                return Err(e);
            }
        };
        let streamed_ms = t0.elapsed().as_millis();
        progress(50);
        if let Err(e) = self.wait_acked(&port, &joined, g) {
            abandon(&port, g, Some(joined.conn));
            return Err(e);
        }
        progress(90);
        self.pair(&port, &joined, target, g)?;
        Ok(JoinReport {
            detail: format!(
                "by a full checkpoint at epoch {}, paired at epoch {}; generation {g}; {} ms from the hello to its acknowledgement ({streamed_ms} ms streaming alone)",
                joined.full,
                joined.epoch,
                t0.elapsed().as_millis()
            ),
            pause_ms: None,
            after: None,
        })
    }
}

impl CheckpointJoin {
    /// Waits until the epoch loop took the offered join; its connection.
    fn taken(&self, port: &JoinPort, news: &mpsc::Receiver<JoinNews>) -> Result<u64, String> {
        let got = match news.recv_timeout(self.timeout) {
            Ok(n) => n,
            // Taken meanwhile: the news is on its way (or the loop ended).
            Err(_) if !port.link.withdraw_join() => news
                .recv()
                .map_err(|_| "the epoch loop ended during the join".to_string())?,
            Err(_) => {
                return Err(format!(
                    "the epoch loop did not take the join within {} ms",
                    self.timeout.as_millis()
                ))
            }
        };
        match got {
            JoinNews::Streaming { conn } => Ok(conn),
            JoinNews::Switched(Ok(j)) => Err(format!(
                "the join switched at epoch {} before it streamed",
                j.epoch
            )),
            JoinNews::Switched(Err(e)) => Err(e),
        }
    }

    /// Waits while the new Secondary is streamed up to date (the Primary
    /// alone) until the switch epoch closed paired; gives up on a silent
    /// Secondary, a link that ended, or a gate that left the lone run.
    fn streamed(
        &self,
        port: &JoinPort,
        news: &mpsc::Receiver<JoinNews>,
        conn: u64,
        g: u64,
    ) -> Result<JoinedLink, String> {
        loop {
            match news.recv_timeout(POLL * 10) {
                Ok(JoinNews::Switched(r)) => return r,
                Ok(JoinNews::Streaming { .. }) => {
                    return Err("the epoch loop took the join twice".into())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the epoch loop ended during the join".into())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.alive(port, conn, "while it was brought up to date")?;
            let mode = port.outputs.mode();
            if !matches!(mode, Mode::Solo { generation } | Mode::Paired { generation } if generation == g)
            {
                return Err(format!("the gate left the join (it is {mode:?})"));
            }
        }
    }

    /// Whether the joining Secondary on connection `conn` is still there:
    /// the link is up and it was heard within the failure timeout.
    fn alive(&self, port: &JoinPort, conn: u64, when: &str) -> Result<(), String> {
        if !port.link.is_up(conn) {
            return Err(format!("the link to the joining secondary ended {when}"));
        }
        let silent = port.link.silent_for();
        if silent >= self.silence {
            return Err(format!(
                "the joining secondary was silent for {} ms {when}",
                silent.as_millis()
            ));
        }
        Ok(())
    }

    /// Waits until the new Secondary acknowledged the switch epoch.
    fn wait_acked(&self, port: &JoinPort, joined: &JoinedLink, g: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let mode = port.outputs.mode();
            if mode != (Mode::Paired { generation: g }) {
                return Err(format!("the gate left the join (it is {mode:?})"));
            }
            if port.outputs.progress().0 >= joined.epoch {
                return Ok(());
            }
            let when = format!("before the switch epoch {} was acknowledged", joined.epoch);
            self.alive(port, joined.conn, &when)?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "the switch epoch {} was not acknowledged within {} ms",
                    joined.epoch,
                    self.timeout.as_millis()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The member pairs (gate `ByAcks` first), then the Secondary is told.
    fn pair(
        &self,
        port: &JoinPort,
        joined: &JoinedLink,
        target: &str,
        g: u64,
    ) -> Result<(), String> {
        match self.handle.member_state() {
            Some(State::Solo { g: sg }) if sg == g => {}
            other => {
                abandon(port, g, Some(joined.conn));
                return Err(format!("the member cannot pair (it is {other:?})"));
            }
        }
        if !self.handle.post(Event::SecondaryJoined {
            peer: target.to_string(),
            generation: g,
        }) {
            abandon(port, g, Some(joined.conn));
            return Err("the member is gone".into());
        }
        if let Err(other) = await_paired(&self.handle, g, PAIR_TIMEOUT) {
            abandon(port, g, Some(joined.conn));
            // Should the member still take the join after this, it must not
            // stay paired with nobody: a loss makes it race.
            self.handle.post(Event::ChannelLost {
                why: format!("join of {target} given up"),
            });
            return Err(format!("the member did not pair (it is {other:?})"));
        }
        // From here on a loss of the new Secondary is a loss like any other.
        let paired = to_channel(&TransferMessage::Paired { generation: g })?;
        if let Err(e) = port.link.send_on(joined.conn, &paired) {
            self.handle.post(Event::ChannelLost {
                why: format!("telling {target} it is paired: {e}"),
            });
            return Err(e);
        }
        Ok(())
    }
}

/// The join is given up before the member paired: its link closes, the
/// gate runs alone in `g` again (module doc).
fn abandon(port: &JoinPort, g: u64, conn: Option<u64>) {
    port.link.give_up_join(conn);
    if let Err(e) = port.outputs.abandon_join(g) {
        tracing::info!("checkpoint: giving a join up: {e}");
    }
}

/// What the new Secondary's side of a join needs.
pub struct JoinTarget<'a> {
    pub vm: &'a str,
    /// The Primary offering the join, and the generation it offers.
    pub primary: &'a str,
    pub generation: u64,
    pub mem_size: u64,
    pub fencing: PathBuf,
    pub stop: &'a AtomicBool,
    /// Silence from the Primary past this fails the join.
    pub timeout: Duration,
    /// Tests: cut the link after the first piece this many more times.
    pub cuts: Option<&'a std::sync::atomic::AtomicU32>,
}

/// The new Secondary's side: the full epoch and those after it into
/// staging memory, each acknowledged, then `Paired` (module doc). Its
/// keep-alive thread runs from the start (module doc, liveness) and goes on
/// in the returned link, which the Secondary it becomes serves
/// (`SecondaryEffects::start_on`). Returns the receiver holding every epoch
/// applied before `Paired`.
pub fn receive_join(
    t: &JoinTarget<'_>,
    ch: Channel,
) -> Result<(Receiver<Staging>, AliveLink), String> {
    ch.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| format!("channel: {e}"))?;
    ch.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| format!("channel: {e}"))?;
    let mut link = AliveLink::start(ch, "ckpt-join-alive");
    let frames = link.rx.frame_counter();
    let mut r: Option<Receiver<Staging>> = None;
    // The full epoch (0 until its first piece).
    let mut first = 0;
    let (mut heard, mut said) = (Instant::now(), Instant::now());
    let mut frames_seen = frames.load(Ordering::Relaxed);
    loop {
        link.progress.stamp();
        if t.stop.load(Ordering::SeqCst) {
            return Err("stopped".into());
        }
        let m = match link.rx.recv() {
            Ok(m) => m,
            Err(ChannelError::Timeout) => {
                // An authentic frame of a message still arriving is heard
                // too (a 1 MiB piece over a slow FT network).
                let now = frames.load(Ordering::Relaxed);
                if now != frames_seen {
                    frames_seen = now;
                    heard = Instant::now();
                }
                if heard.elapsed() < t.timeout {
                    continue;
                }
                return Err(format!(
                    "the primary was silent for {} ms",
                    t.timeout.as_millis()
                ));
            }
            Err(e) => return Err(format!("channel: {e}")),
        };
        heard = Instant::now();
        let ack = match m {
            Message::Transfer { .. } => {
                let rx = r.take().ok_or("paired before any epoch")?;
                return Ok((paired(t, m, rx, first)?, link));
            }
            Message::EpochPiece { bytes } => {
                if r.is_none() {
                    let rx = first_receiver(t, &bytes)?;
                    first = rx.last() + 1;
                    r = Some(rx);
                }
                if cut(t) {
                    return Err("link cut by the test after the first piece".into());
                }
                let rx = r.as_mut().expect("set above");
                // Applied, then acknowledged: a join's pace is not the
                // outputs' (they wait for no epoch of it before the switch).
                match on_message(rx, Message::EpochPiece { bytes }) {
                    Ok(Piece::Ready(ready)) => Some(rx.apply_ready(ready)),
                    Ok(Piece::Again(e)) => Some(e),
                    Ok(Piece::More) if said.elapsed() >= KEEPALIVE => Some(rx.last()),
                    Ok(Piece::More) => None,
                    Err(e) => return Err(e.to_string()),
                }
            }
            // Heard (above), and nothing more (`keepalive.rs`).
            Message::Alive => None,
            Message::Bye { reason } => return Err(format!("the primary said bye: {reason}")),
            other => return Err(format!("a {} message during a join", other.kind())),
        };
        if let Some(epoch) = ack {
            link.tx
                .send(&Message::EpochAck { epoch })
                .map_err(|e| format!("acknowledging epoch {epoch}: {e}"))?;
            said = Instant::now();
        }
    }
}

fn cut(t: &JoinTarget<'_>) -> bool {
    t.cuts.is_some_and(|c| {
        c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    })
}

/// The receiver for a join whose first piece is `bytes`: its epoch is the
/// full one, so the receiver starts just before it.
fn first_receiver(t: &JoinTarget<'_>, bytes: &[u8]) -> Result<Receiver<Staging>, String> {
    let p = decode_piece(bytes).map_err(|e| format!("the first piece: {e}"))?;
    if p.generation != t.generation || p.index != 0 || p.epoch == 0 {
        return Err(format!(
            "the first piece is piece {} of epoch {} in generation {}; expected the start of a full epoch in generation {}",
            p.index, p.epoch, p.generation, t.generation
        ));
    }
    let staging = Staging::new(t.mem_size).map_err(|e| e.to_string())?;
    Ok(Receiver::new(t.generation, staging, p.epoch - 1))
}

/// `Paired` arrived: valid only once the full epoch `first` is complete,
/// for the generation offered, and if the Primary still owns it on disk.
fn paired(
    t: &JoinTarget<'_>,
    m: Message,
    r: Receiver<Staging>,
    first: u64,
) -> Result<Receiver<Staging>, String> {
    match from_channel(m)? {
        TransferMessage::Paired { generation } if generation == t.generation => {}
        other => {
            return Err(format!(
                "expected Paired in generation {}, got {other:?}",
                t.generation
            ))
        }
    }
    if r.last() < first {
        return Err(format!("paired before the full epoch {first} was complete"));
    }
    check_offered_generation(&t.fencing, t.vm, t.generation, t.primary)?;
    Ok(r)
}
