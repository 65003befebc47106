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
//!   offered to the epoch loop ([`JoinPort`]), whose next epoch `J` is full
//!   (every resident page, copied while the guest runs and completed in the
//!   pause, plus the whole machine state) and goes to the new link. Once the
//!   new Secondary acknowledged `J`, the member pairs (`SecondaryJoined`:
//!   `Solo{g}` -> `Paired{g}`, gate `ByAcks`) and only then is the Secondary
//!   told `Paired`; incremental epochs follow on the same link.
//! - Secondary ([`receive_join`]): accepts a join only for a VM the config
//!   allows on this host and only from the owner of the generation on disk
//!   (`check_join_offer`); builds staging memory, applies `J` (the receiver
//!   starts at `J - 1`), acknowledges, and waits for `Paired`. From then on
//!   it is a normal checkpoint Secondary (it races for `g + 1` through
//!   fencing when its Primary dies). Before `Paired`, any end of the link
//!   discards the copy: a Secondary the Primary never counted on never races.
//!
//! # The Output Rule across a join
//!
//! While alone in generation `g` the gate releases an epoch's outputs as
//! soon as it closes and its writes are durable (`Solo{g}`): nobody else
//! can resume the VM, so nobody can contradict them. The join's epoch `J`
//! is closed in the pause by `EpochGate::close_epoch_joining`, which, under
//! the gate's lock and with the vCPUs stopped, switches the gate to
//! `Paired{g}` and closes `J` in it:
//!
//! - Epochs `< J` were closed alone and count as acknowledged since their
//!   close; their writes go on being submitted in order and their frames
//!   released as those writes become durable, without waiting for the new
//!   Secondary — it never had those epochs, and nothing it could resume
//!   from precedes `J`. The writes of them not yet durable at `J`'s close
//!   travel inside `J`, ahead of `J`'s own, so should the new Secondary take
//!   over before they reach the device it writes them again (in order,
//!   under the late-write fence, as for any unfinished epoch).
//! - `J` and every later epoch wait for the new Secondary's acks: nothing
//!   of epoch `e >= J` leaves before `e` is acknowledged and `e`'s writes
//!   (and every earlier epoch's) are durable. Every frame the guest sent in
//!   `J` — including during the pre-copy, while the guest ran — is held
//!   until the Secondary holds the state after it.
//! - If the join fails before the member paired (the link ends mid full
//!   epoch, no ack in time, the member no longer `Solo{g}`),
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

use super::driver::{JoinPort, JoinedLink, PendingJoin};
use super::epoch::decode_piece;
use super::gate::Mode;
use super::receiver::Receiver;
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

/// How long the member may take to pair once the full epoch is acked.
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
    /// How long the full epoch may take to close, and then to be
    /// acknowledged.
    pub timeout: Duration,
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
        let joined = self.full_epoch(&port, ch, g)?;
        progress(50);
        let j = joined.epoch;
        if let Err(e) = self.wait_acked(&port, &joined, g) {
            abandon(&port, g, Some(joined.conn));
            return Err(e);
        }
        progress(90);
        self.pair(&port, &joined, target, g)?;
        Ok(JoinReport {
            detail: format!(
                "by a full checkpoint at epoch {j}; generation {g}; {} ms from the hello to its acknowledgement",
                t0.elapsed().as_millis()
            ),
            pause_ms: None,
            after: None,
        })
    }
}

impl CheckpointJoin {
    /// Offers `ch` to the epoch loop and waits until its full epoch closed.
    fn full_epoch(&self, port: &JoinPort, ch: Channel, g: u64) -> Result<JoinedLink, String> {
        let (reply, rx) = mpsc::channel();
        port.link.offer_join(PendingJoin {
            ch,
            generation: g,
            reply,
        })?;
        let got = match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            // Taken meanwhile: its epoch is being harvested; the answer
            // comes at its close (or the loop ended).
            Err(_) if !port.link.withdraw_join() => rx
                .recv()
                .map_err(|_| "the epoch loop ended during the join".to_string())?,
            Err(_) => {
                return Err(format!(
                    "no epoch closed for the join within {} ms",
                    self.timeout.as_millis()
                ))
            }
        };
        got.map_err(|e| format!("the gate refused the join: {e}"))
    }

    /// Waits until the new Secondary acknowledged the full epoch.
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
            if !port.link.is_up(joined.conn) {
                return Err(format!(
                    "the link ended before the full epoch {} was acknowledged",
                    joined.epoch
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the full epoch {} was not acknowledged within {} ms",
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

/// The new Secondary's side: the full epoch into staging memory,
/// acknowledged, then `Paired` (module doc). Returns the receiver holding
/// the full epoch (and any that followed before `Paired`) and the
/// generation the pair runs in.
pub fn receive_join(t: &JoinTarget<'_>, ch: &mut Channel) -> Result<Receiver<Staging>, String> {
    ch.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| format!("channel: {e}"))?;
    ch.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| format!("channel: {e}"))?;
    let mut r: Option<Receiver<Staging>> = None;
    // The full epoch (0 until its first piece).
    let mut first = 0;
    let (mut heard, mut said) = (Instant::now(), Instant::now());
    loop {
        if t.stop.load(Ordering::SeqCst) {
            return Err("stopped".into());
        }
        let m = match ch.recv() {
            Ok(m) => m,
            Err(ChannelError::Timeout) if heard.elapsed() < t.timeout => continue,
            Err(ChannelError::Timeout) => {
                return Err(format!(
                    "the primary was silent for {} ms",
                    t.timeout.as_millis()
                ))
            }
            Err(e) => return Err(format!("channel: {e}")),
        };
        heard = Instant::now();
        let ack = match m {
            Message::Transfer { .. } => {
                let rx = r.take().ok_or("paired before any epoch")?;
                return paired(t, m, rx, first);
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
                match on_message(rx, Message::EpochPiece { bytes }) {
                    Ok(Some(e)) => Some(e),
                    Ok(None) if said.elapsed() >= KEEPALIVE => Some(rx.last()),
                    Ok(None) => None,
                    Err(e) => return Err(e.to_string()),
                }
            }
            // Heard (above), and nothing more (`keepalive.rs`).
            Message::Alive => None,
            Message::Bye { reason } => return Err(format!("the primary said bye: {reason}")),
            other => return Err(format!("a {} message during a join", other.kind())),
        };
        if let Some(epoch) = ack {
            ch.send(&Message::EpochAck { epoch })
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
