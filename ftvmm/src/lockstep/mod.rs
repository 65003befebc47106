//! Virtual lockstep (DESIGN.md §4): the Primary records every non-deterministic
//! input into a log and holds its outputs under the Output Rule; the Secondary
//! replays the log at the same exit indices and drops its outputs.
//!
//! - [`log`]: the binary, versioned record format of the log.
//! - [`channel`]: the authenticated, encrypted TCP link that carries it (Noise).

pub mod channel;
pub mod log;
