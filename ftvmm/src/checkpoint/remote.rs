//! Checkpoint epochs over the authenticated channel between two hosts
//! (`lockstep::channel`, Noise IK): the Primary's encoded epoch pieces go
//! out as [`Message::EpochPiece`], the Secondary's cumulative
//! acknowledgements come back as [`Message::EpochAck`].
//!
//! - Primary: [`ChannelSink`] is the epoch loop's [`EpochSink`];
//!   [`read_acks`] turns every `EpochAck` into [`GatedOutputs::on_ack`]
//!   (the Output Rule releases an epoch's writes and frames only then).
//! - Secondary: [`serve`] feeds every piece to the [`Receiver`] and sends
//!   `EpochAck` only after an epoch is complete and applied to staging.
//! - Either side may get [`Message::Alive`] (`keepalive.rs`): heard, and
//!   nothing more — it completes, acknowledges and releases nothing.
//!
//! Rules:
//! - An ack says "every epoch `<= epoch` is applied here"; it is sent after
//!   the apply and after the caller's `on_applied`, never before.
//! - A torn epoch (the connection ends mid-epoch) is never applied: the
//!   receiver applies only whole epochs, and its take-over drops the
//!   half-assembled one, so the Secondary stays on the previous complete
//!   epoch, which is also the newest the Primary can have released.
//! - Anything wrong on the link ends it with a typed [`LinkError`] naming
//!   what (a refused piece names the epoch format's own error); nothing
//!   panics on what the peer sent (fuzzed through
//!   `lockstep::channel::fuzzing`, which runs [`on_message`]).
//! - The wrong kind of message for a side (a lockstep `Batch` on a
//!   checkpoint link, a piece sent to the Primary) ends the link too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::gate::GateError;
use super::gated::GatedOutputs;
pub use super::keepalive::KEEPALIVE;
use super::keepalive::{Progress, SharedSender};
use super::primary::EpochSink;
use super::receiver::{Piece, ReceiveError, Receiver, StagingMemory};
use crate::lockstep::channel::{ChannelError, ChannelReceiver, ChannelSender, Message};

/// Why a checkpoint link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// The Secondary's receiver refused a piece or an epoch.
    #[error("the Secondary refused an epoch piece: {0}")]
    Refused(#[from] ReceiveError),
    /// An ack the gate cannot take (of an epoch not closed yet, or going
    /// backwards): a broken or lying Secondary.
    #[error("acknowledgement of epoch {epoch} refused: {source}")]
    Ack { epoch: u64, source: GateError },
    #[error("a {kind} message on a checkpoint link, where the {side} takes only {expects}")]
    Unexpected {
        kind: &'static str,
        side: &'static str,
        expects: &'static str,
    },
    /// The peer ended the link in order.
    #[error("the peer said goodbye: {reason}")]
    Bye { reason: String },
    /// The Primary handed the VM over (its storage is lost) after every
    /// epoch it closed was acknowledged: the Secondary races at once.
    #[error("the Primary resigned: {reason}")]
    Resigned { reason: String },
    /// This side was told to stop.
    #[error("stopped")]
    Stopped,
}

/// The Primary's epoch pieces into the channel.
pub struct ChannelSink(pub ChannelSender);

impl EpochSink for ChannelSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        self.0
            .send(&Message::EpochPiece { bytes: piece })
            .map_err(|e| format!("sending to {}: {e}", self.0.peer()))
    }
}

/// The Primary's ack reader: every `EpochAck` to the gate, until the link
/// ends (the returned reason) or `stop` is set (needs a read timeout on
/// `rx`).
pub fn read_acks(rx: &mut ChannelReceiver, outputs: &GatedOutputs, stop: &AtomicBool) -> LinkError {
    loop {
        if stop.load(Ordering::SeqCst) {
            return LinkError::Stopped;
        }
        match rx.recv() {
            Ok(Message::EpochAck { epoch }) => {
                if let Err(source) = outputs.on_ack(epoch) {
                    return LinkError::Ack { epoch, source };
                }
            }
            Ok(Message::Alive) => {}
            Ok(Message::Bye { reason }) => return LinkError::Bye { reason },
            Ok(m) => {
                return LinkError::Unexpected {
                    kind: m.kind(),
                    side: "Primary",
                    expects: "EpochAck, Alive and Bye",
                }
            }
            Err(ChannelError::Timeout) => {}
            Err(e) => return e.into(),
        }
    }
}

