//! Checkpoint replication (design §4b): the Primary runs any guest with the
//! in-kernel irqchip and several vCPUs; at the end of every epoch it pauses,
//! copies what changed, resumes, and ships the epoch to the Secondary, which
//! does not execute but holds the last complete epoch to resume from.
//!
//! - [`state`]: machine state (vCPUs, irqchips, PIT, clock) capture/restore.
//! - [`epoch`]: the epoch wire format (body, pieces, digest); [`assemble`]
//!   puts pieces back together and refuses a torn epoch; [`delta`] encodes
//!   a page against its previous version.
//! - [`gate`]: the Output Rule for epochs (Primary side), with the
//!   [`overlay`] that serves reads of writes not yet on the device.
//! - [`receiver`]: the Secondary's side: reassemble, verify, apply in
//!   order to a staging copy, acknowledge; [`receiver::Receiver::take_over`].
//!
//! Checked: `state_tests` (on /dev/kvm), `epoch_tests` (format, torn
//! epochs, fuzz, delta measurement), `gate_tests`, `receiver_tests`, and a
//! seeded simulation (`sim_tests`: crashes, failover, a bad link).
//!
//! Deliberately not here: the VM that boots Linux (`linux/`), the threads
//! that pause vCPUs and carry epochs over the channel, and the member /
//! fencing wiring (go-live for g+1 works as in lockstep).

pub mod assemble;
pub mod delta;
pub mod epoch;
mod epoch_decode;
pub mod gate;
pub mod overlay;
pub mod receiver;
pub mod state;

#[cfg(test)]
mod epoch_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod receiver_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod sim_world;

#[cfg(test)]
mod state_tests;
