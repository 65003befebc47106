//! The storage-fencing agent: Disk Paxos over per-host sectors of the shared
//! block device, host-liveness (delta) leases and the watchdog (DESIGN.md §5).
//!
//! The on-disk layout is documented in [`layout`]; the decision algorithm in
//! [`paxos`] is a pure state machine driven by I/O completions, run by the
//! daemon against the device ([`io`]) and by the simulation test against a
//! simulated disk ([`sim`]).

pub mod agent;
pub mod daemon;
pub mod device;
pub mod io;
pub mod layout;
pub mod lease;
pub mod paxos;
pub mod rng;
pub mod sim;
pub mod view;
pub mod watchdog;

pub use view::View;
