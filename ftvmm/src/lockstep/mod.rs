//! Virtual lockstep (DESIGN.md §4): the Primary records every non-deterministic
//! input into a log and holds its outputs under the Output Rule; the Secondary
//! replays the log at the same exit indices and drops its outputs.
//!
//! - [`log`]: the binary, versioned record format of the log.
//! - [`primary`]: recording inputs, the Output Rule, flow control and lag.
//! - [`primary_watch`]: suspecting the Secondary, fencing's hold (hand-over, re-check).
//! - [`secondary`]: replaying at the same exits, divergence detection.
//! - [`digest`]: output and memory digests both sides compute.
//! - [`golive`]: suspecting the peer, racing for the next generation, going live.
//! - [`link`]: the threads moving batches and acks over the channel.
//! - [`pair`]: pair start (hello) and running a Primary or a Secondary.
//! - [`channel`]: the authenticated, encrypted TCP link that carries it (Noise).

pub mod channel;
pub mod digest;
pub mod golive;
pub mod link;
pub mod log;
pub mod member;
pub mod pair;
pub mod primary;
pub mod primary_watch;
pub mod secondary;
