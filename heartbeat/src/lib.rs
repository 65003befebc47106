//! The heartbeat daemon: authenticated, encrypted heartbeats between hosts over
//! UDP on the FT network, failure suspicion, and the membership view that
//! ftvmm and fencing ask for on the control socket (DESIGN.md §3, §4, §6).
//!
//! - [`packet`]: the wire format; every packet is one one-way Noise
//!   `K_25519_ChaChaPoly_BLAKE2s` handshake message (snow) with a versioned
//!   binary payload (sender, boot id, seq, the sender's view).
//! - [`view`]: membership logic (replay rules, boot ids, echo, timeouts) on an
//!   explicit clock.
//! - [`node`]: config → keys and addresses; the packet path around the view.
//! - [`daemon`]: the UDP socket, the send/receive threads, console lines and
//!   the control-socket handler.

pub mod daemon;
pub mod node;
pub mod packet;
pub mod view;

pub use daemon::Daemon;
pub use node::{Node, NodeConfig, PORT};
pub use view::{DropReason, Membership, Transition};
