//! Virtual lockstep (docs/architecture.md §5, docs/design.md): the Primary records every
//! non-deterministic input into a log and holds its outputs under the Output
//! Rule; the Secondary replays the log at the same exit indices and drops its
//! outputs; a member that loses its peer races for the next generation.
//!
//! Imports point one way: `pair` (run threads) → `driver` (performs) →
//! `member` (decides, pure) and the data modules below.
//!
//! - [`member`]: a member's decisions as a pure state machine; [`driver`]:
//!   the thread that owns it and performs its actions.
//! - [`pair`]: running a Primary, a Secondary, or a Primary alone; pair start
//!   (hello); [`golive`]: a Secondary switching to the real backends.
//! - [`start`]: winning a durable generation before a VM starts; [`fence`]:
//!   the fencing agent's client; [`grant`]: the host's output grant;
//!   [`claim_vmnet`]: whether a Secondary's race waits for a member that can
//!   serve (its own VM network cut).
//! - [`placement`]: which host runs which half of a config VM.
//! - [`primary`]: recording inputs, the Output Rule and gate, flow control.
//! - [`secondary`]: replaying at the same exits, divergence detection.
//! - [`log`]: the binary, versioned record format; [`digest`]: output and
//!   memory digests both sides compute.
//! - [`link`]: the threads moving batches and acks over the [`channel`], the
//!   authenticated, encrypted TCP link (Noise).
//! - [`spec`]: what a member is given and shows; [`protection_change`]: when
//!   the protection it shows changed enough to be an event.
//! - [`recording_sim`]: a Primary and a Secondary joined by the real log and
//!   wire without KVM (the recording path's fuzz target and tests).
//! - [`transfer`]: live state transfer to a new Secondary (pre-copy rounds,
//!   stop-and-copy, Switch), its messages and codec, as pure state machines.
//!
//! Invariants checked in code: `member` (a generation acted in never goes
//! back; output is never opened in a state that does not own its
//! generation; halted is final), `primary` (`replayed <= acked <=
//! pending_first <= next_seq`), `log` (gapless sequence numbers; a split
//! body's pieces are consecutive, at one exit, and put together before replay),
//! `transfer` (rounds increase by one; Switch only after every page was sent
//! once; the receiver restores only memory with the Switch's digest).

pub mod channel;
pub mod claim_vmnet;
pub mod digest;
pub mod driver;
pub mod fence;
pub mod golive;
pub mod grant;
pub mod link;
pub mod live_affinity;
pub mod live_timing;
pub mod log;
pub mod member;
pub mod pair;
pub mod pause;
pub mod placement;
pub mod primary;
pub mod protection_change;
pub mod recording_sim;
pub mod respawn;
pub mod secondary;
pub mod spec;
pub mod start;
pub mod transfer;

#[cfg(test)]
mod sim_member;
