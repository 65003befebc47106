//! Respawn (issue 10, docs/design.md §11): after a failure leaves a VM's
//! Primary alone, a new Secondary is placed on another allowed host and
//! brought into lockstep by live state transfer, in the Primary's current
//! generation.
//!
//! - [`keeper`]: on the Primary's host, the loop that notices the VM runs
//!   alone, chooses the host (`placement::choose_secondary`), connects,
//!   transfers, and retries with back-off; it keeps the VM's protection
//!   line for status and the console.
//! - [`look`]: the keeper's look at a paired VM, putting the next three
//!   judgements together.
//! - [`secondary_lease`]: whether the paired Secondary could take over,
//!   judged by its host's storage lease (the keeper shows it).
//! - [`secondary_vmnet`]: whether it could serve after a take-over, judged
//!   by its host's reachability on the VM network (the keeper shows it).
//! - [`own_vmnet`]: whether the Primary's own host still reaches the VM
//!   network, and whether the Secondary's could serve instead (the keeper
//!   then hands the VM over).
//! - [`source`]: the Primary's side of one transfer on the real VM.
//! - [`target`]: the new Secondary's side: check the proposal, receive into
//!   a freshly built VM, restore, wait for `Paired`, then replay the log.
//!
//! The pure state machines and the message codec are in `transfer/`; this
//! module performs them. Transfer messages travel inside the logging
//! channel as `channel::Message::Transfer`, before the log starts on it.

pub mod keeper;
pub mod look;
pub mod own_vmnet;
pub mod pagehash;
pub mod secondary_lease;
pub mod secondary_vmnet;
pub mod source;
pub mod target;

use serde::{Deserialize, Serialize};

use super::channel::Message as ChannelMessage;
use super::transfer::message::{decode, encode, Message};
use crate::snapshot::VmState;

/// The page size of the dirty log and of transferred pages.
pub const PAGE_SIZE: u32 = crate::dirty::PAGE_SIZE as u32;

/// `Hello.start_exit` of a Primary that offers to bring a new Secondary in
/// by live transfer (the exit itself comes in `Switch`); 0 is a power-on
/// pair that boots both sides from the image.
pub const JOIN_BY_TRANSFER: u64 = u64::MAX;

/// The opaque state of `Switch`: what the new Secondary needs besides
/// memory to continue exactly where the Primary paused.
#[derive(Serialize, Deserialize)]
pub struct SwitchState {
    /// vCPU and device state (`snapshot.rs`).
    pub vm: VmState,
    /// Sequence number of the first log record the new Secondary gets.
    pub first_seq: u64,
    /// The last clock value the guest saw (a go-live continues from it).
    pub last_time: Option<u64>,
}

/// A transfer message as a channel message.
pub fn to_channel(m: &Message) -> Result<ChannelMessage, String> {
    let bytes = encode(m).map_err(|e| format!("cannot encode {m:?}: {e}"))?;
    Ok(ChannelMessage::Transfer { bytes })
}

/// The transfer message inside a channel message; anything else is refused.
pub fn from_channel(m: ChannelMessage) -> Result<Message, String> {
    match m {
        ChannelMessage::Transfer { bytes } => {
            decode(&bytes).map_err(|e| format!("bad transfer message: {e}"))
        }
        ChannelMessage::Bye { reason } => Err(format!("peer said bye: {reason}")),
        other => Err(format!("expected a transfer message, got {}", other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_messages_ride_the_channel_and_nothing_else_passes_for_one() {
        let m = Message::Paired { generation: 7 };
        assert_eq!(from_channel(to_channel(&m).unwrap()).unwrap(), m);
        let e = from_channel(ChannelMessage::Ack {
            received: 1,
            replayed: 1,
            replayed_exit: 1,
            echo_ns: 0,
        })
        .unwrap_err();
        assert!(e.contains("got Ack"), "{e}");
        let e = from_channel(ChannelMessage::Transfer { bytes: vec![2, 99] }).unwrap_err();
        assert!(e.contains("bad transfer message"), "{e}");
    }
}
