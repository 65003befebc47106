//! The heartbeat daemon: authenticated, encrypted heartbeats between hosts over
//! UDP on the FT network, failure suspicion, and the membership view that
//! ftvmm and fencing ask for on the control socket (docs/architecture.md §3, §6).
//!
//! - [`packet`]: the wire format; every packet is one one-way Noise
//!   `K_25519_ChaChaPoly_BLAKE2s` handshake message (snow) with a versioned
//!   binary payload (sender, boot id, seq, the sender's view).
//! - [`drops`]: why a datagram was dropped; counters by reason.
//! - [`view`]: membership logic (replay rules, boot ids, echo, timeouts) on an
//!   explicit clock.
//! - [`gate`]: the receive path before the view, outside the node lock:
//!   source check and per-source rate limit before any X25519, then the
//!   Noise open.
//! - [`live`]: the timing taken live from an applied config (`ftctl apply`).
//! - [`node`]: config → keys and addresses; the packet path around the view.
//! - [`daemon`]: the UDP socket, the send/receive threads, console lines and
//!   the control-socket handler.
//! - [`status_service`]: the network status service for operators
//!   (`ftctl status --cluster`) on TCP 7401 of the FT address: this host's
//!   and, gathered over Noise, every other host's daemons' status.

pub mod daemon;
pub mod drops;
pub mod gate;
pub mod live;
pub mod node;
pub mod packet;
pub mod status_service;
pub mod view;
pub mod witness;

// The test clusters (`test_hosts.rs`) name this crate `heartbeat`, as the
// integration tests that share them do.
#[cfg(test)]
extern crate self as heartbeat;
#[cfg(test)]
mod test_hosts;

pub use daemon::Daemon;
pub use drops::DropReason;
pub use gate::Gate;
pub use node::{Node, NodeConfig, PORT};
pub use view::{Membership, Transition};