/// One message on the Secondary's side: what its piece completed
/// (`Piece::Ready`: an epoch to acknowledge, then apply), `Piece::More` for
/// a keep-alive, which completes nothing.
pub fn on_message<M: StagingMemory>(r: &mut Receiver<M>, m: Message) -> Result<Piece, LinkError> {
    match m {
        Message::EpochPiece { bytes } => Ok(r.take_piece(&bytes)?),
        Message::Alive => Ok(Piece::More),
        Message::Bye { reason } => Err(LinkError::Bye { reason }),
        Message::Resign { reason } => Err(LinkError::Resigned { reason }),
        m => Err(LinkError::Unexpected {
            kind: m.kind(),
            side: "Secondary",
            expects: "EpochPiece, Alive, Resign and Bye",
        }),
    }
}

/// The Secondary's side of a link: applies epochs, acknowledging each once
/// it is complete and checked, then applying it and calling
/// `on_applied(epoch)`, until the link ends or `stop` is set
/// (needs a read timeout on `rx`). Returns why it ended; `r` holds the last
/// complete epoch either way.
pub fn serve<M: StagingMemory>(
    tx: ChannelSender,
    rx: &mut ChannelReceiver,
    r: &mut Receiver<M>,
    stop: &AtomicBool,
    on_applied: impl FnMut(u64),
) -> LinkError {
    let tx = SharedSender::new(tx);
    let busy = Mutex::new(None);
    let heard = (|| {}, &busy);
    serve_heard(&tx, rx, r, (stop, &Progress::default()), on_applied, heard)
}

/// [`serve`], calling `on_heard` for every message from the Primary,
/// sending through `tx` (which a keep-alive thread may share,
/// `keepalive.rs`) and stamping `progress` at every turn of its loop.
/// `busy` holds since when the loop is taking a message in (applying an
/// epoch, which can take over a second for a large one on a slow host):
/// meanwhile it reads nothing, so what the Primary sends waits in the
/// socket, and the Primary's silence as the member measures it must not
/// grow (`driver_secondary.rs`' `silent_ms`).
///
/// While an epoch larger than [`KEEPALIVE`] takes to arrive streams in (the
/// first, full one: all of guest memory), the last complete epoch is
/// acknowledged again every [`KEEPALIVE`]: acks are cumulative, so a repeat
/// releases nothing, but it tells the Primary its Secondary is alive and
/// receiving, so the silence its member measures is never the time a big
/// epoch takes on the wire (which can exceed the failure timeout).
pub fn serve_heard<M: StagingMemory>(
    tx: &SharedSender,
    rx: &mut ChannelReceiver,
    r: &mut Receiver<M>,
    (stop, progress): (&AtomicBool, &Progress),
    mut on_applied: impl FnMut(u64),
    (mut on_heard, busy): (impl FnMut(), &Mutex<Option<Instant>>),
) -> LinkError {
    let mut said = Instant::now();
    let end = loop {
        progress.stamp();
        if stop.load(Ordering::SeqCst) {
            break LinkError::Stopped;
        }
        let m = match rx.recv() {
            Ok(m) => m,
            Err(ChannelError::Timeout) => continue,
            Err(e) => break e.into(),
        };
        on_heard();
        // A keep-alive is heard and nothing more: no ack, no repeat.
        let piece = matches!(m, Message::EpochPiece { .. });
        *busy.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let took = on_message(r, m);
        let (ack, ready) = match took {
            // Acknowledged as soon as it is whole and checked: the apply
            // that follows cannot fail, and this thread finishes it before
            // it reads on or returns (a take-over gets the receiver only
            // from its return), so the Secondary holds the epoch either way.
            Ok(Piece::Ready(ready)) => (Some(ready.number()), Some(ready)),
            Ok(Piece::Again(epoch)) => (Some(epoch), None),
            Ok(Piece::More) if piece && said.elapsed() >= KEEPALIVE => (Some(r.last()), None),
            Ok(Piece::More) => (None, None),
            Err(e) => {
                *busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
                break e;
            }
        };
        let sent = match ack {
            Some(epoch) => tx.send(&Message::EpochAck { epoch }),
            None => Ok(()),
        };
        if let Some(ready) = ready {
            let epoch = r.apply_ready(ready);
            on_applied(epoch);
        }
        *busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(e) = sent {
            break e.into();
        }
        if ack.is_some() {
            said = Instant::now();
        }
    };
    if !matches!(
        end,
        LinkError::Bye { .. } | LinkError::Resigned { .. } | LinkError::Channel(_)
    ) {
        tracing::warn!(
            "checkpoint: link to {} ends at epoch {}: {end}",
            tx.peer(),
            r.last()
        );
        let _ = tx.send_last(&Message::Bye {
            reason: end.to_string(),
        });
    }
    tx.shutdown();
    end
}
